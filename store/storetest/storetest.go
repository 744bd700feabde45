// Package storetest is the conformance suite every store.Store
// implementation must pass. It pins down the contract the rest of LPMOS
// relies on — revisions, compare-and-swap, prefix watches that resume from a
// revision, compaction, leases — so that the in-memory store and etcd are
// interchangeable.
//
// Use it from an implementation's tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store { return newStoreForTest(t) })
//	}
package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
)

// Factory returns a fresh, empty store for one test and registers its
// cleanup with t.
type Factory func(t *testing.T) store.Store

// Run runs the whole suite, each case on a fresh store.
func Run(t *testing.T, newStore Factory) {
	cases := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"GetPut", testGetPut},
		{"List", testList},
		{"ListPaging", testListPaging},
		{"Delete", testDelete},
		{"TxnCompares", testTxnCompares},
		{"TxnAtomic", testTxnAtomic},
		{"TxnRejectsBadInput", testTxnRejectsBadInput},
		{"WatchFromNow", testWatchFromNow},
		{"WatchReplayAndResume", testWatchReplayAndResume},
		{"WatchCancel", testWatchCancel},
		{"Compaction", testCompaction},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseRevoke", testLeaseRevoke},
		{"ConcurrentCAS", testConcurrentCAS},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t)
			c.fn(t, s)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, s store.Store, key, val string, opts ...store.PutOption) int64 {
	t.Helper()
	rev, err := s.Put(ctxT(t), key, []byte(val), opts...)
	require.NoError(t, err)
	return rev
}

func testGetPut(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	_, err := s.Get(ctx, "/t/missing")
	require.ErrorIs(t, err, store.ErrNotFound)

	r1 := put(t, s, "/t/a", "one")
	kv, err := s.Get(ctx, "/t/a")
	require.NoError(t, err)
	assert.Equal(t, store.KV{Key: "/t/a", Value: []byte("one"), CreateRevision: r1, ModRevision: r1, Version: 1}, kv)

	r2 := put(t, s, "/t/a", "two")
	assert.Greater(t, r2, r1, "every write gets a new, larger revision")
	kv, err = s.Get(ctx, "/t/a")
	require.NoError(t, err)
	assert.Equal(t, store.KV{Key: "/t/a", Value: []byte("two"), CreateRevision: r1, ModRevision: r2, Version: 2}, kv)

	// A value read is the caller's: changing it must not change the store.
	kv.Value[0] = 'X'
	again, err := s.Get(ctx, "/t/a")
	require.NoError(t, err)
	assert.Equal(t, "two", string(again.Value))

	// Empty values are values.
	put(t, s, "/t/empty", "")
	kv, err = s.Get(ctx, "/t/empty")
	require.NoError(t, err)
	assert.Empty(t, kv.Value)
	assert.Equal(t, int64(1), kv.Version)

	_, err = s.Get(ctx, "")
	assert.ErrorIs(t, err, store.ErrInvalid)
}

func testList(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	for _, k := range []string{"/p/b", "/p/a", "/p/c/d", "/pq", "/p", "/o/a"} {
		put(t, s, k, "v"+k)
	}
	last := put(t, s, "/p/0", "zero")

	res, err := s.List(ctx, "/p/", store.ListOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{"/p/0", "/p/a", "/p/b", "/p/c/d"}, keys(res.KVs), "sorted, only under the prefix")
	assert.False(t, res.More)
	assert.Equal(t, last, res.Revision)
	assert.Equal(t, "v/p/a", string(res.KVs[1].Value))

	res, err = s.List(ctx, "/p/", store.ListOptions{Limit: 2})
	require.NoError(t, err)
	assert.Equal(t, []string{"/p/0", "/p/a"}, keys(res.KVs))
	assert.True(t, res.More)

	res, err = s.List(ctx, "/nothing/", store.ListOptions{})
	require.NoError(t, err)
	assert.Empty(t, res.KVs)
	assert.Equal(t, last, res.Revision, "an empty listing still tells the revision")

	_, err = s.List(ctx, "", store.ListOptions{})
	assert.ErrorIs(t, err, store.ErrInvalid)
	_, err = s.List(ctx, "/p/", store.ListOptions{StartKey: "/o/"})
	assert.ErrorIs(t, err, store.ErrInvalid)
}

