package controlplane_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestRetentionFollowsTheClock: the retention is measured on Config.Now,
// which also stamps the tasks' timelines.
func TestRetentionFollowsTheClock(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	cp := startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) {
		c.Now = clock.Now
		c.Retention, c.PurgeInterval = time.Hour, 20*time.Millisecond
	})
	ended := cp.create("52:54:00:71:00:01")
	code, body := cp.do("DELETE", "/api/v1/tasks/"+ended+"?reason=gone", operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code, "%v", body)
	code, _ = cp.do("GET", "/api/v1/tasks/"+ended, viewerToken, nil)
	require.Equal(t, http.StatusOK, code, "ended just now on the control plane's clock: kept")

	clock.Advance(time.Hour + time.Minute)
	require.Eventually(t, func() bool {
		code, _ := cp.do("GET", "/api/v1/tasks/"+ended, viewerToken, nil)
		return code == http.StatusNotFound
	}, 10*time.Second, 20*time.Millisecond, "purged an hour later on the control plane's clock")
}
