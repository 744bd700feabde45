package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/task"
)

// readYourWrites bounds how long a mutation waits for this replica's cache
// to catch up, so that the caller's next list shows its change.
const readYourWrites = 2 * time.Second

func (s *Server) caughtUp(ctx context.Context, rev int64) {
	ctx, cancel := context.WithTimeout(ctx, readYourWrites)
	defer cancel()
	_ = s.view.WaitRevision(ctx, rev)
}

func principal(r *http.Request) auth.Principal {
	p, _ := auth.PrincipalFrom(r.Context())
	return p
}

type links struct {
	Self    string `json:"self"`
	Approve string `json:"approve"`
}

type createResponse struct {
	TaskID    string      `json:"task_id"`
	Status    task.Status `json:"status"`
	CreatedAt time.Time   `json:"created_at"`
	Revision  int64       `json:"revision"`
	Links     links       `json:"links"`
}

func (s *Server) createTask(w http.ResponseWriter, r *http.Request) error {
	var req task.CreateRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &req); err != nil {
		return err
	}
	req.CreatedBy = principal(r).Subject
	adm, err := s.admission(w)
	if err != nil {
		return err
	}
	if err := adm.admit(req); err != nil {
		return err
	}
	t, err := s.svc.Create(r.Context(), req)
	if err != nil {
		return err
	}
	auditTaskID(r, t.ID)
	s.caughtUp(r.Context(), t.Revision)
	self := "/api/v1/tasks/" + t.ID
	w.Header().Set("Location", self)
	httpjson.WriteJSON(w, http.StatusCreated, createResponse{
		TaskID: t.ID, Status: t.Status, CreatedAt: t.Metadata.CreatedAt, Revision: t.Revision,
		Links: links{Self: self, Approve: self + "/approve"},
	})
	return nil
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	t, err := s.svc.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(t.Revision, 10)))
	httpjson.WriteJSON(w, http.StatusOK, t)
	return nil
}