func testListPaging(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("/page/%03d", i)
		want = append(want, k)
		put(t, s, k, "x")
	}
	var got []string
	opts := store.ListOptions{Limit: 10}
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10, "paging does not terminate")
		res, err := s.List(ctx, "/page/", opts)
		require.NoError(t, err)
		got = append(got, keys(res.KVs)...)
		if !res.More {
			break
		}
		opts.StartKey = res.KVs[len(res.KVs)-1].Key + "\x00"
	}
	assert.Equal(t, want, got)
}

func testDelete(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	r1 := put(t, s, "/d/a", "1")
	n, rev, err := s.Delete(ctx, "/d/a")
	require.NoError(t, err)
	assert.Equal(t, int64(1), n)
	assert.Greater(t, rev, r1)
	_, err = s.Get(ctx, "/d/a")
	require.ErrorIs(t, err, store.ErrNotFound)

	n, rev2, err := s.Delete(ctx, "/d/a")
	require.NoError(t, err)
	assert.Equal(t, int64(0), n)
	assert.Equal(t, rev, rev2, "deleting nothing does not advance the revision")

	// Re-creating starts a new life: version 1, new create revision.
	r3 := put(t, s, "/d/a", "2")
	kv, err := s.Get(ctx, "/d/a")
	require.NoError(t, err)
	assert.Equal(t, r3, kv.CreateRevision)
	assert.Equal(t, int64(1), kv.Version)
}

func testTxnCompares(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	rev := put(t, s, "/c/k", "v1")
	tests := []struct {
		name string
		cmp  store.Compare
		want bool
	}{
		{"value equal", store.ValueEquals("/c/k", []byte("v1")), true},
		{"value differs", store.ValueEquals("/c/k", []byte("v2")), false},
		{"value of absent key never matches", store.ValueEquals("/c/absent", nil), false},
		{"value of absent key never differs", store.Compare{Key: "/c/absent", Target: store.TargetValue, Result: store.NotEqual, Value: []byte("x")}, false},
		{"value not equal", store.Compare{Key: "/c/k", Target: store.TargetValue, Result: store.NotEqual, Value: []byte("v2")}, true},
		{"value less", store.Compare{Key: "/c/k", Target: store.TargetValue, Result: store.Less, Value: []byte("v2")}, true},
		{"value greater", store.Compare{Key: "/c/k", Target: store.TargetValue, Result: store.Greater, Value: []byte("v2")}, false},
		{"mod revision equal", store.ModRevisionIs("/c/k", rev), true},
		{"mod revision stale", store.ModRevisionIs("/c/k", rev-1), false},
		{"mod revision greater", store.Compare{Key: "/c/k", Target: store.TargetModRevision, Result: store.Greater, Rev: rev - 1}, true},
		{"mod revision less", store.Compare{Key: "/c/k", Target: store.TargetModRevision, Result: store.Less, Rev: rev}, false},
		{"create revision equal", store.CreateRevisionIs("/c/k", rev), true},
		{"create revision not equal", store.Compare{Key: "/c/k", Target: store.TargetCreateRevision, Result: store.NotEqual, Rev: rev}, false},
		{"version equal", store.Compare{Key: "/c/k", Target: store.TargetVersion, Result: store.Equal, Rev: 1}, true},
		{"version greater", store.Compare{Key: "/c/k", Target: store.TargetVersion, Result: store.Greater, Rev: 1}, false},
		{"exists", store.Exists("/c/k"), true},
		{"exists absent", store.Exists("/c/absent"), false},
		{"missing", store.Missing("/c/absent"), true},
		{"missing present", store.Missing("/c/k"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.Txn(ctx, store.Txn{
				If:   []store.Compare{tt.cmp},
				Then: []store.Op{store.OpPut("/c/branch", []byte("then"))},
				Else: []store.Op{store.OpPut("/c/branch", []byte("else"))},
			})
			require.NoError(t, err)
			assert.Equal(t, tt.want, res.Succeeded)
			kv, err := s.Get(ctx, "/c/branch")
			require.NoError(t, err)
			assert.Equal(t, res.Revision, kv.ModRevision)
			if tt.want {
				assert.Equal(t, "then", string(kv.Value))
			} else {
				assert.Equal(t, "else", string(kv.Value))
			}
		})
	}

	// A transaction whose chosen branch writes nothing leaves the
	// revision alone.
	before, err := s.List(ctx, "/c/", store.ListOptions{})
	require.NoError(t, err)
	res, err := s.Txn(ctx, store.Txn{If: []store.Compare{store.Missing("/c/k")}, Then: []store.Op{store.OpPut("/c/x", nil)}})
	require.NoError(t, err)
	assert.False(t, res.Succeeded)
	assert.Equal(t, before.Revision, res.Revision)
}

