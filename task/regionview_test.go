package task_test

import (
	"context"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// watchCounter passes a store through and records what its watches
// deliver: the keys of the events, and which prefixes are being watched.
type watchCounter struct {
	store.Store
	mu   sync.Mutex
	keys []string       // of every event delivered, in order of arrival
	open map[string]int // prefix → watches running
}

func newWatchCounter(st store.Store) *watchCounter {
	return &watchCounter{Store: st, open: map[string]int{}}
}

func (w *watchCounter) Watch(ctx context.Context, prefix string, rev int64) <-chan store.WatchResponse {
	in := w.Store.Watch(ctx, prefix, rev)
	out := make(chan store.WatchResponse)
	w.mu.Lock()
	w.open[prefix]++
	w.mu.Unlock()
	go func() {
		defer close(out)
		defer func() { // before out closes: a consumer that saw it closed sees the watch gone
			w.mu.Lock()
			defer w.mu.Unlock()
			if w.open[prefix]--; w.open[prefix] == 0 {
				delete(w.open, prefix)
			}
		}()
		for resp := range in {
			w.mu.Lock()
			for _, ev := range resp.Events {
				w.keys = append(w.keys, ev.KV.Key)
			}
			w.mu.Unlock()
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// received returns the keys of the events delivered since the n-th.
func (w *watchCounter) received(n int) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.keys[n:]...)
}

func (w *watchCounter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.keys)
}

// watching returns the prefixes being watched, sorted.
func (w *watchCounter) watching() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]string, 0, len(w.open))
	for p := range w.open {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func inRegion(region, mac string) task.CreateRequest {
	req := validRequest(mac)
	req.RegionID = region
	return req
}

// runLifecycle takes a task from pending to completed as a region and its
// machine would.
func runLifecycle(t *testing.T, svc *task.Service, id string) {
	t.Helper()
	ctx := ctxT(t)
	steps := []func() error{
		func() error { _, err := svc.MarkReady(ctx, id, "region:dcb"); return err },
		func() error { _, err := svc.MarkBooting(ctx, id, "region:dcb"); return err },
		func() error {
			_, err := svc.ReportHardware(ctx, id, "region:dcb", hardware.Info{CPU: hardware.CPU{Cores: 8}})
			return err
		},
		func() error { _, err := svc.Approve(ctx, id, "ops", ""); return err },
		func() error {
			_, err := svc.ReportProgress(ctx, id, "region:dcb", task.Progress{Stage: task.StagePartitioning, Percentage: 5})
			return err
		},
		func() error {
			_, err := svc.ReportProgress(ctx, id, "region:dcb", task.Progress{Stage: task.StageWriting, Percentage: 50})
			return err
		},
		func() error {
			_, err := svc.ReportProgress(ctx, id, "region:dcb", task.Progress{Stage: task.StageWriting, Percentage: 90})
			return err
		},
		func() error {
			_, err := svc.Complete(ctx, id, "region:dcb", task.Completion{Message: "done"})
			return err
		},
	}
	for _, step := range steps {
		require.NoError(t, step())
	}
}

// A region's view receives its own tasks' changes and nothing of another
// region's, however busy that one is; it watches its assignment keys and
// one prefix per active task, and a task's watch ends with the task.
func TestRegionViewReceivesOnlyItsOwnTasks(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		mine, err := svc.Create(ctx, inRegion("dca", "00:1a:2b:3c:75:01"))
		require.NoError(t, err)
		theirs, err := svc.Create(ctx, inRegion("dcb", "00:1a:2b:3c:75:02"))
		require.NoError(t, err)

		// The view reads through the counter; the writers do not.
		counter := newWatchCounter(st)
		v, rec := startView(t, newService(counter), task.ViewConfig{Region: "dca", ActiveOnly: true})
		assert.Equal(t, []string{mine.ID}, ids(v.Tasks()))
		watchingMine := []string{task.RegionTasksPrefix("dca"), task.TaskPrefix(mine.ID)}
		require.Eventually(t, func() bool { return assert.ObjectsAreEqual(watchingMine, counter.watching()) },
			30*time.Second, time.Millisecond, "the view watches its assignments and its task")
		before := counter.count()

		// Region B is busy: a whole lifecycle, and a new task that
		// reports progress.
		runLifecycle(t, svc, theirs.ID)
		busy, err := svc.Create(ctx, inRegion("dcb", "00:1a:2b:3c:75:03"))
		require.NoError(t, err)
		runLifecycle(t, svc, busy.ID)

		// Then one change of region A's task: once the view shows it,
		// whatever its watches were sent before has been counted.
		ready, err := svc.MarkReady(ctx, mine.ID, "region:dca")
		require.NoError(t, err)
		viewShows(t, v, mine.ID, task.StatusReady)
		assert.ElementsMatch(t, []string{task.TaskKey(mine.ID, task.FieldStatus), task.TaskKey(mine.ID, task.FieldTimeline)},
			counter.received(before), "region A received its own task's change and nothing else")
		assert.Empty(t, rec.callsFor(theirs.ID))
		assert.Empty(t, rec.callsFor(busy.ID))
		got, _, _ := v.Get(mine.ID)
		sameTask(t, ready, got)

		// A new task of the region is watched from its creation; an
		// ended one is no longer watched.
		joined, err := svc.Create(ctx, inRegion("dca", "00:1a:2b:3c:75:04"))
		require.NoError(t, err)
		viewShows(t, v, joined.ID, task.StatusPending)
		_, err = svc.Cancel(ctx, mine.ID, "ops", "")
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, _, ok := v.Get(mine.ID)
			return !ok
		}, 30*time.Second, time.Millisecond)
		require.Eventually(t, func() bool {
			w := counter.watching()
			return len(w) == 2 && w[1] == task.TaskPrefix(joined.ID)
		}, 30*time.Second, time.Millisecond, "watching %v", counter.watching())
		for _, k := range counter.received(before) {
			assert.False(t, strings.Contains(k, theirs.ID) || strings.Contains(k, busy.ID) || strings.Contains(k, "/dcb/"), "region A received %s", k)
		}
	})
}

