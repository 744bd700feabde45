package task_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

func failTask(t *testing.T, svc *task.Service, id string) *task.Task {
	t.Helper()
	failed, err := svc.Fail(ctxT(t), id, "region:dc1", task.ErrorInfo{Code: "download_failed", Message: "mirror down"})
	require.NoError(t, err)
	return failed
}

func retryReason(err error) string {
	var re *task.RetryError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// A retry chain: each attempt a new task linked to the one before; the
// last allowed attempt fails into the dead-letter list in the failing
// transaction itself, and cannot be retried.
func TestRetryChainAndDeadLetter(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		first, err := svc.Create(ctx, validRequest("00:1a:2b:3c:5e:01"))
		require.NoError(t, err)
		assert.Equal(t, 1, first.Attempt())
		assert.Equal(t, 1, first.Metadata.Attempt)
		assert.Equal(t, task.DefaultMaxAttempts, first.Metadata.MaxAttempts)
		assert.Empty(t, first.Metadata.RetryOf)

		failTask(t, svc, first.ID)
		keys, _ := dump(t, st)
		assert.NotContains(t, keys, task.DLQKey(task.DLQTasks, first.ID), "attempts are left: not a dead letter")

		second, err := svc.Retry(ctx, first.ID, "otto")
		require.NoError(t, err)
		assert.NotEqual(t, first.ID, second.ID)
		assert.Equal(t, task.StatusPending, second.Status)
		assert.Equal(t, first.ID, second.Metadata.RetryOf)
		assert.Equal(t, 2, second.Attempt())
		assert.Equal(t, "otto", second.Metadata.CreatedBy)
		assert.Equal(t, first.Metadata.OSType, second.Metadata.OSType)
		assert.Equal(t, first.Metadata.Tags, second.Metadata.Tags)
		assert.Equal(t, first.Metadata.TargetMAC, second.Metadata.TargetMAC)
		assert.Contains(t, second.Timeline[0].Message, "retrying task "+first.ID)

		// Stored as returned, the machine claimed, the region assigned.
		got, err := svc.Get(ctx, second.ID)
		require.NoError(t, err)
		assert.Equal(t, second.Metadata, got.Metadata)
		assert.Equal(t, second.Revision, got.Revision)
		active, err := svc.ActiveTask(ctx, first.Metadata.TargetMAC)
		require.NoError(t, err)
		assert.Equal(t, second.ID, active.ID)
		keys, _ = dump(t, st)
		assert.Contains(t, keys, task.RegionTaskKey("dc1", second.ID))

		old, err := svc.Get(ctx, first.ID)
		require.NoError(t, err)
		assert.Equal(t, task.StatusFailed, old.Status, "the old attempt stays failed")
		assert.Equal(t, second.ID, old.RetriedAs())
		last := old.Timeline[len(old.Timeline)-1]
		assert.Equal(t, task.TimelineRetried, last.Event)
		assert.Equal(t, "otto", last.Actor)

		// Cancelled tasks can be retried too.
		_, err = svc.Cancel(ctx, second.ID, "otto", "wrong image")
		require.NoError(t, err)
		third, err := svc.Retry(ctx, second.ID, "otto")
		require.NoError(t, err)
		assert.Equal(t, 3, third.Attempt())
		assert.Equal(t, second.ID, third.Metadata.RetryOf)

		// The last attempt fails into the dead-letter list, in the same
		// revision as the failure.
		dead := failTask(t, svc, third.ID)
		kv, err := st.Get(ctx, task.DLQKey(task.DLQTasks, third.ID))
		require.NoError(t, err)
		assert.Equal(t, dead.Revision, kv.ModRevision, "written by the failing transaction")
		var rec task.DeadTask
		require.NoError(t, json.Unmarshal(kv.Value, &rec))
		assert.Equal(t, third.ID, rec.TaskID)
		assert.Equal(t, 3, rec.Attempts)
		assert.Equal(t, 3, rec.MaxAttempts)
		assert.Equal(t, second.ID, rec.RetryOf)
		assert.Equal(t, "download_failed", rec.Error.Code)
		assert.Equal(t, "pending", rec.Error.Stage)
		assert.Equal(t, dead.Timeline, rec.Timeline)
		assert.Equal(t, "dc1", rec.RegionID)

		_, rev := dump(t, st)
		_, err = svc.Retry(ctx, third.ID, "otto")
		require.ErrorIs(t, err, task.ErrConflict)
		assert.Equal(t, task.RetryAttemptsExhausted, retryReason(err))
		_, after := dump(t, st)
		assert.Equal(t, rev, after, "a refused retry writes nothing")

		// Cancelled on the last attempt is the operator's choice: no dead letter.
		fresh, err := svc.Create(ctx, validRequest("00:1a:2b:3c:5e:02"))
		require.NoError(t, err)
		_, err = svc.Cancel(ctx, fresh.ID, "otto", "")
		require.NoError(t, err)
		keys, _ = dump(t, st)
		assert.NotContains(t, keys, task.DLQKey(task.DLQTasks, fresh.ID))
	})
}

