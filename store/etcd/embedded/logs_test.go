package embedded_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/syncbuf"
	"github.com/lpmos/lpmos/store/etcd/embedded"
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

// An embedded member with a Logger logs through it: with Verbose its
// start-up at info level shows in our JSON log, as etcd's own messages;
// without, only its warnings and errors do.
func TestEmbeddedLogsToSlog(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd members")
	}
	for _, verbose := range []bool{true, false} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var buf syncbuf.Buffer
		cfg := secureConfig(t, "https")
		cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		cfg.Verbose = verbose
		m, err := embedded.Start(ctx, cfg)
		require.NoError(t, err)
		m.Close()
		cancel()
		lines := jsonLines(t, buf.String())
		if !verbose {
			for _, l := range lines {
				assert.Contains(t, []any{"WARN", "ERROR"}, l["level"], "%v", l)
			}
			continue
		}
		var sawEtcd bool
		for _, l := range lines {
			if l["level"] == "INFO" && l["msg"] != nil && (l["member-id"] != nil || l["name"] != nil || l["logger"] != nil) {
				sawEtcd = true
			}
		}
		assert.True(t, sawEtcd, "no etcd message with its fields in:\n%s", buf.String())
	}
}
