package client_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// electingStore applies a transaction and then answers that the store is
// unavailable, the first failures times: what a client sees when an etcd
// leader dies after committing its write. Only a create repeated with its
// idempotency key turns that into exactly one task.
type electingStore struct {
	store.Store
	failures atomic.Int32
	down     atomic.Bool // fail every transaction without applying it
}

func (e *electingStore) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	if e.down.Load() {
		return store.TxnResult{}, fmt.Errorf("txn: %w: etcdserver: no leader", store.ErrUnavailable)
	}
	res, err := e.Store.Txn(ctx, txn)
	if err == nil && e.failures.Add(-1) >= 0 {
		return store.TxnResult{}, fmt.Errorf("txn: %w: etcdserver: leader changed", store.ErrUnavailable)
	}
	return res, err
}

func TestCreateWithIdempotencyKeyRetries(t *testing.T) {
	mem := memory.New()
	t.Cleanup(func() { mem.Close() })
	st := &electingStore{Store: mem}
	cp := startCP(t, st)
	c := cp.client(operatorToken, client.WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond))
	ctx := context.Background()
	req := task.CreateRequest{RegionID: "dc1", TargetMAC: "00:1a:2b:3c:8f:01", OSType: "ubuntu", OSVersion: "24.04"}

	// Without a key the caller gets the 503 and cannot tell whether the
	// task was made (it was).
	st.failures.Store(1)
	_, err := c.Create(ctx, req)
	require.ErrorIs(t, err, client.ErrUnavailable)
	e, ok := client.AsError(err)
	require.True(t, ok)
	assert.Equal(t, 2*time.Second, e.RetryAfter)

	// With a key, Create repeats and the repeat finds the applied task.
	req.TargetMAC = "00:1a:2b:3c:8f:02"
	st.failures.Store(1)
	got, err := c.Create(ctx, req, client.IdempotencyKey("batch-7/00:1a:2b:3c:8f:02"))
	require.NoError(t, err)
	assert.True(t, got.Replayed, "the first attempt made the task")
	tk, err := c.Get(ctx, got.TaskID)
	require.NoError(t, err)
	assert.Equal(t, "00:1a:2b:3c:8f:02", tk.Metadata.TargetMAC.String())
	list, err := c.ListAll(ctx, client.ListOptions{})
	require.NoError(t, err)
	assert.Len(t, list, 2, "one task per create, none twice")

	// Attempts are bounded.
	req.TargetMAC = "00:1a:2b:3c:8f:03"
	st.down.Store(true)
	_, err = c.Create(ctx, req, client.IdempotencyKey("k3", 2))
	require.ErrorIs(t, err, client.ErrUnavailable)
	st.down.Store(false)

	// The key with another request is refused.
	req.OSVersion = "22.04"
	_, err = c.Create(ctx, req, client.IdempotencyKey("batch-7/00:1a:2b:3c:8f:02"))
	require.ErrorIs(t, err, client.ErrIdempotencyKeyReused)
}
