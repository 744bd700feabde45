package task_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// hookCall is one call of a view's OnChange.
type hookCall struct {
	ch task.Change
	t  *task.Task
	// shown is what the view held for the task while the hook ran.
	shown *task.Task
}

// recorder collects a view's hook calls.
type recorder struct {
	mu    sync.Mutex
	calls []hookCall
	fills [][]*task.Task
	view  *task.View
}

func (r *recorder) onChange(_ context.Context, ch task.Change, t *task.Task) {
	shown, _, _ := r.view.Get(ch.TaskID)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, hookCall{ch: ch, t: t, shown: shown})
}

func (r *recorder) onFill(_ context.Context, tasks []*task.Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fills = append(r.fills, tasks)
}

func (r *recorder) snapshot() ([]hookCall, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hookCall(nil), r.calls...), len(r.fills)
}

// callsFor returns the hook calls for one task.
func (r *recorder) callsFor(id string) []hookCall {
	calls, _ := r.snapshot()
	var out []hookCall
	for _, c := range calls {
		if c.ch.TaskID == id {
			out = append(out, c)
		}
	}
	return out
}

// startView runs a view with a recorder for its hooks until the test ends,
// and waits until it is synced.
func startView(t *testing.T, svc *task.Service, cfg task.ViewConfig) (*task.View, *recorder) {
	t.Helper()
	rec := &recorder{}
	cfg.OnChange, cfg.OnFill = rec.onChange, rec.onFill
	v := task.NewView(svc, cfg)
	rec.view = v
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		assert.NoError(t, v.Run(ctx))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-v.Synced():
	case <-time.After(30 * time.Second):
		t.Fatal("the view never synced")
	}
	return v, rec
}

// caughtUp waits until the view reflects revision rev.
func caughtUp(t *testing.T, v *task.View, rev int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, v.WaitRevision(ctx, rev))
}

func ids(ts []*task.Task) []string {
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, t.ID)
	}
	return out
}

// sameTask compares what a view holds with what the store says.
func sameTask(t *testing.T, want, got *task.Task) {
	t.Helper()
	require.NotNil(t, got)
	assert.Equal(t, want.ID, got.ID)
	assert.Equal(t, want.Status, got.Status)
	assert.Equal(t, want.Revision, got.Revision)
	assert.Equal(t, want.Metadata, got.Metadata)
	assert.Equal(t, want.Approval, got.Approval)
	assert.Equal(t, want.Progress, got.Progress)
	assert.Equal(t, want.Error, got.Error)
	assert.Equal(t, want.Timeline, got.Timeline)
}

func TestViewFillsAndFolds(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		before := toPendingApproval(t, svc, "00:1a:2b:3c:70:01")
		other, err := svc.Create(ctx, validRequest("00:1a:2b:3c:70:02"))
		require.NoError(t, err)

		v, rec := startView(t, svc, task.ViewConfig{})
		assert.ElementsMatch(t, []string{before.ID, other.ID}, ids(v.Tasks()), "the listing fills the view")
		require.Eventually(t, func() bool {
			_, fills := rec.snapshot()
			return fills == 1
		}, 30*time.Second, time.Millisecond, "OnFill follows Synced")
		got, _, ok := v.Get(before.ID)
		require.True(t, ok)
		sameTask(t, before, got)
		_, changed, ok := v.Active(before.Metadata.TargetMAC)
		require.True(t, ok)

		// Changes after the listing are folded in, in order.
		approved, err := svc.Approve(ctx, before.ID, "ops", "go")
		require.NoError(t, err)
		_, err = svc.ReportProgress(ctx, before.ID, "r", task.Progress{Stage: task.StageWriting, Percentage: 40})
		require.NoError(t, err)
		done, err := svc.Complete(ctx, before.ID, "r", task.Completion{Message: "installed"})
		require.NoError(t, err)
		caughtUp(t, v, done.Revision)
		select {
		case <-changed:
		default:
			t.Fatal("a long-poll on the task was not woken")
		}
		stored, err := svc.Get(ctx, before.ID)
		require.NoError(t, err)
		got, _, ok = v.Get(before.ID)
		require.True(t, ok)
		sameTask(t, stored, got)
		_, _, active := v.Active(before.Metadata.TargetMAC)
		assert.False(t, active, "a completed task is no machine's active task")
		assert.GreaterOrEqual(t, v.Revision(), done.Revision)

		// A task created after the listing comes from its creation change.
		created, err := svc.Create(ctx, validRequest("00:1a:2b:3c:70:03"))
		require.NoError(t, err)
		caughtUp(t, v, created.Revision)
		got, _, ok = v.Get(created.ID)
		require.True(t, ok)
		sameTask(t, created, got)
		cur, _, ok := v.Active(created.Metadata.TargetMAC)
		require.True(t, ok)
		assert.Equal(t, created.ID, cur.ID)

		page := v.List(task.Filter{Statuses: []task.Status{task.StatusPending}, Limit: 10})
		assert.Equal(t, []string{created.ID, other.ID}, ids(page.Tasks), "newest first")
		assert.Equal(t, 2, page.Total)
		assert.Equal(t, map[task.Status]int{task.StatusPending: 2, task.StatusCompleted: 1}, v.CountByStatus())

		// The hook saw every change of the moved task, the view already
		// showing it.
		calls := rec.callsFor(before.ID)
		var statuses []task.Status
		for _, c := range calls {
			statuses = append(statuses, c.ch.Status)
			assert.Same(t, c.t, c.shown, "the hook runs once the view shows the change")
		}
		assert.Equal(t, []task.Status{task.StatusApproved, task.StatusInstalling, task.StatusCompleted}, statuses)
		assert.Equal(t, approved.Revision, calls[0].ch.Revision)
	})
}