func testTxnAtomic(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	put(t, s, "/x/old/1", "a")
	put(t, s, "/x/old/2", "b")
	put(t, s, "/x/gone", "c")
	res, err := s.Txn(ctx, store.Txn{
		If: []store.Compare{store.Exists("/x/gone"), store.Missing("/x/new/1")},
		Then: []store.Op{
			store.OpPut("/x/new/1", []byte("1")),
			store.OpPut("/x/new/2", []byte("2")),
			store.OpDelete("/x/gone"),
			store.OpDeletePrefix("/x/old/"),
		},
	})
	require.NoError(t, err)
	require.True(t, res.Succeeded)
	list, err := s.List(ctx, "/x/", store.ListOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{"/x/new/1", "/x/new/2"}, keys(list.KVs))
	for _, kv := range list.KVs {
		assert.Equal(t, res.Revision, kv.ModRevision, "all writes of a transaction share one revision")
	}
}

func testTxnRejectsBadInput(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	rev := put(t, s, "/bad/k", "keep")
	many := make([]store.Op, store.MaxTxnOps+1)
	for i := range many {
		many[i] = store.OpPut(fmt.Sprintf("/bad/many/%d", i), nil)
	}
	tests := []struct {
		name string
		txn  store.Txn
		want error
	}{
		{"too many ops", store.Txn{Then: many}, store.ErrTooLarge},
		{"value too large", store.Txn{Then: []store.Op{store.OpPut("/bad/big", make([]byte, store.MaxValueSize+1))}}, store.ErrTooLarge},
		{"key too large", store.Txn{Then: []store.Op{store.OpPut("/bad/"+strings.Repeat("k", store.MaxKeySize), nil)}}, store.ErrTooLarge},
		{"empty key", store.Txn{Then: []store.Op{store.OpPut("", []byte("x"))}}, store.ErrInvalid},
		{"same key twice", store.Txn{Then: []store.Op{store.OpPut("/bad/k", []byte("1")), store.OpPut("/bad/k", []byte("2"))}}, store.ErrInvalid},
		{"put under deleted prefix", store.Txn{Then: []store.Op{store.OpDeletePrefix("/bad/"), store.OpPut("/bad/k", []byte("1"))}}, store.ErrInvalid},
		{"unknown lease", store.Txn{Then: []store.Op{store.OpPut("/bad/l", []byte("1"), store.WithLease(424242))}}, store.ErrLeaseNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Txn(ctx, tt.txn)
			require.ErrorIs(t, err, tt.want)
			list, err := s.List(ctx, "/bad/", store.ListOptions{})
			require.NoError(t, err)
			assert.Equal(t, rev, list.Revision, "a refused transaction writes nothing")
			assert.Equal(t, []string{"/bad/k"}, keys(list.KVs))
			assert.Equal(t, "keep", string(list.KVs[0].Value))
		})
	}
	// The same limits apply to a plain Put.
	_, err := s.Put(ctx, "/bad/big", make([]byte, store.MaxValueSize+1))
	require.ErrorIs(t, err, store.ErrTooLarge)
	// The largest allowed value is accepted.
	put(t, s, "/bad/max", string(make([]byte, store.MaxValueSize)))
}

// collect reads from a watch until it has at least n events, failing after a
// bound; it returns all it read.
func collect(t *testing.T, ch <-chan store.WatchResponse, n int) []store.Event {
	t.Helper()
	var evs []store.Event
	timeout := time.After(30 * time.Second)
	for len(evs) < n {
		select {
		case resp, ok := <-ch:
			require.True(t, ok, "watch closed after %d of %d events", len(evs), n)
			require.NoError(t, resp.Err)
			evs = append(evs, resp.Events...)
		case <-timeout:
			require.FailNow(t, "watch timed out", "got %d of %d events", len(evs), n)
		}
	}
	return evs
}

type evSummary struct {
	Type  store.EventType
	Key   string
	Value string
	Rev   int64
}

