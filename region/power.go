package region

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/power"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// The region drives its machines' BMCs (it sits in their data center):
//
//   - a task becomes ready: next boot PXE (once), then power on, or a
//     power cycle if the machine is on; if that fails after the retries,
//     the task fails with code power_failed;
//   - a task is rejected or cancelled: power off;
//   - a task completed: next boot disk (the agent reboots the machine);
//   - an operator's power request (POST /api/v1/machines/{mac}/power).
//
// Machines without a BMC in their record are left alone. Every action
// and its outcome goes into the machine's record and, for a task, into
// its timeline. Only the leader acts; its writes are fenced.
//
// Jobs are kept per machine, the latest replacing one not yet started
// (a ready followed at once by a cancel is a power-off), and run by a few
// workers, one job per machine at a time.

// powerWorkers run BMC jobs side by side: BMCs answer in seconds, and a
// batch of tasks should not wait on each other's.
const powerWorkers = 8

// powerJobTimeout bounds one job, retries included.
const powerJobTimeout = 3 * time.Minute

// DefaultPowerRetry is the retry of one BMC job: 4 attempts, 2 s doubling
// to 15 s.
var DefaultPowerRetry = power.RetryPolicy{Attempts: 4, Initial: 2 * time.Second, Max: 15 * time.Second}

// onOrCycle powers a machine on, or cycles it if it is on: a task's boot
// must start from the firmware.
const onOrCycle power.Action = "on-or-cycle"

type powerJob struct {
	mac    lpmos.MAC
	action power.Action     // "" for none
	boot   power.BootDevice // "" for none
	// taskID: a job for a task (timeline entry); failTask fails it with
	// power_failed when the job fails.
	taskID   string
	failTask bool
	// An operator's request: it, its ID, its keys' revision and who asked.
	req    *machine.PowerRequest
	reqID  string
	reqRev int64
	actor  string
}

func (j powerJob) describe() string {
	var parts []string
	if j.boot != "" {
		parts = append(parts, "next boot "+string(j.boot))
	}
	switch j.action {
	case "":
		if j.boot == "" {
			parts = append(parts, "read power state")
		}
	case onOrCycle:
		parts = append(parts, "power on (cycle if on)")
	default:
		parts = append(parts, "power "+string(j.action))
	}
	return strings.Join(parts, ", ")
}

// powerQueue holds the jobs waiting, one per machine.
type powerQueue struct {
	mu     sync.Mutex
	queued map[lpmos.MAC]powerJob
	order  []lpmos.MAC
	busy   map[lpmos.MAC]bool
	wake   chan struct{}
	// done remembers the operator requests carried out, so that a view
	// re-listing before it saw the request removed does not repeat one.
	done map[string]bool
}

func newPowerQueue() *powerQueue {
	return &powerQueue{queued: map[lpmos.MAC]powerJob{}, busy: map[lpmos.MAC]bool{}, wake: make(chan struct{}, 1), done: map[string]bool{}}
}

func (q *powerQueue) put(j powerJob) {
	q.mu.Lock()
	if j.reqID != "" && q.done[j.reqID] {
		q.mu.Unlock()
		return
	}
	if _, ok := q.queued[j.mac]; !ok {
		q.order = append(q.order, j.mac)
	}
	q.queued[j.mac] = j
	q.mu.Unlock()
	q.signal()
}