func TestRetryRefusals(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		active, err := svc.Create(ctx, validRequest("00:1a:2b:3c:5f:01"))
		require.NoError(t, err)
		retried, err := svc.Create(ctx, validRequest("00:1a:2b:3c:5f:02"))
		require.NoError(t, err)
		failTask(t, svc, retried.ID)
		next, err := svc.Retry(ctx, retried.ID, "otto")
		require.NoError(t, err)
		_, err = svc.Cancel(ctx, next.ID, "otto", "")
		require.NoError(t, err)
		busy, err := svc.Create(ctx, validRequest("00:1a:2b:3c:5f:03"))
		require.NoError(t, err)
		failTask(t, svc, busy.ID)
		other, err := svc.Create(ctx, validRequest("00:1a:2b:3c:5f:03")) // the machine got a new task meanwhile
		require.NoError(t, err)
		completed := toPendingApproval(t, svc, "00:1a:2b:3c:5f:04")
		_, err = svc.Approve(ctx, completed.ID, "otto", "")
		require.NoError(t, err)

		for _, tc := range []struct {
			name, id, by string
			reason       string
			taskID       string
			is           error
		}{
			{"pending task", active.ID, "otto", task.RetryNotRetryable, "", task.ErrConflict},
			{"approved task", completed.ID, "otto", task.RetryNotRetryable, "", task.ErrConflict},
			{"retried already", retried.ID, "otto", task.RetryAlreadyRetried, next.ID, task.ErrConflict},
			{"machine busy", busy.ID, "otto", task.RetryActiveTask, other.ID, task.ErrConflict},
			{"unknown task", "00000000-0000-4000-8000-000000000009", "otto", "", "", task.ErrNotFound},
			{"bad ID", "nope", "otto", "", "", task.ErrInvalid},
			{"no actor", busy.ID, "", "", "", task.ErrInvalid},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, before := dump(t, st)
				_, err := svc.Retry(ctx, tc.id, tc.by)
				require.ErrorIs(t, err, tc.is)
				assert.Equal(t, tc.reason, retryReason(err))
				var re *task.RetryError
				if errors.As(err, &re) {
					assert.Equal(t, tc.taskID, re.TaskID)
				}
				_, after := dump(t, st)
				assert.Equal(t, before, after, "nothing written")
			})
		}
		var ae *task.ActiveTaskError
		_, err = svc.Retry(ctx, busy.ID, "otto")
		require.ErrorAs(t, err, &ae, "a busy machine's refusal carries the active task")
		assert.Equal(t, other.ID, ae.TaskID)

		// A stale revision refuses; the current one retries.
		b, err := svc.Get(ctx, busy.ID)
		require.NoError(t, err)
		_, err = svc.Cancel(ctx, other.ID, "otto", "")
		require.NoError(t, err)
		_, err = svc.Retry(ctx, busy.ID, "otto", task.ExpectRevision(b.Revision-1))
		require.ErrorIs(t, err, task.ErrConflict)
		_, err = svc.Retry(ctx, busy.ID, "otto", task.ExpectRevision(b.Revision))
		require.NoError(t, err)
	})
}

