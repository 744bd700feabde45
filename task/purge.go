package task

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/lpmos/lpmos/store"
)

// EndedAt is when a terminal task last changed: the time of its last
// timeline entry (its end, or a later first_boot). It is zero for a task
// that has not ended.
func (t *Task) EndedAt() time.Time {
	if !t.Status.Terminal() || len(t.Timeline) == 0 {
		return time.Time{}
	}
	return t.Timeline[len(t.Timeline)-1].Timestamp
}

// Purge deletes the tasks that ended before cutoff (EndedAt): every key
// under /lpmos/tasks/{id}/, each task in one transaction that requires its
// status key unchanged since the read (replicas purging at once delete each
// task once; nothing is half deleted). Active tasks are never touched. The
// oldest go first, at most limit per call (limit <= 0: all); the IDs purged
// are returned, also when an error stops the purge part way.
func (s *Service) Purge(ctx context.Context, cutoff time.Time, limit int) ([]string, error) {
	all, _, err := s.readAll(ctx)
	if err != nil {
		return nil, err
	}
	var due []*Task
	for _, t := range all {
		if ended := t.EndedAt(); !ended.IsZero() && ended.Before(cutoff) {
			due = append(due, t)
		}
	}
	slices.SortFunc(due, func(a, b *Task) int { return a.EndedAt().Compare(b.EndedAt()) })
	var purged []string
	for _, t := range due {
		if limit > 0 && len(purged) >= limit {
			break
		}
		res, err := s.txn(ctx, store.Txn{
			If:   []store.Compare{store.ModRevisionIs(TaskKey(t.ID, FieldStatus), t.Revision)},
			Then: []store.Op{store.OpDeletePrefix(TaskPrefix(t.ID))},
		})
		if err != nil {
			return purged, fmt.Errorf("purge task %s: %w", t.ID, err)
		}
		if res.Succeeded {
			purged = append(purged, t.ID)
		}
	}
	return purged, nil
}
