package task

import (
	"context"
	"strings"
	"sync"

	"github.com/lpmos/lpmos"
)

// MaxBatch is the most items one batch call takes: tasks to create, or
// tasks to move.
const MaxBatch = 1000

// batchWorkers bounds the transactions one batch has in flight: enough for
// etcd to commit several in one fsync, few enough that one operator's batch
// does not crowd out the regions' writes.
const batchWorkers = 16

// BatchResult is the outcome of one item of a batch, at the item's index:
// the task as the single call would have returned it, or why that item
// was not done (the single call's error, or a *ValidationError for an item
// that repeats an earlier one of the same batch). A failed item wrote
// nothing.
type BatchResult struct {
	Task *Task
	Err  error
}

// CreateBatch creates each request as Create does, each in its own
// transaction, so that every item succeeds or fails on its own. A request
// whose MAC an earlier request of the batch already names fails with a
// *ValidationError on target_mac whatever became of the earlier one, so
// the outcome does not depend on timing. The batch itself is refused
// (nothing written) if it is empty or has more than MaxBatch requests.
// Results are in the order of reqs.
func (s *Service) CreateBatch(ctx context.Context, reqs []CreateRequest) ([]BatchResult, error) {
	return s.CreateBatchAdmitting(ctx, reqs, nil)
}

// CreateBatchAdmitting is CreateBatch with admit asked, before anything is
// written, about each request not already refused (a bad MAC or one an
// earlier request names), one after another in the batch's order; an
// item it refuses fails with its error and writes nothing. The control
// plane caps active tasks this way: the first items take the free slots,
// whatever the timing of the writes. A nil admit admits everything.
func (s *Service) CreateBatchAdmitting(ctx context.Context, reqs []CreateRequest, admit func(CreateRequest) error) ([]BatchResult, error) {
	if err := checkBatch("tasks", len(reqs)); err != nil {
		return nil, err
	}
	results := make([]BatchResult, len(reqs))
	first := make(map[lpmos.MAC]int, len(reqs))
	for i, r := range reqs {
		mac, err := lpmos.ParseMAC(r.TargetMAC)
		if err != nil {
			continue // Create says why
		}
		if j, dup := first[mac]; dup {
			results[i].Err = invalid("target_mac", "machine %s is already tasks[%d] of this batch", mac, j)
			continue
		}
		first[mac] = i
		if admit != nil {
			results[i].Err = admit(r)
		}
	}
	s.each(ctx, results, func(ctx context.Context, i int) (*Task, error) {
		return s.Create(ctx, reqs[i])
	})
	return results, nil
}

// ApproveBatch approves each task as Approve does, each in its own
// transaction (see moveBatch).
func (s *Service) ApproveBatch(ctx context.Context, ids []string, by, notes string) ([]BatchResult, error) {
	if err := checkText("notes", notes, MaxTextLen); err != nil {
		return nil, err
	}
	return s.moveBatch(ctx, ids, by, func(ctx context.Context, id string) (*Task, error) {
		return s.Approve(ctx, id, by, notes)
	})
}

// RejectBatch rejects each task as Reject does (see moveBatch); reason is
// required.
func (s *Service) RejectBatch(ctx context.Context, ids []string, by, reason string) ([]BatchResult, error) {
	if strings.TrimSpace(reason) == "" {
		return nil, invalid("reason", "is required")
	}
	if err := checkText("reason", reason, MaxTextLen); err != nil {
		return nil, err
	}
	return s.moveBatch(ctx, ids, by, func(ctx context.Context, id string) (*Task, error) {
		return s.Reject(ctx, id, by, reason)
	})
}

// CancelBatch cancels each task as Cancel does (see moveBatch).
func (s *Service) CancelBatch(ctx context.Context, ids []string, by, reason string) ([]BatchResult, error) {
	if err := checkText("reason", reason, MaxTextLen); err != nil {
		return nil, err
	}
	return s.moveBatch(ctx, ids, by, func(ctx context.Context, id string) (*Task, error) {
		return s.Cancel(ctx, id, by, reason)
	})
}

// moveBatch runs one move per task ID, each its own compare-and-swap
// transaction, so that every task moves or stays on its own: a task in the
// wrong status fails with ErrInvalidTransition, an unknown one with
// ErrNotFound, and an ID the batch already names with a *ValidationError on
// task_id. Input that would fail every item (the actor, the note) and a
// batch that is empty or longer than MaxBatch are refused as a whole,
// before anything is written. Results are in the order of ids.
func (s *Service) moveBatch(ctx context.Context, ids []string, by string, move func(ctx context.Context, id string) (*Task, error)) ([]BatchResult, error) {
	if err := checkBatch("ids", len(ids)); err != nil {
		return nil, err
	}
	if err := checkActor(by); err != nil {
		return nil, err
	}
	results := make([]BatchResult, len(ids))
	first := make(map[string]int, len(ids))
	for i, id := range ids {
		if j, dup := first[id]; dup {
			results[i].Err = invalid("task_id", "task %s is already ids[%d] of this batch", truncate(id), j)
			continue
		}
		first[id] = i
	}
	s.each(ctx, results, func(ctx context.Context, i int) (*Task, error) {
		return move(ctx, ids[i])
	})
	return results, nil
}

// checkBatch refuses a batch of n items as a whole.
func checkBatch(field string, n int) error {
	switch {
	case n == 0:
		return invalid(field, "is empty")
	case n > MaxBatch:
		return invalid(field, "%d items, at most %d per batch", n, MaxBatch)
	}
	return nil
}

// each runs do for every result that has no error yet, batchWorkers at a
// time, and returns when all have returned. Once ctx ends the items not
// started fail with ctx's error.
func (s *Service) each(ctx context.Context, results []BatchResult, do func(ctx context.Context, i int) (*Task, error)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(batchWorkers, len(results)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i].Task, results[i].Err = do(ctx, i)
			}
		}()
	}
	for i := range results {
		if results[i].Err != nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			results[i].Err = err
			continue
		}
		next <- i
	}
	close(next)
	wg.Wait()
}
