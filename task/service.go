// Package task owns LPMOS's install tasks: the model, the closed set of
// statuses and events with its pure transition table (Apply), the etcd key
// schema (keys.go, a contract with other tools), Service, which creates, reads, lists and moves
// tasks over any store.Store, and View, a reader's watch-fed copy of the
// tasks it follows.
//
// Every move is one compare-and-swap transaction that checks the status has
// not changed since it was read, writes the new status, the field the move
// owns (approval, hardware, progress, error) and the timeline entry
// together. Two writers racing on a task cannot both win; the loser gets
// ErrConflict and nothing half-written is left behind. Both the control
// plane (operator moves) and the regions (machine moves) use Service; they
// never talk to each other, only through the store.
//
// A failed or cancelled task never moves again: Retry starts its next
// attempt as a new task linked to it (Metadata.RetryOf, Attempt), in one
// transaction with the old task's retried timeline entry. A chain makes
// at most Metadata.MaxAttempts attempts; the failure of the last writes a
// dead-letter record (DeadTask, under DLQPrefix) in the failing
// transaction itself, so it is recorded exactly once whoever fails it.
//
// The package does not know about HTTP, DHCP or agents' wire formats.
package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
)

// Config configures a Service. The zero value is usable.
type Config struct {
	// Now is the clock (default time.Now, in UTC).
	Now func() time.Time
	// NewID makes task IDs (default random UUIDs).
	NewID func() string
	// ValidateOS decides at creation whether a region can install an OS;
	// it returns an error (ideally a *ValidationError) to refuse. The
	// default accepts the OSFamilies. Regions plug their capabilities in
	// here.
	ValidateOS func(ctx context.Context, regionID, osType, osVersion string) error
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Fence, if set, guards every write of the service: a writer that may
	// lose its right to write (a region process deposed as its region's
	// leader) cannot write after it lost it, whatever it believes.
	Fence Fence
	// MaxAttempts is the most attempts (the first and its retries) a task
	// created here may make (default DefaultMaxAttempts, at most
	// MaxMaxAttempts). It is written into the task's metadata and handed
	// down to its retries; a task that fails on its last attempt gets a
	// dead-letter record (DeadTask) in the transaction that fails it.
	MaxAttempts int
	// TracerProvider traces the tasks (see tracing.go): each task a trace
	// whose root span Create starts, each move a span in it. Default: a
	// no-op provider, which records nothing and stores no trace context.
	TracerProvider trace.TracerProvider
}

// Fence guards a Service's writes (Config.Fence): its compares are added to
// every transaction, so that a transaction of a writer that lost its
// right fails in the store itself, and when a transaction fails, Check says
// whether the fence is why.
type Fence interface {
	// Compares hold while the writer may write (for a region, its
	// leadership key still being the one it created).
	Compares() []store.Compare
	// Check is called after a transaction failed: a non-nil error means
	// the writer may no longer write, and the service returns it wrapped
	// with ErrFenced instead of retrying.
	Check(ctx context.Context) error
}

// ErrFenced: the service's Fence refused the write (see Config.Fence);
// the write was not made.
var ErrFenced = errors.New("task: fenced: this writer may no longer write")

// Service runs the task lifecycle over a store. It holds no state of its
// own: any number of Services may share one store.
type Service struct {
	st     store.Store
	cfg    Config
	tracer trace.Tracer
}

// NewService returns a Service over st.
func NewService(st store.Store, cfg Config) *Service {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewID == nil {
		cfg.NewID = func() string { return uuid.NewString() }
	}
	if cfg.ValidateOS == nil {
		cfg.ValidateOS = DefaultValidateOS
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	cfg.MaxAttempts = min(cfg.MaxAttempts, MaxMaxAttempts)
	return &Service{st: st, cfg: cfg, tracer: tracerOf(cfg.TracerProvider)}
}

// txn runs a transaction of the service: with the fence's compares, and
// ErrFenced when it failed because of them.
func (s *Service) txn(ctx context.Context, t store.Txn) (store.TxnResult, error) {
	if s.cfg.Fence == nil {
		return s.st.Txn(ctx, t)
	}
	t.If = append(slices.Clip(t.If), s.cfg.Fence.Compares()...)
	res, err := s.st.Txn(ctx, t)
	if err == nil && !res.Succeeded {
		if ferr := s.cfg.Fence.Check(ctx); ferr != nil {
			return res, fmt.Errorf("%w: %w", ErrFenced, ferr)
		}
	}
	return res, err
}

// DefaultValidateOS accepts the OSFamilies, any version.
func DefaultValidateOS(_ context.Context, _, osType, _ string) error {
	if slices.Contains(osFamilies[:], osType) {
		return nil
	}
	return invalid("os_type", "unknown OS type %q (known: %s)", truncate(osType), strings.Join(osFamilies[:], ", "))
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Millisecond) }

// MoveOption refines a move.
type MoveOption func(*moveOptions)

type moveOptions struct {
	expectRev int64
	source    string
}

