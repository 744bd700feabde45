package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestConfigFlagsOverrideCmdline(t *testing.T) {
	const (
		task  = "3f2b9c1e-8d4a-4b6e-9f1a-2c3d4e5f6a7b"
		token = "0123456789abcdef0123456789abcdef"
	)
	path := filepath.Join(t.TempDir(), "cmdline")
	require.NoError(t, os.WriteFile(path, []byte("vmlinuz lpmos.region=http://10.0.0.1:8081 lpmos.mac=52:54:00:12:34:56 lpmos.task="+task+" lpmos.token="+token+" console=ttyS0\n"), 0o644))

	cfg, err := config(path, "", "", "", "", "", "")
	require.NoError(t, err)
	assert.Equal(t, "http://10.0.0.1:8081", cfg.RegionURL)

	cfg, err = config(path, "https://region.example", "52:54:00:00:00:01", "", "", "", "")
	require.NoError(t, err)
	assert.Equal(t, "https://region.example", cfg.RegionURL)
	assert.Equal(t, "52:54:00:00:00:01", cfg.MAC.String())
	assert.Equal(t, task, cfg.TaskID)

	cfg, err = config("/nonexistent", "http://r:8081", "52:54:00:00:00:01", task, token, "", "")
	require.NoError(t, err, "all four flags: no command line needed")
	assert.Equal(t, token, cfg.Token)

	_, err = config("/nonexistent", "http://r:8081", "", task, token, "", "")
	assert.ErrorContains(t, err, "/nonexistent")
	_, err = config(path, "", "zz", "", "", "", "")
	assert.ErrorContains(t, err, "--mac")
}

// The agent runs from RAM on every machine: it propagates the task's
// trace context as a header string and links no OpenTelemetry.
func TestAgentLinksNoOpenTelemetry(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	require.NoError(t, err)
	deps := strings.Fields(string(out))
	require.Contains(t, deps, "github.com/lpmos/lpmos/agent", "go list listed the agent's dependencies")
	for _, d := range deps {
		assert.False(t, strings.HasPrefix(d, "go.opentelemetry.io/"), "the agent links %s", d)
	}
}