func summarize(evs []store.Event) []evSummary {
	out := make([]evSummary, 0, len(evs))
	for _, e := range evs {
		out = append(out, evSummary{e.Type, e.KV.Key, string(e.KV.Value), e.KV.ModRevision})
	}
	return out
}

func testWatchFromNow(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	put(t, s, "/w/before", "old")
	ch := s.Watch(ctx, "/w/", 0)
	// Etcd registers a watch asynchronously: write until the watch sees a
	// marker, so that "from now" is well defined, then start the real test.
	waitWatchReady(t, s, ch, "/w/ready")

	r1 := put(t, s, "/w/a", "1")
	put(t, s, "/other/a", "ignored")
	r2 := put(t, s, "/w/a", "2")
	_, r3, err := s.Delete(ctx, "/w/a")
	require.NoError(t, err)
	tx, err := s.Txn(ctx, store.Txn{Then: []store.Op{store.OpPut("/w/x", []byte("x")), store.OpPut("/w/y", []byte("y"))}})
	require.NoError(t, err)

	evs := collect(t, ch, 5)
	assert.Equal(t, []evSummary{
		{store.EventPut, "/w/a", "1", r1},
		{store.EventPut, "/w/a", "2", r2},
		{store.EventDelete, "/w/a", "", r3},
		{store.EventPut, "/w/x", "x", tx.Revision},
		{store.EventPut, "/w/y", "y", tx.Revision},
	}, summarize(evs))
	assert.Equal(t, int64(2), evs[1].KV.Version)
	assert.Equal(t, r1, evs[1].KV.CreateRevision)
}

func waitWatchReady(t *testing.T, s store.Store, ch <-chan store.WatchResponse, marker string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for i := 0; ; i++ {
		put(t, s, marker, fmt.Sprint(i))
		select {
		case resp := <-ch:
			require.NoError(t, resp.Err)
			// Drain what the markers produced.
			for {
				select {
				case r := <-ch:
					require.NoError(t, r.Err)
					continue
				case <-time.After(200 * time.Millisecond):
				}
				break
			}
			return
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			require.FailNow(t, "watch never delivered a marker")
		}
	}
}

func testWatchReplayAndResume(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	var revs []int64
	for i := range 6 {
		revs = append(revs, put(t, s, fmt.Sprintf("/r/%d", i), fmt.Sprint(i)))
	}
	// From a past revision the watch replays history first.
	wctx, cancel := context.WithCancel(ctx)
	evs := collect(t, s.Watch(wctx, "/r/", revs[2]), 4)
	cancel()
	assert.Equal(t, []int64{revs[2], revs[3], revs[4], revs[5]}, revisions(evs))

	// Resuming from the revision after the last one seen loses and repeats
	// nothing, including writes made while no watch was open.
	after := put(t, s, "/r/late", "late")
	wctx, cancel = context.WithCancel(ctx)
	defer cancel()
	evs = collect(t, s.Watch(wctx, "/r/", revs[4]+1), 2)
	assert.Equal(t, []evSummary{
		{store.EventPut, "/r/5", "5", revs[5]},
		{store.EventPut, "/r/late", "late", after},
	}, summarize(evs))
}

func testWatchCancel(t *testing.T, s store.Store) {
	ctx, cancel := context.WithCancel(ctxT(t))
	ch := s.Watch(ctx, "/wc/", 0)
	cancel()
	select {
	case _, ok := <-drain(ch):
		assert.False(t, ok)
	case <-time.After(30 * time.Second):
		t.Fatal("watch channel not closed after its context ended")
	}
}

// drain returns a channel that is closed once ch is closed.
func drain(ch <-chan store.WatchResponse) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for range ch {
		}
		close(done)
	}()
	return done
}

func testCompaction(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	r1 := put(t, s, "/cp/a", "1")
	put(t, s, "/cp/a", "2")
	r3 := put(t, s, "/cp/a", "3")
	require.NoError(t, s.Compact(ctx, r3))

	// Watching from before the compaction point reports it and ends.
	ch := s.Watch(ctx, "/cp/", r1)
	select {
	case resp, ok := <-ch:
		require.True(t, ok)
		require.ErrorIs(t, resp.Err, store.ErrCompacted)
		assert.Equal(t, r3, resp.CompactRevision)
	case <-time.After(30 * time.Second):
		t.Fatal("no compaction error")
	}
	select {
	case _, ok := <-drain(ch):
		assert.False(t, ok)
	case <-time.After(30 * time.Second):
		t.Fatal("watch not closed after compaction error")
	}

	// From the compaction revision itself history is still there.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evs := collect(t, s.Watch(wctx, "/cp/", r3), 1)
	require.Len(t, evs, 1)
	assert.Equal(t, "3", string(evs[0].KV.Value))

	require.ErrorIs(t, s.Compact(ctx, r1), store.ErrCompacted)
	require.ErrorIs(t, s.Compact(ctx, r3+1000), store.ErrFutureRevision)
}

