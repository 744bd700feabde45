package cmdutil_test

import (
	"flag"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/cmdutil"
)

func TestCapacityFlags(t *testing.T) {
	tests := []struct {
		args                 []string
		wantTotal, wantByReg int
	}{
		{nil, controlplane.DefaultMaxActiveTasks, controlplane.DefaultMaxActiveTasksPerRegion},
		{[]string{"--max-active-tasks=500", "--max-active-tasks-per-region=-1"}, 500, -1},
	}
	for _, tt := range tests {
		var f cmdutil.CapacityFlags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.Register(fs)
		require.NoError(t, fs.Parse(tt.args))
		var cfg controlplane.Config
		f.Apply(&cfg)
		assert.Equal(t, [2]int{tt.wantTotal, tt.wantByReg}, [2]int{cfg.MaxActiveTasks, cfg.MaxActiveTasksPerRegion}, "%v", tt.args)
	}
}

func TestRetryFlags(t *testing.T) {
	tests := []struct {
		args        []string
		maxAttempts int
		autoRetry   bool
	}{
		{nil, 3, false},
		{[]string{"--max-attempts=5", "--auto-retry"}, 5, true},
	}
	for _, tt := range tests {
		var f cmdutil.CapacityFlags
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		f.Register(fs)
		require.NoError(t, fs.Parse(tt.args))
		var cfg controlplane.Config
		f.Apply(&cfg)
		assert.Equal(t, tt.maxAttempts, cfg.MaxAttempts, "%v", tt.args)
		assert.Equal(t, tt.autoRetry, cfg.AutoRetry, "%v", tt.args)
	}
}
