package region

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/power"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/task"
)

// The region's tasks are a task.View of its active tasks, kept by watches
// of its own tasks only (its assignment keys, and each active task's
// keys): boot requests and DHCP answers are served from memory, not by
// reading the store per packet, and other regions' traffic never arrives. What the region adds is below: it prepares
// new tasks, remembers ended ones, and folds its own writes in at once.

// endedTasks remembers each machine's last ended task for a while, so that
// its next boot is answered by the outcome: local disk after completion,
// power off after rejection.
type endedTasks struct {
	mu sync.RWMutex
	m  map[lpmos.MAC]endedTask
}

type endedTask struct {
	ID     string
	Status task.Status
	// Rev is the store revision the task ended at: tasks come through
	// watches of their own, so a machine's older task may be told ended
	// after its newer one.
	Rev int64
	At  time.Time
}

// endedMemory is how long an ended task still decides its machine's boot
// script.
const endedMemory = 6 * time.Hour

// maxEnded bounds the memory: past it, everything is forgotten at once.
const maxEnded = 100_000

func newEndedTasks() *endedTasks { return &endedTasks{m: map[lpmos.MAC]endedTask{}} }

// record remembers that t ended at now (the first time it is told), unless
// the machine has a later ended task, and reports whether it did.
func (e *endedTasks) record(t *task.Task, now time.Time) bool {
	mac := t.Metadata.TargetMAC
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur, ok := e.m[mac]; ok && (cur.ID == t.ID || cur.Rev > t.Revision) {
		return false
	}
	if len(e.m) >= maxEnded {
		e.m = map[lpmos.MAC]endedTask{}
	}
	e.m[mac] = endedTask{ID: t.ID, Status: t.Status, Rev: t.Revision, At: now}
	return true
}

// ended returns the machine's recently ended task, if any.
func (r *Region) ended(mac lpmos.MAC) (endedTask, bool) {
	r.endedTasks.mu.RLock()
	defer r.endedTasks.mu.RUnlock()
	e, ok := r.endedTasks.m[mac]
	if !ok || r.cfg.Now().Sub(e.At) > endedMemory {
		return endedTask{}, false
	}
	return e, true
}

// tasksListed is the view's fill hook: tasks still pending (created while
// no region ran, or whose preparation a restart cut short) are prepared.
func (r *Region) tasksListed(ctx context.Context, tasks []*task.Task) {
	for _, t := range tasks {
		if t.Status == task.StatusPending {
			r.queuePrepare(ctx, t)
		}
	}
}

// taskChanged is the view's change hook: a new task is prepared, an ended
// one remembered.
func (r *Region) taskChanged(ctx context.Context, ch task.Change, t *task.Task) {
	if at := ch.At(); !at.IsZero() {
		r.metrics.watchLag.Set(r.cfg.Now().Sub(at).Seconds())
	}
	switch {
	case t == nil:
	case t.Status.Terminal():
		r.agentScripts.forget(t.Metadata.TargetMAC)
		if r.endedTasks.record(t, r.cfg.Now()) {
			r.powerEnded(t)
		}
	case ch.Created && t.Status == task.StatusPending:
		r.queuePrepare(ctx, t)
	}
}

// Preparing a task is a store round trip. Done in the watch's hook, one
// after the other, it held up the watch (and with it every later task and
// every status the region learns) by one round trip per new task: with a
// thousand tasks created at once, the last waited seconds before its
// machine could boot. The hook queues instead, and preparers work the
// queue side by side.
const (
	preparers    = 8
	prepareQueue = 1 << 14 // past it the watch waits: back-pressure, not loss
)

// queuePrepare hands t to the preparers; it waits only if the queue is
// full.
// A task already queued or being prepared is not queued again.
func (r *Region) queuePrepare(ctx context.Context, t *task.Task) {
	r.prepMu.Lock()
	_, queued := r.preparing[t.ID]
	if !queued {
		r.preparing[t.ID] = struct{}{}
	}
	r.prepMu.Unlock()
	if queued {
		return
	}
	select {
	case r.toPrepare <- t:
	case <-ctx.Done():
		r.prepared(t.ID)
	}
}