// FromAddress records the network address a move came from in its
// timeline entry (TimelineEntry.Source): the region passes the address
// of the agent's hardware report, so that the operator who approves it
// sees where the report came from. It is cut to MaxSourceLen bytes.
func FromAddress(addr string) MoveOption {
	return func(o *moveOptions) { o.source = truncateTo(addr, MaxSourceLen) }
}

// MaxSourceLen bounds TimelineEntry.Source (an IPv6 address with zone
// fits).
const MaxSourceLen = 64

func truncateTo(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// ExpectRevision makes a move succeed only if the task's status has not
// changed since the read that returned Task.Revision == rev (HTTP's
// If-Match); otherwise it fails with ErrConflict.
func ExpectRevision(rev int64) MoveOption {
	return func(o *moveOptions) { o.expectRev = rev }
}

// Create validates the request and creates the task in status pending, in
// one transaction that also assigns it to its region and claims its MAC. A
// MAC with an active task yields an *ActiveTaskError (ErrConflict).
func (s *Service) Create(ctx context.Context, req CreateRequest) (_ *Task, err error) {
	mac, err := req.normalize()
	if err != nil {
		return nil, err
	}
	if err := s.cfg.ValidateOS(ctx, req.RegionID, req.OSType, req.OSVersion); err != nil {
		return nil, err
	}
	t, err := s.newTask(Metadata{
		RegionID:         req.RegionID,
		TargetMAC:        mac,
		OSType:           req.OSType,
		OSVersion:        req.OSVersion,
		DiskLayout:       req.DiskLayout,
		NetworkConfig:    req.NetworkConfig,
		Network:          req.Network,
		Hostname:         req.Hostname,
		SSHKeys:          req.SSHKeys,
		RootPasswordHash: req.RootPasswordHash,
		UserData:         req.UserData,
		CreatedBy:        req.CreatedBy,
		Tags:             req.Tags,
		Attempt:          1,
		MaxAttempts:      s.cfg.MaxAttempts,
		ID:               req.ID,
	}, "")
	if err != nil {
		return nil, err
	}
	// The task's root span: the caller's span, if any, is its parent.
	parent := trace.SpanContextFromContext(ctx)
	ctx, span := s.tracer.Start(ctx, "task "+t.ID, trace.WithAttributes(SpanAttrs(t)...))
	defer func() { endSpan(span, err) }()
	if sc := span.SpanContext(); sc.IsValid() && !sc.Equal(parent) {
		// A span of its own (sampled or not: the sampling decision travels
		// with it); a no-op tracer hands back the caller's, not the task's.
		t.Metadata.TraceParent = FormatTraceParent(ctx)
	}
	statusEvent(span, "", StatusPending)
	macKey := AgentKey(mac, AgentFieldTaskID)
	res, err := s.txn(ctx, store.Txn{
		If:   []store.Compare{store.Missing(macKey), store.Missing(TaskKey(t.ID, FieldMetadata))},
		Then: createOps(t),
	})
	if err != nil {
		return nil, fmt.Errorf("create task: %w", err)
	}
	if !res.Succeeded {
		if req.ID != "" {
			existing, gerr := s.Get(ctx, req.ID)
			switch {
			case gerr == nil:
				return nil, &ExistsError{Task: existing}
			case !errors.Is(gerr, ErrNotFound):
				return nil, fmt.Errorf("create task %s: %w", req.ID, gerr)
			}
		}
		active, gerr := s.st.Get(ctx, macKey)
		if gerr != nil {
			// The claim went away between the two reads: report a plain
			// conflict and let the caller retry.
			return nil, fmt.Errorf("create task for %s: %w", mac, ErrConflict)
		}
		return nil, &ActiveTaskError{MAC: mac, TaskID: string(active.Value)}
	}
	t.Revision = res.Revision
	return t, nil
}

// newTask makes a pending task of meta with a new ID, created now by
// meta.CreatedBy; note goes into its created entry.
func (s *Service) newTask(meta Metadata, note string) (*Task, error) {
	now := s.now()
	given := meta.ID != ""
	if !given {
		meta.ID = s.cfg.NewID()
	}
	meta.CreatedAt = now
	if err := lpmos.ValidateTaskID(meta.ID); err != nil {
		if given {
			return nil, invalid("id", "%v", err)
		}
		return nil, fmt.Errorf("task ID generator: %w", err)
	}
	return &Task{
		ID:       meta.ID,
		Status:   StatusPending,
		Metadata: meta,
		Timeline: []TimelineEntry{{Timestamp: now, Event: TimelineCreated, Status: StatusPending, Actor: meta.CreatedBy, Message: note}},
	}, nil
}

// createOps writes a new task t: its keys, its region's assignment and
// its machine's claim. The caller compares the claim missing.
func createOps(t *Task) []store.Op {
	return []store.Op{
		store.OpPut(TaskKey(t.ID, FieldMetadata), mustJSON(t.Metadata)),
		store.OpPut(TaskKey(t.ID, FieldStatus), []byte(t.Status)),
		store.OpPut(TaskKey(t.ID, FieldTimeline), mustJSON(t.Timeline)),
		store.OpPut(RegionTaskKey(t.Metadata.RegionID, t.ID), nil),
		store.OpPut(AgentKey(t.Metadata.TargetMAC, AgentFieldTaskID), []byte(t.ID)),
	}
}

// snapshot is a task as read, with the revisions the next move compares.
type snapshot struct {
	task        *Task
	statusRev   int64
	timelineRev int64
	// readRev is the store revision the task was read at: it reflects
	// every change made up to it.
	readRev int64
	// createRev is the revision that created the task.
	createRev int64
}

func checkID(id string) error {
	if err := lpmos.ValidateTaskID(id); err != nil {
		return invalid("task_id", "%v", err)
	}
	return nil
}

// load reads all keys of a task in one range.
func (s *Service) load(ctx context.Context, id string) (*snapshot, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	res, err := s.st.List(ctx, TaskPrefix(id), store.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("read task %s: %w", id, err)
	}
	snap, err := decodeSnapshot(id, res.KVs)
	if err != nil {
		return nil, err
	}
	snap.readRev = res.Revision
	return snap, nil
}

func decodeSnapshot(id string, kvs []store.KV) (*snapshot, error) {
	snap := &snapshot{task: &Task{ID: id}}
	haveMeta := false
	for _, kv := range kvs {
		_, f, ok := ParseTaskKey(kv.Key)
		if !ok {
			continue
		}
		if err := snap.task.decodeField(f, kv.Value); err != nil {
			return nil, fmt.Errorf("task %s: corrupt %s: %w", id, f, err)
		}
		switch f {
		case FieldMetadata:
			haveMeta = true
			snap.createRev = kv.CreateRevision
		case FieldStatus:
			snap.statusRev = kv.ModRevision
			snap.task.Revision = kv.ModRevision
		case FieldTimeline:
			snap.timelineRev = kv.ModRevision
		}
	}
	if !haveMeta || snap.statusRev == 0 {
		return nil, fmt.Errorf("task %s: %w", id, ErrNotFound)
	}
	return snap, nil
}

// decodeField fills one field of t from its stored value.
func (t *Task) decodeField(f Field, v []byte) error {
	switch f {
	case FieldMetadata:
		return json.Unmarshal(v, &t.Metadata)
	case FieldStatus:
		t.Status = Status(v)
		if !t.Status.Valid() {
			return fmt.Errorf("unknown status %q", v)
		}
	case FieldHardware:
		t.Hardware = new(hardware.Info)
		return json.Unmarshal(v, t.Hardware)
	case FieldApproval:
		t.Approval = new(Approval)
		return json.Unmarshal(v, t.Approval)
	case FieldProgress:
		t.Progress = new(Progress)
		return json.Unmarshal(v, t.Progress)
	case FieldError:
		t.Error = new(ErrorInfo)
		return json.Unmarshal(v, t.Error)
	case FieldLogs:
		t.Logs = string(v)
	case FieldTimeline:
		return json.Unmarshal(v, &t.Timeline)
	}
	return nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own types are marshalled; failing here is a bug.
		panic(fmt.Sprintf("task: marshal %T: %v", v, err))
	}
	return b
}

