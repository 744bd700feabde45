// Package memory is the in-process implementation of store.Store.
//
// It is a real implementation, not a stub: it keeps revisions, a bounded
// history that watches replay from, compaction, and leases that expire and
// take their keys with them, and it passes the same store/storetest suite as
// the etcd implementation. It is what unit tests, demos (`--store memory`)
// and embedders who do not need durability use. It is not durable and not
// shared between processes: everything is lost when the process exits.
package memory

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos/store"
)

// DefaultHistoryLimit is how many past events the store keeps for watches to
// replay before it compacts the oldest half away.
const DefaultHistoryLimit = 100_000

// Option configures a Store.
type Option func(*Store)

// WithHistoryLimit bounds the number of past events kept for watch replay.
// A watcher that falls further behind gets store.ErrCompacted, as with etcd.
func WithHistoryLimit(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.historyLimit = n
		}
	}
}

// WithExpiryInterval sets how often expired leases are collected (default
// 100 ms).
func WithExpiryInterval(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.expiryInterval = d
		}
	}
}

type logEntry struct {
	rev   int64
	event store.Event
}

type lease struct {
	ttl    time.Duration
	expiry time.Time
	keys   map[string]struct{}
}

// Store is an in-memory store.Store. Create it with New and Close it.
type Store struct {
	historyLimit   int
	expiryInterval time.Duration

	mu         sync.Mutex
	rev        int64
	compactRev int64
	kvs        map[string]*store.KV
	keys       keyIndex // sorted keys of kvs, for prefix listing
	history    []logEntry
	leases     map[store.LeaseID]*lease
	nextLease  store.LeaseID
	changed    chan struct{} // closed and replaced on every commit
	closed     bool

	done chan struct{}
	wg   sync.WaitGroup
}

var _ store.Store = (*Store)(nil)

// New returns an empty store at revision 1 (as a fresh etcd is) and starts
// its lease-expiry loop; Close stops it.
func New(opts ...Option) *Store {
	s := &Store{
		historyLimit:   DefaultHistoryLimit,
		expiryInterval: 100 * time.Millisecond,
		rev:            1,
		kvs:            make(map[string]*store.KV),
		leases:         make(map[store.LeaseID]*lease),
		changed:        make(chan struct{}),
		done:           make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	s.wg.Add(1)
	go s.expireLoop()
	return s
}

// Close ends all watches and the expiry loop and waits for them.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Store) checkOpen(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed {
		return store.ErrClosed
	}
	return nil
}