// taskSummary is a list entry: what a table row needs, not the hardware
// report or the timeline.
type taskSummary struct {
	TaskID    string            `json:"task_id"`
	Status    task.Status       `json:"status"`
	Revision  int64             `json:"revision"`
	RegionID  string            `json:"region_id"`
	TargetMAC string            `json:"target_mac"`
	OSType    string            `json:"os_type"`
	OSVersion string            `json:"os_version"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by"`
	Tags      map[string]string `json:"tags,omitempty"`
	Progress  *task.Progress    `json:"progress,omitempty"`
	Error     *task.ErrorInfo   `json:"error,omitempty"`
	// Attempt of MaxAttempts; RetryOf the attempt it retries, RetriedAs
	// the one that retries it.
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"max_attempts"`
	RetryOf     string `json:"retry_of,omitempty"`
	RetriedAs   string `json:"retried_as,omitempty"`
}

type listResponse struct {
	Tasks  []taskSummary `json:"tasks"`
	Total  int           `json:"total"`
	Limit  int           `json:"limit"`
	Offset int           `json:"offset"`
}

func queryInt(q url.Values, name string) (int, error) {
	v := q.Get(name)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, &task.ValidationError{Field: name, Reason: "not an integer"}
	}
	return n, nil
}

// listFilter reads a list's query parameters: region_id, status (repeated
// or comma-separated: any of them), mac, mac_prefix, os_type, os_version,
// tag=key=value (repeated: all of them), created_by, sort, limit, offset.
// Unknown parameters are ignored; a bad value is a 400 naming the
// parameter.
func listFilter(q url.Values) (task.Filter, error) {
	f := task.Filter{
		RegionID:  q.Get("region_id"),
		MACPrefix: q.Get("mac_prefix"),
		OSType:    q.Get("os_type"),
		OSVersion: q.Get("os_version"),
		CreatedBy: q.Get("created_by"),
		Sort:      task.Sort(q.Get("sort")),
	}
	for _, v := range q["status"] {
		for _, st := range strings.Split(v, ",") {
			if st = strings.TrimSpace(st); st != "" {
				f.Statuses = append(f.Statuses, task.Status(st))
			}
		}
	}
	if v := q.Get("mac"); v != "" {
		mac, err := lpmos.ParseMAC(v)
		if err != nil {
			return f, &task.ValidationError{Field: "mac", Reason: err.Error()}
		}
		f.MAC = mac
	}
	for _, v := range q["tag"] {
		k, val, ok := strings.Cut(v, "=")
		if !ok {
			return f, &task.ValidationError{Field: "tag", Reason: "want key=value"}
		}
		if prev, dup := f.Tags[k]; dup && prev != val {
			return f, &task.ValidationError{Field: "tag", Reason: fmt.Sprintf("tag %q given twice with different values: no task matches", k)}
		}
		if f.Tags == nil {
			f.Tags = map[string]string{}
		}
		f.Tags[k] = val
	}
	var err error
	if f.Limit, err = queryInt(q, "limit"); err != nil {
		return f, err
	}
	if f.Offset, err = queryInt(q, "offset"); err != nil {
		return f, err
	}
	return f, f.Normalize()
}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	f, err := listFilter(r.URL.Query())
	if err != nil {
		return err
	}
	if !s.tasksSynced() {
		w.Header().Set("Retry-After", "1")
		return httpjson.Errorf(http.StatusServiceUnavailable, httpjson.CodeUnavailable, "task cache is loading")
	}
	page := s.view.List(f)
	resp := listResponse{Tasks: make([]taskSummary, 0, len(page.Tasks)), Total: page.Total, Limit: page.Limit, Offset: page.Offset}
	for _, t := range page.Tasks {
		resp.Tasks = append(resp.Tasks, taskSummary{
			TaskID: t.ID, Status: t.Status, Revision: t.Revision, RegionID: t.Metadata.RegionID,
			TargetMAC: t.Metadata.TargetMAC.String(), OSType: t.Metadata.OSType, OSVersion: t.Metadata.OSVersion,
			CreatedAt: t.Metadata.CreatedAt, CreatedBy: t.Metadata.CreatedBy, Tags: t.Metadata.Tags,
			Progress: t.Progress, Error: t.Error,
			Attempt: t.Attempt(), MaxAttempts: t.MaxAttempts(), RetryOf: t.Metadata.RetryOf, RetriedAs: t.RetriedAs(),
		})
	}
	httpjson.WriteJSON(w, http.StatusOK, resp)
	return nil
}

type approveRequest struct {
	Approved *bool  `json:"approved"`
	Notes    string `json:"notes"`
}

type decisionResponse struct {
	TaskID     string         `json:"task_id"`
	Status     task.Status    `json:"status"`
	Revision   int64          `json:"revision"`
	Approval   *task.Approval `json:"approval"`
	NextStatus task.Status    `json:"next_status,omitempty"`
}

func (s *Server) approveTask(w http.ResponseWriter, r *http.Request) error {
	var req approveRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &req); err != nil {
		return err
	}
	if req.Approved == nil {
		return &task.ValidationError{Field: "approved", Reason: "is required (true to approve; false rejects with notes as the reason)"}
	}
	opts, err := ifMatch(r)
	if err != nil {
		return err
	}
	var t *task.Task
	if *req.Approved {
		t, err = s.svc.Approve(r.Context(), r.PathValue("id"), principal(r).Subject, req.Notes, opts...)
	} else {
		t, err = s.svc.Reject(r.Context(), r.PathValue("id"), principal(r).Subject, req.Notes, opts...)
	}
	if err != nil {
		return err
	}
	s.caughtUp(r.Context(), t.Revision)
	resp := decisionResponse{TaskID: t.ID, Status: t.Status, Revision: t.Revision, Approval: t.Approval}
	if t.Status == task.StatusApproved {
		resp.NextStatus = task.StatusInstalling
	}
	httpjson.WriteJSON(w, http.StatusOK, resp)
	return nil
}

type rejectRequest struct {
	Reason string `json:"reason"`
}

func (s *Server) rejectTask(w http.ResponseWriter, r *http.Request) error {
	var req rejectRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxBodyBytes, &req); err != nil {
		return err
	}
	opts, err := ifMatch(r)
	if err != nil {
		return err
	}
	t, err := s.svc.Reject(r.Context(), r.PathValue("id"), principal(r).Subject, req.Reason, opts...)
	if err != nil {
		return err
	}
	s.caughtUp(r.Context(), t.Revision)
	httpjson.WriteJSON(w, http.StatusOK, decisionResponse{TaskID: t.ID, Status: t.Status, Revision: t.Revision, Approval: t.Approval})
	return nil
}

func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request) error {
	opts, err := ifMatch(r)
	if err != nil {
		return err
	}
	t, err := s.svc.Cancel(r.Context(), r.PathValue("id"), principal(r).Subject, r.URL.Query().Get("reason"), opts...)
	if err != nil {
		return err
	}
	s.caughtUp(r.Context(), t.Revision)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) error {
	regions := s.regions.list()
	if s.tasksSynced() {
		counts := countActive(s.view.Tasks())
		for i := range regions {
			c := counts[regions[i].ID]
			if c == nil {
				c = map[task.Status]int{}
			}
			regions[i].ActiveTasks = c
		}
	}
	httpjson.WriteJSON(w, http.StatusOK, map[string][]Region{"regions": regions})
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	httpjson.WriteJSON(w, http.StatusOK, map[string]string{"subject": p.Subject, "role": p.Role.String()})
	return nil
}