// Get returns the assembled task.
func (s *Service) Get(ctx context.Context, id string) (*Task, error) {
	snap, err := s.load(ctx, id)
	if err != nil {
		return nil, err
	}
	return snap.task, nil
}

// ActiveTask returns the active task of a machine, or ErrNotFound.
func (s *Service) ActiveTask(ctx context.Context, mac lpmos.MAC) (*Task, error) {
	kv, err := s.st.Get(ctx, AgentKey(mac, AgentFieldTaskID))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("active task of %s: %w", mac, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("active task of %s: %w", mac, err)
	}
	return s.Get(ctx, string(kv.Value))
}

// change is what a move writes besides status and timeline.
type change struct {
	ops    []store.Op
	apply  func(t *Task) // mirrors ops onto the returned view
	note   string        // timeline message
	source string        // timeline source address (FromAddress)
	extra  []TimelineEntry
	// dead, when set, is written as the task's dead-letter record, with
	// the timeline as the move leaves it.
	dead *DeadTask
}

// maxRetries bounds the retries of a write whose transaction lost to a
// concurrent write.
const maxRetries = 5

// write is one planned compare-and-swap write of a task: the transaction,
// and the task as it is once the transaction commits at revision rev.
type write struct {
	txn    store.Txn
	result func(rev int64) *Task
}

