package task_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/task"
)

// legal is the whole state machine written out by hand, independently of
// the table in state.go: (status, event) → next. Every pair not listed must
// be refused.
var legal = map[task.Status]map[task.Event]task.Status{
	task.StatusPending:         {task.EventPrepared: task.StatusReady},
	task.StatusReady:           {task.EventBootStarted: task.StatusBooting},
	task.StatusBooting:         {task.EventHardwareReported: task.StatusPendingApproval},
	task.StatusPendingApproval: {task.EventApproved: task.StatusApproved, task.EventRejected: task.StatusRejected},
	task.StatusApproved:        {task.EventInstallStarted: task.StatusInstalling},
	task.StatusInstalling:      {task.EventCompleted: task.StatusCompleted},
}

func TestApplyEveryPair(t *testing.T) {
	for _, from := range task.Statuses() {
		for _, ev := range task.Events() {
			want, ok := legal[from][ev]
			if !from.Terminal() && (ev == task.EventFailed || ev == task.EventCancelled) {
				ok = true
				want = map[task.Event]task.Status{task.EventFailed: task.StatusFailed, task.EventCancelled: task.StatusCancelled}[ev]
			}
			t.Run(string(from)+"/"+string(ev), func(t *testing.T) {
				got, err := task.Apply(from, ev)
				if ok {
					require.NoError(t, err)
					assert.Equal(t, want, got)
					return
				}
				require.ErrorIs(t, err, task.ErrInvalidTransition)
				var te *task.TransitionError
				require.ErrorAs(t, err, &te)
				assert.Equal(t, from, te.From)
				assert.Equal(t, ev, te.Event)
				assert.Empty(t, got)
			})
		}
	}
}

func TestApplyUnknownValues(t *testing.T) {
	_, err := task.Apply("bogus", task.EventApproved)
	require.ErrorIs(t, err, task.ErrInvalidTransition)
	_, err = task.Apply(task.StatusPending, "bogus")
	require.ErrorIs(t, err, task.ErrInvalidTransition)
}

func TestStatusSets(t *testing.T) {
	terminal := map[task.Status]bool{task.StatusCompleted: true, task.StatusFailed: true, task.StatusRejected: true, task.StatusCancelled: true}
	for _, s := range task.Statuses() {
		assert.True(t, s.Valid())
		assert.Equal(t, terminal[s], s.Terminal(), s)
		got, err := task.ParseStatus(string(s))
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	assert.Len(t, task.Statuses(), 10)
	_, err := task.ParseStatus("done")
	require.ErrorIs(t, err, task.ErrInvalid)
	assert.False(t, task.Status("").Valid())
}

// Every status is reachable from pending and every non-terminal status can
// still reach completed: the table has no dead ends.
func TestStateMachineReachability(t *testing.T) {
	reach := func(from task.Status) map[task.Status]bool {
		seen := map[task.Status]bool{from: true}
		queue := []task.Status{from}
		for len(queue) > 0 {
			s := queue[0]
			queue = queue[1:]
			for _, ev := range task.Events() {
				if next, err := task.Apply(s, ev); err == nil && !seen[next] {
					seen[next] = true
					queue = append(queue, next)
				}
			}
		}
		return seen
	}
	fromPending := reach(task.StatusPending)
	for _, s := range task.Statuses() {
		assert.True(t, fromPending[s], "%s unreachable", s)
		if !s.Terminal() {
			assert.True(t, reach(s)[task.StatusCompleted], "%s cannot complete", s)
		}
	}
}

func TestParseTaskKey(t *testing.T) {
	tests := []struct {
		key   string
		id    string
		field task.Field
		ok    bool
	}{
		{"/lpmos/tasks/abc/status", "abc", task.FieldStatus, true},
		{"/lpmos/tasks/abc/timeline", "abc", task.FieldTimeline, true},
		{"/lpmos/tasks/abc/unknown", "", "", false},
		{"/lpmos/tasks/abc/status/x", "", "", false},
		{"/lpmos/tasks//status", "", "", false},
		{"/lpmos/tasks/abc", "", "", false},
		{"/lpmos/regions/dc1/tasks/abc", "", "", false},
	}
	for _, tt := range tests {
		id, f, ok := task.ParseTaskKey(tt.key)
		assert.Equal(t, tt.ok, ok, tt.key)
		assert.Equal(t, tt.id, id, tt.key)
		assert.Equal(t, tt.field, f, tt.key)
	}
	assert.Equal(t, "/lpmos/tasks/abc/metadata", task.TaskKey("abc", task.FieldMetadata))
	assert.Equal(t, "/lpmos/regions/dc1/tasks/abc", task.RegionTaskKey("dc1", "abc"))
	assert.Equal(t, "/lpmos/regions/dc1/client/heartbeat", task.RegionHeartbeatKey("dc1"))
}

func TestChangeFold(t *testing.T) {
	old := &task.Task{ID: "t1", Status: task.StatusBooting, Revision: 5, Metadata: task.Metadata{RegionID: "dc1"}}
	p := &task.Progress{Stage: task.StageWriting, Percentage: 40}
	got := task.Change{TaskID: "t1", Revision: 9, Status: task.StatusInstalling, Progress: p}.Fold(old)
	assert.Equal(t, &task.Task{ID: "t1", Status: task.StatusInstalling, Revision: 9, Metadata: task.Metadata{RegionID: "dc1"}, Progress: p}, got)
	assert.Equal(t, task.StatusBooting, old.Status, "the folded task is a copy")
	// A change without a status keeps the status revision.
	got = task.Change{TaskID: "t1", Revision: 12, Progress: p}.Fold(old)
	assert.Equal(t, int64(5), got.Revision)
	// From nothing, a creation.
	got = task.Change{TaskID: "t2", Revision: 3, Created: true, Metadata: &task.Metadata{ID: "t2"}, Status: task.StatusPending}.Fold(nil)
	assert.Equal(t, "t2", got.ID)
	assert.Equal(t, task.StatusPending, got.Status)
}
