package controlplane_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store/memory"
)

// TestRetentionFollowsTheClock: the retention is measured on Config.Now,
// which also stamps the tasks' timelines.
func TestRetentionFollowsTheClock(t *testing.T) {
	start := time.Now()
	var ahead atomic.Int64 // the test moves the clock forward
	now := func() time.Time { return start.Add(time.Duration(ahead.Load())) }
	cp := startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) {
		c.Now = now
		c.Retention, c.PurgeInterval = time.Hour, 20*time.Millisecond
	})
	ended := cp.create("52:54:00:71:00:01")
	code, body := cp.do("DELETE", "/api/v1/tasks/"+ended+"?reason=gone", operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code, "%v", body)
	code, _ = cp.do("GET", "/api/v1/tasks/"+ended, viewerToken, nil)
	require.Equal(t, http.StatusOK, code, "ended just now on the control plane's clock: kept")

	ahead.Add(int64(time.Hour + time.Minute))
	require.Eventually(t, func() bool {
		code, _ := cp.do("GET", "/api/v1/tasks/"+ended, viewerToken, nil)
		return code == http.StatusNotFound
	}, 10*time.Second, 20*time.Millisecond, "purged an hour later on the control plane's clock")
}

// TestPendingTimeout: a task its region never picks up fails with code
// region_unavailable once PendingTimeout passed on the control plane's
// clock; a task the region prepared is left alone, and a negative timeout
// never fails anything.
func TestPendingTimeout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		fails   bool
	}{
		{"one hour", time.Hour, true},
		{"off", -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			var ahead atomic.Int64
			st := memory.New()
			t.Cleanup(func() { st.Close() })
			cp := startCP(t, st, func(c *controlplane.Config) {
				c.Now = func() time.Time { return start.Add(time.Duration(ahead.Load())) }
				c.PendingTimeout, c.PendingCheckInterval = tc.timeout, 10*time.Millisecond
			})
			unclaimed := cp.create("52:54:00:72:00:01")
			claimed := cp.create("52:54:00:72:00:02")
			_, err := cp.svc.MarkReady(context.Background(), claimed, "region:dc1")
			require.NoError(t, err)

			ahead.Add(int64(30 * time.Minute))
			time.Sleep(100 * time.Millisecond) // ten checks: not yet
			status := func(id string) map[string]any {
				code, body := cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
				require.Equal(t, http.StatusOK, code)
				return body
			}
			require.Equal(t, "pending", status(unclaimed)["status"])

			ahead.Add(int64(31 * time.Minute))
			if !tc.fails {
				time.Sleep(100 * time.Millisecond)
				require.Equal(t, "pending", status(unclaimed)["status"])
				return
			}
			require.Eventually(t, func() bool { return status(unclaimed)["status"] == "failed" }, 10*time.Second, 10*time.Millisecond)
			body := status(unclaimed)
			e := body["error"].(map[string]any)
			assert.Equal(t, "region_unavailable", e["code"])
			assert.Contains(t, e["message"], "region dc1 did not pick the task up")
			assert.Equal(t, "ready", status(claimed)["status"], "a prepared task is left alone")
		})
	}
}
