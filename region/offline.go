package region

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/region/journal"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// A region cut off from the store keeps its machines going (Config.JournalDir).
//
// The agent calls that must reach the store (hardware reports, progress,
// failures and completions) go through agentWrite. While the store answers
// they are written as always, each bounded by Config.StoreTimeout. When a
// write fails because the store is out of reach (store.ErrUnavailable, or
// the timeout: not a conflict, a refused transition or bad input), the
// call is appended to the journal on the region's disk, fsynced, and the
// agent is answered as the store write would have answered it: progress
// "received", a hardware report "received" with next action
// wait_for_approval, a completion "completed". From then on, while the
// journal holds records, every such call is journaled too, so that the
// store receives them in the order the agents made them. A full journal
// refuses the call with 503 and Retry-After: the agent retries, nothing is
// lost.
//
// Tokens are checked from the region's memory: the token records it read
// or wrote are used past their cache TTL when the store does not answer,
// and the task from the region's watch-fed view. The agent's last contact
// and the token's first use are not written while journaling.
//
// Leadership. The election (leader.go) ends a term whose lease the
// process could not renew at its deadline. A process whose term so lapsed,
// and whose store calls still fail, is cut off (leadership.cutOff): it led
// until the store went away and has heard nothing since of another term.
// With a journal it goes on answering the agent API (only: no DHCP, no
// boot scripts, no timeouts, which need the store or the leadership) from
// its view and its journal. The moment the store answers again, the
// process either leads again (its campaign wins) or learns that another
// process leads; in the latter case it is a standby and answers its
// agents 503 like any standby, so a deposed leader never acts while
// another leads.
//
// Replay. The replayer applies the journal, in order, only while this
// process leads: each record through the task service the agent call
// would have used, fenced by the term like every write, with the
// compare-and-swap of the task's status (a hardware report expects the
// status revision the region saw when it accepted it). A record the store
// refuses because the task moved on meanwhile (a conflict, a transition
// no longer allowed: the record was applied before, the store's answer
// lost, or an operator cancelled the task) is dropped with a log line and
// never applied twice; a record that fails because the store is gone
// again waits for the next pass. Timeline entries and progress carry the
// time the region accepted the call, not the time of the replay. A
// process that reconnects as a standby keeps its journal and replays it
// when it next leads; its records then most likely conflict with what the
// leader did meanwhile and are dropped (a journal is meant for a region
// run as a single process: in a pair, the standby is the answer to the
// leader's outage).
//
// Timeouts. Only the leader fails tasks on a status timeout, so nothing
// times out while the region is cut off, and none fire while the journal
// holds records (activity the store has not seen). Once the process leads
// again after a cut-off or after journaling, a task's idle time counts
// from the later of its last activity and that moment (storeBack): the
// time the region could not reach the store never counts against a task.

// JournalFile is the journal's file name in Config.JournalDir.
const JournalFile = "agent.journal"

// DefaultStoreTimeout bounds an agent call's store write when the region
// has a journal: past it, the call is journaled.
const DefaultStoreTimeout = 5 * time.Second

// replayInterval is how often the replayer looks at the journal (it is
// also woken by each append).
const replayInterval = 500 * time.Millisecond

// offline is the region's state for a store out of reach.
type offline struct {
	j    *journal.Journal
	wake chan struct{}

	mu sync.Mutex
	// wasCut: the process was cut off, or journaled a call, since it last
	// led; storeBack is when it led again after that.
	wasCut    bool
	storeBack time.Time
}

func openJournal(dir string, limits journal.Limits) (*offline, error) {
	if dir == "" {
		return &offline{}, nil
	}
	j, err := journal.Open(filepath.Join(dir, JournalFile), limits)
	if err != nil {
		return nil, err
	}
	// Records left from before a restart: the process was cut off then.
	return &offline{j: j, wake: make(chan struct{}, 1), wasCut: j.Len() > 0}, nil
}

// JournalDepth is the number of agent calls journaled and not yet applied.
func (r *Region) JournalDepth() int {
	if r.off.j == nil {
		return 0
	}
	return r.off.j.Len()
}

