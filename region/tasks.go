package region

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// tracked is what the region knows of one of its active tasks.
type tracked struct {
	task *task.Task
	// rev is the newest store revision folded into task: older changes
	// (a watch catching up on a write this region already applied) are
	// ignored.
	rev int64
	// since is when the task entered its status or last made progress:
	// the timeouts count from it.
	since time.Time
	// changed is closed (and replaced) whenever the task changes, waking
	// the agent's approval long-poll.
	changed chan struct{}
}

// taskTable is the region's view of its active tasks, kept by one watch:
// boot requests and DHCP answers are served from memory, not by reading
// the store per packet.
type taskTable struct {
	mu    sync.RWMutex
	byID  map[string]*tracked
	byMAC map[lpmos.MAC]string
	rev   int64
	// lastEnded remembers each machine's last ended task for a while, so
	// that its next boot is answered by the outcome: local disk after
	// completion, power off after rejection.
	lastEnded map[lpmos.MAC]endedTask
}

type endedTask struct {
	ID     string
	Status task.Status
	At     time.Time
}

// endedMemory is how long an ended task still decides its machine's boot
// script.
const endedMemory = 6 * time.Hour

func newTaskTable() *taskTable {
	return &taskTable{byID: map[string]*tracked{}, byMAC: map[lpmos.MAC]string{}, lastEnded: map[lpmos.MAC]endedTask{}}
}

// ended returns the machine's recently ended task, if any.
func (tt *taskTable) ended(mac lpmos.MAC) (endedTask, bool) {
	tt.mu.RLock()
	defer tt.mu.RUnlock()
	e, ok := tt.lastEnded[mac]
	if !ok || time.Since(e.At) > endedMemory {
		return endedTask{}, false
	}
	return e, true
}

// put records a task's state as of store revision rev; ended tasks are
// dropped (after waking their waiters). A state older than the one held is
// ignored.
func (tt *taskTable) put(t *task.Task, since time.Time, rev int64) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	old := tt.byID[t.ID]
	if old != nil && rev <= old.rev {
		return
	}
	if old != nil {
		close(old.changed)
		if old.task.Metadata.TargetMAC != t.Metadata.TargetMAC {
			delete(tt.byMAC, old.task.Metadata.TargetMAC)
		}
	}
	if t.Status.Terminal() {
		delete(tt.byID, t.ID)
		if tt.byMAC[t.Metadata.TargetMAC] == t.ID {
			delete(tt.byMAC, t.Metadata.TargetMAC)
		}
		if len(tt.lastEnded) > 100_000 {
			tt.lastEnded = map[lpmos.MAC]endedTask{}
		}
		tt.lastEnded[t.Metadata.TargetMAC] = endedTask{ID: t.ID, Status: t.Status, At: time.Now()}
		return
	}
	tt.byID[t.ID] = &tracked{task: t, rev: rev, since: since, changed: make(chan struct{})}
	tt.byMAC[t.Metadata.TargetMAC] = t.ID
}

func (tt *taskTable) remove(id string) {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	if old := tt.byID[id]; old != nil {
		close(old.changed)
		delete(tt.byID, id)
		if tt.byMAC[old.task.Metadata.TargetMAC] == id {
			delete(tt.byMAC, old.task.Metadata.TargetMAC)
		}
	}
}

// byMACLookup returns the active task of a machine and a channel closed on
// its next change.
func (tt *taskTable) lookupMAC(mac lpmos.MAC) (*task.Task, <-chan struct{}, bool) {
	tt.mu.RLock()
	defer tt.mu.RUnlock()
	tr := tt.byID[tt.byMAC[mac]]
	if tr == nil {
		return nil, nil, false
	}
	return tr.task, tr.changed, true
}

func (tt *taskTable) get(id string) (*tracked, bool) {
	tt.mu.RLock()
	defer tt.mu.RUnlock()
	tr, ok := tt.byID[id]
	return tr, ok
}

func (tt *taskTable) snapshot() []tracked {
	tt.mu.RLock()
	defer tt.mu.RUnlock()
	out := make([]tracked, 0, len(tt.byID))
	for _, tr := range tt.byID {
		out = append(out, *tr)
	}
	return out
}

func (tt *taskTable) count() int {
	tt.mu.RLock()
	defer tt.mu.RUnlock()
	return len(tt.byID)
}

// lastActivity is when a task last moved: its newest timeline entry or
// progress report.
func lastActivity(t *task.Task) time.Time {
	var at time.Time
	if n := len(t.Timeline); n > 0 {
		at = t.Timeline[n-1].Timestamp
	}
	if t.Progress != nil && t.Progress.UpdatedAt.After(at) {
		at = t.Progress.UpdatedAt
	}
	return at
}

// watchTasks fills the table from the region's assignment keys and follows
// task changes, preparing new tasks. It re-lists after compaction and never
// returns before ctx ends.
func (r *Region) watchTasks(ctx context.Context) error {
	store.Follow(ctx, r.log, "task watch", r.fillAndFollow)
	return nil
}

