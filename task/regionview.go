package task

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/lpmos/lpmos/store"
)

// activeInRegion follows a region's active tasks through their assignment
// keys, /lpmos/regions/{r}/tasks/{id}: the create transaction writes one,
// the transaction that ends the task deletes it. It lists them, watches
// that prefix for new tasks, and watches each active task's own keys
// (/lpmos/tasks/{id}/) until the task ends. So a region receives its own
// tasks' changes and nothing else: its traffic grows with its own tasks,
// not the fleet's, and the writers write the seeds' keys as they are,
// nothing added (no extra transactions, operations or bytes).
//
// The price is order across tasks: each task's changes come in revision
// order, but different tasks' changes come through different watches. On
// etcd the watches share one gRPC stream of the client.
type activeInRegion struct {
	svc    *Service
	region string
}

func (a activeInRegion) list(ctx context.Context) ([]*snapshot, int64, error) {
	prefix := RegionTasksPrefix(a.region)
	res, err := a.svc.st.List(ctx, prefix, store.ListOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("list tasks of region %s: %w", a.region, err)
	}
	snaps := make([]*snapshot, 0, len(res.KVs))
	for _, kv := range res.KVs {
		snap, err := a.svc.load(ctx, strings.TrimPrefix(kv.Key, prefix))
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalid) {
			continue // purged meanwhile, or a stray key
		}
		if err != nil {
			return nil, 0, err
		}
		snaps = append(snaps, snap)
	}
	return snaps, res.Revision, nil
}

// watch follows the listed tasks from after their reads, and every task
// assigned to the region from rev on from its creation. The channel closes
// once every watch has ended, which is when ctx ends or after a Change
// carrying Err (any watch failing fails them all: the view lists again).
func (a activeInRegion) watch(ctx context.Context, rev int64, listed []*snapshot) <-chan Change {
	w := &taskWatches{svc: a.svc, ctx: ctx, out: make(chan Change), running: map[string]bool{}}
	for _, snap := range listed {
		if !snap.task.Status.Terminal() { // ended between listing and reading
			w.follow(snap.task.ID, max(rev, snap.readRev+1))
		}
	}
	w.wg.Add(1)
	go w.assignments(RegionTasksPrefix(a.region), rev)
	go func() {
		w.wg.Wait()
		close(w.out)
	}()
	return w.out
}

// taskWatches is one watch of a region's assignment keys and one watch per
// active task, merged into out.
type taskWatches struct {
	svc *Service
	ctx context.Context
	out chan Change
	// wg counts the watching goroutines; out closes when it drops to 0.
	wg sync.WaitGroup

	mu      sync.Mutex
	running map[string]bool // tasks being watched
}

func (w *taskWatches) send(c Change) bool {
	select {
	case w.out <- c:
		return true
	case <-w.ctx.Done():
		return false
	}
}

// assignments starts a task watch for every task assigned to the region.
// A deleted assignment needs nothing: it is deleted by the transaction
// that ends the task, which the task's own watch brings.
func (w *taskWatches) assignments(prefix string, rev int64) {
	defer w.wg.Done()
	for resp := range w.svc.st.Watch(w.ctx, prefix, rev) {
		if resp.Err != nil {
			w.send(Change{Err: fmt.Errorf("watch %s: %w", prefix, resp.Err)})
			return
		}
		for _, ev := range resp.Events {
			id := strings.TrimPrefix(ev.KV.Key, prefix)
			if ev.Type != store.EventPut || checkID(id) != nil {
				continue
			}
			// Written with the task's creation, so the watch starts
			// with the change that creates the task.
			w.follow(id, ev.KV.ModRevision)
		}
	}
	if w.ctx.Err() == nil {
		w.send(Change{Err: fmt.Errorf("watch %s: closed", prefix)})
	}
}

// follow watches task id from revision from on, unless it is watched
// already. Callers hold a count of wg, so wg cannot reach 0 meanwhile.
func (w *taskWatches) follow(id string, from int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running[id] {
		return
	}
	w.running[id] = true
	w.wg.Add(1)
	go w.task(id, from)
}

// task forwards one task's changes until the task ends or is removed:
// then it leaves the view, and its later changes (a first boot, a purge)
// are no concern of the region's.
func (w *taskWatches) task(id string, from int64) {
	defer w.wg.Done()
	ctx, cancel := context.WithCancel(w.ctx)
	defer cancel()
	for resp := range w.svc.st.Watch(ctx, TaskPrefix(id), from) {
		if resp.Err != nil {
			w.send(Change{Err: fmt.Errorf("watch task %s: %w", id, resp.Err)})
			return
		}
		for _, c := range w.svc.changes(resp.Events) {
			if !w.send(c) {
				return
			}
			if c.Status.Terminal() || c.Removed() {
				w.mu.Lock()
				delete(w.running, id)
				w.mu.Unlock()
				return
			}
		}
	}
	if w.ctx.Err() == nil {
		w.send(Change{Err: fmt.Errorf("watch task %s: closed", id)})
	}
}
