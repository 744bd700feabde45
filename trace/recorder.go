package trace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// Defaults for Config fields left zero.
const (
	DefaultFlushInterval = time.Second
	DefaultQueueSize     = 4096
	DefaultMaxMachines   = 1024
	DefaultMaxWrites     = 256
)

// Config configures a Recorder. Store and Region are required.
type Config struct {
	Store  store.Store
	Region string
	// Leading, if set, says whether this process may write now (a
	// region's leader); while it says no, events are discarded and
	// counted (Stats.NotLeader) and what the recorder held is forgotten,
	// so that a later term starts from the store.
	Leading func() bool
	// Fence, if set, is compared in every write (a region's leadership
	// term): a deposed leader's write fails in the store itself.
	Fence func() []store.Compare
	// FlushInterval is how often dirty traces are written: each machine's
	// trace at most once per interval (default DefaultFlushInterval).
	FlushInterval time.Duration
	// QueueSize bounds the events waiting for the recorder's goroutine;
	// Record drops (and counts) events beyond it. Default DefaultQueueSize.
	QueueSize int
	// MaxMachines bounds the machines whose trace is held in memory. A
	// machine written out is forgotten first when room is needed (and read
	// back from the store when it is seen again); when every held machine
	// waits to be written, a new machine's events are dropped and counted
	// (Stats.DroppedMachines). Default DefaultMaxMachines: with Max events
	// of a few hundred bytes each, a few tens of MiB at worst.
	MaxMachines int
	// MaxWrites bounds the traces written per FlushInterval (default
	// DefaultMaxWrites); the others wait for the next interval. With
	// MaxMachines it bounds what a DHCP storm of made-up MACs costs the
	// store.
	MaxWrites int
	// Logger receives write failures; default: discard.
	Logger *slog.Logger
	// Now stamps events recorded without a time; default time.Now.
	Now func() time.Time
}

// Stats are a Recorder's counters.
type Stats struct {
	Recorded        uint64 // events accepted into the queue
	Dropped         uint64 // events dropped because the queue was full
	DroppedMachines uint64 // events dropped because MaxMachines traces waited to be written
	NotLeader       uint64 // events discarded while not leading, or by a fenced write
	Writes          uint64 // traces written
	WriteErrors     uint64 // writes (or reads of a trace to append to) that failed
}

// Recorder collects boot events and writes them to the store; see the
// package documentation. Record may be called from any goroutine; Run runs
// the one goroutine that writes.
type Recorder struct {
	cfg     Config
	log     *slog.Logger
	in      chan queued
	flushes chan chan struct{}

	recorded, dropped, droppedMachines, notLeader, writes, writeErrors atomic.Uint64

	// Owned by Run's goroutine.
	traces map[lpmos.MAC]*machineTrace
}

type queued struct {
	mac lpmos.MAC
	ev  Event
}

// machineTrace is one machine's trace as held in memory.
type machineTrace struct {
	events []Event // the last Max, oldest first
	// loaded is set once the stored trace was read (or found missing):
	// until then events holds only new events, which a flush appends to
	// the stored ones. A recorder that restarts so continues the trace.
	loaded bool
	dirty  bool
	added  int // events added since the last write (for NotLeader)
}

