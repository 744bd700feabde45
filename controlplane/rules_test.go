package controlplane_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
)

func ruleKeys(t *testing.T, st store.Store) map[string]string {
	res, err := st.List(context.Background(), rule.Prefix, store.ListOptions{})
	require.NoError(t, err)
	out := map[string]string{}
	for _, kv := range res.KVs {
		out[kv.Key] = string(kv.Value)
	}
	return out
}

func TestAPIRules(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st)

	code, body := cp.do("PUT", "/api/v1/rules/db-nodes", adminToken, map[string]any{"region": "dc1", "min_cores": 16, "disk_type": "NVMe", "vendor": "dell*"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, "db-nodes", body["name"])
	assert.Equal(t, "token:ada", body["updated_by"])

	code, body = cp.do("GET", "/api/v1/rules", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, body["rules"], 1)
	code, body = cp.do("GET", "/api/v1/rules/db-nodes", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(16), body["min_cores"])

	base := ruleKeys(t, st)
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		field                     string
	}{
		{"operator cannot set rules", "PUT", "/api/v1/rules/x", operatorToken, map[string]any{"min_cores": 1}, 403, ""},
		{"bad name", "PUT", "/api/v1/rules/Bad%20Name", adminToken, map[string]any{"min_cores": 1}, 400, "name"},
		{"name differs", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"name": "y", "min_cores": 1}, 400, "name"},
		{"no condition", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"region": "dc1"}, 400, "rule"},
		{"max below min", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"min_memory_gb": 64, "max_memory_gb": 8}, 400, "max_memory_gb"},
		{"bad disk type", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"disk_type": "floppy"}, 400, "disk_type"},
		{"bad pattern", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"model": "[R6"}, 400, "model"},
		{"unknown field", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"min_gpus": 1}, 400, ""},
		{"wrong type", "PUT", "/api/v1/rules/x", adminToken, map[string]any{"min_cores": "many"}, 400, ""},
		{"malformed", "PUT", "/api/v1/rules/x", adminToken, `{"min_cores":`, 400, ""},
		{"get unknown", "GET", "/api/v1/rules/nope", viewerToken, nil, 404, ""},
		{"delete unknown", "DELETE", "/api/v1/rules/nope", adminToken, nil, 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := cp.do(tc.method, tc.path, tc.token, tc.body)
			require.Equal(t, tc.status, code, "%v", body)
			if tc.field != "" {
				assert.Equal(t, tc.field, body["error"].(map[string]any)["field"])
			}
			assert.Equal(t, base, ruleKeys(t, st))
		})
	}

	code, _ = cp.do("DELETE", "/api/v1/rules/db-nodes", adminToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	assert.Empty(t, ruleKeys(t, st))
	assert.Contains(t, cp.audit.String(), "rule.put")
}
