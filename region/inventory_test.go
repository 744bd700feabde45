package region_test

import (
	"context"
	"net/http"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
)

var anyTokenRe = regexp.MustCompile(`lpmos\.token=(\S+)`)

func machineKeys(t *testing.T, st store.Store) map[string]int64 {
	res, err := st.List(context.Background(), machine.Prefix, store.ListOptions{})
	require.NoError(t, err)
	out := map[string]int64{}
	for _, kv := range res.KVs {
		out[kv.Key] = kv.ModRevision
	}
	return out
}

// TestDiscovery: a region in discovery mode boots a machine without a task
// into the agent in inventory mode; its report creates the machine's
// record and tells it to power off; the next boot goes to its disk.
func TestDiscovery(t *testing.T) {
	st := memStore(t)
	l := startRegion(t, st, func(c *region.Config) { c.UnknownMachines = region.UnknownDiscover })
	const mac = "52:54:00:0d:15:c0"
	parsed, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)

	// DHCP answers the unknown machine.
	got, err := l.reg.DHCPPolicy().Boot(context.Background(), dhcp.Request{MAC: parsed, IsPXE: true, HasArch: true, Firmware: lpmos.FirmwareBIOS})
	require.NoError(t, err)
	assert.Equal(t, dhcp.Decision{BootFile: "undionly.kpxe"}, got)

	machinePeer, other := l.clientFrom("127.0.0.2"), l.clientFrom("127.0.0.3")
	code, script, _ := l.fetchScript(machinePeer, mac)
	require.Equal(t, http.StatusOK, code, script)
	assert.Contains(t, script, "lpmos.mode=inventory")
	assert.NotContains(t, script, "lpmos.task=")
	m := anyTokenRe.FindStringSubmatch(script)
	require.NotNil(t, m, script)
	token := m[1]
	assert.Empty(t, machineKeys(t, st), "a script fetch for an unknown machine writes nothing")

	hw := hardware.Info{CPU: hardware.CPU{Model: "QEMU", Cores: 4}, Memory: hardware.Memory{TotalGB: 8},
		Disks: []hardware.Disk{{Device: "/dev/vda", SizeGB: 20, Type: hardware.DiskHDD}}}
	good := agent.ReportRequest{MACAddress: mac, Hardware: hw}
	bad := []struct {
		name   string
		p      peer
		token  string
		body   any
		status int
	}{
		{"no token", machinePeer, "", good, http.StatusUnauthorized},
		{"task token shape", machinePeer, "0123456789abcdef0123456789abcdef", good, http.StatusUnauthorized},
		{"another address", other, token, good, http.StatusUnauthorized},
		{"another MAC", machinePeer, token, agent.ReportRequest{MACAddress: "52:54:00:0d:15:c1", Hardware: hw}, http.StatusUnauthorized},
		{"altered token", machinePeer, token[:len(token)-2] + "AA", good, http.StatusUnauthorized},
		{"malformed JSON", machinePeer, token, `{"mac_address":`, http.StatusBadRequest},
		{"unknown field", machinePeer, token, `{"mac_address":"` + mac + `","colour":1}`, http.StatusBadRequest},
		{"with a task", machinePeer, token, agent.ReportRequest{MACAddress: mac, TaskID: "3f2b9c1e-8d4a-4b6e-9f1a-2c3d4e5f6a7b", Hardware: hw}, http.StatusBadRequest},
		{"bad hardware", machinePeer, token, agent.ReportRequest{MACAddress: mac, Hardware: hardware.Info{CPU: hardware.CPU{Cores: -1}}}, http.StatusBadRequest},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			code, body := l.callFrom(tc.p, "POST", agent.PathInventory, tc.token, tc.body)
			assert.Equal(t, tc.status, code, "%v", body)
			assert.Empty(t, machineKeys(t, st))
		})
	}

	code, body := l.callFrom(machinePeer, "POST", agent.PathInventory, token, good)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, agent.ActionPowerOff, body["next_action"])
	rec, err := machine.NewService(st, machine.Config{}).Get(context.Background(), parsed)
	require.NoError(t, err)
	require.NotNil(t, rec.LastReport)
	assert.Equal(t, 4, rec.LastReport.Hardware.CPU.Cores)
	assert.Equal(t, "127.0.0.2", rec.LastReport.Source)
	assert.Equal(t, "dc1", rec.Region)
	assert.Empty(t, rec.LastReport.TaskID)
	assert.False(t, rec.Registered)

	// The agent retrying at once is answered without a second write.
	before := machineKeys(t, st)
	code, _ = l.callFrom(machinePeer, "POST", agent.PathInventory, token, good)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, before, machineKeys(t, st))

	// Inventoried once: its next network boot goes to its disk.
	code, script, _ = l.fetchScript(machinePeer, mac)
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, script, "lpmos.mode=inventory")
	assert.Contains(t, script, "boot the local disk")
	assert.Contains(t, script, "was inventoried already")
	assert.NotContains(t, script, "is installed")
}

func TestNoDiscoveryByDefault(t *testing.T) {
	st := memStore(t)
	l := startRegion(t, st)
	const mac = "52:54:00:0d:15:c0"
	code, script, _ := l.fetchScript(l.clientFrom("127.0.0.2"), mac)
	require.Equal(t, http.StatusOK, code)
	assert.NotContains(t, script, "lpmos.mode=inventory")
	code, _ = l.call("POST", agent.PathInventory, "inv.AAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBB", agent.ReportRequest{MACAddress: mac})
	assert.Equal(t, http.StatusNotFound, code)
	assert.Empty(t, machineKeys(t, st))
}
