package task_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/task"
)

// retry runs op until it succeeds or fails with an error that is not
// transient, as a caller riding out an etcd leader election would. It is
// bounded in attempts and time.
func retry(t *testing.T, op func() error) error {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := op()
		if err == nil || errors.Is(err, task.ErrInvalid) || errors.Is(err, task.ErrNotFound) ||
			errors.Is(err, task.ErrConflict) || errors.Is(err, task.ErrInvalidTransition) || time.Now().After(deadline) {
			return err
		}
		t.Logf("transient: %v", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClusterLeaderFailover: a 3-member etcd cluster loses its leader while
// the service is in use; the service goes on against the remaining two, no
// task and no watched change is lost.
func TestClusterLeaderFailover(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	st, err := etcd.Dial(ctx, etcd.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	defer st.Close()
	svc := newService(st)

	watch := svc.Watch(ctx, 1)
	created := map[string]bool{}
	create := func(i int) string {
		var id string
		err := retry(t, func() error {
			tk, err := svc.Create(ctx, validRequest(fmt.Sprintf("00:1a:2b:3c:80:%02x", i)))
			var ae *task.ActiveTaskError
			if errors.As(err, &ae) {
				// An earlier attempt committed although its reply was lost.
				id = ae.TaskID
				return nil
			}
			if err == nil {
				id = tk.ID
			}
			return err
		})
		require.NoError(t, err)
		created[id] = true
		return id
	}

	var before []string
	for i := range 10 {
		before = append(before, create(i))
	}
	for _, id := range before[:5] {
		require.NoError(t, retry(t, func() error { _, err := svc.MarkReady(ctx, id, "region:dc1"); return err }))
	}

	var leader int
	require.Eventually(t, func() bool { leader = c.Leader(); return leader >= 0 }, 30*time.Second, 50*time.Millisecond)
	t.Logf("stopping leader m%d", leader)
	c.Members[leader].Close()

	// The service keeps working: new tasks, moves on old ones.
	var after []string
	for i := 10; i < 20; i++ {
		after = append(after, create(i))
	}
	for _, id := range before[5:] {
		require.NoError(t, retry(t, func() error { _, err := svc.MarkReady(ctx, id, "region:dc1"); return err }))
	}
	for _, id := range before[:5] {
		require.NoError(t, retry(t, func() error { _, err := svc.Cancel(ctx, id, "ops", "failover test"); return err }))
	}
	newLeader := -1
	for i, m := range c.Members {
		if i != leader && m.IsLeader() {
			newLeader = i
		}
	}
	assert.GreaterOrEqual(t, newLeader, 0, "one of the remaining members leads")

	// No task lost, each in the status its last move left it.
	page, err := svc.List(ctx, task.Filter{Limit: task.MaxLimit})
	require.NoError(t, err)
	assert.Equal(t, 20, page.Total)
	status := map[string]task.Status{}
	for _, tk := range page.Tasks {
		status[tk.ID] = tk.Status
	}
	for _, id := range before[:5] {
		assert.Equal(t, task.StatusCancelled, status[id])
	}
	for _, id := range before[5:] {
		assert.Equal(t, task.StatusReady, status[id])
	}
	for _, id := range after {
		assert.Equal(t, task.StatusPending, status[id])
	}

	// The watch, opened before the failover, saw every creation: the etcd
	// client resumed it on a surviving member without losing events.
	seen := map[string]bool{}
	timeout := time.After(30 * time.Second)
	for len(seen) < len(created) {
		select {
		case ch, ok := <-watch:
			require.True(t, ok, "watch ended")
			require.NoError(t, ch.Err)
			if ch.Created {
				seen[ch.TaskID] = true
			}
		case <-timeout:
			t.Fatalf("watch delivered %d of %d creations", len(seen), len(created))
		}
	}
	assert.Equal(t, created, seen)
}