// update is the one compare-and-swap loop of the service: it reads task id,
// asks plan what to write, and runs that as one transaction whose compares
// make it fail if the keys it read changed meanwhile. A transaction that
// loses is planned again from a fresh read, at most maxRetries times (then
// ErrConflict), so plan decides on the current state every time. plan may
// refuse (its error is returned as is) or find nothing to write (a nil
// *write: its task is returned). what names the operation in errors
// ("approved task", "progress for task").
func (s *Service) update(ctx context.Context, id, what string, plan func(snap *snapshot) (*write, *Task, error)) (*Task, error) {
	for attempt := 0; ; attempt++ {
		snap, err := s.load(ctx, id)
		if err != nil {
			return nil, err
		}
		w, t, err := plan(snap)
		if err != nil || w == nil {
			return t, err
		}
		res, err := s.txn(ctx, w.txn)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, id, err)
		}
		if res.Succeeded {
			return w.result(res.Revision), nil
		}
		if attempt == maxRetries {
			return nil, fmt.Errorf("%s %s: too much contention: %w", what, id, ErrConflict)
		}
	}
}

// unchanged compares a task's status and timeline with the revisions snap
// read them at.
func unchanged(snap *snapshot) []store.Compare {
	return []store.Compare{
		store.ModRevisionIs(TaskKey(snap.task.ID, FieldStatus), snap.statusRev),
		store.ModRevisionIs(TaskKey(snap.task.ID, FieldTimeline), snap.timelineRev),
	}
}

// move runs one transition as a single compare-and-swap. It fails with
// ErrConflict when the status changed between read and write (or since the
// revision the caller expects), so of several racing moves exactly one wins;
// a write that left the status alone (a progress or timeline update) only
// makes it try again.
func (s *Service) move(ctx context.Context, id string, ev Event, by string, opts []MoveOption, build func(t *Task, now time.Time) (change, error)) (moved *Task, err error) {
	if err := checkActor(by); err != nil {
		return nil, err
	}
	var o moveOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := checkLine("source", o.source, MaxSourceLen); err != nil {
		return nil, err
	}
	var firstStatusRev int64
	// The move's span, in the task's trace, starts once the task is read.
	var span trace.Span
	var from Status
	defer func() {
		if span == nil {
			return
		}
		if err == nil && moved != nil {
			statusEvent(span, from, moved.Status)
		}
		endSpan(span, err)
	}()
	return s.update(ctx, id, string(ev)+" task", func(snap *snapshot) (*write, *Task, error) {
		if span == nil {
			_, span = StartTaskSpan(ctx, s.tracer, snap.task, "task "+string(ev), trace.WithAttributes(AttrEvent.String(string(ev))))
			from = snap.task.Status
		}
		if o.expectRev != 0 && snap.statusRev != o.expectRev {
			return nil, nil, fmt.Errorf("%s task %s: status changed since revision %d: %w", ev, id, o.expectRev, ErrConflict)
		}
		if firstStatusRev == 0 {
			firstStatusRev = snap.statusRev
		} else if snap.statusRev != firstStatusRev {
			return nil, nil, fmt.Errorf("%s task %s: status changed concurrently: %w", ev, id, ErrConflict)
		}
		b := build
		if o.source != "" {
			b = func(t *Task, now time.Time) (change, error) {
				ch, err := build(t, now)
				ch.source = o.source
				return ch, err
			}
		}
		w, err := s.transition(snap, ev, by, b)
		return w, nil, err
	})
}

// transition plans the move of snap's task by ev: the new status, its
// timeline entry and what build adds, compared against the status and
// timeline as read.
func (s *Service) transition(snap *snapshot, ev Event, by string, build func(t *Task, now time.Time) (change, error)) (*write, error) {
	t := snap.task
	next, err := Apply(t.Status, ev)
	if err != nil {
		return nil, fmt.Errorf("task %s: %w", t.ID, err)
	}
	now := s.now()
	ch, err := build(t, now)
	if err != nil {
		return nil, err
	}
	entry := TimelineEntry{Timestamp: now, Event: string(ev), Status: next, Actor: by, Message: ch.note, Source: ch.source}
	timeline := append(append(slices.Clone(t.Timeline), entry), ch.extra...)
	ops := append([]store.Op{
		store.OpPut(TaskKey(t.ID, FieldStatus), []byte(next)),
		store.OpPut(TaskKey(t.ID, FieldTimeline), mustJSON(timeline)),
	}, ch.ops...)
	if ch.dead != nil {
		d := *ch.dead
		d.Timeline, d.DeadAt = timeline, now
		ops = append(ops, store.OpPut(DLQKey(DLQTasks, t.ID), mustJSON(d)))
	}
	if next.Terminal() {
		// The machine is free for a new task; the region forgets it.
		ops = append(ops,
			store.OpDelete(AgentKey(t.Metadata.TargetMAC, AgentFieldTaskID)),
			store.OpDelete(RegionTaskKey(t.Metadata.RegionID, t.ID)))
	}
	return &write{
		txn: store.Txn{If: unchanged(snap), Then: ops},
		result: func(rev int64) *Task {
			t.Status, t.Revision, t.Timeline = next, rev, timeline
			if ch.apply != nil {
				ch.apply(t)
			}
			return t
		},
	}, nil
}