// CutOff reports whether this process is cut off from the store and
// serves its agents from its journal (see above).
func (r *Region) CutOff() bool { return r.off.j != nil && r.lead.cutOff() }

// journaling reports whether agent writes go to the journal rather than
// the store now: it holds records not yet applied, or the process is cut
// off.
func (r *Region) journaling() bool {
	return r.off.j != nil && (r.off.j.Len() > 0 || r.lead.cutOff())
}

// agentStarting is starting for the agent API: a process cut off from the
// store with a journal serves its agents.
func (r *Region) agentStarting(w http.ResponseWriter) bool {
	if r.CutOff() {
		select {
		case <-r.synced:
			return false
		default:
		}
	}
	return r.starting(w)
}

// agentCall is what a journal record holds of an agent call.
type agentCall struct {
	kind   string
	t      *task.Task
	mac    lpmos.MAC
	source string
	body   any
}

// errJournalFull refuses an agent call the region can neither write nor
// journal: the agent retries.
var errJournalFull = &httpjson.Error{Status: http.StatusServiceUnavailable, Code: httpjson.CodeUnavailable,
	Message: "the store is out of reach and the region's journal is full; retry", RetryAfter: 5 * time.Second}

// agentWrite runs write, an agent call's store write, or journals the call
// when the store is out of reach; journaled reports the latter. Without a
// journal it only runs write.
func (r *Region) agentWrite(ctx context.Context, c agentCall, write func(context.Context) error) (journaled bool, err error) {
	if r.off.j == nil {
		return false, write(ctx)
	}
	if !r.journaling() {
		wctx, cancel := context.WithTimeout(ctx, r.cfg.StoreTimeout)
		err := write(wctx)
		cancel()
		if err == nil || !unreachable(err) || ctx.Err() != nil {
			return false, err
		}
		r.log.Warn("the store is out of reach: agent call journaled", "task", c.t.ID, "mac", c.mac.String(), "kind", c.kind, "err", err)
	}
	body, err := json.Marshal(c.body)
	if err != nil {
		return false, err
	}
	_, err = r.off.j.Append(journal.Record{Kind: c.kind, TaskID: c.t.ID, MAC: c.mac.String(), Source: c.source,
		At: r.cfg.Now().UTC(), StatusRev: c.t.Revision, Body: body})
	if err != nil {
		r.log.Error("journal an agent call", "task", c.t.ID, "mac", c.mac.String(), "kind", c.kind, "err", err)
		return false, errJournalFull
	}
	r.off.mu.Lock()
	r.off.wasCut = true
	r.off.mu.Unlock()
	select {
	case r.off.wake <- struct{}{}:
	default:
	}
	return true, nil
}

// unreachable reports whether a store call failed because the store did
// not answer (as opposed to refusing).
func unreachable(err error) bool {
	return errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)
}

// storeBackAt is when the region last led again after being cut off or
// journaling (zero if it never was).
func (r *Region) storeBackAt() time.Time {
	r.off.mu.Lock()
	defer r.off.mu.Unlock()
	return r.off.storeBack
}

// replayLoop applies the journal whenever this process leads and it holds
// records; it also notes cut-offs for the timeouts. It closes the journal
// when ctx ends.
func (r *Region) replayLoop(ctx context.Context) error {
	if r.off.j == nil {
		return nil
	}
	defer r.off.j.Close()
	tick := time.NewTicker(replayInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-r.off.wake:
		}
		if r.lead.cutOff() {
			r.off.mu.Lock()
			r.off.wasCut = true
			r.off.mu.Unlock()
		}
		if !r.lead.leading() {
			continue
		}
		// Leading again after a cut-off: the idle time of tasks starts
		// over now, before the replay (and so before the timeouts, which
		// wait for the journal, can look at them).
		r.off.mu.Lock()
		if r.off.wasCut {
			r.off.wasCut, r.off.storeBack = false, r.cfg.Now()
		}
		r.off.mu.Unlock()
		if n := r.off.j.Len(); n > 0 && r.replay(ctx) {
			r.log.Info("journal replayed", "records", n)
		}
	}
}

