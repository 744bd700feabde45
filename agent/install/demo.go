// Package install holds the agent's installers, the implementations of
// agent.Installer the runner picks by Plan.Method: Image writes a disk
// image onto the target disk with progress and checksums; Demo simulates
// an install with realistic stages and timings and writes nothing (for
// simulated machines and demos).
//
// Installers report progress through the runner's agent.ProgressFunc and
// fail with *agent.InstallError (stage + code); they never talk to the
// region themselves, except to download what the plan points at.
package install

import (
	"context"
	"fmt"
	"time"

	"github.com/lpmos/lpmos/agent"
)

// Demo simulates an install: partitioning → downloading → writing →
// installing → configuring → completed, about 20 s at Speed 1. It writes
// nothing.
type Demo struct {
	// Speed scales the timings: 1 (or 0) is real time, 100 is 100 times
	// faster.
	Speed float64
}

var _ agent.Installer = Demo{}

// demoSteps: stage, seconds at speed 1, progress reports in it.
var demoSteps = []struct {
	stage string
	secs  float64
	steps int
}{
	{agent.StagePartitioning, 1.5, 2},
	{agent.StageDownloading, 2, 4},
	{agent.StageWriting, 10, 20},
	{agent.StageInstalling, 4, 4},
	{agent.StageConfiguring, 2, 2},
}

// Install implements agent.Installer.
func (d Demo) Install(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error {
	speed := d.Speed
	if speed <= 0 {
		speed = 1
	}
	const imageBytes = 2 << 30 // pretend 2 GiB
	for _, s := range demoSteps {
		step := time.Duration(s.secs / float64(s.steps) / speed * float64(time.Second))
		for i := 0; i <= s.steps; i++ {
			pct := i * 100 / s.steps
			var details map[string]any
			if s.stage == agent.StageWriting {
				done := int64(imageBytes) * int64(pct) / 100
				details = map[string]any{"bytes_downloaded": done, "bytes_total": int64(imageBytes),
					"speed_mbps": float64(imageBytes) * 8 / 1e6 / (s.secs / speed), "simulated": true}
			}
			progress(s.stage, pct, fmt.Sprintf("%s %s %s (simulated)", s.stage, plan.OSType, plan.OSVersion), details)
			if i == s.steps {
				break
			}
			t := time.NewTimer(step)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}
	progress(agent.StageCompleted, 100, "simulated install completed", map[string]any{"simulated": true})
	return nil
}
