package client_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/task"
)

// Retry and the dead-letter list through the client, on both stores: a
// chain of two attempts, the refusals as sentinels, the last failure in
// the list, acknowledged.
func TestRetryAndDLQ(t *testing.T) {
	stores := map[string]func(t *testing.T) *testCP{
		"memory": func(t *testing.T) *testCP {
			return startCP(t, nil, func(c *controlplane.Config) { c.MaxAttempts = 2 })
		},
		"etcd": func(t *testing.T) *testCP {
			return startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) { c.MaxAttempts = 2 })
		},
	}
	for name, start := range stores {
		t.Run(name, func(t *testing.T) {
			cp := start(t)
			ctx := context.Background()
			op, viewer := cp.client(operatorToken), cp.client(viewerToken)
			fail := func(id string) {
				_, err := cp.svc.Fail(ctx, id, "region:dc1", task.ErrorInfo{Code: "timeout", Message: "never booted"})
				require.NoError(t, err)
			}

			first, err := op.Create(ctx, createReq("52:54:00:78:00:01"))
			require.NoError(t, err)
			_, err = op.Retry(ctx, first.TaskID)
			require.ErrorIs(t, err, client.ErrNotRetryable)
			require.ErrorIs(t, err, task.ErrConflict)

			fail(first.TaskID)
			_, err = viewer.Retry(ctx, first.TaskID)
			require.ErrorIs(t, err, client.ErrForbidden)
			got, err := op.Get(ctx, first.TaskID)
			require.NoError(t, err)
			_, err = op.Retry(ctx, first.TaskID, client.IfMatch(got.Revision-1))
			require.ErrorIs(t, err, client.ErrConflict, "a stale If-Match")

			second, err := op.Retry(ctx, first.TaskID, client.IfMatch(got.Revision))
			require.NoError(t, err)
			assert.Equal(t, first.TaskID, second.RetryOf)
			assert.Equal(t, 2, second.Attempt)
			assert.Equal(t, 2, second.MaxAttempts)
			assert.Equal(t, task.StatusPending, second.Status)
			_, err = op.Retry(ctx, first.TaskID)
			require.ErrorIs(t, err, client.ErrAlreadyRetried)

			// Lists come from the control plane's watch-fed view, which
			// applies a revision's changes task by task: the retry's new
			// task may be listed a moment before the first attempt's
			// retried_as, written in the same transaction.
			var page *client.Page
			require.Eventually(t, func() bool {
				page, err = viewer.List(ctx, client.ListOptions{MAC: "52:54:00:78:00:01"})
				return err == nil && len(page.Tasks) == 2 &&
					slices.ContainsFunc(page.Tasks, func(tk *task.Task) bool { return tk.ID == first.TaskID && tk.RetriedAs() != "" })
			}, 10*time.Second, 10*time.Millisecond, "the list never showed the retry")
			require.NoError(t, err)
			require.Len(t, page.Tasks, 2)
			for _, tk := range page.Tasks {
				switch tk.ID {
				case first.TaskID:
					assert.Equal(t, second.TaskID, tk.RetriedAs())
					assert.Equal(t, 1, tk.Attempt())
				case second.TaskID:
					assert.Equal(t, first.TaskID, tk.Metadata.RetryOf)
					assert.Equal(t, 2, tk.Attempt())
					assert.Equal(t, 2, tk.MaxAttempts())
				}
			}

			fail(second.TaskID)
			_, err = op.Retry(ctx, second.TaskID)
			require.ErrorIs(t, err, client.ErrAttemptsExhausted)
			var dlq *client.DLQPage
			require.Eventually(t, func() bool {
				dlq, err = viewer.DLQ(ctx, client.DLQOptions{Kind: task.DLQTasks})
				require.NoError(t, err)
				return dlq.Total == 1
			}, 10*time.Second, 10*time.Millisecond)
			require.Len(t, dlq.Entries, 1)
			e := dlq.Entries[0]
			assert.Equal(t, task.DLQTasks, e.Kind)
			assert.Equal(t, second.TaskID, e.ID)
			require.NotNil(t, e.Task)
			assert.Equal(t, "timeout", e.Task.Error.Code)
			assert.Equal(t, 2, e.Task.Attempts)
			assert.NotEmpty(t, e.Task.Timeline)
			assert.False(t, e.At.IsZero())

			_, err = viewer.DLQ(ctx, client.DLQOptions{Kind: "machines"})
			var ce *client.Error
			require.True(t, errors.As(err, &ce))
			assert.Equal(t, "kind", ce.Field)
			require.ErrorIs(t, viewer.AckDLQ(ctx, task.DLQTasks, second.TaskID), client.ErrForbidden)
			require.NoError(t, op.AckDLQ(ctx, task.DLQTasks, second.TaskID))
			require.ErrorIs(t, op.AckDLQ(ctx, task.DLQTasks, second.TaskID), client.ErrNotFound)
			dlq, err = viewer.DLQ(ctx, client.DLQOptions{})
			require.NoError(t, err)
			assert.Zero(t, dlq.Total)
			assert.Empty(t, dlq.Entries)

			// A machine with an active task is not retried onto.
			third, err := op.Create(ctx, createReq("52:54:00:78:00:02"))
			require.NoError(t, err)
			fail(third.TaskID)
			_, err = op.Create(ctx, createReq("52:54:00:78:00:02"))
			require.NoError(t, err)
			_, err = op.Retry(ctx, third.TaskID)
			require.ErrorIs(t, err, client.ErrActiveTask)
		})
	}
}