// Approve approves a task waiting in pending_approval.
func (s *Service) Approve(ctx context.Context, id, by, notes string, opts ...MoveOption) (*Task, error) {
	if err := checkText("notes", notes, MaxTextLen); err != nil {
		return nil, err
	}
	return s.move(ctx, id, EventApproved, by, opts, func(t *Task, now time.Time) (change, error) {
		a := &Approval{Status: "approved", ApprovedBy: by, ApprovedAt: now, Notes: notes}
		return change{
			ops:   []store.Op{store.OpPut(TaskKey(t.ID, FieldApproval), mustJSON(a))},
			apply: func(t *Task) { t.Approval = a },
			note:  notes,
		}, nil
	})
}

// Reject rejects a task waiting in pending_approval; the machine is told to
// stop.
func (s *Service) Reject(ctx context.Context, id, by, reason string, opts ...MoveOption) (*Task, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, invalid("reason", "is required")
	}
	if err := checkText("reason", reason, MaxTextLen); err != nil {
		return nil, err
	}
	return s.move(ctx, id, EventRejected, by, opts, func(t *Task, now time.Time) (change, error) {
		a := &Approval{Status: "rejected", RejectedBy: by, RejectedAt: now, Reason: reason}
		return change{
			ops:   []store.Op{store.OpPut(TaskKey(t.ID, FieldApproval), mustJSON(a))},
			apply: func(t *Task) { t.Approval = a },
			note:  reason,
		}, nil
	})
}

// Cancel ends a task that is not over yet.
func (s *Service) Cancel(ctx context.Context, id, by, reason string, opts ...MoveOption) (*Task, error) {
	if err := checkText("reason", reason, MaxTextLen); err != nil {
		return nil, err
	}
	return s.move(ctx, id, EventCancelled, by, opts, func(*Task, time.Time) (change, error) {
		return change{note: reason}, nil
	})
}

// MarkReady records that the region prepared the task's boot (pending →
// ready).
func (s *Service) MarkReady(ctx context.Context, id, by string, opts ...MoveOption) (*Task, error) {
	return s.move(ctx, id, EventPrepared, by, opts, noChange)
}

// MarkBooting records that the machine fetched its boot script (ready →
// booting).
func (s *Service) MarkBooting(ctx context.Context, id, by string, opts ...MoveOption) (*Task, error) {
	return s.move(ctx, id, EventBootStarted, by, opts, noChange)
}

func noChange(*Task, time.Time) (change, error) { return change{}, nil }

// ReportHardware stores the agent's hardware report and moves the task to
// pending_approval.
func (s *Service) ReportHardware(ctx context.Context, id, by string, hw hardware.Info, opts ...MoveOption) (*Task, error) {
	if err := hw.Validate(); err != nil {
		var ve *hardware.ValidationError
		if errors.As(err, &ve) {
			return nil, invalid("hardware."+ve.Field, "%s", ve.Reason)
		}
		return nil, invalid("hardware", "%v", err)
	}
	return s.move(ctx, id, EventHardwareReported, by, opts, func(t *Task, _ time.Time) (change, error) {
		if hw.MACAddress != "" {
			if mac, err := lpmos.ParseMAC(hw.MACAddress); err != nil || mac != t.Metadata.TargetMAC {
				return change{}, invalid("hardware.mac_address", "%q is not the task's machine %s", truncate(hw.MACAddress), t.Metadata.TargetMAC)
			}
		}
		return change{
			ops:   []store.Op{store.OpPut(TaskKey(t.ID, FieldHardware), mustJSON(hw))},
			apply: func(t *Task) { t.Hardware = &hw },
		}, nil
	})
}

// Completion is how an install ended, as its agent reports it; it is kept
// as the completed task's final progress.
type Completion struct {
	// Message is the final progress message and the timeline note.
	Message string
	// Details describe the result (e.g. what was written and its hash).
	Details map[string]any
}

// Complete records that the install finished (installing → completed).
func (s *Service) Complete(ctx context.Context, id, by string, c Completion, opts ...MoveOption) (*Task, error) {
	final := Progress{Stage: StageCompleted, Percentage: 100, Message: c.Message, Details: c.Details}
	if err := final.Validate(); err != nil {
		return nil, err
	}
	return s.move(ctx, id, EventCompleted, by, opts, func(t *Task, now time.Time) (change, error) {
		p := final
		p.UpdatedAt = now
		return change{
			ops:   []store.Op{store.OpPut(TaskKey(t.ID, FieldProgress), mustJSON(p))},
			apply: func(t *Task) { t.Progress = &p },
			note:  c.Message,
		}, nil
	})
}

