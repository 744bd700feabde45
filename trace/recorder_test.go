package trace_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/trace"
)

var (
	macA = lpmos.MAC{0x52, 0x54, 0, 0, 0, 0xa}
	macB = lpmos.MAC{0x52, 0x54, 0, 0, 0, 0xb}
	macC = lpmos.MAC{0x52, 0x54, 0, 0, 0, 0xc}
)

// stores runs f against the memory store and, unless -short, a real etcd.
func stores(t *testing.T, f func(t *testing.T, st store.Store)) {
	t.Run("memory", func(t *testing.T) { f(t, memory.New()) })
	t.Run("etcd", func(t *testing.T) {
		if testing.Short() {
			t.Skip("starts an embedded etcd; run without -short")
		}
		f(t, etcdtest.NewStore(t))
	})
}

// start runs a recorder until the test ends, and waits for Run to return.
func start(t *testing.T, cfg trace.Config) *trace.Recorder {
	t.Helper()
	rec := trace.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return rec
}

func ev(i int) trace.Event {
	return trace.Event{Kind: trace.KindDHCP, Outcome: trace.OutcomeOK, Message: fmt.Sprintf("event %d", i),
		Time: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)}
}

func messages(evs []trace.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Message
	}
	return out
}

func TestRecorderKeepsTheLastEventsNewestLast(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
		for i := range trace.Max + 50 {
			rec.Record(macA, ev(i))
		}
		require.NoError(t, rec.Flush(ctx))

		got, err := trace.Read(ctx, st, macA)
		require.NoError(t, err)
		require.Len(t, got, trace.Max)
		assert.Equal(t, "event 50", got[0].Message, "the oldest events go first")
		assert.Equal(t, fmt.Sprintf("event %d", trace.Max+49), got[len(got)-1].Message, "newest last")
		assert.Equal(t, "dc1", got[0].Region)

		// Many events between two flushes cost one write.
		assert.Equal(t, uint64(1), rec.Stats().Writes)
		kv, err := st.Get(ctx, trace.Key(macA, "dc1"))
		require.NoError(t, err)
		assert.Equal(t, "/lpmos/trace/52:54:00:00:00:0a/dc1", kv.Key)
	})
}

func TestRecorderCoalescesWritesPerMachine(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
		for i := range 10 {
			rec.Record(macA, ev(i))
			rec.Record(macB, ev(i))
		}
		require.NoError(t, rec.Flush(ctx))
		assert.Equal(t, uint64(2), rec.Stats().Writes, "one write per machine for ten events each")

		// Nothing new: a flush writes nothing.
		require.NoError(t, rec.Flush(ctx))
		assert.Equal(t, uint64(2), rec.Stats().Writes)

		rec.Record(macB, ev(10))
		require.NoError(t, rec.Flush(ctx))
		assert.Equal(t, uint64(3), rec.Stats().Writes, "only the machine with new events is written")
		got, err := trace.Read(ctx, st, macB)
		require.NoError(t, err)
		assert.Len(t, got, 11)
	})
}

func TestRecorderWritesOnlyWhileLeading(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		var leading atomic.Bool
		rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour, Leading: leading.Load})
		rec.Record(macA, ev(1))
		rec.Record(macA, ev(2))
		require.NoError(t, rec.Flush(ctx))
		_, err := st.Get(ctx, trace.Key(macA, "dc1"))
		require.ErrorIs(t, err, store.ErrNotFound, "a standby writes nothing")
		assert.Equal(t, uint64(2), rec.Stats().NotLeader)

		leading.Store(true)
		rec.Record(macA, ev(3))
		require.NoError(t, rec.Flush(ctx))
		got, err := trace.Read(ctx, st, macA)
		require.NoError(t, err)
		assert.Equal(t, []string{"event 3"}, messages(got), "what came while standing by is not written later")
	})
}

func TestRecorderFencedWriteFails(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		// The fence names a leadership key that does not exist: the term is over.
		fence := func() []store.Compare {
			return []store.Compare{store.CreateRevisionIs("/lpmos/regions/dc1/client/leader", 7)}
		}
		rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour, Fence: fence})
		rec.Record(macA, ev(1))
		require.NoError(t, rec.Flush(ctx))
		_, err := st.Get(ctx, trace.Key(macA, "dc1"))
		require.ErrorIs(t, err, store.ErrNotFound)
		s := rec.Stats()
		assert.Equal(t, uint64(0), s.Writes)
		assert.Equal(t, uint64(1), s.NotLeader)
	})
}

func TestRecorderDropsWhenTheQueueIsFull(t *testing.T) {
	// Not running: nothing drains the queue of two.
	rec := trace.New(trace.Config{Store: memory.New(), Region: "dc1", QueueSize: 2})
	for i := range 5 {
		rec.Record(macA, ev(i))
	}
	s := rec.Stats()
	assert.Equal(t, uint64(2), s.Recorded)
	assert.Equal(t, uint64(3), s.Dropped)
}

