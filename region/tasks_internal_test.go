package region

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/task"
)

// A machine's tasks reach the region through watches of their own, so an
// older task may be told ended after a newer one: the newer end decides.
func TestEndedTasksKeepTheLatestEnd(t *testing.T) {
	mac, err := lpmos.ParseMAC("52:54:00:00:03:01")
	require.NoError(t, err)
	ended := func(id string, s task.Status, rev int64) *task.Task {
		return &task.Task{ID: id, Status: s, Revision: rev, Metadata: task.Metadata{TargetMAC: mac}}
	}
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		order []*task.Task
		want  string
	}{
		{"in order", []*task.Task{ended("old", task.StatusCancelled, 10), ended("new", task.StatusCompleted, 20)}, "new"},
		{"older told last", []*task.Task{ended("new", task.StatusCompleted, 20), ended("old", task.StatusCancelled, 10)}, "new"},
		{"told twice", []*task.Task{ended("old", task.StatusCancelled, 10), ended("old", task.StatusCancelled, 10)}, "old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEndedTasks()
			for _, tk := range tt.order {
				e.record(tk, now)
			}
			assert.Equal(t, tt.want, e.m[mac].ID)
		})
	}
}
