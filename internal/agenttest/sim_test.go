package agenttest_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent/sim"
	"github.com/lpmos/lpmos/task"
)

// Simulated machines go through the real region: they idle without a
// task, boot the agent once one exists, report their hardware, wait for
// the operator, install with the demo installer and end completed; then
// they idle again (their script now says local boot).
func TestSimulatedMachines(t *testing.T) {
	l := newLab(t, bootDir(t, "raw", rawImage(4096), ""))
	macs := sim.MACs(3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	for _, mac := range macs {
		m := &sim.Machine{MAC: mac, RegionURL: l.url, Speed: 200, PollInterval: 50 * time.Millisecond, Logger: quiet}
		go func() {
			defer func() { done <- struct{}{} }()
			_ = m.Run(ctx)
		}()
	}
	defer func() {
		cancel()
		for range macs {
			<-done
		}
	}()

	var ids []string
	for _, mac := range macs {
		tk, err := l.svc.Create(context.Background(), task.CreateRequest{RegionID: "dc1", TargetMAC: mac.String(),
			OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
		require.NoError(t, err)
		ids = append(ids, tk.ID)
	}
	for i, id := range ids {
		got := l.waitStatus(id, task.StatusPendingApproval)
		require.NotNil(t, got.Hardware)
		assert.Equal(t, "Simulated Xeon", got.Hardware.CPU.Model)
		assert.Equal(t, macs[i].String(), got.Hardware.MACAddress)
		_, err := l.svc.Approve(context.Background(), id, "ops", "")
		require.NoError(t, err)
	}
	for _, id := range ids {
		got := l.waitStatus(id, task.StatusCompleted)
		var stages []task.Stage
		for _, e := range got.Timeline {
			if e.Stage != "" {
				stages = append(stages, e.Stage)
			}
		}
		assert.Equal(t, []task.Stage{task.StagePartitioning, task.StageDownloading, task.StageWriting, task.StageInstalling, task.StageConfiguring}, stages)
	}
}
