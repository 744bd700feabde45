package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

func caps(total, perRegion int) cpOption {
	return func(c *controlplane.Config) {
		c.MaxActiveTasks, c.MaxActiveTasksPerRegion = total, perRegion
	}
}

// createIn creates a task for mac in region and returns the status, the
// error code and the task ID.
func (cp *testCP) createIn(region, mac string) (int, string, string) {
	cp.t.Helper()
	b := createBody(mac)
	b["region_id"] = region
	code, body := cp.do("POST", "/api/v1/tasks", operatorToken, b)
	id, _ := body["task_id"].(string)
	return code, errCode(body), id
}

// TestActiveTaskCaps: a create over the global or the region's cap of
// active tasks is refused with 409 "capacity" and writes nothing; a batch
// fills the free slots in its order and fails every item over them alike;
// a task that ends frees its slot.
func TestActiveTaskCaps(t *testing.T) {
	tests := []struct {
		name             string
		total, perRegion int
		run              func(t *testing.T, cp *testCP)
	}{
		{"global cap", 2, -1, func(t *testing.T, cp *testCP) {
			code, _, _ := cp.createIn("dc1", "00:1a:2b:3c:c0:01")
			require.Equal(t, http.StatusCreated, code)
			code, _, _ = cp.createIn("dc2", "00:1a:2b:3c:c0:02")
			require.Equal(t, http.StatusCreated, code)
			before := dumpStore(t, cp.st)
			for _, region := range []string{"dc1", "dc3"} {
				code, ec, _ := cp.createIn(region, "00:1a:2b:3c:c0:03")
				assert.Equal(t, http.StatusConflict, code, region)
				assert.Equal(t, "capacity", ec, region)
			}
			assert.Equal(t, before, dumpStore(t, cp.st), "a refused create writes nothing")
		}},
		{"cap per region", -1, 2, func(t *testing.T, cp *testCP) {
			for i := range 2 {
				code, _, _ := cp.createIn("dc1", fmt.Sprintf("00:1a:2b:3c:c1:%02x", i))
				require.Equal(t, http.StatusCreated, code)
			}
			code, body := cp.do("POST", "/api/v1/tasks", operatorToken, map[string]any{
				"region_id": "dc1", "target_mac": "00:1a:2b:3c:c1:09", "os_type": "ubuntu", "os_version": "22.04"})
			assert.Equal(t, http.StatusConflict, code)
			assert.Equal(t, "capacity", errCode(body))
			assert.Contains(t, body["error"].(map[string]any)["message"], `region "dc1"`)
			code, _, _ = cp.createIn("dc2", "00:1a:2b:3c:c1:10")
			assert.Equal(t, http.StatusCreated, code, "another region has room")
		}},
		{"batch partially over the cap", 3, -1, func(t *testing.T, cp *testCP) {
			code, _, _ := cp.createIn("dc1", "00:1a:2b:3c:c2:00")
			require.Equal(t, http.StatusCreated, code)
			code, body := cp.do("POST", "/api/v1/tasks/batch", operatorToken, map[string]any{"tasks": []any{
				createBody("00:1a:2b:3c:c2:01"),
				createBody("not-a-mac"), // refused anyway: takes no slot
				createBody("00:1a:2b:3c:c2:02"),
				createBody("00:1a:2b:3c:c2:03"),
				createBody("00:1a:2b:3c:c2:04"),
			}})
			require.Equal(t, http.StatusOK, code, "%v", body)
			assert.Equal(t, float64(2), body["created"])
			assert.Equal(t, float64(3), body["failed"])
			results := itemsOf(body, "results")
			require.Len(t, results, 5)
			for _, i := range []int{0, 2} {
				assert.NotNil(t, results[i]["task"], "item %d: %v", i, results[i])
			}
			ec, _ := errorOf(results[1])
			assert.Equal(t, "invalid_request", ec)
			for _, i := range []int{3, 4} {
				ec, _ := errorOf(results[i])
				assert.Equal(t, "capacity", ec, "item %d", i)
				assert.Nil(t, results[i]["task"])
			}
			assert.Equal(t, results[3]["error"], results[4]["error"], "every item over the cap fails alike")
			entries := cp.auditEntries()
			assert.Equal(t, float64(http.StatusConflict), entries[len(entries)-2]["status"], "the audit record says 409")
		}},
		{"an ended task frees its slot", 1, 1, func(t *testing.T, cp *testCP) {
			code, _, id := cp.createIn("dc1", "00:1a:2b:3c:c3:01")
			require.Equal(t, http.StatusCreated, code)
			code, ec, _ := cp.createIn("dc1", "00:1a:2b:3c:c3:02")
			require.Equal(t, http.StatusConflict, code)
			require.Equal(t, "capacity", ec)
			code, body := cp.do("DELETE", "/api/v1/tasks/"+id+"?reason=make+room", operatorToken, nil)
			require.Equal(t, http.StatusNoContent, code, "%v", body)
			code, _, _ = cp.createIn("dc1", "00:1a:2b:3c:c3:02")
			assert.Equal(t, http.StatusCreated, code)
		}},
		{"negative caps are no caps", -1, -1, func(t *testing.T, cp *testCP) {
			code, body := cp.do("POST", "/api/v1/tasks/batch", operatorToken, map[string]any{"tasks": []any{
				createBody("00:1a:2b:3c:c4:01"), createBody("00:1a:2b:3c:c4:02"), createBody("00:1a:2b:3c:c4:03"),
			}})
			require.Equal(t, http.StatusOK, code)
			assert.Equal(t, float64(3), body["created"])
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, memCP(t, caps(tt.total, tt.perRegion)))
		})
	}
}

// TestStoreQuotaMetrics: /metrics shows the etcd database's size and the
// member's quota, for an alert before the quota stops every write.
func TestStoreQuotaMetrics(t *testing.T) {
	const quota = 256 << 20
	st := etcdtest.NewStore(t, func(c *embedded.Config) { c.QuotaBackendBytes = quota })
	used, q, err := st.DBSize(context.Background())
	require.NoError(t, err)
	assert.Positive(t, used)
	assert.Equal(t, int64(quota), q)

	cp := startCP(t, st)
	req, _ := http.NewRequest("GET", cp.ts.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+viewerToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var size string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "lpmos_store_db_size_bytes "); ok {
			size = v
		}
	}
	require.NotEmpty(t, size, "no lpmos_store_db_size_bytes in:\n%s", data)
	assert.NotEqual(t, "0", size)
	assert.Contains(t, string(data), fmt.Sprintf("lpmos_store_db_quota_bytes %g\n", float64(quota)))
}
