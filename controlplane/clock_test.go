package controlplane_test

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
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
