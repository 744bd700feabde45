package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary run as an etcd member: the fleet starts
// its members as processes of its own executable.
func TestMain(m *testing.M) {
	if code, ok := runRole(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestFleetSmoke runs the fleet small: real etcd, region and control-plane
// processes, 300 simulated machines in 3 regions, 50 dashboards. Nothing
// may be lost, duplicated or stuck; every timeline holds the whole
// lifecycle in order; every dashboard received every status change of the
// tasks it followed.
func TestFleetSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, region and control-plane processes (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Machines: 300, Regions: 3, ControlPlanes: 2, Dashboards: 50, Firehose: 2,
		Speed: 20, BootRetry: 200 * time.Millisecond, CreateWorkers: 8,
		Timeout: 3 * time.Minute, WorkDir: t.TempDir(),
	})
	require.NoError(t, err)
	var out bytes.Buffer
	res.Print(&out)
	t.Log("\n" + out.String())

	assert.Equal(t, 300, res.Created, "tasks created")
	assert.Equal(t, 300, res.Completed, "tasks completed")
	assert.Zero(t, res.Lost, "lost")
	assert.Zero(t, res.Duplicated, "duplicated")
	assert.Zero(t, res.Stuck, "stuck")
	assert.Zero(t, res.TimelineBad, "timelines incomplete or out of order")
	assert.Empty(t, res.Problems)

	ws := res.WS
	assert.Empty(t, ws.Ended, "dashboards dropped")
	assert.NoError(t, res.WSWait)
	assert.Zero(t, ws.Lost, "status messages lost")
	assert.Zero(t, ws.Misorder, "firehose dashboards with statuses out of order or twice")
	// The two firehose dashboards follow all 7 statuses of every task; the
	// watchers every task, from where they loaded it.
	assert.GreaterOrEqual(t, ws.Expected, 2*300*len(lifecycle))
	assert.Equal(t, 300, ws.Watched, "every task followed by a watcher")
	assert.NotEmpty(t, ws.Delays)

	assert.Equal(t, 300, res.Purged, "retention purged every task")
	assert.Less(t, res.DBAfterRetention, res.DBAfterRun, "compaction and defragmentation gave space back")
	for _, op := range []string{opCreate, opApprove, opList, opGet} {
		assert.NotZero(t, res.REST[op].N, op)
		assert.Zero(t, res.REST[op].Errors, op)
	}
	require.Len(t, res.Procs, 1+3+2+1)
	for _, p := range res.Procs {
		assert.NotZero(t, p.PeakRSS, p.Name)
	}
	assert.True(t, res.OK())
}

// TestFleetEtcdLeaderKilled kills (SIGKILL) the leader of a 3-member etcd
// cluster halfway through a small fleet run: the clients of the regions
// and control planes fail over, their watches resume, and nothing is
// lost, duplicated, stuck or missed by a dashboard.
func TestFleetEtcdLeaderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, region and control-plane processes (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Machines: 150, Regions: 2, ControlPlanes: 2, Dashboards: 10, Firehose: 2, EtcdMembers: 3,
		KillEtcdLeaderAt: 0.5, Speed: 20, BootRetry: 200 * time.Millisecond, CreateWorkers: 8,
		Timeout: 3 * time.Minute, WorkDir: t.TempDir(),
	})
	require.NoError(t, err)
	var out bytes.Buffer
	res.Print(&out)
	t.Log("\n" + out.String())

	require.NotEmpty(t, res.Killed, "a leader was killed")
	assert.GreaterOrEqual(t, res.KilledAfterDone, 75)
	assert.Less(t, res.KilledAfterDone, 150, "killed while machines were still installing")
	assert.Equal(t, 150, res.Completed)
	assert.Zero(t, res.Lost+res.Duplicated+res.Stuck+res.TimelineBad)
	assert.Zero(t, res.WS.Lost, "status messages lost")
	assert.Zero(t, res.WS.Misorder)
	assert.Empty(t, res.WS.Ended)
	assert.NoError(t, res.WSWait)
	assert.Equal(t, 150, res.Purged)
	assert.True(t, res.OK())
}
