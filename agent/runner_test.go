package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/hardware"
)

type installFunc func(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error

func (f installFunc) Install(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error {
	return f(ctx, plan, progress)
}

var fixture = agent.CollectorFunc(func(context.Context) (hardware.Info, error) {
	return hardware.Info{CPU: hardware.CPU{Cores: 1}}, nil
})

func runWith(t *testing.T, f *fakeRegion, inst installFunc) error {
	ts := httptest.NewServer(f)
	t.Cleanup(ts.Close)
	c, err := agent.NewClient(testConfig(ts.URL))
	require.NoError(t, err)
	r, err := agent.NewRunner(agent.RunnerConfig{Client: c, Collector: fixture, Installers: map[string]agent.Installer{"image": inst},
		ProgressInterval: time.Hour, Logger: quiet})
	require.NoError(t, err)
	return r.Run(context.Background())
}

type sent struct {
	Stage string
	Pct   int
}

func sentOf(f *fakeRegion) []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sent
	for _, p := range f.progress {
		out = append(out, sent{p.Stage, p.Percentage})
	}
	return out
}

// A burst within a stage is throttled; stage changes go out at once after
// the held-back last value of the previous stage; "completed" goes last.
func TestRunnerThrottlesProgress(t *testing.T) {
	f := &fakeRegion{plan: agent.Plan{Method: "image"}}
	err := runWith(t, f, func(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error {
		progress("partitioning", 0, "", nil)
		progress("partitioning", 100, "", nil)
		for i := 1; i <= 50; i++ {
			progress("writing", i*2, "", nil)
		}
		progress("configuring", 10, "", nil)
		progress("configuring", 90, "", nil)
		progress("completed", 100, "done", map[string]any{"written_sha256": "ab"})
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, []sent{{"partitioning", 0}, {"partitioning", 100}, {"writing", 2}, {"writing", 100},
		{"configuring", 10}, {"configuring", 90}, {"completed", 100}}, sentOf(f))
	assert.Equal(t, "ab", f.progress[len(f.progress)-1].Details["written_sha256"])
}

func TestRunnerReportsFailures(t *testing.T) {
	tests := []struct {
		name      string
		method    string
		err       error
		wantStage string
		wantCode  string
	}{
		{"install error with stage and code", "image", &agent.InstallError{Stage: "writing", Code: "checksum_mismatch", Err: errors.New("differs")}, "writing", "checksum_mismatch"},
		{"plain error takes the last stage", "image", fmt.Errorf("boom"), "writing", "install_failed"},
		{"unknown method", "pxe-magic", nil, "installing", "unsupported_method"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeRegion{plan: agent.Plan{Method: tt.method}}
			err := runWith(t, f, func(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error {
				progress("writing", 10, "", nil)
				progress("completed", 100, "", nil) // not delivered: the install failed
				return tt.err
			})
			require.Error(t, err)
			require.Len(t, f.status, 1)
			assert.Equal(t, "failed", f.status[0].Status)
			assert.Equal(t, tt.wantStage, f.status[0].Stage)
			assert.Equal(t, tt.wantCode, f.status[0].Code)
			for _, p := range sentOf(f) {
				assert.NotEqual(t, "completed", p.Stage)
			}
		})
	}
}

// A region that refuses progress because the task moved on (cancelled)
// stops the install, and nothing more is reported.
func TestRunnerStopsWhenTheTaskMovesOn(t *testing.T) {
	f := &fakeRegion{plan: agent.Plan{Method: "image"}, refuse: 409}
	err := runWith(t, f, func(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error {
		progress("writing", 1, "", nil)
		<-ctx.Done() // an installer notices cancellation
		return ctx.Err()
	})
	require.ErrorIs(t, err, agent.ErrConflict)
	assert.Empty(t, f.status)
}
