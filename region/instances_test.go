package region_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// The processes of a region pair announce themselves; the leader's agent
// script names the standby after itself (lpmos.region=LEADER,STANDBY), so
// an agent survives a takeover without a virtual IP; once the standby
// stops, scripts name the leader alone.
func TestAgentScriptNamesTheRegionsOtherProcesses(t *testing.T) {
	st := memStore(t)
	short := func(c *region.Config) { c.LeaderTTL = time.Second }
	a := startRegion(t, st, short, func(c *region.Config) { c.InstanceID = "a" })
	b := startRegion(t, st, short, func(c *region.Config) { c.InstanceID = "b" })
	leader, standby := a, b
	if b.reg.Leading() {
		leader, standby = b, a
	}
	require.True(t, leader.reg.Leading())

	const mac = "52:54:00:1e:00:01"
	tk := leader.create(mac)
	leader.waitStatus(tk.ID, task.StatusReady)
	pair := "lpmos.region=" + leader.ts.URL + "," + standby.ts.URL + " "
	var script string
	require.Eventually(t, func() bool {
		script, _ = leader.boot(mac)
		return strings.Contains(script, pair)
	}, 10*time.Second, 50*time.Millisecond, "the leader's script does not name the standby: %s", script)

	standby.stop()
	require.Eventually(t, func() bool {
		res, err := st.List(context.Background(), region.InstancesPrefix("dc1"), store.ListOptions{})
		return err == nil && len(res.KVs) == 1
	}, 10*time.Second, 20*time.Millisecond, "the stopped process's key stayed")
	alone := "lpmos.region=" + leader.ts.URL + " "
	require.Eventually(t, func() bool {
		script, _ = leader.boot(mac)
		return strings.Contains(script, alone)
	}, 10*time.Second, 50*time.Millisecond, "the leader's script still names the stopped process: %s", script)
}