// New builds a Recorder; Run starts it.
func New(cfg Config) *Recorder {
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.MaxMachines <= 0 {
		cfg.MaxMachines = DefaultMaxMachines
	}
	if cfg.MaxWrites <= 0 {
		cfg.MaxWrites = DefaultMaxWrites
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Recorder{
		cfg: cfg, log: log, in: make(chan queued, cfg.QueueSize), flushes: make(chan chan struct{}),
		traces: map[lpmos.MAC]*machineTrace{},
	}
}

// Record queues an event for mac without blocking: when the queue is full
// the event is dropped and counted. A zero Time is stamped now. A nil
// Recorder records nothing, so that callers need not check.
func (r *Recorder) Record(mac lpmos.MAC, e Event) {
	if r == nil || mac.IsZero() {
		return
	}
	if e.Time.IsZero() {
		e.Time = r.cfg.Now()
	}
	e.Time = e.Time.UTC()
	select {
	case r.in <- queued{mac: mac, ev: e.clip()}:
		r.recorded.Add(1)
	default:
		r.dropped.Add(1)
	}
}

// Stats returns the counters.
func (r *Recorder) Stats() Stats {
	return Stats{
		Recorded: r.recorded.Load(), Dropped: r.dropped.Load(), DroppedMachines: r.droppedMachines.Load(),
		NotLeader: r.notLeader.Load(), Writes: r.writes.Load(), WriteErrors: r.writeErrors.Load(),
	}
}

// Flush makes Run take in every event queued so far and write every dirty
// trace now, and waits for it (or ctx). It is for tests and tools; the
// recorder flushes by itself every FlushInterval.
func (r *Recorder) Flush(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case r.flushes <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run takes in events and writes dirty traces every FlushInterval until
// ctx ends; then it writes what it holds one last time (within a few
// seconds) and returns nil.
func (r *Recorder) Run(ctx context.Context) error {
	tick := time.NewTicker(r.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case q := <-r.in:
			r.add(q)
		case <-tick.C:
			r.flush(ctx)
		case done := <-r.flushes:
			r.drain()
			r.flush(ctx)
			close(done)
		case <-ctx.Done():
			r.drain()
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			r.flush(fctx)
			cancel()
			return nil
		}
	}
}

// drain takes in the events queued now.
func (r *Recorder) drain() {
	for {
		select {
		case q := <-r.in:
			r.add(q)
		default:
			return
		}
	}
}

// add appends one event to its machine's trace in memory.
func (r *Recorder) add(q queued) {
	t := r.traces[q.mac]
	if t == nil {
		if len(r.traces) >= r.cfg.MaxMachines && !r.evictClean() {
			r.droppedMachines.Add(1)
			return
		}
		t = &machineTrace{}
		r.traces[q.mac] = t
	}
	if n := len(t.events); n > 0 && q.ev.repeats(t.events[n-1]) {
		last := &t.events[n-1]
		last.Count = max(last.Count, 1) + 1
		last.Time = q.ev.Time
	} else {
		t.events = append(t.events, q.ev)
	}
	if over := len(t.events) - Max; over > 0 {
		t.events = append(t.events[:0], t.events[over:]...)
	}
	t.dirty = true
	t.added++
}

// evictClean forgets one machine whose trace is written, and reports
// whether there was one.
func (r *Recorder) evictClean() bool {
	for mac, t := range r.traces {
		if !t.dirty {
			delete(r.traces, mac)
			return true
		}
	}
	return false
}

// flush writes the dirty traces, one Put each, at most MaxWrites of them.
func (r *Recorder) flush(ctx context.Context) {
	if r.cfg.Leading != nil && !r.cfg.Leading() {
		r.forget()
		return
	}
	budget := r.cfg.MaxWrites
	failed := 0
	var firstErr error
	defer func() {
		// One line per flush, not per machine: a store that is down
		// fails every write.
		if failed > 0 && ctx.Err() == nil {
			r.log.Warn("trace: writes failed; retrying with the next flush", "failed", failed, "err", firstErr)
		}
	}()
	for mac, t := range r.traces {
		if !t.dirty {
			continue
		}
		if budget == 0 {
			return // the rest next time (map order varies, so no machine waits for ever)
		}
		budget--
		if err := r.write(ctx, mac, t); err != nil {
			if errors.Is(err, errFenced) {
				r.forget()
				return
			}
			r.writeErrors.Add(1)
			if ctx.Err() != nil {
				return
			}
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", mac, err)
			}
		}
	}
}

// forget drops everything held: this process does not (or no longer)
// lead, and whoever leads next starts from the store.
func (r *Recorder) forget() {
	for _, t := range r.traces {
		r.notLeader.Add(uint64(t.added))
	}
	clear(r.traces)
}

var errFenced = errors.New("trace: not the region's leader")

func (r *Recorder) write(ctx context.Context, mac lpmos.MAC, t *machineTrace) error {
	key := Key(mac, r.cfg.Region)
	if !t.loaded {
		kv, err := r.cfg.Store.Get(ctx, key)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			old, err := decode(kv.Value)
			if err != nil {
				r.log.Warn("trace: stored trace unreadable; starting afresh", "key", key, "err", err)
			}
			t.events = append(old, t.events...)
			if over := len(t.events) - Max; over > 0 {
				t.events = t.events[over:]
			}
		}
		t.loaded = true
	}
	b, err := json.Marshal(record{Events: t.events})
	if err != nil {
		return err
	}
	txn := store.Txn{Then: []store.Op{store.OpPut(key, b)}}
	if r.cfg.Fence != nil {
		txn.If = r.cfg.Fence()
	}
	res, err := r.cfg.Store.Txn(ctx, txn)
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return errFenced
	}
	r.writes.Add(1)
	t.dirty, t.added = false, 0
	return nil
}