func TestViewRemoval(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk, err := svc.Create(ctx, validRequest("00:1a:2b:3c:71:01"))
		require.NoError(t, err)
		_, err = svc.Cancel(ctx, tk.ID, "ops", "not needed")
		require.NoError(t, err)
		keep, err := svc.Create(ctx, validRequest("00:1a:2b:3c:71:02"))
		require.NoError(t, err)

		v, rec := startView(t, svc, task.ViewConfig{})
		_, changed, ok := v.Get(tk.ID)
		require.True(t, ok)
		purged, err := svc.Purge(ctx, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), 0)
		require.NoError(t, err)
		require.Equal(t, []string{tk.ID}, purged)
		_, rev := dump(t, st)
		caughtUp(t, v, rev)

		_, _, ok = v.Get(tk.ID)
		assert.False(t, ok, "a purged task leaves the view")
		assert.Equal(t, []string{keep.ID}, ids(v.Tasks()))
		select {
		case <-changed:
		default:
			t.Fatal("a long-poll on the purged task was not woken")
		}
		calls := rec.callsFor(tk.ID)
		require.Len(t, calls, 1)
		assert.True(t, calls[0].ch.Removed())
		assert.Nil(t, calls[0].t)
	})
}

func TestChangeRemoved(t *testing.T) {
	tests := []struct {
		name string
		ch   task.Change
		want bool
	}{
		{"keys deleted", task.Change{TaskID: "a", Deleted: true}, true},
		{"status written", task.Change{TaskID: "a", Status: task.StatusFailed}, false},
		{"deleted and status written", task.Change{TaskID: "a", Deleted: true, Status: task.StatusFailed}, false},
		{"deleted and created", task.Change{TaskID: "a", Deleted: true, Metadata: &task.Metadata{}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, tt.ch.Removed())
		})
	}
}