// A region's view stops every watch it started when it stops.
func TestRegionViewStopsItsWatches(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		for _, mac := range []string{"00:1a:2b:3c:76:01", "00:1a:2b:3c:76:02"} {
			_, err := svc.Create(ctx, validRequest(mac))
			require.NoError(t, err)
		}
		counter := newWatchCounter(st)
		v := task.NewView(newService(counter), task.ViewConfig{Region: "dc1", ActiveOnly: true})
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			assert.NoError(t, v.Run(rctx))
		}()
		<-v.Synced()
		require.Eventually(t, func() bool { return len(counter.watching()) == 3 }, 30*time.Second, time.Millisecond)
		cancel()
		<-done
		assert.Empty(t, counter.watching(), "every watch ended with Run")
	})
}

// gated holds the responses of the watches of one prefix until released,
// as a watch that lags behind the others would.
type gated struct {
	store.Store
	prefix  string
	release chan struct{}
}

func (g *gated) Watch(ctx context.Context, prefix string, rev int64) <-chan store.WatchResponse {
	in := g.Store.Watch(ctx, prefix, rev)
	if prefix != g.prefix {
		return in
	}
	out := make(chan store.WatchResponse)
	go func() {
		defer close(out)
		select {
		case <-g.release:
		case <-ctx.Done():
			return
		}
		for resp := range in {
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// In a region's view, tasks come through watches of their own: a late
// change of a machine's ended task must not take the machine from its new
// task.
func TestRegionViewLateChangeOfEndedTask(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		const mac = "00:1a:2b:3c:77:01"
		old, err := svc.Create(ctx, validRequest(mac))
		require.NoError(t, err)
		g := &gated{Store: st, prefix: task.TaskPrefix(old.ID), release: make(chan struct{})}
		v, rec := startView(t, newService(g), task.ViewConfig{Region: "dc1", ActiveOnly: true})

		// The old task moves and ends while its watch lags; the
		// machine's next task comes through at once.
		_, err = svc.MarkReady(ctx, old.ID, "region:dc1")
		require.NoError(t, err)
		_, err = svc.Cancel(ctx, old.ID, "ops", "")
		require.NoError(t, err)
		next, err := svc.Create(ctx, validRequest(mac))
		require.NoError(t, err)
		viewShows(t, v, next.ID, task.StatusPending)
		cur, _, ok := v.Active(next.Metadata.TargetMAC)
		require.True(t, ok)
		assert.Equal(t, next.ID, cur.ID)

		close(g.release)
		require.Eventually(t, func() bool { return len(rec.callsFor(old.ID)) == 2 }, 30*time.Second, time.Millisecond,
			"the old task's two changes arrive")
		_, _, ok = v.Get(old.ID)
		assert.False(t, ok, "the old task left the view")
		cur, _, ok = v.Active(next.Metadata.TargetMAC)
		require.True(t, ok, "the machine still has its new task")
		assert.Equal(t, next.ID, cur.ID)
	})
}