// RecordFirstBoot records that the installed system of a completed task
// booted and phoned home: a first_boot timeline entry, the status stays
// completed. It is recorded once; a repeated call (the installed system
// retrying after a lost answer) returns the task unchanged. A task that is
// not completed is refused with ErrInvalidTransition.
func (s *Service) RecordFirstBoot(ctx context.Context, id, by, message string) (*Task, error) {
	if err := checkActor(by); err != nil {
		return nil, err
	}
	if err := checkText("message", message, MaxTextLen); err != nil {
		return nil, err
	}
	return s.update(ctx, id, "first boot of task", func(snap *snapshot) (*write, *Task, error) {
		t := snap.task
		if t.Status != StatusCompleted {
			return nil, nil, fmt.Errorf("first boot of task %s: %w: the task is %s, not %s", id, ErrInvalidTransition, t.Status, StatusCompleted)
		}
		for _, e := range t.Timeline {
			if e.Event == TimelineFirstBoot {
				return nil, t, nil
			}
		}
		t.Timeline = append(t.Timeline, TimelineEntry{Timestamp: s.now(), Event: TimelineFirstBoot, Status: t.Status, Actor: by, Message: message})
		return &write{
			txn:    store.Txn{If: unchanged(snap), Then: []store.Op{store.OpPut(TaskKey(id, FieldTimeline), mustJSON(t.Timeline))}},
			result: func(int64) *Task { return t },
		}, nil, nil
	})
}

// MaxRefusals bounds the TimelineRefused entries of one task: requests
// without credentials cause them, so that without a bound anyone who
// knows a MAC could grow the task's timeline key without limit.
const MaxRefusals = 20

// RecordRefusal adds a TimelineRefused entry to an active task's timeline
// in one compare-and-swap, without moving its status: the region refused
// a request for the task's machine from source (an address). Once the
// task has MaxRefusals such entries, or when it has ended, nothing is
// written and the task is returned as it is.
func (s *Service) RecordRefusal(ctx context.Context, id, by, source, message string) (*Task, error) {
	if err := checkActor(by); err != nil {
		return nil, err
	}
	if err := checkText("message", message, MaxTextLen); err != nil {
		return nil, err
	}
	source = truncateTo(source, MaxSourceLen)
	if err := checkLine("source", source, MaxSourceLen); err != nil {
		return nil, err
	}
	return s.update(ctx, id, "refusal for task", func(snap *snapshot) (*write, *Task, error) {
		t := snap.task
		if t.Status.Terminal() {
			return nil, t, nil
		}
		n := 0
		for _, e := range t.Timeline {
			if e.Event == TimelineRefused {
				n++
			}
		}
		if n >= MaxRefusals {
			return nil, t, nil
		}
		t.Timeline = append(t.Timeline, TimelineEntry{Timestamp: s.now(), Event: TimelineRefused, Status: t.Status, Actor: by, Message: message, Source: source})
		return &write{
			txn:    store.Txn{If: unchanged(snap), Then: []store.Op{store.OpPut(TaskKey(id, FieldTimeline), mustJSON(t.Timeline))}},
			result: func(int64) *Task { return t },
		}, nil, nil
	})
}

// MaxPowerEntries bounds the TimelinePower (and the TimelineRules) entries
// of one task: a BMC that keeps failing cannot grow the timeline without
// end.
const MaxPowerEntries = 32

// PowerCodeFailed is the ErrorInfo.Code of a task failed because its
// machine's BMC did not do what the task needed (power on for the boot).
const PowerCodeFailed = "power_failed"

// RecordPower adds a TimelinePower entry to a task's timeline without
// moving its status; unlike a refusal it is recorded on an ended task
// too (the power-off after a rejection). Beyond MaxPowerEntries nothing is
// written and the task is returned as it is.
func (s *Service) RecordPower(ctx context.Context, id, by, message string) (*Task, error) {
	return s.recordNote(ctx, id, by, TimelinePower, message)
}

// RecordRules adds a TimelineRules entry: the auto-approval rules that
// applied to the task's report and why none approved it.
func (s *Service) RecordRules(ctx context.Context, id, by, message string) (*Task, error) {
	return s.recordNote(ctx, id, by, TimelineRules, message)
}

// recordNote appends a timeline entry of event that moves nothing, at most
// MaxPowerEntries of that event per task.
func (s *Service) recordNote(ctx context.Context, id, by, event, message string) (*Task, error) {
	if err := checkActor(by); err != nil {
		return nil, err
	}
	if err := checkText("message", message, MaxTextLen); err != nil {
		return nil, err
	}
	return s.update(ctx, id, event+" entry for task", func(snap *snapshot) (*write, *Task, error) {
		t := snap.task
		n := 0
		for _, e := range t.Timeline {
			if e.Event == event {
				n++
			}
		}
		if n >= MaxPowerEntries {
			return nil, t, nil
		}
		t.Timeline = append(t.Timeline, TimelineEntry{Timestamp: s.now(), Event: event, Status: t.Status, Actor: by, Message: message})
		return &write{
			txn:    store.Txn{If: unchanged(snap), Then: []store.Op{store.OpPut(TaskKey(id, FieldTimeline), mustJSON(t.Timeline))}},
			result: func(int64) *Task { return t },
		}, nil, nil
	})
}

