package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/lpmos/lpmos/hardware"
)

// Install stages, as the region and the dashboard know them.
const (
	StagePartitioning = "partitioning"
	StageDownloading  = "downloading"
	StageWriting      = "writing"
	StageInstalling   = "installing"
	StageConfiguring  = "configuring"
	StageCompleted    = "completed"
)

// Collector gathers the machine's hardware. The hardware package's
// collectors satisfy it; tests pass a CollectorFunc.
type Collector interface {
	Collect(ctx context.Context) (hardware.Info, error)
}

// CollectorFunc adapts a function to Collector.
type CollectorFunc func(ctx context.Context) (hardware.Info, error)

// Collect calls f.
func (f CollectorFunc) Collect(ctx context.Context) (hardware.Info, error) { return f(ctx) }

// ProgressFunc is how an installer reports progress. It does not block for
// long and never fails: delivery is the runner's business.
type ProgressFunc func(stage string, pct int, msg string, details map[string]any)

// Installer carries out an approved plan. Implementations live in
// agent/install; the runner picks one by Plan.Method. An installer reports
// StageCompleted last (with its final details); the runner delivers that
// report only after Install returned nil, so a late failure can never
// complete the task.
type Installer interface {
	Install(ctx context.Context, plan Plan, progress ProgressFunc) error
}

// InstallError is an install failure with the stage it happened in and a
// machine-readable code (e.g. "checksum_mismatch") for the region.
type InstallError struct {
	Stage, Code string
	Err         error
}

func (e *InstallError) Error() string { return fmt.Sprintf("%s: %s: %v", e.Stage, e.Code, e.Err) }
func (e *InstallError) Unwrap() error { return e.Err }

// RunnerConfig assembles a runner. Client, Collector and at least one
// installer are required.
type RunnerConfig struct {
	Client    *Client
	Collector Collector
	// Installers by Plan.Method ("image", "demo", ...).
	Installers map[string]Installer
	// ProgressInterval: at most one progress report per stage this often
	// (default 1 s); a stage change is sent at once and the last value of
	// each stage is always sent.
	ProgressInterval time.Duration
	Logger           *slog.Logger
}

// Runner is the agent's life on one machine: collect → report → wait for
// approval → install with progress → completed (or failed).
type Runner struct {
	cfg RunnerConfig
	log *slog.Logger
}

// NewRunner checks cfg.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if cfg.Client == nil || cfg.Collector == nil || len(cfg.Installers) == 0 {
		return nil, errors.New("agent: a runner needs a client, a collector and an installer")
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = cfg.Client.cfg.Logger
	}
	return &Runner{cfg: cfg, log: cfg.Logger.With("task_id", cfg.Client.cfg.TaskID)}, nil
}

// Run goes through the task once. It returns nil when the task completed,
// ErrRejected when the operator rejected or cancelled it (the machine
// should power off), ErrInventoried in inventory mode once the report is
// recorded (power off too), ctx's error when ctx ended, or the failure, which it
// has reported to the region as status "failed" when it still could.
func (r *Runner) Run(ctx context.Context) error {
	c := r.cfg.Client
	hw, err := r.cfg.Collector.Collect(ctx)
	if err != nil {
		return r.fail(ctx, "collecting", "collect_failed", fmt.Errorf("collect hardware: %w", err))
	}
	if hw.MACAddress == "" {
		hw.MACAddress = c.cfg.MAC.String()
	}
	if hw.CollectedAt.IsZero() {
		hw.CollectedAt = time.Now().UTC()
	}
	if c.cfg.Mode == ModeInventory {
		if _, err := c.Inventory(ctx, hw); err != nil {
			return fmt.Errorf("report inventory: %w", err)
		}
		r.log.Info("hardware inventoried: power off")
		return ErrInventoried
	}
	rep, err := c.Report(ctx, hw)
	if err != nil {
		return fmt.Errorf("report hardware: %w", err)
	}
	r.log.Info("hardware reported", "next_action", rep.NextAction)

	appr, err := c.WaitApproval(ctx)
	if err != nil {
		if errors.Is(err, ErrRejected) {
			r.log.Info("task not approved: power off", "status", appr.Status, "reason", appr.Reason)
		}
		return err
	}
	plan := *appr.Plan
	inst, ok := r.cfg.Installers[plan.Method]
	if !ok {
		return r.fail(ctx, StageInstalling, "unsupported_method", fmt.Errorf("no installer for method %q", plan.Method))
	}
	r.log.Info("approved: installing", "method", plan.Method, "os", plan.OSType+" "+plan.OSVersion, "disk", plan.Disk)

	ictx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pr := &progressReporter{client: c, interval: r.cfg.ProgressInterval, ctx: ictx, abort: cancel, log: r.log}
	err = inst.Install(ictx, plan, pr.report)
	if cause := context.Cause(ictx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause // the task moved on under us: that is the story
	}
	if err == nil {
		err = pr.finish(ictx)
	}
	if err != nil {
		stage, code := pr.lastStage(), "install_failed"
		var ie *InstallError
		if errors.As(err, &ie) {
			stage, code = ie.Stage, ie.Code
		}
		return r.fail(ctx, stage, code, err)
	}
	r.log.Info("install completed")
	return nil
}

