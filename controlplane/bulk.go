package controlplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/task"
)

// An operator does not click ten thousand times: these handlers create up
// to task.MaxBatch tasks in one call, and approve, reject or cancel up to
// task.MaxBatch tasks named by ID or selected by a filter. Every item is its
// own transaction with its own audit record, exactly as the single call
// would be, so one bad item costs only itself; the answer lists each
// outcome.

type batchCreateRequest struct {
	Tasks []task.CreateRequest `json:"tasks"`
}

// batchCreateItem is one item's outcome: the task as a single create
// answers it, or the error a single create would have answered.
type batchCreateItem struct {
	Index int             `json:"index"`
	Task  *createResponse `json:"task,omitempty"`
	Error *httpjson.Error `json:"error,omitempty"`
}

type batchCreateResponse struct {
	Created int               `json:"created"`
	Failed  int               `json:"failed"`
	Results []batchCreateItem `json:"results"`
}

func (s *Server) createTasks(w http.ResponseWriter, r *http.Request) error {
	var req batchCreateRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBatchBodyBytes, &req); err != nil {
		return err
	}
	p := principal(r)
	for i := range req.Tasks {
		req.Tasks[i].CreatedBy = p.Subject
	}
	adm, err := s.admission(w)
	if err != nil {
		return err
	}
	results, err := s.svc.CreateBatchAdmitting(r.Context(), req.Tasks, adm.admit)
	if err != nil {
		return err
	}
	resp := batchCreateResponse{Results: make([]batchCreateItem, len(results))}
	var rev int64
	for i, res := range results {
		item := batchCreateItem{Index: i}
		status := http.StatusCreated
		if res.Err != nil {
			item.Error = s.itemError(r, res.Err)
			status = item.Error.Status
			resp.Failed++
		} else {
			t := res.Task
			self := "/api/v1/tasks/" + t.ID
			item.Task = &createResponse{
				TaskID: t.ID, Status: t.Status, CreatedAt: t.Metadata.CreatedAt, Revision: t.Revision,
				Links: links{Self: self, Approve: self + "/approve"},
			}
			rev = max(rev, t.Revision)
			resp.Created++
		}
		resp.Results[i] = item
		s.auditLog(r, p, "task.create", item.taskID(), status, slog.String("batch", "task.batch_create"), slog.Int("index", i))
	}
	s.caughtUp(r.Context(), rev)
	httpjson.WriteJSON(w, http.StatusOK, resp)
	return nil
}

func (i batchCreateItem) taskID() string {
	if i.Task == nil {
		return ""
	}
	return i.Task.TaskID
}

// itemError maps one item's error as a single call's would be answered,
// and logs what a 500 hides.
func (s *Server) itemError(r *http.Request, err error) *httpjson.Error {
	e := httpjson.From(err)
	if e.Status >= 500 {
		s.log.Error("batch item failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	return e
}

// bulkSelection names the tasks of a bulk move: their IDs, or a filter.
type bulkSelection struct {
	IDs    []string    `json:"ids"`
	Filter *bulkFilter `json:"filter"`
	// Limit caps how many tasks a filter moves (default and maximum
	// task.MaxBatch), the oldest first; the answer says if more matched.
	Limit int `json:"limit"`
}

// bulkFilter is a list's filter as a JSON object.
type bulkFilter struct {
	RegionID  string            `json:"region_id"`
	Status    []task.Status     `json:"status"`
	Tags      map[string]string `json:"tags"`
	MACPrefix string            `json:"mac_prefix"`
	OSType    string            `json:"os_type"`
	OSVersion string            `json:"os_version"`
	CreatedBy string            `json:"created_by"`
}

func (f *bulkFilter) empty() bool {
	return f.RegionID == "" && len(f.Status) == 0 && len(f.Tags) == 0 && f.MACPrefix == "" &&
		f.OSType == "" && f.OSVersion == "" && f.CreatedBy == ""
}

type bulkApproveRequest struct {
	bulkSelection
	Notes string `json:"notes"`
}

type bulkReasonRequest struct {
	bulkSelection
	Reason string `json:"reason"`
}

type movedTask struct {
	TaskID   string      `json:"task_id"`
	Status   task.Status `json:"status"`
	Revision int64       `json:"revision"`
}

type unmovedTask struct {
	TaskID string          `json:"task_id"`
	Error  *httpjson.Error `json:"error"`
}

type bulkResponse struct {
	// Matched counts the tasks selected: the IDs given, or the tasks the
	// filter matched (of which at most limit were tried).
	Matched   int           `json:"matched"`
	Truncated bool          `json:"truncated"`
	Moved     []movedTask   `json:"moved"`
	Failed    []unmovedTask `json:"failed"`
}

// bulkMove is one bulk endpoint: the event it applies (which decides the
// statuses a filter may select), its own audit action, the single call's
// audit action and success status, and the batch call.
type bulkMove struct {
	event  task.Event
	bulk   string
	action string
	status int
	batch  func(ctx context.Context, ids []string, by string) ([]task.BatchResult, error)
}

func (s *Server) bulkApprove(w http.ResponseWriter, r *http.Request) error {
	var req bulkApproveRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBatchBodyBytes, &req); err != nil {
		return err
	}
	return s.bulk(w, r, req.bulkSelection, bulkMove{task.EventApproved, "task.bulk_approve", "task.approve", http.StatusOK,
		func(ctx context.Context, ids []string, by string) ([]task.BatchResult, error) {
			return s.svc.ApproveBatch(ctx, ids, by, req.Notes)
		}})
}

func (s *Server) bulkReject(w http.ResponseWriter, r *http.Request) error {
	var req bulkReasonRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBatchBodyBytes, &req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Reason) == "" {
		// Refused before the selection is read, as a single reject is.
		return &task.ValidationError{Field: "reason", Reason: "is required"}
	}
	return s.bulk(w, r, req.bulkSelection, bulkMove{task.EventRejected, "task.bulk_reject", "task.reject", http.StatusOK,
		func(ctx context.Context, ids []string, by string) ([]task.BatchResult, error) {
			return s.svc.RejectBatch(ctx, ids, by, req.Reason)
		}})
}