func (r *Region) fillAndFollow(ctx context.Context) error {
	prefix := task.RegionTasksPrefix(r.cfg.RegionID)
	res, err := r.cfg.Store.List(ctx, prefix, store.ListOptions{})
	if err != nil {
		return err
	}
	fresh := newTaskTable()
	for _, kv := range res.KVs {
		id := strings.TrimPrefix(kv.Key, prefix)
		t, err := r.svc.Get(ctx, id)
		if errors.Is(err, task.ErrNotFound) || errors.Is(err, task.ErrInvalid) {
			continue
		}
		if err != nil {
			return err
		}
		fresh.put(t, lastActivity(t), max(res.Revision, t.Revision))
	}
	r.tasks.mu.Lock()
	for _, tr := range r.tasks.byID {
		close(tr.changed) // waiters re-read from the new table
	}
	r.tasks.byID, r.tasks.byMAC, r.tasks.rev = fresh.byID, fresh.byMAC, res.Revision // lastEnded survives
	r.tasks.mu.Unlock()
	r.syncedOnce.Do(func() { close(r.synced) })
	for _, tr := range fresh.snapshot() {
		if tr.task.Status == task.StatusPending {
			r.prepare(ctx, tr.task)
		}
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for ch := range r.svc.Watch(wctx, res.Revision+1) {
		if ch.Err != nil {
			return ch.Err
		}
		r.applyChange(ctx, ch)
	}
	return ctx.Err()
}

func (r *Region) applyChange(ctx context.Context, ch task.Change) {
	tr, known := r.tasks.get(ch.TaskID)
	if !known {
		if ch.Metadata == nil || ch.Metadata.RegionID != r.cfg.RegionID {
			return // another region's task, or one that already ended
		}
		t, err := r.svc.Get(ctx, ch.TaskID)
		if err != nil {
			r.log.Warn("cannot read new task", "task_id", ch.TaskID, "err", err)
			return
		}
		r.tasks.put(t, lastActivity(t), ch.Revision)
		if t.Status == task.StatusPending {
			r.prepare(ctx, t)
		}
		return
	}
	if ch.Deleted && ch.Status == "" && ch.Metadata == nil {
		r.tasks.remove(ch.TaskID)
		return
	}
	if ch.Revision <= tr.rev {
		return // already applied through observe
	}
	nt := ch.Fold(tr.task)
	r.tasks.put(nt, lastActivity(nt), ch.Revision)
}

// observe folds the result of this region's own move into the table at
// once, so the agent's next request sees it (read your writes) without
// waiting for the watch.
func (r *Region) observe(t *task.Task) {
	if t != nil {
		r.tasks.put(t, lastActivity(t), t.Revision)
	}
}

// prepare readies a new task for its machine: the agent boot files must be
// there (the script is rendered per request), then the task is ready.
func (r *Region) prepare(ctx context.Context, t *task.Task) {
	if err := r.checkBootFiles(t); err != nil {
		r.log.Error("cannot prepare task", "task_id", t.ID, "err", err)
		r.retry(ctx, "fail unpreparable task", func() error {
			_, err := r.svc.Fail(ctx, t.ID, r.actor, task.ErrorInfo{Code: "boot_files_missing", Stage: string(task.StatusPending), Message: err.Error()})
			return err
		})
		return
	}
	r.retry(ctx, "mark task ready", func() error {
		_, err := r.svc.MarkReady(ctx, t.ID, r.actor)
		return err
	})
}

// retry runs a store operation with exponential backoff while it fails
// for reasons other than the task's state or the input (those are final).
func (r *Region) retry(ctx context.Context, what string, op func() error) error {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || errors.Is(err, task.ErrInvalid) || errors.Is(err, task.ErrNotFound) ||
			errors.Is(err, task.ErrConflict) || errors.Is(err, task.ErrInvalidTransition) {
			if err != nil && !errors.Is(err, task.ErrInvalidTransition) && !errors.Is(err, task.ErrConflict) {
				r.log.Warn(what, "err", err)
			}
			return err
		}
		if attempt == 8 || ctx.Err() != nil {
			r.log.Error(what+": giving up", "attempts", attempt, "err", err)
			return err
		}
		r.log.Warn(what+": retrying", "err", err, "retry_in", backoff)
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
		now := r.cfg.Now()
		for _, tr := range r.tasks.snapshot() {
			limit, ok := r.cfg.Timeouts[tr.task.Status]
			if !ok || limit <= 0 || now.Sub(tr.since) < limit {
				continue
			}
			id, status := tr.task.ID, tr.task.Status
			r.log.Warn("task timed out", "task_id", id, "status", status, "after", limit)
			r.retry(ctx, "fail timed-out task", func() error {
				_, err := r.svc.Fail(ctx, id, r.actor, task.ErrorInfo{
					Code: "timeout", Stage: string(status),
					Message: "no progress in status " + string(status) + " for " + limit.String(),
				}, task.ExpectRevision(tr.task.Revision))
				return err
			})
		}
	}
}
