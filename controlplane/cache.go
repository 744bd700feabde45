package controlplane

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// taskCache is this replica's view of every task, filled by one listing and
// kept current by one prefix watch. Lists are served from it; its watch
// loop also feeds the WebSocket hub and the notifier (the subscribers), so
// a control plane costs the store one watch, whatever its traffic.
type taskCache struct {
	svc *task.Service
	log *slog.Logger

	mu      sync.RWMutex
	tasks   map[string]*task.Task // values are never mutated: replaced whole
	rev     int64
	synced  bool
	updated chan struct{} // closed and replaced whenever rev advances
	// lastEvent is when the newest change was made, from its timestamps:
	// the watch lag metric is now minus this, at processing time.
	lag time.Duration

	subscribers []func(task.Change, *task.Task)
}

func newTaskCache(svc *task.Service, log *slog.Logger) *taskCache {
	return &taskCache{svc: svc, log: log, tasks: map[string]*task.Task{}, updated: make(chan struct{})}
}

// subscribe registers fn to be called, in the watch loop, with every change
// and the task after it. fn must not block.
func (c *taskCache) subscribe(fn func(task.Change, *task.Task)) {
	c.subscribers = append(c.subscribers, fn)
}

// run fills the cache and follows the store until ctx ends. On compaction
// or a broken watch it lists again and resumes; it never gives up while ctx
// lives.
func (c *taskCache) run(ctx context.Context) error {
	store.Follow(ctx, c.log, "task watch", c.fillAndFollow)
	return nil
}

func (c *taskCache) fillAndFollow(ctx context.Context) error {
	all, rev, err := c.svc.All(ctx)
	if err != nil {
		return err
	}
	tasks := make(map[string]*task.Task, len(all))
	for _, t := range all {
		tasks[t.ID] = t
	}
	c.mu.Lock()
	c.tasks, c.rev, c.synced = tasks, rev, true
	c.broadcastLocked()
	c.mu.Unlock()

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for ch := range c.svc.Watch(wctx, rev+1) {
		if ch.Err != nil {
			return ch.Err
		}
		t := c.apply(ctx, ch)
		for _, fn := range c.subscribers {
			fn(ch, t)
		}
	}
	if ctx.Err() == nil {
		return errors.New("task watch closed")
	}
	return ctx.Err()
}

// apply folds one change into the cache and returns the task after it (nil
// if it was deleted).
func (c *taskCache) apply(ctx context.Context, ch task.Change) *task.Task {
	c.mu.RLock()
	old := c.tasks[ch.TaskID]
	c.mu.RUnlock()

	var t *task.Task
	switch {
	case ch.Deleted && ch.Status == "" && ch.Metadata == nil:
		t = nil
	case old == nil && ch.Metadata == nil:
		// A change for a task we never saw created (possible only across a
		// re-list): read it whole.
		got, err := c.svc.Get(ctx, ch.TaskID)
		if err != nil {
			c.log.Warn("cannot read changed task", "task_id", ch.TaskID, "err", err)
			return nil
		}
		t = got
	default:
		t = ch.Fold(old)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if t == nil {
		delete(c.tasks, ch.TaskID)
	} else {
		c.tasks[ch.TaskID] = t
	}
	if ch.Revision > c.rev {
		c.rev = ch.Revision
	}
	if at := changeTime(ch); !at.IsZero() {
		c.lag = time.Since(at)
	}
	c.broadcastLocked()
	return t
}

// changeTime is when a change was made, as far as its content says.
func changeTime(ch task.Change) time.Time {
	var at time.Time
	if n := len(ch.Timeline); n > 0 {
		at = ch.Timeline[n-1].Timestamp
	}
	if ch.Progress != nil && ch.Progress.UpdatedAt.After(at) {
		at = ch.Progress.UpdatedAt
	}
	return at
}

func (c *taskCache) broadcastLocked() {
	close(c.updated)
	c.updated = make(chan struct{})
}

// waitRevision waits until the cache has seen revision rev, so that a
// caller reads its own write in the next list; bounded by ctx.
func (c *taskCache) waitRevision(ctx context.Context, rev int64) bool {
	for {
		c.mu.RLock()
		done, ch := c.synced && c.rev >= rev, c.updated
		c.mu.RUnlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (c *taskCache) isSynced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.synced
}

// list serves a page from the cache.
func (c *taskCache) list(f task.Filter) *task.Page {
	c.mu.RLock()
	matched := make([]*task.Task, 0, len(c.tasks))
	for _, t := range c.tasks {
		if f.Matches(t) {
			matched = append(matched, t)
		}
	}
	rev := c.rev
	c.mu.RUnlock()
	task.SortTasks(matched)
	page := &task.Page{Tasks: []*task.Task{}, Total: len(matched), Limit: f.Limit, Offset: f.Offset, Revision: rev}
	if f.Offset < len(matched) {
		page.Tasks = matched[f.Offset:min(f.Offset+f.Limit, len(matched))]
	}
	return page
}

// countByStatus feeds the tasks-by-status metric.
func (c *taskCache) countByStatus() map[task.Status]int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[task.Status]int, len(task.Statuses()))
	for _, t := range c.tasks {
		out[t.Status]++
	}
	return out
}

func (c *taskCache) watchLag() time.Duration {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lag
}

// storeWatchLoop lists a prefix and follows it, calling reset with each
// full listing and apply with each event, re-listing after compaction or a
// broken watch. It is the regions cache's engine.
func storeWatchLoop(ctx context.Context, st store.Store, log *slog.Logger, prefix string, reset func([]store.KV), apply func(store.Event)) {
	store.Follow(ctx, log, "watch of "+prefix, func(ctx context.Context) error {
		var kvs []store.KV
		var rev int64
		opts := store.ListOptions{Limit: 5000}
		for {
			res, err := st.List(ctx, prefix, opts)
			if err != nil {
				return err
			}
			if rev == 0 {
				rev = res.Revision
			}
			kvs = append(kvs, res.KVs...)
			if !res.More || len(res.KVs) == 0 {
				break
			}
			opts.StartKey = res.KVs[len(res.KVs)-1].Key + "\x00"
		}
		reset(kvs)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for resp := range st.Watch(wctx, prefix, rev+1) {
			if resp.Err != nil {
				return resp.Err
			}
			for _, ev := range resp.Events {
				apply(ev)
			}
		}
		return errors.New("watch closed")
	})
}
