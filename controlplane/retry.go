package controlplane

import (
	"context"
	"errors"
	"hash/fnv"
	"net/http"
	"slices"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/task"
)

type retryResponse struct {
	createResponse
	RetryOf     string `json:"retry_of"`
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"max_attempts"`
}

// retryTask serves POST /api/v1/tasks/{id}/retry: a new attempt of a
// failed or cancelled task (task.Service.Retry), under the same caps as a
// create. It takes no body; If-Match applies to the old task.
func (s *Server) retryTask(w http.ResponseWriter, r *http.Request) error {
	opts, err := ifMatch(r)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	old, err := s.svc.Get(r.Context(), id)
	if err != nil {
		return err
	}
	adm, err := s.admission(w)
	if err != nil {
		return err
	}
	if err := adm.admit(task.CreateRequest{RegionID: old.Metadata.RegionID}); err != nil {
		return err
	}
	t, err := s.svc.Retry(r.Context(), id, principal(r).Subject, opts...)
	if err != nil {
		return err
	}
	s.metrics.retries.WithLabelValues(retryManual).Inc()
	s.caughtUp(r.Context(), t.Revision)
	self := "/api/v1/tasks/" + t.ID
	w.Header().Set("Location", self)
	httpjson.WriteJSON(w, http.StatusCreated, retryResponse{
		createResponse: createResponse{
			TaskID: t.ID, Status: t.Status, CreatedAt: t.Metadata.CreatedAt, Revision: t.Revision,
			Links: links{Self: self, Approve: self + "/approve"},
		},
		RetryOf: id, Attempt: t.Attempt(), MaxAttempts: t.MaxAttempts(),
	})
	return nil
}

// Labels of lpmos_task_retries_total.
const (
	retryManual = "manual"
	retryAuto   = "auto"
)

// Defaults of the automatic retry (Config.AutoRetry).
const (
	DefaultAutoRetryBase = 30 * time.Second
	DefaultAutoRetryCap  = 10 * time.Minute
)

// DefaultNoAutoRetryCodes are failure codes an automatic retry cannot fix:
// the same spec on the same machine fails the same way until someone
// changes the machine, the image or the region's files. An operator can
// still retry them by hand. (The image installer's codes of
// agent/install, and the region's boot_files_missing.)
var defaultNoAutoRetryCodes = []string{
	"no_disk",            // the machine has no disk to install onto
	"disk_too_small",     // the image does not fit the disk
	"bad_image",          // the image is not a disk image we can read
	"no_checksum",        // the catalogue has no SHA256SUMS for the image
	"boot_files_missing", // the region lacks the kernel/initramfs
}

// DefaultNoAutoRetryCodes returns the failure codes that are not retried
// automatically unless Config.NoAutoRetryCodes says otherwise. The slice
// is the caller's.
func DefaultNoAutoRetryCodes() []string { return slices.Clone(defaultNoAutoRetryCodes) }

// autoRetryWindow: a failure whose retry fell due longer ago than this
// is left to the operator, so that turning automatic retry on (or
// starting replicas after an outage) does not retry old failures in bulk.
const autoRetryWindow = time.Hour

// autoRetryActor is the timeline actor of automatic retries.
const autoRetryActor = "control-plane:auto-retry"

// retryDelay is how long after attempt n failed the next one starts: the
// base doubled per attempt up to the cap, of which the second half is
// jitter. The jitter comes from the task ID, so every replica computes
// the same due time (the earliest replica would otherwise always win)
// while tasks that failed together spread out.
func retryDelay(base, limit time.Duration, attempt int, id string) time.Duration {
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	h := fnv.New64a()
	h.Write([]byte(id))
	frac := float64(h.Sum64()%10000) / 10000
	return d/2 + time.Duration(frac*float64(d/2))
}

// autoRetry retries failed tasks by policy until ctx ends: every
// AutoRetryCheckInterval it looks through the task view for failed tasks
// whose retry is due. Every replica does; the retry transaction itself is
// the claim (it compares the failed task's timeline and writes the
// retried entry), so each failure is retried once however many replicas
// try, and the losers are told the task was retried already.
func (s *Server) autoRetry(ctx context.Context) {
	every := s.cfg.AutoRetryCheckInterval
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.tasksSynced() {
			s.autoRetryRound(ctx)
		}
	}
}

func (s *Server) autoRetryRound(ctx context.Context) {
	now := s.cfg.Now()
	tasks := s.view.Tasks()
	// A machine given a newer task since (by hand, or a retry already)
	// is not retried behind the operator's back.
	newest := make(map[lpmos.MAC]time.Time, len(tasks))
	for _, t := range tasks {
		if at := t.Metadata.CreatedAt; at.After(newest[t.Metadata.TargetMAC]) {
			newest[t.Metadata.TargetMAC] = at
		}
	}
	for _, t := range tasks {
		if ctx.Err() != nil {
			return
		}
		if t.Status != task.StatusFailed || t.Attempt() >= t.MaxAttempts() || t.RetriedAs() != "" ||
			newest[t.Metadata.TargetMAC].After(t.Metadata.CreatedAt) {
			continue
		}
		if t.Error != nil && slices.Contains(s.cfg.NoAutoRetryCodes, t.Error.Code) {
			continue
		}
		failed := t.FailedAt()
		if failed.IsZero() {
			continue
		}
		due := failed.Add(retryDelay(s.cfg.AutoRetryBase, s.cfg.AutoRetryCap, t.Attempt(), t.ID))
		if now.Before(due) || now.Sub(due) > autoRetryWindow {
			continue
		}
		adm := &admission{max: s.cfg.MaxActiveTasks, maxRegion: s.cfg.MaxActiveTasksPerRegion}
		adm.total, adm.byRegion = s.view.CountActive()
		if err := adm.admit(task.CreateRequest{RegionID: t.Metadata.RegionID}); err != nil {
			continue // over a cap: try again next round
		}
		nt, err := s.svc.Retry(ctx, t.ID, autoRetryActor, task.ExpectRevision(t.Revision))
		var re *task.RetryError
		switch {
		case err == nil:
			s.metrics.retries.WithLabelValues(retryAuto).Inc()
			s.log.Info("retried a failed task", "task_id", t.ID, "retry_id", nt.ID, "attempt", nt.Attempt(), "code", errCode(t))
		case errors.As(err, &re), errors.Is(err, task.ErrConflict), errors.Is(err, task.ErrNotFound):
			// Another replica won, the machine is busy, or the task
			// moved on: nothing to do.
		case ctx.Err() == nil:
			s.log.Warn("automatic retry failed", "task_id", t.ID, "err", err)
		}
	}
}

func errCode(t *task.Task) string {
	if t.Error == nil {
		return ""
	}
	return t.Error.Code
}