func TestRecorderBoundsTheMachinesItHolds(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour, MaxMachines: 2})
	rec.Record(macA, ev(1))
	rec.Record(macB, ev(1))
	rec.Record(macC, ev(1)) // both held traces wait to be written: dropped
	require.NoError(t, rec.Flush(ctx))
	assert.Equal(t, uint64(1), rec.Stats().DroppedMachines)
	got, err := trace.Read(ctx, st, macC)
	require.NoError(t, err)
	assert.Empty(t, got)

	// Once written, a held trace makes room; it is read back when its
	// machine is seen again.
	rec.Record(macC, ev(2))
	rec.Record(macA, ev(3))
	require.NoError(t, rec.Flush(ctx))
	got, err = trace.Read(ctx, st, macC)
	require.NoError(t, err)
	assert.Equal(t, []string{"event 2"}, messages(got))
	got, err = trace.Read(ctx, st, macA)
	require.NoError(t, err)
	assert.Equal(t, []string{"event 1", "event 3"}, messages(got))
}

func TestRecorderContinuesTheStoredTrace(t *testing.T) {
	stores(t, func(t *testing.T, st store.Store) {
		ctx := context.Background()
		first := trace.New(trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- first.Run(rctx) }()
		first.Record(macA, ev(1))
		first.Record(macA, ev(2))
		cancel() // Run writes what it holds on its way out
		require.NoError(t, <-done)

		// A restarted region appends to what the store holds.
		second := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
		second.Record(macA, ev(3))
		require.NoError(t, second.Flush(ctx))
		got, err := trace.Read(ctx, st, macA)
		require.NoError(t, err)
		assert.Equal(t, []string{"event 1", "event 2", "event 3"}, messages(got))
	})
}

func TestReadMergesRegions(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	dc1 := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
	dc2 := start(t, trace.Config{Store: st, Region: "dc2", FlushInterval: time.Hour})
	dc1.Record(macA, ev(1))
	dc2.Record(macA, ev(2))
	dc1.Record(macA, ev(3))
	require.NoError(t, dc1.Flush(ctx))
	require.NoError(t, dc2.Flush(ctx))
	got, err := trace.Read(ctx, st, macA)
	require.NoError(t, err)
	assert.Equal(t, []string{"event 1", "event 2", "event 3"}, messages(got))
	assert.Equal(t, []string{"dc1", "dc2", "dc1"}, []string{got[0].Region, got[1].Region, got[2].Region})

	none, err := trace.Read(ctx, st, macB)
	require.NoError(t, err)
	assert.NotNil(t, none, "an unseen machine has an empty trace, not null")
	assert.Empty(t, none)
}

func TestRecordClipsLongText(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
	detail := map[string]string{}
	for i := range 40 {
		detail[fmt.Sprintf("k%02d", i)] = "v"
	}
	rec.Record(macA, trace.Event{Kind: trace.KindHTTP, Message: strings.Repeat("é", 1000), Detail: detail})
	require.NoError(t, rec.Flush(ctx))
	got, err := trace.Read(ctx, st, macA)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Less(t, len(got[0].Message), 300)
	assert.True(t, strings.HasSuffix(got[0].Message, "…"))
	assert.Len(t, got[0].Detail, 16)
	assert.False(t, got[0].Time.IsZero(), "stamped when recorded")
}

func TestRecorderFoldsRepeats(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
	ignored := func(sec int) trace.Event {
		return trace.Event{Kind: trace.KindDHCP, Outcome: trace.OutcomeIgnored, Message: "DISCOVER ignored",
			Reason: "no task", Detail: map[string]string{"arch": "0"}, Time: time.Date(2026, 1, 1, 0, 0, sec, 0, time.UTC)}
	}
	rec.Record(macA, ignored(1))
	rec.Record(macA, ignored(2))
	rec.Record(macA, ignored(3))
	rec.Record(macA, ev(4))
	rec.Record(macA, ignored(5))
	require.NoError(t, rec.Flush(ctx))
	got, err := trace.Read(ctx, st, macA)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, 3, got[0].Count)
	assert.Equal(t, 3, got[0].Time.Second(), "the time of the last repeat")
	assert.Equal(t, 0, got[1].Count)
	assert.Equal(t, 0, got[2].Count, "only repeats in a row fold")
}

func TestRecorderBoundsTheWritesPerFlush(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour, MaxWrites: 2})
	for _, mac := range []lpmos.MAC{macA, macB, macC} {
		rec.Record(mac, ev(1))
	}
	require.NoError(t, rec.Flush(ctx))
	assert.Equal(t, uint64(2), rec.Stats().Writes, "two traces this time")
	require.NoError(t, rec.Flush(ctx))
	assert.Equal(t, uint64(3), rec.Stats().Writes, "the third the next time")
	for _, mac := range []lpmos.MAC{macA, macB, macC} {
		got, err := trace.Read(ctx, st, mac)
		require.NoError(t, err)
		assert.Len(t, got, 1, mac.String())
	}
}

func TestRecorderCountsFailedWrites(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	require.NoError(t, st.Close()) // every call fails from now on
	rec := start(t, trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
	rec.Record(macA, ev(1))
	rec.Record(macB, ev(1))
	require.NoError(t, rec.Flush(ctx))
	s := rec.Stats()
	assert.Equal(t, uint64(2), s.WriteErrors)
	assert.Zero(t, s.Writes)
	require.NoError(t, rec.Flush(ctx))
	assert.Equal(t, uint64(4), rec.Stats().WriteErrors, "dirty traces are tried again")
}