// Fail ends a task with error information, from any non-terminal status.
func (s *Service) Fail(ctx context.Context, id, by string, info ErrorInfo, opts ...MoveOption) (*Task, error) {
	if err := info.validate(); err != nil {
		return nil, err
	}
	return s.move(ctx, id, EventFailed, by, opts, func(t *Task, now time.Time) (change, error) {
		if info.Stage == "" {
			info.Stage = string(t.Status)
			if t.Progress != nil && t.Status == StatusInstalling {
				info.Stage = string(t.Progress.Stage)
			}
		}
		info.OccurredAt = now
		ch := change{
			ops:   []store.Op{store.OpPut(TaskKey(t.ID, FieldError), mustJSON(info))},
			apply: func(t *Task) { t.Error = &info },
			note:  info.Code + ": " + info.Message,
		}
		if t.Attempt() >= t.MaxAttempts() {
			// The last allowed attempt: nothing retries it, so it goes
			// to the dead-letter list, in this very transaction (it is
			// recorded once, by whoever failed it).
			ch.dead = &DeadTask{
				TaskID: t.ID, RegionID: t.Metadata.RegionID, TargetMAC: t.Metadata.TargetMAC,
				OSType: t.Metadata.OSType, OSVersion: t.Metadata.OSVersion,
				Attempts: t.Attempt(), MaxAttempts: t.MaxAttempts(), RetryOf: t.Metadata.RetryOf, Error: info,
			}
		}
		return ch, nil
	})
}

// Retry starts a new attempt of a failed or cancelled task: a new pending
// task with the same spec (region, machine, OS, disk, network, tags),
// Metadata.RetryOf naming task id and the next attempt number, created
// by by. In the same transaction the old task's timeline gets a retried
// entry naming the new one, and the machine is claimed as Create claims
// it. It is refused with a *RetryError (ErrConflict) when the task is
// not failed or cancelled, was retried already, was its chain's last
// allowed attempt (its MaxAttempts), or its machine has an active task;
// of two retries racing, exactly one wins and the other gets
// RetryAlreadyRetried. ExpectRevision applies to the old task. The OS is
// checked again (Config.ValidateOS): the region may no longer offer it.
func (s *Service) Retry(ctx context.Context, id, by string, opts ...MoveOption) (_ *Task, err error) {
	if err := checkActor(by); err != nil {
		return nil, err
	}
	var o moveOptions
	for _, opt := range opts {
		opt(&o)
	}
	// The new task's root span, linked to the old task's trace; a plan
	// that loses its transaction ends its span and the next starts anew.
	var span trace.Span
	defer func() {
		if span != nil {
			endSpan(span, err)
		}
	}()
	return s.update(ctx, id, "retry task", func(snap *snapshot) (*write, *Task, error) {
		old := snap.task
		if o.expectRev != 0 && snap.statusRev != o.expectRev {
			return nil, nil, fmt.Errorf("retry task %s: status changed since revision %d: %w", id, o.expectRev, ErrConflict)
		}
		if old.Status != StatusFailed && old.Status != StatusCancelled {
			return nil, nil, &RetryError{Reason: RetryNotRetryable,
				Message: fmt.Sprintf("task %s is %s: only failed or cancelled tasks can be retried", id, old.Status)}
		}
		if next := old.RetriedAs(); next != "" {
			return nil, nil, &RetryError{Reason: RetryAlreadyRetried, TaskID: next,
				Message: fmt.Sprintf("task %s was retried already as task %s", id, next)}
		}
		attempt := old.Attempt() + 1
		if attempt > old.MaxAttempts() {
			return nil, nil, &RetryError{Reason: RetryAttemptsExhausted,
				Message: fmt.Sprintf("task %s was attempt %d of at most %d: no attempts left", id, old.Attempt(), old.MaxAttempts())}
		}
		macKey := AgentKey(old.Metadata.TargetMAC, AgentFieldTaskID)
		if kv, err := s.st.Get(ctx, macKey); err == nil {
			ae := &ActiveTaskError{MAC: old.Metadata.TargetMAC, TaskID: string(kv.Value)}
			return nil, nil, &RetryError{Reason: RetryActiveTask, TaskID: ae.TaskID, err: ae,
				Message: fmt.Sprintf("machine %s already has active task %s", ae.MAC, ae.TaskID)}
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, nil, fmt.Errorf("retry task %s: %w", id, err)
		}
		m := old.Metadata
		if err := s.cfg.ValidateOS(ctx, m.RegionID, m.OSType, m.OSVersion); err != nil {
			return nil, nil, err
		}
		m.ID = "" // a new one
		m.CreatedBy, m.RetryOf, m.Attempt, m.MaxAttempts = by, id, attempt, old.MaxAttempts()
		m.TraceParent = "" // a trace of its own
		nt, err := s.newTask(m, fmt.Sprintf("attempt %d of %d, retrying task %s", attempt, m.MaxAttempts, id))
		if err != nil {
			return nil, nil, err
		}
		if span != nil {
			span.End()
		}
		startOpts := []trace.SpanStartOption{trace.WithAttributes(SpanAttrs(nt)...)}
		if sc := ParseTraceParent(old.Metadata.TraceParent); sc.IsValid() {
			startOpts = append(startOpts, trace.WithLinks(trace.Link{SpanContext: sc}))
		}
		parent := trace.SpanContextFromContext(ctx)
		var tctx context.Context
		tctx, span = s.tracer.Start(ctx, "task "+nt.ID, startOpts...)
		if sc := span.SpanContext(); sc.IsValid() && !sc.Equal(parent) {
			nt.Metadata.TraceParent = FormatTraceParent(tctx)
		}
		statusEvent(span, "", StatusPending)
		timeline := append(slices.Clone(old.Timeline), TimelineEntry{
			Timestamp: nt.Metadata.CreatedAt, Event: TimelineRetried, Status: old.Status, Actor: by,
			Message: fmt.Sprintf("retried as task %s (attempt %d)", nt.ID, attempt), RetriedAs: nt.ID,
		})
		cmps := append(unchanged(snap), store.Missing(macKey), store.Missing(TaskKey(nt.ID, FieldMetadata)))
		ops := append(createOps(nt), store.OpPut(TaskKey(id, FieldTimeline), mustJSON(timeline)))
		return &write{
			txn:    store.Txn{If: cmps, Then: ops},
			result: func(rev int64) *Task { nt.Revision = rev; return nt },
		}, nil, nil
	})
}

