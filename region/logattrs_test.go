package region_test

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/syncbuf"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/task"
)

// Log lines about a machine that has a task carry both its mac and its
// task_id, whichever path wrote them.
func TestMachineLogLinesCarryMACAndTaskID(t *testing.T) {
	for _, tc := range []struct {
		name, msg string
		edit      func(*lab)
		status    task.Status
	}{
		{"timeout", "task timed out", func(l *lab) {}, task.StatusFailed},
		{"boot files missing", "cannot prepare task", func(l *lab) {
			require.NoError(t, os.Remove(filepath.Join(l.bootDir, "vmlinuz")))
		}, task.StatusFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf syncbuf.Buffer
			l := startRegion(t, memStore(t), func(c *region.Config) {
				c.Logger = slog.New(slog.NewJSONHandler(&buf, nil))
				c.Timeouts = map[task.Status]time.Duration{task.StatusBooting: 300 * time.Millisecond}
			})
			tc.edit(l)
			const mac = "52:54:00:12:34:7a"
			tk := l.create(mac)
			if tc.name == "timeout" {
				l.waitStatus(tk.ID, task.StatusReady)
				l.boot(mac)
			}
			l.waitStatus(tk.ID, tc.status)
			l.stop()

			var found bool
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				var m map[string]any
				require.NoError(t, json.Unmarshal([]byte(line), &m), line)
				_, hasMAC := m["mac"]
				_, hasTask := m["task_id"]
				if hasMAC || hasTask {
					assert.Equal(t, mac, m["mac"], line)
					assert.Equal(t, tk.ID, m["task_id"], line)
				}
				if m["msg"] == tc.msg {
					found = true
					assert.True(t, hasMAC && hasTask, line)
				}
			}
			assert.True(t, found, "no %q in:\n%s", tc.msg, buf.String())
		})
	}
}