func TestViewRegionFilter(t *testing.T) {
	inRegion := func(region, mac string) task.CreateRequest {
		req := validRequest(mac)
		req.RegionID = region
		return req
	}
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		mine, err := svc.Create(ctx, inRegion("dc2", "00:1a:2b:3c:72:01"))
		require.NoError(t, err)
		ended, err := svc.Create(ctx, inRegion("dc2", "00:1a:2b:3c:72:02"))
		require.NoError(t, err)
		_, err = svc.Cancel(ctx, ended.ID, "ops", "")
		require.NoError(t, err)
		theirs, err := svc.Create(ctx, inRegion("dc1", "00:1a:2b:3c:72:03"))
		require.NoError(t, err)

		active, rec := startView(t, svc, task.ViewConfig{Region: "dc2", ActiveOnly: true})
		all, _ := startView(t, svc, task.ViewConfig{Region: "dc2"})
		assert.Equal(t, []string{mine.ID}, ids(active.Tasks()), "the region's active tasks")
		assert.ElementsMatch(t, []string{mine.ID, ended.ID}, ids(all.Tasks()), "the region's tasks")

		// Another region's changes are not ours.
		_, err = svc.MarkReady(ctx, theirs.ID, "region:dc1")
		require.NoError(t, err)
		other, err := svc.Create(ctx, inRegion("dc1", "00:1a:2b:3c:72:04"))
		require.NoError(t, err)
		// A new task of the region joins it.
		joined, err := svc.Create(ctx, inRegion("dc2", "00:1a:2b:3c:72:05"))
		require.NoError(t, err)
		// An ending task leaves the active view, not the other.
		gone, err := svc.Fail(ctx, mine.ID, "region:dc2", task.ErrorInfo{Code: "x", Message: "broken"})
		require.NoError(t, err)
		caughtUp(t, all, gone.Revision)
		// The region's view follows each task by a watch of its own: no
		// one revision says it has caught up; the hooks do.
		require.Eventually(t, func() bool {
			return len(rec.callsFor(joined.ID)) > 0 && len(rec.callsFor(mine.ID)) > 0
		}, 30*time.Second, time.Millisecond)

		assert.Equal(t, []string{joined.ID}, ids(active.Tasks()))
		assert.ElementsMatch(t, []string{mine.ID, ended.ID, joined.ID}, ids(all.Tasks()))
		_, _, ok := active.Active(mine.Metadata.TargetMAC)
		assert.False(t, ok)
		cur, _, ok := active.Active(joined.Metadata.TargetMAC)
		require.True(t, ok)
		assert.Equal(t, joined.ID, cur.ID)

		assert.Empty(t, rec.callsFor(theirs.ID), "no hook for another region's task")
		assert.Empty(t, rec.callsFor(other.ID), "no hook for another region's task")
		calls := rec.callsFor(joined.ID)
		require.Len(t, calls, 1)
		assert.True(t, calls[0].ch.Created)
		assert.Equal(t, task.StatusPending, calls[0].t.Status)
		calls = rec.callsFor(mine.ID)
		require.Len(t, calls, 1)
		assert.Equal(t, task.StatusFailed, calls[0].t.Status, "the hook sees the task that left the view ended")
		assert.Nil(t, calls[0].shown)
	})
}

// The hook runs in the view's loop, in revision order (a region's view:
// per task); while it runs, the view holds still, and what its owner wrote
// (Observe) shows at once.
func TestViewHookOrderAndObserve(t *testing.T) {
	tests := []struct {
		name string
		cfg  task.ViewConfig
		// ordered: changes of different tasks come in revision order too.
		ordered bool
	}{
		{"all tasks", task.ViewConfig{}, true},
		{"region", task.ViewConfig{Region: "dc1", ActiveOnly: true}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
				testHookOrderAndObserve(t, svc, tt.cfg, tt.ordered)
			})
		})
	}
}

func testHookOrderAndObserve(t *testing.T, svc *task.Service, cfg task.ViewConfig, ordered bool) {
	ctx := ctxT(t)
	release := make(chan struct{})
	unblock := sync.OnceFunc(func() { close(release) })
	var once sync.Once
	var mu sync.Mutex
	var calls []task.Change
	entered := make(chan struct{})
	cfg.OnChange = func(_ context.Context, ch task.Change, _ *task.Task) {
		mu.Lock()
		calls = append(calls, ch)
		mu.Unlock()
		once.Do(func() {
			close(entered)
			<-release
		})
	}
	v := task.NewView(svc, cfg)
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = v.Run(rctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	t.Cleanup(unblock) // first, should the test fail while the hook holds
	<-v.Synced()

	tk, err := svc.Create(ctx, validRequest("00:1a:2b:3c:73:01"))
	require.NoError(t, err)
	<-entered // the hook holds the view's loop
	var last int64
	for i := range 5 {
		other, err := svc.Create(ctx, validRequest(fmt.Sprintf("00:1a:2b:3c:73:%02x", 0x10+i)))
		require.NoError(t, err)
		last = other.Revision
	}
	ready, err := svc.MarkReady(ctx, tk.ID, "region:dc1")
	require.NoError(t, err)
	got, _, ok := v.Get(tk.ID)
	require.True(t, ok)
	assert.Equal(t, task.StatusPending, got.Status, "the loop is held")
	v.Observe(ready)
	got, _, _ = v.Get(tk.ID)
	assert.Equal(t, task.StatusReady, got.Status, "an observed write shows at once")
	stranger, err := svc.Create(ctx, validRequest("00:1a:2b:3c:73:99"))
	require.NoError(t, err)
	v.Observe(stranger)
	_, _, ok = v.Get(stranger.ID)
	assert.False(t, ok, "Observe refreshes only tasks the view holds")

	unblock()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) == 8
	}, 30*time.Second, time.Millisecond, "6 creations, 1 move, 1 creation")
	got, _, _ = v.Get(tk.ID)
	assert.Same(t, ready, got, "an older change does not undo an observed write")
	assert.Greater(t, stranger.Revision, last)
	mu.Lock()
	defer mu.Unlock()
	lastOf := map[string]int64{}
	for i, c := range calls {
		assert.Less(t, lastOf[c.TaskID], c.Revision, "each task's changes in revision order")
		lastOf[c.TaskID] = c.Revision
		if ordered && i > 0 {
			assert.Less(t, calls[i-1].Revision, c.Revision, "revision order")
		}
	}
}