// prepared forgets that task id is queued.
func (r *Region) prepared(id string) {
	r.prepMu.Lock()
	delete(r.preparing, id)
	r.prepMu.Unlock()
}

// prepareLoop prepares queued tasks until ctx ends.
func (r *Region) prepareLoop(ctx context.Context) {
	for {
		select {
		case t := <-r.toPrepare:
			r.prepare(ctx, t)
			r.prepared(t.ID)
		case <-ctx.Done():
			return
		}
	}
}

// stalePending is how long a task may stay pending, not queued, before
// the leader queues it again: its preparation gave up (the store was out
// of reach longer than the retries last, e.g. during an etcd leader
// election on a loaded machine) or was dropped while this process briefly
// did not count itself leader. Without this sweep such a task would wait
// for the pending timeout (1 h) to fail it.
const stalePending = 10 * time.Second

// requeueStalePending queues the pending tasks idle for stalePending or
// more that are not queued already.
func (r *Region) requeueStalePending(ctx context.Context, now time.Time) {
	for _, t := range r.tasks.Tasks() {
		if t.Status == task.StatusPending && now.Sub(t.LastActivity()) >= r.staleAfter {
			r.queuePrepare(ctx, t)
		}
	}
}

// observe folds the result of this region's own move into its view at
// once, so the agent's next request sees it (read your writes) without
// waiting for the watch.
func (r *Region) observe(t *task.Task) {
	if t == nil {
		return
	}
	r.tasks.Observe(t)
	if t.Status.Terminal() && r.endedTasks.record(t, r.cfg.Now()) {
		r.powerEnded(t)
	}
}

// prepare readies a new task for its machine: the agent boot files must be
// there (the script is rendered per request), then the task is ready.
func (r *Region) prepare(ctx context.Context, t *task.Task) {
	if !r.lead.leading() {
		return // the leader prepares it (a new leader looks for pending tasks)
	}
	ctx, span := task.StartTaskSpan(ctx, r.tracer, t, "region prepare")
	defer span.End()
	if err := r.checkBootFiles(t); err != nil {
		r.log.Error("cannot prepare task", append(machineAttrs(t), "err", err)...)
		r.retry(ctx, "fail unpreparable task", machineAttrs(t), func() error {
			_, err := r.svc.Fail(ctx, t.ID, r.actor, task.ErrorInfo{Code: "boot_files_missing", Stage: string(task.StatusPending), Message: err.Error()})
			return err
		})
		return
	}
	err := r.retry(ctx, "mark task ready", machineAttrs(t), func() error {
		ready, err := r.svc.MarkReady(ctx, t.ID, r.actor)
		r.observe(ready) // the machine may boot now, before the watch tells
		return err
	})
	if err == nil {
		// Zero touch: a machine with a BMC is switched on to PXE-boot.
		r.powerTask(t, onOrCycle, power.BootPXE, true)
	}
}

// storeAttempts is how many times retry tries a store operation: with its
// backoff, about 13 s.
const storeAttempts = 8

