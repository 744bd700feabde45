package task

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sync"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// ViewConfig configures a View. The zero value follows every task.
type ViewConfig struct {
	// Region, if set, keeps only that region's tasks.
	Region string
	// ActiveOnly keeps only tasks that have not ended: a task leaves the
	// view with the change that ends it.
	ActiveOnly bool
	// OnChange, if set, is called with every change of a task the view
	// holds or takes in, from the goroutine running Run, once the view
	// shows the change. Each task's changes come in revision order; a
	// region's view (Region and ActiveOnly) follows each task through a
	// watch of its own, so changes of different tasks may interleave out
	// of revision order there. t is the task as the view
	// knows it after the change: it may already reflect later changes (a
	// listing or Observe got there first); it is nil if the change removed
	// the task (Change.Removed) or the task could not be read. A task that
	// leaves the view by ending (ActiveOnly) is passed ended. The view
	// stands still while OnChange runs (it may write to the store, as a
	// region preparing a new task does, but the view falls behind
	// meanwhile).
	OnChange func(ctx context.Context, ch Change, t *Task)
	// OnFill, if set, is called after every listing (the first, and the
	// re-listings after a compaction or a broken watch) with the tasks the
	// view then holds, from the goroutine running Run, after Synced is
	// closed and before any change that follows the listing.
	OnFill func(ctx context.Context, tasks []*Task)
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// View is a reader's in-memory copy of the tasks it follows, filled by one
// listing and kept current by one watch: lists, lookups by machine and
// long-polls are served from memory instead of reading the store per
// request. The control plane keeps a View of every task, fed by one
// watch of all tasks; a region keeps a View of its own active tasks, fed
// by watches of its own tasks only. Tasks handed out are never modified:
// changes replace them whole. The filter belongs to the view so that what
// it reads to follow its tasks can narrow (a region reading only its own
// tasks' keys) without its users changing.
type View struct {
	svc *Service
	cfg ViewConfig
	log *slog.Logger
	src viewSource

	mu    sync.RWMutex
	tasks map[string]*viewEntry
	byMAC map[lpmos.MAC]string // active tasks only
	// active and activeIn count the active tasks held, in all and by
	// region, kept with every change so that counting is not a scan (the
	// control plane counts at every create).
	active   int
	activeIn map[string]int
	rev      int64
	updated  chan struct{} // closed and replaced whenever rev advances

	synced     chan struct{}
	syncedOnce sync.Once
}

type viewEntry struct {
	task *Task
	// rev is the newest store revision reflected in task: a change at or
	// before it is not folded again.
	rev int64
	// created is the revision that created the task (0: unknown). Of two
	// tasks of one machine that the view holds active, the later created
	// is the machine's active one: the other has ended, and its end has
	// not come through its own watch yet.
	created int64
	// changed is closed at the task's next change, waking long-polls.
	changed chan struct{}
}

// NewView returns a view of the tasks cfg selects; Run fills and follows
// it.
func NewView(svc *Service, cfg ViewConfig) *View {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	v := &View{
		svc: svc, cfg: cfg, log: cfg.Logger,
		tasks: map[string]*viewEntry{}, byMAC: map[lpmos.MAC]string{}, activeIn: map[string]int{},
		updated: make(chan struct{}), synced: make(chan struct{}),
	}
	v.src = allTasks{svc}
	if cfg.Region != "" && cfg.ActiveOnly {
		// Its tasks are the region's assignment keys: it need not
		// receive the rest of the fleet's traffic to find them.
		v.src = activeInRegion{svc: svc, region: cfg.Region}
	}
	return v
}

// viewSource is where a view's tasks come from: a listing, and the changes
// after it. Which one a view uses follows from its filter, so that a
// narrower source can serve a filter without the view's users noticing.
type viewSource interface {
	// list returns the tasks (a superset of the filter's is fine) and the
	// revision to watch from (exclusive).
	list(ctx context.Context) ([]*snapshot, int64, error)
	// watch streams the changes from rev on (a superset is fine) of the
	// tasks listed and of those that come after; each task's changes in
	// revision order. The channel closes when ctx ends or after a Change
	// carrying Err, once the source's goroutines are done.
	watch(ctx context.Context, rev int64, listed []*snapshot) <-chan Change
}

// allTasks lists and watches every task.
type allTasks struct{ svc *Service }

func (a allTasks) list(ctx context.Context) ([]*snapshot, int64, error) {
	return a.svc.readSnapshots(ctx)
}

func (a allTasks) watch(ctx context.Context, rev int64, _ []*snapshot) <-chan Change {
	return a.svc.Watch(ctx, rev)
}

// Run fills the view and follows the store until ctx ends. After a
// compaction or a broken watch it lists again and resumes; it never gives
// up while ctx lives, and returns nil when ctx ends.
func (v *View) Run(ctx context.Context) error {
	store.Follow(ctx, v.log, "task view", v.follow)
	return nil
}

func (v *View) follow(ctx context.Context) error {
	snaps, rev, err := v.src.list(ctx)
	if err != nil {
		return err
	}
	tasks := v.reset(snaps, rev)
	if v.cfg.OnFill != nil {
		v.cfg.OnFill(ctx, tasks)
	}
	wctx, cancel := context.WithCancel(ctx)
	changes := v.src.watch(wctx, rev+1, snaps)
	defer func() {
		cancel()
		for range changes { // the source's goroutines are done when it closes
		}
	}()
	for ch := range changes {
		if ch.Err != nil {
			return ch.Err
		}
		if t, ok := v.apply(ctx, ch); ok && v.cfg.OnChange != nil {
			v.cfg.OnChange(ctx, ch, t)
		}
	}
	if ctx.Err() == nil {
		return errors.New("task watch closed")
	}
	return ctx.Err()
}

// keeps reports whether t belongs in the view.
func (v *View) keeps(t *Task) bool {
	return (v.cfg.Region == "" || t.Metadata.RegionID == v.cfg.Region) &&
		(!v.cfg.ActiveOnly || !t.Status.Terminal())
}

// filtered reports whether the view holds only some tasks.
func (v *View) filtered() bool { return v.cfg.Region != "" || v.cfg.ActiveOnly }

// reset replaces the view's content with a listing at revision rev and
// returns the tasks kept.
func (v *View) reset(snaps []*snapshot, rev int64) []*Task {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.tasks {
		close(e.changed) // waiters read again from the new content
	}
	v.tasks, v.byMAC = make(map[string]*viewEntry, len(snaps)), map[lpmos.MAC]string{}
	v.active, v.activeIn = 0, map[string]int{}
	kept := make([]*Task, 0, len(snaps))
	for _, snap := range snaps {
		if v.keeps(snap.task) {
			v.putLocked(snap.task, max(rev, snap.readRev), snap.createRev)
			kept = append(kept, snap.task)
		}
	}
	v.rev = rev
	v.broadcastLocked()
	v.syncedOnce.Do(func() { close(v.synced) })
	return kept
}

// apply folds one change into the view. It returns the task after the
// change and whether the change concerns the view (and so is reported).
func (v *View) apply(ctx context.Context, ch Change) (*Task, bool) {
	var read *Task
	if v.needsRead(ch) {
		// A change for a task never seen created (possible only across a
		// re-list): read it whole.
		got, err := v.svc.Get(ctx, ch.TaskID)
		if err != nil {
			v.log.Warn("cannot read changed task", "task_id", ch.TaskID, "err", err)
		}
		read = got
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	defer v.advanceLocked(ch.Revision)
	old := v.tasks[ch.TaskID]
	var t *Task
	var created int64
	if old != nil {
		created = old.created
	}
	switch {
	case ch.Removed():
		if old == nil && v.filtered() {
			return nil, false // not one of ours, or already gone
		}
		v.removeLocked(ch.TaskID)
		return nil, true
	case old != nil && ch.Revision <= old.rev:
		return old.task, true // already reflected
	case old != nil:
		t = ch.Fold(old.task)
	case ch.Metadata != nil:
		t, created = ch.Fold(nil), ch.Revision // created after the listing: the change has it all
		if !v.keeps(t) {
			return nil, false
		}
	case v.filtered():
		// Not one of ours, or one that left the view: telling them apart
		// would cost a read per change of every other task.
		return nil, false
	default:
		t = read
		if t == nil {
			return nil, true
		}
	}
	if v.keeps(t) {
		v.putLocked(t, ch.Revision, created)
	} else {
		v.removeLocked(t.ID)
	}
	return t, true
}

// needsRead reports whether apply must read the changed task from the
// store.
func (v *View) needsRead(ch Change) bool {
	if v.filtered() || ch.Removed() || ch.Metadata != nil {
		return false
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.tasks[ch.TaskID] == nil
}

// Observe folds a task its caller has just written, as a Service move
// returned it (at store revision t.Revision), so that the caller reads its
// own write before the watch brings it. It only refreshes a task the view
// holds, and only with a newer state; a task that ended leaves an
// ActiveOnly view at once. OnChange is not called: the change is reported
// when the watch brings it, unless the task has left the view by then.
func (v *View) Observe(t *Task) {
	if t == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.tasks[t.ID]
	if old == nil || t.Revision <= old.rev {
		return
	}
	if v.keeps(t) {
		v.putLocked(t, t.Revision, old.created)
	} else {
		v.removeLocked(t.ID)
	}
}

func (v *View) putLocked(t *Task, rev, created int64) {
	v.countLocked(t, 1)
	if old := v.tasks[t.ID]; old != nil {
		v.countLocked(old.task, -1)
		close(old.changed)
		if mac := old.task.Metadata.TargetMAC; mac != t.Metadata.TargetMAC && v.byMAC[mac] == t.ID {
			delete(v.byMAC, mac)
		}
	}
	v.tasks[t.ID] = &viewEntry{task: t, rev: rev, created: created, changed: make(chan struct{})}
	mac := t.Metadata.TargetMAC
	switch {
	case !t.Status.Terminal():
		// A late change of an ended task must not take the machine from
		// its newer task (possible where tasks come through watches of
		// their own).
		if cur := v.tasks[v.byMAC[mac]]; cur == nil || cur.task.ID == t.ID || cur.created <= created {
			v.byMAC[mac] = t.ID
		}
	case v.byMAC[mac] == t.ID:
		delete(v.byMAC, mac)
	}
}

func (v *View) removeLocked(id string) {
	old := v.tasks[id]
	if old == nil {
		return
	}
	v.countLocked(old.task, -1)
	close(old.changed)
	delete(v.tasks, id)
	if mac := old.task.Metadata.TargetMAC; v.byMAC[mac] == id {
		delete(v.byMAC, mac)
	}
}

// countLocked adds delta to the active counts if t is active.
func (v *View) countLocked(t *Task, delta int) {
	if t.Status.Terminal() {
		return
	}
	v.active += delta
	r := t.Metadata.RegionID
	if n := v.activeIn[r] + delta; n > 0 {
		v.activeIn[r] = n
	} else {
		delete(v.activeIn, r)
	}
}

func (v *View) advanceLocked(rev int64) {
	if rev > v.rev {
		v.rev = rev
		v.broadcastLocked()
	}
}

func (v *View) broadcastLocked() {
	close(v.updated)
	v.updated = make(chan struct{})
}

// Synced is closed once the view has been filled the first time; until
// then it is empty and cannot tell a task that does not exist from one it
// has not read yet.
func (v *View) Synced() <-chan struct{} { return v.synced }

// Revision is the newest store revision the view reflects. For a region's
// view (Region and ActiveOnly), whose tasks come through watches of their
// own, it is the newest revision of a change it has applied: an older
// change of another of its tasks may still be on its way.
func (v *View) Revision() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.rev
}

// WaitRevision waits until the view reflects store revision rev (as
// Revision says), so that a caller that wrote at rev reads its own write
// from the view; it returns ctx's error if ctx ends first. A region's view
// reaches only the revisions of its own tasks' changes; its owner reads
// its own writes with Observe instead.
func (v *View) WaitRevision(ctx context.Context, rev int64) error {
	for {
		v.mu.RLock()
		done, ch := v.rev >= rev, v.updated
		v.mu.RUnlock()
		if done {
			select {
			case <-v.synced:
				return nil
			default:
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Get returns a task the view holds and a channel closed at its next
// change (or re-listing).
func (v *View) Get(id string) (*Task, <-chan struct{}, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	e := v.tasks[id]
	if e == nil {
		return nil, nil, false
	}
	return e.task, e.changed, true
}

// Active returns the active task of a machine, if the view holds it, and a
// channel closed at its next change (or re-listing).
func (v *View) Active(mac lpmos.MAC) (*Task, <-chan struct{}, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	e := v.tasks[v.byMAC[mac]]
	if e == nil {
		return nil, nil, false
	}
	return e.task, e.changed, true
}

// Tasks returns every task the view holds, in no particular order.
func (v *View) Tasks() []*Task {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]*Task, 0, len(v.tasks))
	for _, e := range v.tasks {
		out = append(out, e.task)
	}
	return out
}

// List serves a page as Service.List does, from memory; f must be
// normalized (Filter.Normalize).
func (v *View) List(f Filter) *Page {
	v.mu.RLock()
	matched := make([]*Task, 0, len(v.tasks))
	for _, e := range v.tasks {
		if f.Matches(e.task) {
			matched = append(matched, e.task)
		}
	}
	rev := v.rev
	v.mu.RUnlock()
	return pageOf(matched, f, rev)
}

// CountByStatus counts the tasks the view holds by status.
func (v *View) CountByStatus() map[Status]int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make(map[Status]int, len(statuses))
	for _, e := range v.tasks {
		out[e.task.Status]++
	}
	return out
}

// CountActive counts the active (not terminal) tasks the view holds, in
// all and by region.
func (v *View) CountActive() (total int, byRegion map[string]int) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.active, maps.Clone(v.activeIn)
}