func TestViewWaitRevisionEndsWithContext(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		v, _ := startView(t, svc, task.ViewConfig{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, v.WaitRevision(ctx, v.Revision()+1000), context.Canceled)
		require.NoError(t, v.WaitRevision(context.Background(), v.Revision()))
	})
}

// breakable passes a store through, except that breakWatches ends every
// running watch the way a watch that has to reconnect after a compaction
// ends: it watches again from where it started, and the store says that
// history is gone.
type breakable struct {
	store.Store
	mu   sync.Mutex
	kick chan struct{}
}

func newBreakable(st store.Store) *breakable { return &breakable{Store: st, kick: make(chan struct{})} }

func (b *breakable) breakWatches() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.kick)
	b.kick = make(chan struct{})
}

func (b *breakable) Watch(ctx context.Context, prefix string, rev int64) <-chan store.WatchResponse {
	b.mu.Lock()
	kick := b.kick
	b.mu.Unlock()
	out := make(chan store.WatchResponse)
	wctx, cancel := context.WithCancel(ctx)
	in := b.Store.Watch(wctx, prefix, rev)
	go func() {
		defer close(out)
		defer cancel()
		forward := func(resp store.WatchResponse) bool {
			select {
			case out <- resp:
				return resp.Err == nil
			case <-ctx.Done():
				return false
			}
		}
		for {
			select {
			case resp, ok := <-in:
				if !ok || !forward(resp) {
					return
				}
			case <-kick:
				cancel()
				for resp := range b.Store.Watch(ctx, prefix, rev) {
					if !forward(resp) {
						return
					}
				}
				return
			}
		}
	}()
	return out
}

// viewShows waits until the view holds task id in status want.
func viewShows(t *testing.T, v *task.View, id string, want task.Status) {
	t.Helper()
	require.Eventually(t, func() bool {
		got, _, ok := v.Get(id)
		return ok && got.Status == want
	}, 30*time.Second, time.Millisecond, "task %s %s in the view", id, want)
}

func TestViewResumesAfterCompaction(t *testing.T) {
	for _, cfg := range []task.ViewConfig{{}, {Region: "dc1", ActiveOnly: true}} {
		t.Run(fmt.Sprintf("region=%q", cfg.Region), func(t *testing.T) {
			forEachStore(t, func(t *testing.T, st store.Store, _ *task.Service) {
				testViewResumes(t, st, cfg)
			})
		})
	}
}

func testViewResumes(t *testing.T, st store.Store, cfg task.ViewConfig) {
	ctx := ctxT(t)
	bst := newBreakable(st)
	svc := newService(bst)
	first, err := svc.Create(ctx, validRequest("00:1a:2b:3c:74:01"))
	require.NoError(t, err)
	v, rec := startView(t, svc, cfg)

	// History the view's watches started from is compacted away.
	moved, err := svc.MarkReady(ctx, first.ID, "r")
	require.NoError(t, err)
	second, err := svc.Create(ctx, validRequest("00:1a:2b:3c:74:02"))
	require.NoError(t, err)
	viewShows(t, v, first.ID, task.StatusReady)
	viewShows(t, v, second.ID, task.StatusPending)
	_, changed, ok := v.Get(second.ID)
	require.True(t, ok)
	require.NoError(t, st.Compact(ctx, second.Revision))
	bst.breakWatches()
	// Changes while the view lists again are not lost.
	third, err := svc.Create(ctx, validRequest("00:1a:2b:3c:74:03"))
	require.NoError(t, err)
	booting, err := svc.MarkBooting(ctx, moved.ID, "r")
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		_, fills := rec.snapshot()
		return fills == 2
	}, 30*time.Second, 10*time.Millisecond, "the view lists again")
	viewShows(t, v, first.ID, task.StatusBooting)
	viewShows(t, v, third.ID, task.StatusPending)
	select {
	case <-changed:
	default:
		t.Fatal("waiters were not woken by the re-listing") // second did not change
	}
	assert.ElementsMatch(t, []string{first.ID, second.ID, third.ID}, ids(v.Tasks()))
	got, _, _ := v.Get(first.ID)
	assert.Equal(t, booting.Revision, got.Revision)
	cur, _, ok := v.Active(third.Metadata.TargetMAC)
	require.True(t, ok)
	assert.Equal(t, third.ID, cur.ID)

	// And it follows on from the new listing: new tasks, and moves of
	// tasks it listed.
	fourth, err := svc.Create(ctx, validRequest("00:1a:2b:3c:74:04"))
	require.NoError(t, err)
	viewShows(t, v, fourth.ID, task.StatusPending)
	_, err = svc.MarkReady(ctx, second.ID, "r")
	require.NoError(t, err)
	viewShows(t, v, second.ID, task.StatusReady)
	_, fills := rec.snapshot()
	assert.Equal(t, 2, fills, "no further listing")
}