func testLeaseExpiry(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, 2*time.Second)
	require.NoError(t, err)
	put(t, s, "/l/held", "x", store.WithLease(id))
	put(t, s, "/l/free", "y")
	kv, err := s.Get(ctx, "/l/held")
	require.NoError(t, err)
	assert.Equal(t, id, kv.Lease)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := s.Watch(wctx, "/l/", 0)
	waitWatchReady(t, s, ch, "/l/ready")

	// Kept alive, the key outlives its TTL.
	for range 8 {
		require.NoError(t, s.KeepAliveOnce(ctx, id))
		time.Sleep(500 * time.Millisecond)
	}
	_, err = s.Get(ctx, "/l/held")
	require.NoError(t, err, "a kept-alive lease keeps its key")

	// Left alone, it expires and takes the key with it (and only it).
	evs := collect(t, ch, 1)
	require.Len(t, evs, 1)
	assert.Equal(t, store.EventDelete, evs[0].Type)
	assert.Equal(t, "/l/held", evs[0].KV.Key)
	_, err = s.Get(ctx, "/l/held")
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.Get(ctx, "/l/free")
	require.NoError(t, err)
	require.ErrorIs(t, s.KeepAliveOnce(ctx, id), store.ErrLeaseNotFound)

	_, err = s.Grant(ctx, 0)
	require.ErrorIs(t, err, store.ErrInvalid)
}

func testLeaseRevoke(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	id, err := s.Grant(ctx, time.Minute)
	require.NoError(t, err)
	put(t, s, "/lr/a", "1", store.WithLease(id))
	put(t, s, "/lr/b", "2", store.WithLease(id))
	put(t, s, "/lr/c", "3", store.WithLease(id))
	put(t, s, "/lr/c", "3") // rewritten without the lease: detached
	require.NoError(t, s.Revoke(ctx, id))
	list, err := s.List(ctx, "/lr/", store.ListOptions{})
	require.NoError(t, err)
	assert.Equal(t, []string{"/lr/c"}, keys(list.KVs))
	require.ErrorIs(t, s.Revoke(ctx, id), store.ErrLeaseNotFound)
	_, err = s.Put(ctx, "/lr/d", nil, store.WithLease(id))
	require.ErrorIs(t, err, store.ErrLeaseNotFound)
}

// testConcurrentCAS: writers race read-modify-write increments guarded by
// the mod revision; no increment may be lost or applied twice.
func testConcurrentCAS(t *testing.T, s store.Store) {
	ctx := ctxT(t)
	put(t, s, "/cas/n", "0")
	const writers, perWriter = 8, 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conflicts int
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for done := 0; done < perWriter; {
				kv, err := s.Get(ctx, "/cas/n")
				if err != nil {
					errs <- err
					return
				}
				var n int
				fmt.Sscan(string(kv.Value), &n)
				res, err := s.Txn(ctx, store.Txn{
					If:   []store.Compare{store.ModRevisionIs("/cas/n", kv.ModRevision)},
					Then: []store.Op{store.OpPut("/cas/n", []byte(fmt.Sprint(n+1)))},
				})
				if err != nil {
					errs <- err
					return
				}
				if res.Succeeded {
					done++
				} else {
					mu.Lock()
					conflicts++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	kv, err := s.Get(ctx, "/cas/n")
	require.NoError(t, err)
	assert.Equal(t, fmt.Sprint(writers*perWriter), string(kv.Value))
	assert.Equal(t, int64(writers*perWriter+1), kv.Version)
	t.Logf("%d increments, %d lost races retried", writers*perWriter, conflicts)
}

func revisions(evs []store.Event) []int64 {
	out := make([]int64, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.KV.ModRevision)
	}
	return out
}

func keys(kvs []store.KV) []string {
	out := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		out = append(out, kv.Key)
	}
	return out
}
