package main_test

import (
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/internal/otlptest"
)

// allinone --otel exports a task's trace to the collector the standard
// OTEL_* variables name: a simulated machine's install, agent calls
// included, is one connected trace, flushed when the process stops.
func TestOtelExportsOneTracePerTask(t *testing.T) {
	if testing.Short() {
		t.Skip("a simulated install through the binary")
	}
	col := otlptest.Start(t)
	cp, region := cmdtest.FreeAddr(t), cmdtest.FreeAddr(t)
	const token = "0123456789abcdef0123"
	p := cmdtest.Start(t, bin, []string{"LPMOS_ADMIN_TOKEN=" + token, "OTEL_EXPORTER_OTLP_ENDPOINT=" + col.Endpoint, "OTEL_SERVICE_NAME="},
		append(quick(t, cp, region), "--otel", "--simulate", "1", "--simulate-speed", "50")...)
	p.WaitOK("http://" + cp + "/healthz")

	api := func(method, path, body string) (int, map[string]any) {
		req, err := http.NewRequest(method, "http://"+cp+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	var id string
	require.Eventually(t, func() bool { // once the region's capabilities are in
		code, body := api("POST", "/api/v1/tasks", `{"region_id":"dc1","target_mac":"02:00:00:00:00:01","os_type":"debian","os_version":"12"}`)
		id, _ = body["task_id"].(string)
		return code == http.StatusCreated
	}, 30*time.Second, 100*time.Millisecond)
	var got map[string]any
	waitFor := func(status string) {
		require.Eventually(t, func() bool {
			_, got = api("GET", "/api/v1/tasks/"+id, "")
			return got["status"] == status
		}, 60*time.Second, 100*time.Millisecond, "task never reached %s: %v", status, got)
	}
	waitFor("pending_approval")
	code, body := api("PUT", "/api/v1/tasks/"+id+"/approve", `{"approved":true}`)
	require.Equal(t, http.StatusOK, code, "%v", body)
	waitFor("completed")
	traceParent, _ := got["metadata"].(map[string]any)["trace_parent"].(string)
	require.Len(t, traceParent, 55, "the task's trace context: %v", got["metadata"])
	traceID := traceParent[3:35]

	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(30*time.Second))

	spans := col.Spans()
	ids := map[string]bool{}
	var names []string
	for _, s := range spans {
		ids[hex.EncodeToString(s.SpanId)] = true
		names = append(names, s.Name)
	}
	roots := 0
	for _, s := range spans {
		assert.Equal(t, "lpmos-allinone", s.Service)
		assert.Equal(t, traceID, hex.EncodeToString(s.TraceId), "span %q is in the task's trace", s.Name)
		if len(s.ParentSpanId) == 0 {
			roots++
			assert.Equal(t, "task "+id, s.Name)
		} else {
			assert.True(t, ids[hex.EncodeToString(s.ParentSpanId)], "the parent of %q was exported", s.Name)
		}
	}
	assert.Equal(t, 1, roots)
	assert.Subset(t, names, []string{"task " + id, "region prepare", "region boot script", "POST /api/v1/agent/report",
		"task hardware_reported", "task approved", "POST /api/v1/agent/progress", "task completed"})
}