func (q *powerQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns the next job whose machine has none running.
func (q *powerQueue) take() (powerJob, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, mac := range q.order {
		if q.busy[mac] {
			continue
		}
		j := q.queued[mac]
		delete(q.queued, mac)
		q.order = slices.Delete(q.order, i, i+1)
		q.busy[mac] = true
		return j, true
	}
	return powerJob{}, false
}

func (q *powerQueue) finish(j powerJob) {
	q.mu.Lock()
	delete(q.busy, j.mac)
	if j.reqID != "" {
		if len(q.done) >= maxLimiterKeys {
			q.done = map[string]bool{}
		}
		q.done[j.reqID] = true
	}
	more := len(q.order) > 0
	q.mu.Unlock()
	if more {
		q.signal()
	}
}

// powerLoop runs jobs until ctx ends.
func (r *Region) powerLoop(ctx context.Context) {
	for {
		j, ok := r.powerJobs.take()
		if !ok {
			select {
			case <-r.powerJobs.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		// Another worker may find more work now.
		r.powerJobs.signal()
		r.runPowerJob(ctx, j)
		r.powerJobs.finish(j)
	}
}

// powerTask queues a task's power job.
func (r *Region) powerTask(t *task.Task, action power.Action, boot power.BootDevice, failTask bool) {
	r.powerJobs.put(powerJob{mac: t.Metadata.TargetMAC, action: action, boot: boot, taskID: t.ID, failTask: failTask, actor: r.actor})
}

// powerEnded queues what a task's end asks of its machine's BMC.
func (r *Region) powerEnded(t *task.Task) {
	switch t.Status {
	case task.StatusRejected, task.StatusCancelled:
		r.powerTask(t, power.ActionOff, "", false)
	case task.StatusCompleted:
		r.powerTask(t, "", power.BootDisk, false)
	}
}

// powerRequested is the hook of the region's power request queue: a
// request is queued if this process leads (a new leader lists the queue,
// powerOnLeading).
func (r *Region) powerRequested(_ context.Context, mac lpmos.MAC, req *machine.PowerRequest, rev int64) {
	if !r.lead.leading() {
		return
	}
	action := power.Action(req.Action)
	if req.Action == machine.PowerStatus {
		action = "" // read the state only
	}
	r.powerJobs.put(powerJob{mac: mac, action: action, req: req, reqID: req.ID, reqRev: rev, actor: req.RequestedBy})
}

// powerOnLeading queues, when this process starts leading, the power-ons
// of ready tasks not yet powered and the pending operator requests.
func (r *Region) powerOnLeading(ctx context.Context) {
	for _, t := range r.tasks.Tasks() {
		if t.Status == task.StatusReady && !slices.ContainsFunc(t.Timeline, func(e task.TimelineEntry) bool { return e.Event == task.TimelinePower }) {
			r.powerTask(t, onOrCycle, power.BootPXE, true)
		}
	}
	pending, err := machine.PendingPowerRequests(ctx, r.cfg.Store, r.cfg.RegionID)
	if err != nil {
		r.log.Warn("list pending power requests", "err", err)
		return
	}
	for mac, kv := range pending {
		var req machine.PowerRequest
		if json.Unmarshal(kv.Value, &req) == nil {
			r.powerRequested(ctx, mac, &req, kv.ModRevision)
		}
	}
}

func bmcOf(c machine.Credentials) power.BMC {
	return power.BMC{Driver: power.DriverKind(c.Driver), Address: c.Address, Username: c.Username, Password: c.Password,
		CAPEM: []byte(c.CACert), CertSHA256: c.CertSHA256}
}

// runPowerJob carries out one job against the machine's BMC and records
// the outcome.
func (r *Region) runPowerJob(ctx context.Context, j powerJob) {
	if !r.lead.leading() {
		return // the new leader finds the work again (powerOnLeading)
	}
	ctx, cancel := context.WithTimeout(ctx, powerJobTimeout)
	defer cancel()
	attrs := []any{"mac", j.mac.String(), "task_id", j.taskID, "job", j.describe()}
	if j.req != nil && j.req.Expired(r.cfg.Now()) {
		// Its keys lapse with their lease; the queue may still hold it
		// (a region that leads again lists an older queue).
		r.log.Warn("power request expired before this region carried it out", append(attrs, "requested_by", j.req.RequestedBy, "requested_at", j.req.RequestedAt)...)
		r.trace.Record(j.mac, trace.Event{Kind: trace.KindPower, Outcome: trace.OutcomeIgnored,
			Message: truncateText(fmt.Sprintf("power request %s by %s not carried out", j.req.Action, j.req.RequestedBy)),
			Reason:  fmt.Sprintf("it expired at %s, before this region could carry it out", j.req.ExpiresAt.Format(time.RFC3339)),
			Detail:  map[string]string{"action": j.req.Action, "request_id": j.req.ID}})
		return
	}
	creds, err := r.machines.Credentials(ctx, j.mac)
	if errors.Is(err, machine.ErrNoBMC) && j.reqID == "" {
		return // a machine nobody gave a BMC: powered by hand, as before
	}
	var state power.State
	attempts := 0
	if err == nil {
		err = power.Do(ctx, r.cfg.PowerRetry, func(ctx context.Context) error {
			attempts++
			var err error
			state, err = r.drive(ctx, bmcOf(creds), j)
			return err
		})
	}
	outcome := j.action
	switch {
	case outcome == onOrCycle:
		outcome = power.ActionOn
	case outcome == "" && j.req != nil:
		outcome = machine.PowerStatus
	}
	rec := machine.Power{State: string(state), Action: string(outcome), Actor: j.actor, OK: err == nil, Attempts: attempts, RequestID: j.reqID}
	if rec.State == "" {
		rec.State = machine.StateUnknown
	}
	var msg string
	if err != nil {
		rec.Error = err.Error()
		msg = fmt.Sprintf("BMC %s: %s failed after %d attempt(s): %v", creds, j.describe(), attempts, err)
		r.log.Warn("power action failed", append(attrs, "bmc", creds, "attempts", attempts, "err", err)...)
	} else {
		msg = fmt.Sprintf("BMC %s: %s: done (power %s)", creds, j.describe(), state)
		r.log.Info("power action done", append(attrs, "bmc", creds, "state", state)...)
	}
	ev := trace.Event{Kind: trace.KindPower, Outcome: trace.OutcomeOK, Message: truncateText(msg),
		Detail: map[string]string{"action": string(outcome), "state": rec.State, "attempts": strconv.Itoa(attempts)}}
	if j.taskID != "" {
		ev.Detail["task_id"] = j.taskID
	}
	if j.actor != "" {
		ev.Detail["actor"] = j.actor
	}
	if err != nil {
		ev.Outcome, ev.Reason = trace.OutcomeError, err.Error()
	}
	r.trace.Record(j.mac, ev)
	if j.action != "" || j.reqID != "" {
		if werr := r.machines.SetPower(ctx, j.mac, rec, j.req, j.reqRev); werr != nil {
			r.log.Warn("record power outcome", append(attrs, "err", werr)...)
		}
	}
	if j.taskID == "" {
		return
	}
	if _, werr := r.svc.RecordPower(ctx, j.taskID, r.actor, truncateText(msg)); werr != nil {
		r.log.Warn("record power entry", append(attrs, "err", werr)...)
	}
	if err != nil && j.failTask {
		r.retry(ctx, "fail task its BMC did not boot", attrs, func() error {
			failed, err := r.svc.Fail(ctx, j.taskID, r.actor, task.ErrorInfo{Code: task.PowerCodeFailed, Stage: string(task.StatusReady), Message: truncateText(msg)})
			r.observe(failed)
			return err
		})
	}
}

// drive makes one attempt at a job: open the BMC, set the next boot
// device, act, and read the state back.
func (r *Region) drive(ctx context.Context, b power.BMC, j powerJob) (power.State, error) {
	d, err := r.cfg.OpenBMC(ctx, b, power.WithLogger(r.log))
	if err != nil {
		return "", err
	}
	defer d.Close()
	if j.boot != "" {
		if err := d.SetNextBoot(ctx, j.boot); err != nil {
			return "", err
		}
	}
	action := j.action
	if action == onOrCycle {
		st, err := d.PowerState(ctx)
		if err != nil {
			return "", err
		}
		action = power.ActionOn
		if st == power.StateOn {
			action = power.ActionCycle
		}
	}
	if action != "" {
		if err := d.SetPower(ctx, action); err != nil {
			return "", err
		}
	}
	return d.PowerState(ctx)
}

func truncateText(s string) string {
	if len(s) > task.MaxTextLen {
		return s[:task.MaxTextLen-3] + "..."
	}
	return s
}
