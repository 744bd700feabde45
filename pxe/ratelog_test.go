package pxe

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLogLimiter(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		advance    time.Duration
		offers     int
		logged     int // of the offers, how many get through
		suppressed int // reported with the first that does
	}
	for _, tc := range []struct {
		name  string
		limit int
		steps []step
	}{
		{"under the limit", 3, []step{{0, 2, 2, 0}}},
		{"a flood", 3, []step{{0, 100, 3, 0}}},
		{"the next interval reports what was dropped", 3, []step{{0, 10, 3, 0}, {time.Minute, 10, 3, 7}, {time.Minute, 1, 1, 7}}},
		{"still within the interval", 3, []step{{0, 5, 3, 0}, {59 * time.Second, 5, 0, 0}, {time.Second, 1, 1, 7}}},
		{"nothing dropped, nothing reported", 3, []step{{0, 3, 3, 0}, {time.Hour, 3, 3, 0}}},
		{"no limit", -1, []step{{0, 1000, 1000, 0}}},
		{"default", 0, []step{{0, 100, defaultRefusalLogLimit, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := at
			l := newLogLimiter(tc.limit)
			l.now = func() time.Time { return now }
			for i, s := range tc.steps {
				now = now.Add(s.advance)
				logged, reported := 0, -1
				for range s.offers {
					if ok, k := l.allow(); ok {
						if reported < 0 {
							reported = k
						}
						logged++
					}
				}
				assert.Equal(t, s.logged, logged, "step %d", i)
				if s.logged > 0 {
					assert.Equal(t, s.suppressed, reported, "step %d", i)
				}
			}
		})
	}
}

// A flood of refused requests writes a bounded number of lines, to TFTP
// and HTTP alike, and the servers keep answering.
func TestRefusalsLogRateLimited(t *testing.T) {
	root, sums := testRoot(t)

	t.Run("tftp", func(t *testing.T) {
		var logs logBuffer
		_, addr := startTFTP(t, TFTPConfig{Root: root, Logger: logs.logger(), RefusalLogLimit: 5})
		for range 50 {
			res, err := tftpGet(addr, "../etc/passwd", tftpGetOptions{})
			require.NoError(t, err)
			require.Equal(t, 2, res.errCode)
		}
		ok, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
		require.NoError(t, err)
		assert.Equal(t, sums["tiny.txt"], sha(ok.data))
		assert.Equal(t, 5, strings.Count(logs.String(), `msg="tftp request refused"`))
	})

	t.Run("http", func(t *testing.T) {
		var logs logBuffer
		fsrv, err := NewFileServer(FileServerConfig{Root: root, Logger: logs.logger(), RefusalLogLimit: 5})
		require.NoError(t, err)
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		fsrv.refuse.now = func() time.Time { return now }
		srv := httptest.NewServer(fsrv)
		defer srv.Close()
		get := func(path string) int {
			req, err := http.NewRequest("GET", srv.URL+"/", nil)
			require.NoError(t, err)
			req.URL.Opaque = path // sent as is
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			return resp.StatusCode
		}
		for range 50 {
			require.Equal(t, http.StatusNotFound, get("/../etc/passwd"))
		}
		assert.Equal(t, 5, strings.Count(logs.String(), `msg="boot file request refused"`))
		assert.Equal(t, http.StatusOK, get("/tiny.txt"))

		now = now.Add(time.Minute)
		require.Equal(t, http.StatusNotFound, get("/.hidden"))
		out := logs.String()
		assert.Equal(t, 6, strings.Count(out, `msg="boot file request refused"`))
		assert.Contains(t, out, `msg="refused requests not logged (log rate limit)" component=bootfiles suppressed=45`)
	})
}
