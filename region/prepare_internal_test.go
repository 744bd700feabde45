package region

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// tasksDownStore refuses every transaction on task keys while down is
// set, as etcd does during a leader election, and counts the refusals.
type tasksDownStore struct {
	store.Store
	down    atomic.Bool
	refused atomic.Int32
}

func (s *tasksDownStore) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	if s.down.Load() {
		for _, op := range txn.Then {
			if strings.HasPrefix(op.Key, task.TasksPrefix) {
				s.refused.Add(1)
				return store.TxnResult{}, errors.New("etcdserver: leader changed")
			}
		}
	}
	return s.Store.Txn(ctx, txn)
}

// A task whose preparation gave up while the store refused it is
// prepared once the store answers again: the leader's sweep queues tasks
// left pending, instead of leaving them to the pending timeout.
func TestPendingTaskIsPreparedAfterItsPreparationGaveUp(t *testing.T) {
	mem := memory.New()
	t.Cleanup(func() { mem.Close() })
	st := &tasksDownStore{Store: mem}
	r, err := New(Config{RegionID: "dc1", Store: st, PublicURL: "http://127.0.0.1:8081", BootDir: t.TempDir(),
		SkipBootFileCheck: true, TimeoutCheckInterval: 20 * time.Millisecond, LeaderTTL: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	r.storeAttempts, r.staleAfter = 2, 300*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, r.Leading, 10*time.Second, 10*time.Millisecond)
	<-r.Synced()

	svc := task.NewService(mem, task.Config{})
	st.down.Store(true)
	tk, err := svc.Create(context.Background(), task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:aa:00:01", OSType: "debian", OSVersion: "12", CreatedBy: "test"})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return st.refused.Load() >= 2 }, 10*time.Second, 10*time.Millisecond, "the region never tried to prepare the task")
	require.Eventually(t, func() bool {
		r.prepMu.Lock()
		defer r.prepMu.Unlock()
		_, queued := r.preparing[tk.ID]
		return !queued
	}, 10*time.Second, 10*time.Millisecond, "the preparation never gave up")
	got, err := svc.Get(context.Background(), tk.ID)
	require.NoError(t, err)
	assert.Equal(t, task.StatusPending, got.Status, "still pending once the preparation gave up")

	st.down.Store(false)
	require.Eventually(t, func() bool {
		got, err := svc.Get(context.Background(), tk.ID)
		return err == nil && got.Status == task.StatusReady
	}, 10*time.Second, 20*time.Millisecond, "the task stayed pending after the store came back")
}