func cloneKV(kv *store.KV) store.KV {
	c := *kv
	c.Value = append([]byte(nil), kv.Value...)
	return c
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := store.CheckKey(key); err != nil {
		return store.KV{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return store.KV{}, err
	}
	kv, ok := s.kvs[key]
	if !ok {
		return store.KV{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	return cloneKV(kv), nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	if prefix == "" {
		return store.ListResult{}, fmt.Errorf("%w: empty prefix", store.ErrInvalid)
	}
	start := prefix
	if opts.StartKey != "" {
		if !strings.HasPrefix(opts.StartKey, prefix) {
			return store.ListResult{}, fmt.Errorf("%w: start key %q outside prefix %q", store.ErrInvalid, opts.StartKey, prefix)
		}
		start = opts.StartKey
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return store.ListResult{}, err
	}
	res := store.ListResult{Revision: s.rev}
	s.keys.ascend(start, func(k string) bool {
		if !strings.HasPrefix(k, prefix) {
			return false
		}
		if opts.Limit > 0 && int64(len(res.KVs)) == opts.Limit {
			res.More = true
			return false
		}
		res.KVs = append(res.KVs, cloneKV(s.kvs[k]))
		return true
	})
	return res, nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts ...store.PutOption) (int64, error) {
	res, err := s.Txn(ctx, store.Txn{Then: []store.Op{store.OpPut(key, value, opts...)}})
	return res.Revision, err
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string) (int64, int64, error) {
	if err := store.CheckKey(key); err != nil {
		return 0, 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return 0, 0, err
	}
	_, had := s.kvs[key]
	s.commit([]store.Op{store.OpDelete(key)})
	if had {
		return 1, s.rev, nil
	}
	return 0, s.rev, nil
}

// Txn implements store.Store.
func (s *Store) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	if err := txn.Validate(); err != nil {
		return store.TxnResult{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return store.TxnResult{}, err
	}
	ok := true
	for _, c := range txn.If {
		if !s.holds(c) {
			ok = false
			break
		}
	}
	ops := txn.Else
	if ok {
		ops = txn.Then
	}
	for _, op := range ops {
		if op.Kind == store.OpKindPut && op.Lease != store.NoLease {
			if _, found := s.leases[op.Lease]; !found {
				return store.TxnResult{}, fmt.Errorf("put %q with lease %x: %w", op.Key, int64(op.Lease), store.ErrLeaseNotFound)
			}
		}
	}
	s.commit(ops)
	return store.TxnResult{Succeeded: ok, Revision: s.rev}, nil
}

func (s *Store) holds(c store.Compare) bool {
	var cur store.KV
	kv, ok := s.kvs[c.Key]
	if ok {
		cur = *kv
	} else if c.Target == store.TargetValue {
		// As in etcd: a value compare on an absent key always fails.
		return false
	}
	var cmp int
	switch c.Target {
	case store.TargetValue:
		cmp = strings.Compare(string(cur.Value), string(c.Value))
	case store.TargetModRevision:
		cmp = compareInt(cur.ModRevision, c.Rev)
	case store.TargetCreateRevision:
		cmp = compareInt(cur.CreateRevision, c.Rev)
	case store.TargetVersion:
		cmp = compareInt(cur.Version, c.Rev)
	}
	switch c.Result {
	case store.Equal:
		return cmp == 0
	case store.NotEqual:
		return cmp != 0
	case store.Less:
		return cmp < 0
	case store.Greater:
		return cmp > 0
	}
	return false
}

func compareInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// commit applies validated ops as one revision. The revision advances only
// if something changed, as in etcd. Callers hold s.mu.
func (s *Store) commit(ops []store.Op) {
	rev := s.rev + 1
	var events []store.Event
	for _, op := range ops {
		switch op.Kind {
		case store.OpKindPut:
			events = append(events, s.put(rev, op))
		case store.OpKindDelete:
			if ev, ok := s.del(rev, op.Key); ok {
				events = append(events, ev)
			}
		case store.OpKindDeletePrefix:
			var victims []string
			s.keys.ascend(op.Key, func(k string) bool {
				if !strings.HasPrefix(k, op.Key) {
					return false
				}
				victims = append(victims, k)
				return true
			})
			for _, k := range victims {
				if ev, ok := s.del(rev, k); ok {
					events = append(events, ev)
				}
			}
		}
	}
	if len(events) == 0 {
		return
	}
	s.rev = rev
	for _, ev := range events {
		s.history = append(s.history, logEntry{rev: rev, event: ev})
	}
	if len(s.history) > s.historyLimit {
		s.compactLocked(s.history[len(s.history)-s.historyLimit/2].rev)
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Store) put(rev int64, op store.Op) store.Event {
	kv, ok := s.kvs[op.Key]
	if !ok {
		kv = &store.KV{Key: op.Key, CreateRevision: rev}
		s.kvs[op.Key] = kv
		s.keys.insert(op.Key)
	}
	if kv.Lease != op.Lease {
		if l, found := s.leases[kv.Lease]; found {
			delete(l.keys, op.Key)
		}
		if l, found := s.leases[op.Lease]; found {
			l.keys[op.Key] = struct{}{}
		}
	}
	kv.Value = append([]byte(nil), op.Value...)
	kv.ModRevision = rev
	kv.Version++
	kv.Lease = op.Lease
	return store.Event{Type: store.EventPut, KV: cloneKV(kv)}
}

func (s *Store) del(rev int64, key string) (store.Event, bool) {
	kv, ok := s.kvs[key]
	if !ok {
		return store.Event{}, false
	}
	if l, found := s.leases[kv.Lease]; found {
		delete(l.keys, key)
	}
	delete(s.kvs, key)
	s.keys.remove(key)
	return store.Event{Type: store.EventDelete, KV: store.KV{Key: key, ModRevision: rev}}, true
}

// Compact implements store.Store.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return err
	}
	if rev <= s.compactRev {
		return fmt.Errorf("compact to %d (already compacted to %d): %w", rev, s.compactRev, store.ErrCompacted)
	}
	if rev > s.rev {
		return fmt.Errorf("compact to %d (current %d): %w", rev, s.rev, store.ErrFutureRevision)
	}
	s.compactLocked(rev)
	return nil
}

func (s *Store) compactLocked(rev int64) {
	i := sort.Search(len(s.history), func(i int) bool { return s.history[i].rev >= rev })
	s.history = append([]logEntry(nil), s.history[i:]...)
	s.compactRev = rev
}

// Watch implements store.Store. Each watch is one goroutine that replays the
// shared history from its next revision, so a slow consumer costs no memory
// beyond the bounded history; if it falls behind that, it gets ErrCompacted.
func (s *Store) Watch(ctx context.Context, prefix string, rev int64) <-chan store.WatchResponse {
	out := make(chan store.WatchResponse, 1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		out <- store.WatchResponse{Err: store.ErrClosed}
		close(out)
		return out
	}
	if rev <= 0 {
		rev = s.rev + 1
	}
	s.wg.Add(1)
	go s.watch(ctx, prefix, rev, out)
	return out
}

// maxWatchBatch bounds the events in one response; a batch never splits a
// revision.
const maxWatchBatch = 1000

func (s *Store) watch(ctx context.Context, prefix string, next int64, out chan<- store.WatchResponse) {
	defer s.wg.Done()
	defer close(out)
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		if next < s.compactRev {
			resp := store.WatchResponse{
				Err:             fmt.Errorf("watch %q from revision %d (compacted to %d): %w", prefix, next, s.compactRev, store.ErrCompacted),
				CompactRevision: s.compactRev,
			}
			s.mu.Unlock()
			select {
			case out <- resp:
			case <-ctx.Done():
			case <-s.done:
			}
			return
		}
		var events []store.Event
		i := sort.Search(len(s.history), func(i int) bool { return s.history[i].rev >= next })
		for ; i < len(s.history); i++ {
			e := s.history[i]
			if len(events) >= maxWatchBatch && e.rev != next-1 {
				break
			}
			next = e.rev + 1
			if strings.HasPrefix(e.event.KV.Key, prefix) {
				ev := e.event
				ev.KV.Value = append([]byte(nil), ev.KV.Value...)
				events = append(events, ev)
			}
		}
		changed := s.changed
		s.mu.Unlock()

		if len(events) == 0 {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			case <-s.done:
				return
			}
		}
		select {
		case out <- store.WatchResponse{Events: events}:
		case <-ctx.Done():
			return
		case <-s.done:
			return
		}
	}
}