// retry runs a store operation with exponential backoff while it fails
// for reasons other than the task's state or the input (those are final).
// attrs say which machine it is about, for the log.
func (r *Region) retry(ctx context.Context, what string, attrs []any, op func() error) error {
	attrs = slices.Clip(attrs) // appended to per line: never into a shared array
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || errors.Is(err, task.ErrInvalid) || errors.Is(err, task.ErrNotFound) ||
			errors.Is(err, task.ErrConflict) || errors.Is(err, task.ErrInvalidTransition) || errors.Is(err, task.ErrFenced) {
			// Fenced: this process no longer leads; the new leader acts.
			if err != nil && !errors.Is(err, task.ErrInvalidTransition) && !errors.Is(err, task.ErrConflict) {
				r.log.Warn(what, append(attrs, "err", err)...)
			}
			return err
		}
		if attempt >= r.storeAttempts || ctx.Err() != nil {
			r.log.Error(what+": giving up", append(attrs, "attempts", attempt, "err", err)...)
			return err
		}
		r.log.Warn(what+": retrying", append(attrs, "err", err, "retry_in", backoff)...)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return ctx.Err()
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// enforceTimeouts fails tasks stuck in a status longer than its timeout.
func (r *Region) enforceTimeouts(ctx context.Context) error {
	tick := time.NewTicker(r.cfg.TimeoutCheckInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if !r.lead.leading() || r.JournalDepth() > 0 {
			// A journal not yet applied holds activity the store has
			// not seen: timeouts wait for it (see offline.go).
			continue
		}
		now := r.cfg.Now()
		r.requeueStalePending(ctx, now)
		back := r.storeBackAt()
		for _, t := range r.tasks.Tasks() {
			limit, ok := r.cfg.Timeouts[t.Status]
			// Idle time is counted from the later of the task's last
			// activity and the moment the region last had the store
			// back after a cut-off: the time the region itself could not
			// reach the store never counts against a task.
			if !ok || limit <= 0 || now.Sub(latest(t.LastActivity(), back)) < limit {
				continue
			}
			id, status := t.ID, t.Status
			r.log.Warn("task timed out", append(machineAttrs(t), "status", status, "after", limit)...)
			r.retry(ctx, "fail timed-out task", machineAttrs(t), func() error {
				_, err := r.svc.Fail(ctx, id, r.actor, task.ErrorInfo{
					Code: "timeout", Stage: string(status),
					Message: "no progress in status " + string(status) + " for " + limit.String(),
				}, task.ExpectRevision(t.Revision))
				return err
			})
		}
	}
}

// recordMachine writes a hardware report into the machine's inventory
// record. The task already holds the report; the record is the machine's
// memory across tasks, so a failure here is logged, never the agent's.
func (r *Region) recordMachine(ctx context.Context, mac lpmos.MAC, rep machine.Report) {
	rep.Region = r.cfg.RegionID
	if err := r.machines.Observe(ctx, mac, rep); err != nil {
		r.log.Warn("record machine inventory", "mac", mac.String(), "err", err)
	}
}

// expectedHardware is what the task's machine record says the machine
// should have, read only when a rule asks for it; nil when the record
// says nothing (or cannot be read: such a rule then does not match, and a
// person decides).
func (r *Region) expectedHardware(ctx context.Context, t *task.Task, rules []rule.Rule) *hardware.Expected {
	if !slices.ContainsFunc(rules, func(ru rule.Rule) bool { return ru.MatchExpected }) {
		return nil
	}
	m, err := r.machines.Get(ctx, t.Metadata.TargetMAC)
	switch {
	case errors.Is(err, machine.ErrNotFound):
		return nil
	case err != nil:
		r.log.Warn("read machine record for its expected hardware", append(machineAttrs(t), "err", err)...)
		return nil
	}
	return m.Expected
}

// applyRules runs the auto-approval rules on a task that just reported its
// hardware: the first matching rule approves it as "rule:<name>"; if
// rules applied and none matched, their reasons go into the timeline.
// It reports whether the task was approved.
func (r *Region) applyRules(ctx context.Context, t *task.Task, hw *hardware.Info) bool {
	if t == nil || t.Status != task.StatusPendingApproval {
		return false
	}
	rules := r.rules.Rules()
	d := rule.Evaluate(rules, t.Metadata.RegionID, t.Metadata.Tags, hw, r.expectedHardware(ctx, t, rules))
	switch {
	case d.Approver != "":
		approved, err := r.svc.Approve(ctx, t.ID, d.Approver, "approved automatically: the hardware meets "+d.Approver, task.ExpectRevision(t.Revision))
		if err != nil {
			r.log.Warn("approve by rule", append(machineAttrs(t), "rule", d.Approver, "err", err)...)
			return false
		}
		r.observe(approved)
		return true
	case d.Applied > 0:
		msg := truncateText("no approval rule matched: " + strings.Join(d.Reasons, " | "))
		if _, err := r.svc.RecordRules(ctx, t.ID, r.actor, msg); err != nil {
			r.log.Warn("record approval rules", append(machineAttrs(t), "err", err)...)
		}
	}
	return false
}

// latest is the later of two times.
func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
