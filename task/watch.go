package task

import (
	"context"
	"fmt"
	"time"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
)

// Change is what one store revision changed in one task. Only the fields
// that were written are set; Status is empty if the status did not change.
type Change struct {
	TaskID   string
	Revision int64
	// Created is set when the task's metadata was written (at creation).
	Created  bool
	Metadata *Metadata
	Status   Status
	Hardware *hardware.Info
	Approval *Approval
	Progress *Progress
	Error    *ErrorInfo
	// Timeline is the whole timeline after the change, when it changed.
	Timeline []TimelineEntry
	// Deleted is set when keys of the task were deleted; Removed says
	// whether that removed the task.
	Deleted bool
	// Err, when set, ends the watch: typically store.ErrCompacted, after
	// which the watcher must re-list and watch from the list's revision.
	Err error
}

// Watch streams task changes from revision rev on (rev <= 0: from now),
// one Change per task per revision, in revision order. The channel closes
// when ctx ends or after a Change carrying Err. One prefix watch serves all
// tasks.
func (s *Service) Watch(ctx context.Context, rev int64) <-chan Change {
	out := make(chan Change)
	in := s.st.Watch(ctx, TasksPrefix, rev)
	go func() {
		defer close(out)
		send := func(c Change) bool {
			select {
			case out <- c:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range in {
			if resp.Err != nil {
				send(Change{Err: fmt.Errorf("watch tasks: %w", resp.Err)})
				return
			}
			for _, c := range s.changes(resp.Events) {
				if !send(c) {
					return
				}
			}
		}
	}()
	return out
}

// changes groups a response's events by (revision, task), keeping order.
func (s *Service) changes(evs []store.Event) []Change {
	var out []Change
	for _, ev := range evs {
		id, f, ok := ParseTaskKey(ev.KV.Key)
		if !ok {
			continue
		}
		if n := len(out); n == 0 || out[n-1].TaskID != id || out[n-1].Revision != ev.KV.ModRevision {
			out = append(out, Change{TaskID: id, Revision: ev.KV.ModRevision})
		}
		c := &out[len(out)-1]
		if ev.Type == store.EventDelete {
			c.Deleted = true
			continue
		}
		var t Task
		if err := t.decodeField(f, ev.KV.Value); err != nil {
			s.cfg.Logger.Warn("ignoring undecodable task change", "task_id", id, "field", f, "err", err)
			continue
		}
		switch f {
		case FieldMetadata:
			c.Created, c.Metadata = true, &t.Metadata
		case FieldStatus:
			c.Status = t.Status
		case FieldHardware:
			c.Hardware = t.Hardware
		case FieldApproval:
			c.Approval = t.Approval
		case FieldProgress:
			c.Progress = t.Progress
		case FieldError:
			c.Error = t.Error
		case FieldTimeline:
			c.Timeline = t.Timeline
		}
	}
	return out
}

// At is when the change was made, as far as its content says (its newest
// timeline entry or progress report); zero if it carries neither.
func (c Change) At() time.Time { return newest(c.Timeline, c.Progress) }

// Removed reports whether the change removed the task from the store (a
// purge): its keys were deleted, and neither its status nor its metadata
// was written in the same revision.
func (c Change) Removed() bool {
	return c.Deleted && c.Status == "" && c.Metadata == nil
}

// Fold returns a copy of t with the change applied: what a View
// does with each Change. t may be nil (a task first seen being created).
// t itself is never modified, so readers holding it are safe.
func (c Change) Fold(t *Task) *Task {
	nt := Task{ID: c.TaskID}
	if t != nil {
		nt = *t
	}
	if c.Metadata != nil {
		nt.Metadata = *c.Metadata
	}
	if c.Status != "" {
		nt.Status, nt.Revision = c.Status, c.Revision
	}
	if c.Hardware != nil {
		nt.Hardware = c.Hardware
	}
	if c.Approval != nil {
		nt.Approval = c.Approval
	}
	if c.Progress != nil {
		nt.Progress = c.Progress
	}
	if c.Error != nil {
		nt.Error = c.Error
	}
	if c.Timeline != nil {
		nt.Timeline = c.Timeline
	}
	return &nt
}
