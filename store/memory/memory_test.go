package memory_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := memory.New()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// A watcher that falls behind the bounded history is told so, as an etcd
// watcher behind a compaction is, instead of the store buffering forever.
func TestHistoryLimitCompactsSlowWatchers(t *testing.T) {
	s := memory.New(memory.WithHistoryLimit(10))
	defer s.Close()
	ctx := context.Background()
	first, err := s.Put(ctx, "/h/0", nil)
	require.NoError(t, err)
	for i := 1; i < 30; i++ {
		_, err := s.Put(ctx, fmt.Sprintf("/h/%d", i), nil)
		require.NoError(t, err)
	}
	resp := <-s.Watch(ctx, "/h/", first)
	require.ErrorIs(t, resp.Err, store.ErrCompacted)
	assert.Greater(t, resp.CompactRevision, first)
}

func TestClosedStore(t *testing.T) {
	s := memory.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := s.Watch(ctx, "/c/", 0)
	require.NoError(t, s.Close())
	for range ch {
	} // Close ends open watches
	_, err := s.Get(ctx, "/c/a")
	require.ErrorIs(t, err, store.ErrClosed)
	resp := <-s.Watch(ctx, "/c/", 0)
	require.ErrorIs(t, resp.Err, store.ErrClosed)
	require.NoError(t, s.Close(), "Close is idempotent")
}
