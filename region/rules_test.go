package region_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/task"
)

// TestAutoApprovalRules: a report that meets a rule is approved by
// "rule:<name>" at once; one that meets none stays pending_approval with
// each rule's reasons in its timeline.
func TestAutoApprovalRules(t *testing.T) {
	st := memStore(t)
	ctx := context.Background()
	rules := rule.NewService(st, nil)
	_, err := rules.Put(ctx, rule.Rule{Name: "small-vms", Region: "dc1", MaxCores: 4, MinMemoryGB: 1}, "token:otto")
	require.NoError(t, err)
	_, err = rules.Put(ctx, rule.Rule{Name: "other-dc", Region: "dc2", MinCores: 1}, "token:otto")
	require.NoError(t, err)
	// The region answers machines once its rules are read too.
	l := startRegion(t, st)

	report := func(mac string, hw hardware.Info) (*task.Task, map[string]any) {
		tk := l.create(mac)
		l.waitStatus(tk.ID, task.StatusReady)
		_, token := l.boot(mac)
		var body map[string]any
		var code int
		code, body = l.call("POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hw})
		require.Equal(t, http.StatusOK, code, "%v", body)
		return tk, body
	}

	tk, body := report("52:54:00:a0:00:01", hardware.Info{CPU: hardware.CPU{Cores: 2}, Memory: hardware.Memory{TotalGB: 2}})
	assert.Equal(t, agent.ActionInstall, body["next_action"])
	got := l.waitStatus(tk.ID, task.StatusApproved)
	require.NotNil(t, got.Approval)
	assert.Equal(t, "rule:small-vms", got.Approval.ApprovedBy)

	tk, body = report("52:54:00:a0:00:02", hardware.Info{CPU: hardware.CPU{Cores: 16}, Memory: hardware.Memory{TotalGB: 64}})
	assert.Equal(t, agent.ActionWaitForApproval, body["next_action"])
	got = l.waitStatus(tk.ID, task.StatusPendingApproval)
	var msg string
	for _, e := range got.Timeline {
		if e.Event == task.TimelineRules {
			msg = e.Message
		}
	}
	assert.Equal(t, "no approval rule matched: small-vms: 16 cores > 4", msg, "only dc1's rule applied")
}

// TestAutoApprovalByExpectedHardware: a rule with match_expected approves
// a machine whose report matches its record's expected hardware (an asset
// database's word), and leaves the others, with the difference, to a
// person.
func TestAutoApprovalByExpectedHardware(t *testing.T) {
	st := memStore(t)
	ctx := context.Background()
	rules := rule.NewService(st, nil)
	_, err := rules.Put(ctx, rule.Rule{Name: "asset-db", MatchExpected: true}, "token:otto")
	require.NoError(t, err)
	machines := machine.NewService(st, machine.Config{})
	for mac, e := range map[string]hardware.Expected{
		"52:54:00:a1:00:01": {Cores: 8, MemoryGB: 32, Serial: "SN-0001"},
		"52:54:00:a1:00:02": {Cores: 8, MemoryGB: 32, Serial: "SN-0002"},
	} {
		m, err := lpmos.ParseMAC(mac)
		require.NoError(t, err)
		_, err = machines.Create(ctx, m, machine.Patch{Expected: &e, Actor: "token:otto"})
		require.NoError(t, err)
	}
	l := startRegion(t, st)

	report := func(mac string, hw hardware.Info) (*task.Task, string) {
		tk := l.create(mac)
		l.waitStatus(tk.ID, task.StatusReady)
		_, token := l.boot(mac)
		code, body := l.call("POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hw})
		require.Equal(t, http.StatusOK, code, "%v", body)
		next, _ := body["next_action"].(string)
		return tk, next
	}
	rulesMessage := func(tk *task.Task) string {
		got := l.waitStatus(tk.ID, task.StatusPendingApproval)
		for _, e := range got.Timeline {
			if e.Event == task.TimelineRules {
				return e.Message
			}
		}
		return ""
	}
	box := func(cores, memGB int, serial string) hardware.Info {
		return hardware.Info{CPU: hardware.CPU{Cores: cores}, Memory: hardware.Memory{TotalGB: memGB}, System: hardware.System{Serial: serial}}
	}

	tk, next := report("52:54:00:a1:00:01", box(8, 31, "SN-0001"))
	assert.Equal(t, agent.ActionInstall, next)
	got := l.waitStatus(tk.ID, task.StatusApproved)
	require.NotNil(t, got.Approval)
	assert.Equal(t, "rule:asset-db", got.Approval.ApprovedBy)

	tk, next = report("52:54:00:a1:00:02", box(6, 32, "SN-0002"))
	assert.Equal(t, agent.ActionWaitForApproval, next)
	assert.Equal(t, "no approval rule matched: asset-db: 6 cores, expected 8", rulesMessage(tk))

	tk, next = report("52:54:00:a1:00:03", box(8, 32, "SN-0003"))
	assert.Equal(t, agent.ActionWaitForApproval, next)
	assert.Equal(t, "no approval rule matched: asset-db: the machine's record states no expected hardware", rulesMessage(tk))
}