// replay applies the journal's records in order and reports whether it
// applied (or dropped) them all; it stops at the first that fails because
// the store is out of reach or this process no longer leads.
func (r *Region) replay(ctx context.Context) bool {
	for _, rec := range r.off.j.Pending() {
		if !r.lead.leading() || ctx.Err() != nil {
			return false
		}
		actx, cancel := context.WithTimeout(ctx, r.cfg.StoreTimeout)
		err := r.apply(actx, rec)
		cancel()
		if err != nil && (unreachable(err) || errors.Is(err, task.ErrFenced) || ctx.Err() != nil) {
			r.log.Warn("journal replay paused", "seq", rec.Seq, "task", rec.TaskID, "err", err)
			return false
		}
		if err != nil {
			r.log.Warn("journaled agent call dropped: the task moved on", "seq", rec.Seq, "task", rec.TaskID,
				"mac", rec.MAC, "kind", rec.Kind, "err", err)
		}
		if err := r.off.j.Ack(rec.Seq); err != nil {
			r.log.Error("journal ack", "seq", rec.Seq, "err", err)
			return false
		}
	}
	return true
}

// apply makes one journaled call, as the agent API would have made it,
// with the time the region accepted it.
func (r *Region) apply(ctx context.Context, rec journal.Record) error {
	at := rec.At
	svc := task.NewService(r.cfg.Store, task.Config{Logger: r.log, Now: func() time.Time { return at }, Fence: r.lead, TracerProvider: r.cfg.TracerProvider})
	mac, err := lpmos.ParseMAC(rec.MAC)
	if err != nil {
		return fmt.Errorf("journal record %d: %w", rec.Seq, err)
	}
	var moved *task.Task
	switch rec.Kind {
	case journal.KindReport:
		var hw hardware.Info
		if err := json.Unmarshal(rec.Body, &hw); err != nil {
			return fmt.Errorf("journal record %d: %w", rec.Seq, err)
		}
		moved, err = svc.ReportHardware(ctx, rec.TaskID, r.actor, hw, task.ExpectRevision(rec.StatusRev), task.FromAddress(rec.Source))
		if err != nil {
			return err
		}
		r.observe(moved)
		r.recordMachine(ctx, mac, machine.Report{Hardware: &hw, Source: rec.Source, TaskID: rec.TaskID})
		r.applyRules(ctx, moved, &hw)
		return nil
	case journal.KindProgress:
		var p task.Progress
		if err := json.Unmarshal(rec.Body, &p); err != nil {
			return fmt.Errorf("journal record %d: %w", rec.Seq, err)
		}
		moved, err = svc.ReportProgress(ctx, rec.TaskID, r.actor, p)
	case journal.KindComplete:
		var c task.Completion
		if err := json.Unmarshal(rec.Body, &c); err != nil {
			return fmt.Errorf("journal record %d: %w", rec.Seq, err)
		}
		cur, gerr := svc.Get(ctx, rec.TaskID)
		if gerr != nil {
			return gerr
		}
		if cur.Status == task.StatusApproved {
			// Approved and done before any progress reached the store:
			// the install starts and completes in that order.
			p := task.Progress{Stage: task.StageCompleted, Percentage: 100, Message: c.Message, Details: c.Details}
			if _, err := svc.ReportProgress(ctx, rec.TaskID, r.actor, p); err != nil {
				return err
			}
		}
		moved, err = svc.Complete(ctx, rec.TaskID, r.actor, c)
	case journal.KindFail:
		var info task.ErrorInfo
		if err := json.Unmarshal(rec.Body, &info); err != nil {
			return fmt.Errorf("journal record %d: %w", rec.Seq, err)
		}
		moved, err = svc.Fail(ctx, rec.TaskID, r.actor, info)
	default:
		return fmt.Errorf("journal record %d: unknown kind %q", rec.Seq, rec.Kind)
	}
	if err != nil {
		return err
	}
	r.observe(moved)
	return nil
}