// Racing retries of one task: exactly one new task, the others learn it
// was retried (or, having lost on the machine's claim, that it is busy).
func TestRacingRetries(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		for round := range 3 {
			tk, err := svc.Create(ctx, validRequest(fmt.Sprintf("00:1a:2b:3c:60:%02x", round)))
			require.NoError(t, err)
			failTask(t, svc, tk.ID)
			const racers = 8
			errs := make(chan error, racers)
			wins := make(chan *task.Task, racers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					nt, err := svc.Retry(ctx, tk.ID, fmt.Sprintf("op%d", i))
					if err != nil {
						errs <- err
						return
					}
					wins <- nt
				}()
			}
			close(start)
			wg.Wait()
			close(errs)
			close(wins)
			require.Len(t, wins, 1, "exactly one retry wins")
			winner := <-wins
			for err := range errs {
				require.ErrorIs(t, err, task.ErrConflict)
				assert.Contains(t, []string{task.RetryAlreadyRetried, task.RetryActiveTask}, retryReason(err), "%v", err)
			}
			keys, _ := dump(t, st)
			n := 0
			for k, v := range keys {
				if _, f, ok := task.ParseTaskKey(k); ok && f == task.FieldMetadata && v != "" {
					var m task.Metadata
					require.NoError(t, json.Unmarshal([]byte(v), &m))
					if m.RetryOf == tk.ID {
						n++
					}
				}
			}
			assert.Equal(t, 1, n, "one task retries it")
			old, err := svc.Get(ctx, tk.ID)
			require.NoError(t, err)
			assert.Equal(t, winner.ID, old.RetriedAs())
		}
	})
}

// MaxAttempts comes from the service that created the first attempt and
// is handed down: a service configured otherwise follows the task's.
func TestMaxAttemptsTravelsWithTheTask(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, _ *task.Service) {
		ctx := ctxT(t)
		one := task.NewService(st, task.Config{MaxAttempts: 1})
		other := task.NewService(st, task.Config{MaxAttempts: 5})
		tk, err := one.Create(ctx, validRequest("00:1a:2b:3c:61:01"))
		require.NoError(t, err)
		assert.Equal(t, 1, tk.MaxAttempts())
		failTask(t, other, tk.ID) // failed by another service (a region)
		_, err = st.Get(ctx, task.DLQKey(task.DLQTasks, tk.ID))
		require.NoError(t, err, "its first attempt was its last")
		_, err = other.Retry(ctx, tk.ID, "otto")
		assert.Equal(t, task.RetryAttemptsExhausted, retryReason(err))
	})
}

func TestParseDLQKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		kind task.DLQKind
		id   string
		ok   bool
	}{
		{"/lpmos/dlq/tasks/abc", task.DLQTasks, "abc", true},
		{"/lpmos/dlq/webhooks/msg_1", task.DLQWebhooks, "msg_1", true},
		{"/lpmos/dlq/other/abc", "", "", false},
		{"/lpmos/dlq/tasks/", "", "", false},
		{"/lpmos/dlq/tasks/a/b", "", "", false},
		{"/lpmos/tasks/abc/status", "", "", false},
	} {
		kind, id, ok := task.ParseDLQKey(tc.key)
		assert.Equal(t, tc.ok, ok, tc.key)
		assert.Equal(t, tc.kind, kind, tc.key)
		assert.Equal(t, tc.id, id, tc.key)
	}
	assert.Equal(t, "/lpmos/dlq/tasks/x", task.DLQKey(task.DLQTasks, "x"))
}
