package etcd_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/lpmos/lpmos/store/etcd"
)

func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		lines = append(lines, m)
	}
	return lines
}

// Zap entries at the minimum level and above reach the slog handler, with
// their fields and the logger's name as attributes; below it, nothing.
func TestSlogLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "etcd")
	z := etcd.SlogLogger(log, slog.LevelWarn).Named("raft").With(zap.String("member", "m1"))
	z.Info("dropped: below warn")
	z.Debug("dropped too")
	z.Warn("slow fdatasync", zap.Duration("took", 1500*time.Millisecond), zap.Int("n", 3))
	z.Error("lost leader", zap.Error(errors.New("timeout")))

	lines := jsonLines(t, buf.String())
	require.Len(t, lines, 2, buf.String())
	assert.Equal(t, "WARN", lines[0]["level"])
	assert.Equal(t, "slow fdatasync", lines[0]["msg"])
	assert.Equal(t, "etcd", lines[0]["component"])
	assert.Equal(t, "raft", lines[0]["logger"])
	assert.Equal(t, "m1", lines[0]["member"])
	assert.Equal(t, 3.0, lines[0]["n"])
	assert.NotEmpty(t, lines[0]["took"])
	assert.Equal(t, "ERROR", lines[1]["level"])
	assert.Equal(t, "timeout", lines[1]["error"])
}