func TestLastActivity(t *testing.T) {
	t0 := time.Date(2026, 1, 29, 10, 0, 0, 0, time.UTC)
	entry := []task.TimelineEntry{{Timestamp: t0}, {Timestamp: t0.Add(time.Minute)}}
	tests := []struct {
		name     string
		timeline []task.TimelineEntry
		progress *task.Progress
		want     time.Time
	}{
		{"nothing", nil, nil, time.Time{}},
		{"last timeline entry", entry, nil, t0.Add(time.Minute)},
		{"newer progress", entry, &task.Progress{UpdatedAt: t0.Add(time.Hour)}, t0.Add(time.Hour)},
		{"older progress", entry, &task.Progress{UpdatedAt: t0}, t0.Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, (&task.Task{Timeline: tt.timeline, Progress: tt.progress}).LastActivity())
			assert.Equal(t, tt.want, task.Change{Timeline: tt.timeline, Progress: tt.progress}.At())
		})
	}
}

// CountActive keeps its counts with every change (creates, moves to a
// terminal status, purges, a fresh listing) and agrees with a scan of the
// view.
func TestViewCountActive(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		create := func(region, mac string) *task.Task {
			req := validRequest(mac)
			req.RegionID = region
			tk, err := svc.Create(ctx, req)
			require.NoError(t, err)
			return tk
		}
		scan := func(v *task.View) (int, map[string]int) {
			n, by := 0, map[string]int{}
			for _, tk := range v.Tasks() {
				if !tk.Status.Terminal() {
					n++
					by[tk.Metadata.RegionID]++
				}
			}
			return n, by
		}
		check := func(v *task.View, total int, byRegion map[string]int) {
			t.Helper()
			_, rev := dump(t, st)
			caughtUp(t, v, rev)
			n, by := v.CountActive()
			assert.Equal(t, total, n)
			assert.Equal(t, byRegion, by)
			sn, sby := scan(v)
			assert.Equal(t, sn, n, "counts agree with a scan")
			assert.Equal(t, sby, by, "counts agree with a scan")
		}

		early := create("dc1", "00:1a:2b:3c:72:01") // listed, not watched
		v, _ := startView(t, svc, task.ViewConfig{})
		check(v, 1, map[string]int{"dc1": 1})

		a := create("dc1", "00:1a:2b:3c:72:02")
		create("dc2", "00:1a:2b:3c:72:03")
		create("dc2", "00:1a:2b:3c:72:04")
		check(v, 4, map[string]int{"dc1": 2, "dc2": 2})

		_, err := svc.Cancel(ctx, a.ID, "ops", "")
		require.NoError(t, err)
		_, err = svc.MarkReady(ctx, early.ID, "region:dc1") // a move that stays active
		require.NoError(t, err)
		check(v, 3, map[string]int{"dc1": 1, "dc2": 2})

		_, err = svc.Purge(ctx, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC), 0)
		require.NoError(t, err)
		check(v, 3, map[string]int{"dc1": 1, "dc2": 2})

		counts, _ := v.CountActive()
		_, by := v.CountActive()
		by["dc9"] = 100 // the caller's copy
		n, fresh := v.CountActive()
		assert.Equal(t, counts, n)
		assert.NotContains(t, fresh, "dc9")

		// Another view of the same store, filled by one listing.
		v2, _ := startView(t, svc, task.ViewConfig{})
		check(v2, 3, map[string]int{"dc1": 1, "dc2": 2})
	})
}