// Grant implements store.Store.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if ttl <= 0 {
		return store.NoLease, fmt.Errorf("%w: lease TTL %v must be positive", store.ErrInvalid, ttl)
	}
	ttl = (ttl + time.Second - 1).Truncate(time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return store.NoLease, err
	}
	s.nextLease++
	id := s.nextLease
	s.leases[id] = &lease{ttl: ttl, expiry: time.Now().Add(ttl), keys: make(map[string]struct{})}
	return id, nil
}

// KeepAliveOnce implements store.Store.
func (s *Store) KeepAliveOnce(ctx context.Context, id store.LeaseID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return err
	}
	l, ok := s.leases[id]
	if !ok {
		return fmt.Errorf("keep lease %x alive: %w", int64(id), store.ErrLeaseNotFound)
	}
	l.expiry = time.Now().Add(l.ttl)
	return nil
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkOpen(ctx); err != nil {
		return err
	}
	if _, ok := s.leases[id]; !ok {
		return fmt.Errorf("revoke lease %x: %w", int64(id), store.ErrLeaseNotFound)
	}
	s.revokeLocked(id)
	return nil
}

// revokeLocked deletes a lease and its keys as one revision, as etcd does.
func (s *Store) revokeLocked(id store.LeaseID) {
	l := s.leases[id]
	delete(s.leases, id)
	keys := make([]string, 0, len(l.keys))
	for k := range l.keys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	ops := make([]store.Op, 0, len(keys))
	for _, k := range keys {
		ops = append(ops, store.OpDelete(k))
	}
	s.commit(ops)
}

func (s *Store) expireLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.expiryInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.mu.Lock()
			var expired []store.LeaseID
			for id, l := range s.leases {
				if now.After(l.expiry) {
					expired = append(expired, id)
				}
			}
			sort.Slice(expired, func(i, j int) bool { return expired[i] < expired[j] })
			for _, id := range expired {
				s.revokeLocked(id)
			}
			s.mu.Unlock()
		}
	}
}
