package controlplane_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
)

func withSealer(t *testing.T) cpOption {
	s, err := machine.NewSealer([]byte(strings.Repeat("m", machine.KeySize)))
	require.NoError(t, err)
	return func(c *controlplane.Config) { c.BMCSealer = s }
}

// machineKeys returns every key and value under the machines prefix.
func machineKeys(t *testing.T, st store.Store) map[string]string {
	res, err := st.List(context.Background(), machine.Prefix, store.ListOptions{})
	require.NoError(t, err)
	out := map[string]string{}
	for _, kv := range res.KVs {
		out[kv.Key] = string(kv.Value)
	}
	return out
}

func TestAPIMachines(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st, withSealer(t))

	ipmi := map[string]any{"driver": "ipmi", "address": "10.1.0.7:623", "username": "admin", "password": "bmc-pass-1"}
	code, body := cp.do("POST", "/api/v1/machines", operatorToken, map[string]any{
		"mac": "52-54-00-AA-00-01", "region": "dc1", "tags": map[string]string{"rack": "r7"}, "bmc": ipmi})
	require.Equal(t, http.StatusCreated, code, "%v", body)
	assert.Equal(t, "52:54:00:aa:00:01", body["mac"])
	bmc := body["bmc"].(map[string]any)
	assert.Equal(t, true, bmc["has_password"])
	assert.NotContains(t, bmc, "password")
	for k, v := range machineKeys(t, st) {
		assert.NotContains(t, v, "bmc-pass-1", "password in clear at %s", k)
	}

	// A discovered machine: known from a report only.
	svc := machine.NewService(st, machine.Config{})
	require.NoError(t, svc.Observe(context.Background(), mustMAC(t, "52:54:00:aa:00:02"), machine.Report{
		Region: "dc1", Source: "10.1.0.50:5000",
		Hardware: &hardware.Info{CPU: hardware.CPU{Cores: 32}, Memory: hardware.Memory{TotalGB: 128}, System: hardware.System{Vendor: "Dell Inc.", Product: "PowerEdge R650"}}}))

	require.Eventually(t, func() bool {
		code, body := cp.do("GET", "/api/v1/machines", viewerToken, nil)
		return code == http.StatusOK && body["total"] == float64(2)
	}, 10*time.Second, 20*time.Millisecond)

	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"region=dc1", []string{"52:54:00:aa:00:01", "52:54:00:aa:00:02"}},
		{"tag=rack%3Dr7", []string{"52:54:00:aa:00:01"}},
		{"min_cores=16&min_memory_gb=64", []string{"52:54:00:aa:00:02"}},
		{"vendor=dell", []string{"52:54:00:aa:00:02"}},
		{"mac_prefix=52-54-00-AA-00-0", []string{"52:54:00:aa:00:01", "52:54:00:aa:00:02"}},
		{"limit=1", []string{"52:54:00:aa:00:01"}},
		{"limit=1&after=52:54:00:aa:00:01", []string{"52:54:00:aa:00:02"}},
	} {
		code, body := cp.do("GET", "/api/v1/machines?"+tc.query, viewerToken, nil)
		require.Equal(t, http.StatusOK, code, tc.query)
		var got []string
		for _, m := range body["machines"].([]any) {
			got = append(got, m.(map[string]any)["mac"].(string))
		}
		assert.Equal(t, tc.want, got, tc.query)
	}

	// PATCH: tags replaced, password kept when only the username changes.
	code, body = cp.do("PATCH", "/api/v1/machines/52:54:00:aa:00:01", operatorToken, map[string]any{
		"tags": map[string]string{"rack": "r8"}, "bmc": map[string]any{"driver": "ipmi", "address": "10.1.0.7:623", "username": "ops"}})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, map[string]any{"rack": "r8"}, body["tags"])
	assert.Equal(t, true, body["bmc"].(map[string]any)["has_password"])
	assert.Equal(t, "ops", body["bmc"].(map[string]any)["username"])

	// Expected hardware (an asset database's word), then removed.
	code, body = cp.do("PATCH", "/api/v1/machines/52:54:00:aa:00:01", operatorToken, map[string]any{
		"expected": map[string]any{"cores": 32, "memory_gb": 256, "disks": 2, "serial": "7XK2M33"}})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, map[string]any{"cores": 32.0, "memory_gb": 256.0, "disks": 2.0, "serial": "7XK2M33"}, body["expected"])
	assert.Equal(t, map[string]any{"rack": "r8"}, body["tags"], "tags kept")
	code, body = cp.do("PATCH", "/api/v1/machines/52:54:00:aa:00:01", operatorToken, `{"expected": null}`)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.NotContains(t, body, "expected")
	assert.Equal(t, true, body["bmc"].(map[string]any)["has_password"], "the BMC kept")

	// Power: accepted as a request for the region.
	code, body = cp.do("POST", "/api/v1/machines/52:54:00:aa:00:01/power", operatorToken, map[string]any{"action": "on"})
	require.Equal(t, http.StatusAccepted, code, "%v", body)
	assert.Equal(t, "on", body["action"])
	assert.Equal(t, "token:otto", body["requested_by"])
	code, body = cp.do("GET", "/api/v1/machines/52:54:00:aa:00:01", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "on", body["pending_power"].(map[string]any)["action"])

	// A task from the machine: its MAC and region filled in.
	code, body = cp.do("POST", "/api/v1/machines/52:54:00:aa:00:02/tasks", operatorToken, map[string]any{"os_type": "ubuntu", "os_version": "22.04"})
	require.Equal(t, http.StatusCreated, code, "%v", body)
	id := body["task_id"].(string)
	code, body = cp.do("GET", "/api/v1/machines/52:54:00:aa:00:02", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	tasks := body["tasks"].([]any)
	require.Len(t, tasks, 1)
	assert.Equal(t, id, tasks[0].(map[string]any)["task_id"])
	assert.Equal(t, false, body["registered"])
	assert.Equal(t, "10.1.0.50:5000", body["last_report"].(map[string]any)["source"])

	// Not deleted while it has an active task; deleted once it has none.
	before := machineKeys(t, st)
	code, body = cp.do("DELETE", "/api/v1/machines/52:54:00:aa:00:02", operatorToken, nil)
	assert.Equal(t, http.StatusConflict, code, "%v", body)
	assert.Equal(t, before, machineKeys(t, st))
	code, _ = cp.do("DELETE", "/api/v1/tasks/"+id, operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	require.Eventually(t, func() bool {
		code, _ := cp.do("DELETE", "/api/v1/machines/52:54:00:aa:00:02", operatorToken, nil)
		return code == http.StatusNoContent
	}, 10*time.Second, 20*time.Millisecond)
	code, _ = cp.do("GET", "/api/v1/machines/52:54:00:aa:00:02", viewerToken, nil)
	assert.Equal(t, http.StatusNotFound, code)

	// Viewers read, never write.
	code, _ = cp.do("PATCH", "/api/v1/machines/52:54:00:aa:00:01", viewerToken, map[string]any{"tags": map[string]string{}})
	assert.Equal(t, http.StatusForbidden, code)
	code, _ = cp.do("POST", "/api/v1/machines/52:54:00:aa:00:01/power", viewerToken, map[string]any{"action": "off"})
	assert.Equal(t, http.StatusForbidden, code)

	// The audit log names the operator's calls and never a password.
	audit := cp.audit.String()
	assert.Contains(t, audit, "machine.create")
	assert.Contains(t, audit, "machine.power")
	assert.NotContains(t, audit, "bmc-pass-1")
}

func TestAPIMachinesBadInputWritesNothing(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st, withSealer(t))
	code, body := cp.do("POST", "/api/v1/machines", operatorToken, map[string]any{"mac": "52:54:00:aa:00:01", "region": "dc1"})
	require.Equal(t, http.StatusCreated, code, "%v", body)
	base := machineKeys(t, st)

	cases := []struct {
		name, method, path string
		body               any
		status             int
		field              string
	}{
		{"malformed JSON", "POST", "/api/v1/machines", `{"mac":`, 400, ""},
		{"unknown field", "POST", "/api/v1/machines", map[string]any{"mac": "52:54:00:aa:00:09", "colour": "red"}, 400, ""},
		{"bad MAC", "POST", "/api/v1/machines", map[string]any{"mac": "52:54:00:zz:00:09"}, 400, "mac"},
		{"registered twice", "POST", "/api/v1/machines", map[string]any{"mac": "52:54:00:aa:00:01"}, 409, ""},
		{"bad region", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"region": "DC 1"}, 400, "region"},
		{"bad driver", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"bmc": map[string]any{"driver": "ssh", "address": "h"}}, 400, "bmc.driver"},
		{"unknown BMC field", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"bmc": map[string]any{"driver": "ipmi", "address": "h", "passw0rd": "x"}}, 400, "bmc"},
		{"BMC not an object", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"bmc": "ipmi://h"}, 400, "bmc"},
		{"redfish unpinned", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"bmc": map[string]any{"driver": "redfish", "address": "h", "password": "p"}}, 400, "bmc.cert_sha256"},
		{"expected nothing", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"expected": map[string]any{}}, 400, "expected"},
		{"expected negative", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"expected": map[string]any{"cores": -2}}, 400, "expected.cores"},
		{"expected unknown field", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"expected": map[string]any{"cpus": 2}}, 400, "expected"},
		{"expected wrong type", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"expected": map[string]any{"memory_gb": "64G"}}, 400, "expected"},
		{"MAC changed", "PATCH", "/api/v1/machines/52:54:00:aa:00:01", map[string]any{"mac": "52:54:00:aa:00:02"}, 400, "mac"},
		{"path MAC bad", "PATCH", "/api/v1/machines/nonsense", map[string]any{}, 400, "mac"},
		{"patch unknown", "PATCH", "/api/v1/machines/52:54:00:aa:00:05", map[string]any{"region": "dc1"}, 404, ""},
		{"delete unknown", "DELETE", "/api/v1/machines/52:54:00:aa:00:05", nil, 404, ""},
		{"power without BMC", "POST", "/api/v1/machines/52:54:00:aa:00:01/power", map[string]any{"action": "on"}, 409, ""},
		{"power bad action", "POST", "/api/v1/machines/52:54:00:aa:00:01/power", map[string]any{"action": "explode"}, 400, "action"},
		{"power unknown", "POST", "/api/v1/machines/52:54:00:aa:00:05/power", map[string]any{"action": "on"}, 404, ""},
		{"list bad filter", "GET", "/api/v1/machines?min_cores=many", nil, 400, "min_cores"},
		{"list unknown filter", "GET", "/api/v1/machines?colour=red", nil, 400, "colour"},
		{"list bad tag", "GET", "/api/v1/machines?tag=rack", nil, 400, "tag"},
		{"task with another MAC", "POST", "/api/v1/machines/52:54:00:aa:00:01/tasks", map[string]any{"target_mac": "52:54:00:aa:00:02", "os_type": "ubuntu", "os_version": "22.04"}, 400, "target_mac"},
		{"task for unknown machine", "POST", "/api/v1/machines/52:54:00:aa:00:05/tasks", map[string]any{"os_type": "ubuntu", "os_version": "22.04"}, 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := cp.do(tc.method, tc.path, operatorToken, tc.body)
			require.Equal(t, tc.status, code, "%v", body)
			if tc.field != "" {
				assert.Equal(t, tc.field, body["error"].(map[string]any)["field"])
			}
			assert.Equal(t, base, machineKeys(t, st))
		})
	}
	t.Run("password without a key", func(t *testing.T) {
		st := memory.New()
		t.Cleanup(func() { st.Close() })
		cp := startCP(t, st)
		code, body := cp.do("POST", "/api/v1/machines", operatorToken, map[string]any{"mac": "52:54:00:aa:00:01",
			"bmc": map[string]any{"driver": "ipmi", "address": "h", "password": "pw"}})
		require.Equal(t, http.StatusBadRequest, code)
		assert.Equal(t, "bmc.password", body["error"].(map[string]any)["field"])
		assert.Contains(t, body["error"].(map[string]any)["message"], "--bmc-key-file")
		assert.Empty(t, machineKeys(t, st))
	})
}

func mustMAC(t *testing.T, s string) lpmos.MAC {
	m, err := lpmos.ParseMAC(s)
	require.NoError(t, err)
	return m
}