// PutProgress writes a progress report of a task installing, in the
// stage its stored progress already has, without reading the task: only
// the progress key, and only if the task's status has not changed since
// statusRev (its Revision as the caller last saw it). It reports false,
// having written nothing, when the status moved; the caller then goes
// through ReportProgress. The caller vouches for the stage (a region knows
// the stage it last wrote): a new stage must go through ReportProgress,
// which adds its timeline entry.
func (s *Service) PutProgress(ctx context.Context, id string, p Progress, statusRev int64) (bool, error) {
	if err := p.Validate(); err != nil {
		return false, err
	}
	if err := checkID(id); err != nil {
		return false, err
	}
	p.UpdatedAt = s.now()
	res, err := s.txn(ctx, store.Txn{
		If:   []store.Compare{store.ModRevisionIs(TaskKey(id, FieldStatus), statusRev)},
		Then: []store.Op{store.OpPut(TaskKey(id, FieldProgress), mustJSON(p))},
	})
	if err != nil {
		return false, fmt.Errorf("progress for task %s: %w", id, err)
	}
	return res.Succeeded, nil
}

// ReportProgress records the install's progress. The first report after
// approval also moves the task to installing; a new stage adds a timeline
// entry; a report within the same stage writes only the progress key. It is
// refused (ErrInvalidTransition) unless the task is approved or installing.
func (s *Service) ReportProgress(ctx context.Context, id, by string, p Progress) (*Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if err := checkActor(by); err != nil {
		return nil, err
	}
	var from Status
	t, err := s.update(ctx, id, "progress for task", func(snap *snapshot) (*write, *Task, error) {
		t := snap.task
		from = t.Status
		p.UpdatedAt = s.now()
		switch t.Status {
		case StatusApproved:
			// One transaction: installing, the stage entry, the progress.
			w, err := s.transition(snap, EventInstallStarted, by, func(t *Task, now time.Time) (change, error) {
				return change{
					ops:   []store.Op{store.OpPut(TaskKey(t.ID, FieldProgress), mustJSON(p))},
					apply: func(t *Task) { t.Progress = &p },
					extra: []TimelineEntry{{Timestamp: now, Event: TimelineStageChanged, Status: StatusInstalling, Stage: p.Stage, Actor: by, Message: p.Message}},
				}, nil
			})
			return w, nil, err
		case StatusInstalling:
		default:
			return nil, nil, fmt.Errorf("progress for task %s: %w", id, &TransitionError{From: t.Status, Event: EventInstallStarted})
		}
		// Within installing only the status must hold: a concurrent
		// progress report may be overwritten, the newest wins.
		cmps := []store.Compare{store.ModRevisionIs(TaskKey(id, FieldStatus), snap.statusRev)}
		ops := []store.Op{store.OpPut(TaskKey(id, FieldProgress), mustJSON(p))}
		if t.Progress == nil || t.Progress.Stage != p.Stage {
			t.Timeline = append(t.Timeline, TimelineEntry{Timestamp: p.UpdatedAt, Event: TimelineStageChanged, Status: t.Status, Stage: p.Stage, Actor: by, Message: p.Message})
			cmps = append(cmps, store.ModRevisionIs(TaskKey(id, FieldTimeline), snap.timelineRev))
			ops = append(ops, store.OpPut(TaskKey(id, FieldTimeline), mustJSON(t.Timeline)))
		}
		return &write{
			txn:    store.Txn{If: cmps, Then: ops},
			result: func(int64) *Task { t.Progress = &p; return t },
		}, nil, nil
	})
	if err == nil {
		// The caller's span (the region's, of the agent's call) tells.
		statusEvent(trace.SpanFromContext(ctx), from, t.Status)
	}
	return t, err
}