func (s *Server) bulkCancel(w http.ResponseWriter, r *http.Request) error {
	var req bulkReasonRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBatchBodyBytes, &req); err != nil {
		return err
	}
	return s.bulk(w, r, req.bulkSelection, bulkMove{task.EventCancelled, "task.bulk_cancel", "task.cancel", http.StatusNoContent,
		func(ctx context.Context, ids []string, by string) ([]task.BatchResult, error) {
			return s.svc.CancelBatch(ctx, ids, by, req.Reason)
		}})
}

// bulk resolves the selection to task IDs, moves them and answers.
func (s *Server) bulk(w http.ResponseWriter, r *http.Request, sel bulkSelection, m bulkMove) error {
	ids, matched, err := s.selectTasks(sel, m.event)
	if err != nil {
		if httpjson.From(err).Status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		return err
	}
	p := principal(r)
	results, err := m.batch(r.Context(), ids, p.Subject)
	if err != nil {
		return err
	}
	resp := bulkResponse{Matched: matched, Truncated: matched > len(ids), Moved: []movedTask{}, Failed: []unmovedTask{}}
	var rev int64
	for i, res := range results {
		status := m.status
		if res.Err != nil {
			e := s.itemError(r, res.Err)
			status = e.Status
			resp.Failed = append(resp.Failed, unmovedTask{TaskID: ids[i], Error: e})
		} else {
			resp.Moved = append(resp.Moved, movedTask{TaskID: res.Task.ID, Status: res.Task.Status, Revision: res.Task.Revision})
			rev = max(rev, res.Task.Revision)
		}
		s.auditLog(r, p, m.action, ids[i], status, slog.String("batch", m.bulk))
	}
	s.caughtUp(r.Context(), rev)
	httpjson.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// selectTasks returns the IDs a bulk move tries and how many tasks were
// selected. A filter selects, from this replica's view, only tasks in a
// status the move applies to (all of them if the filter names no status;
// naming another status is an error), the oldest first, at most Limit.
func (s *Server) selectTasks(sel bulkSelection, ev task.Event) ([]string, int, error) {
	switch {
	case sel.Filter == nil && len(sel.IDs) == 0:
		return nil, 0, &task.ValidationError{Field: "ids", Reason: "give the tasks' ids or a filter"}
	case sel.Filter != nil && sel.IDs != nil:
		return nil, 0, &task.ValidationError{Field: "filter", Reason: "give ids or a filter, not both"}
	case sel.Filter == nil && sel.Limit != 0:
		return nil, 0, &task.ValidationError{Field: "limit", Reason: "applies to a filter only"}
	case sel.Filter == nil:
		return sel.IDs, len(sel.IDs), nil
	case sel.Filter.empty():
		return nil, 0, &task.ValidationError{Field: "filter", Reason: "names no criterion; to select every task the move applies to, name its status"}
	case sel.Limit < 0 || sel.Limit > task.MaxBatch:
		return nil, 0, &task.ValidationError{Field: "limit", Reason: fmt.Sprintf("must be within 0..%d", task.MaxBatch)}
	}
	bf := sel.Filter
	applies := func(st task.Status) bool { _, err := task.Apply(st, ev); return err == nil }
	f := task.Filter{
		RegionID: bf.RegionID, Statuses: bf.Status, Tags: bf.Tags, MACPrefix: bf.MACPrefix,
		OSType: bf.OSType, OSVersion: bf.OSVersion, CreatedBy: bf.CreatedBy,
		Sort: task.SortOldest, Limit: cmp.Or(sel.Limit, task.MaxBatch),
	}
	if err := f.Normalize(); err != nil {
		var ve *task.ValidationError
		if errors.As(err, &ve) {
			field := ve.Field
			if field == "tag" {
				field = "tags"
			}
			return nil, 0, &task.ValidationError{Field: "filter." + field, Reason: ve.Reason}
		}
		return nil, 0, err
	}
	var can []task.Status
	for _, st := range task.Statuses() {
		if applies(st) {
			can = append(can, st)
		}
	}
	for _, st := range f.Statuses {
		if !applies(st) {
			return nil, 0, &task.ValidationError{Field: "filter.status", Reason: fmt.Sprintf("%s does not apply to %s tasks, only to %s ones", ev, st, joinStatuses(can))}
		}
	}
	if len(f.Statuses) == 0 {
		f.Statuses = can
	}
	if !s.tasksSynced() {
		return nil, 0, httpjson.Errorf(http.StatusServiceUnavailable, httpjson.CodeUnavailable, "task cache is loading")
	}
	page := s.view.List(f)
	if page.Total == 0 {
		return nil, 0, &httpjson.Error{Status: http.StatusNotFound, Code: httpjson.CodeNotFound, Field: "filter",
			Message: fmt.Sprintf("no task in status %s matches the filter", joinStatuses(f.Statuses))}
	}
	ids := make([]string, len(page.Tasks))
	for i, t := range page.Tasks {
		ids[i] = t.ID
	}
	return ids, page.Total, nil
}

func joinStatuses(sts []task.Status) string {
	parts := make([]string, len(sts))
	for i, st := range sts {
		parts[i] = string(st)
	}
	return strings.Join(parts, " or ")
}