// fail reports a failure unless the task already moved on or the agent is
// being stopped, then returns err.
func (r *Runner) fail(ctx context.Context, stage, code string, err error) error {
	if errors.Is(err, ErrConflict) || errors.Is(err, ErrUnauthorized) || ctx.Err() != nil {
		return err
	}
	r.log.Error("install failed", "stage", stage, "code", code, "err", err)
	if rerr := r.cfg.Client.Fail(ctx, stage, code, err.Error()); rerr != nil {
		return errors.Join(err, fmt.Errorf("reporting the failure: %w", rerr))
	}
	return err
}

// progressReporter forwards an installer's progress: a stage change at
// once (after the held-back last value of the previous stage), otherwise
// at most once per interval; the held-back value of the last stage goes
// out at the end. Delivery runs in the installer's goroutine, so a region
// that is down slows the install instead of piling reports up; an answer
// saying the task moved on aborts the install.
type progressReporter struct {
	client   *Client
	interval time.Duration
	ctx      context.Context
	abort    context.CancelCauseFunc
	log      *slog.Logger

	mu        sync.Mutex
	stage     string
	lastSent  time.Time
	pending   *ProgressRequest
	completed *ProgressRequest
}

func (p *progressReporter) report(stage string, pct int, msg string, details map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	req := ProgressRequest{Stage: stage, Percentage: min(max(pct, 0), 100), Message: msg, Details: details}
	if stage == StageCompleted {
		req.Percentage = 100
		p.completed = &req
		return
	}
	now := time.Now()
	if stage != p.stage {
		if p.pending != nil {
			p.send(*p.pending)
		}
		p.stage, p.pending = stage, nil
		p.send(req)
		p.lastSent = now
		return
	}
	if now.Sub(p.lastSent) < p.interval {
		p.pending = &req
		return
	}
	p.pending = nil
	p.send(req)
	p.lastSent = now
}

// send delivers one report; failures other than "moved on" are logged:
// progress is informative and the next report supersedes it.
func (p *progressReporter) send(req ProgressRequest) {
	if p.ctx.Err() != nil {
		return
	}
	err := p.client.Progress(p.ctx, req.Stage, req.Percentage, req.Message, req.Details)
	switch {
	case err == nil:
	case errors.Is(err, ErrConflict) || errors.Is(err, ErrUnauthorized):
		p.abort(fmt.Errorf("progress refused, the task moved on: %w", err))
	case p.ctx.Err() == nil:
		p.log.Warn("progress report lost", "stage", req.Stage, "err", err)
	}
}

func (p *progressReporter) lastStage() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stage == "" {
		return StageInstalling
	}
	return p.stage
}

// finish flushes the last held-back report and completes the task.
func (p *progressReporter) finish(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending != nil {
		p.send(*p.pending)
		p.pending = nil
	}
	if err := context.Cause(ctx); err != nil {
		return err
	}
	done := ProgressRequest{Stage: StageCompleted, Percentage: 100, Message: "install completed"}
	if p.completed != nil {
		done = *p.completed
	}
	p.stage = StageCompleted
	if err := p.client.Progress(ctx, done.Stage, 100, done.Message, done.Details); err != nil {
		return &InstallError{Stage: StageCompleted, Code: "report_failed", Err: fmt.Errorf("reporting completion: %w", err)}
	}
	return nil
}
