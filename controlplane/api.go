package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/store"
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
	return s.create(w, r, nil)
}

// create answers a task create: the request body, adjusted by adjust if
// set (a create from a machine fills in its MAC and region).
func (s *Server) create(w http.ResponseWriter, r *http.Request, adjust func(*task.CreateRequest) error) error {
	var req task.CreateRequest
	if err := httpjson.Decode(w, r, s.cfg.MaxCreateBodyBytes, &req); err != nil {
		return err
	}
	if adjust != nil {
		if err := adjust(&req); err != nil {
			return err
		}
	}
	req.CreatedBy = principal(r).Subject
	if key := r.Header.Get(IdempotencyKeyHeader); key != "" {
		id, err := idempotentID(req.CreatedBy, key)
		if err != nil {
			return err
		}
		req.ID = id
		// A repeat of a create that was applied: answer as the first did
		// (even when the task has moved on, or capacity is full by now).
		if t, err := s.svc.Get(r.Context(), id); err == nil {
			return s.replayCreate(w, r, req, t)
		} else if !errors.Is(err, task.ErrNotFound) {
			return err
		}
	}
	adm, err := s.admission(w)
	if err != nil {
		return err
	}
	if err := adm.admit(req); err != nil {
		return err
	}
	t, err := s.svc.Create(r.Context(), req)
	var exists *task.ExistsError
	if errors.As(err, &exists) && req.ID != "" {
		// The same key raced with itself; the other one made it.
		return s.replayCreate(w, r, req, exists.Task)
	}
	if err != nil {
		return err
	}
	s.writeCreated(w, r, t, http.StatusCreated)
	return nil
}

// IdempotencyKeyHeader makes a create safe to repeat (the IETF
// httpapi-idempotency-key-header draft): the task ID is derived from the
// caller's subject and the key, so a repeat of an applied create finds its
// task and is answered 200 with Idempotent-Replayed: true, and a create
// that failed or was never applied is simply made. A key is the caller's
// for as long as the task is kept (retention); the same key with a
// different request is refused with 422. Clients retrying after a 503, a
// timeout or a lost connection should always send one.
const IdempotencyKeyHeader = "Idempotency-Key"

// CodeIdempotencyKeyReused answers a key repeated with another request.
const CodeIdempotencyKeyReused = "idempotency_key_reused"

// idempotencyNamespace is the UUID namespace of task IDs derived from
// idempotency keys (RFC 9562 name-based UUIDs, version 5).
var idempotencyNamespace = uuid.MustParse("4f0c8a5e-2f4e-4b8e-9d3a-6c1b7e2a9d10")

// idempotentID is the task ID of a create by subject with key.
func idempotentID(subject, key string) (string, error) {
	if len(key) > 255 {
		return "", &task.ValidationError{Field: IdempotencyKeyHeader, Reason: "longer than 255 bytes"}
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x20 || key[i] > 0x7e {
			return "", &task.ValidationError{Field: IdempotencyKeyHeader, Reason: "only printable ASCII is allowed"}
		}
	}
	return uuid.NewSHA1(idempotencyNamespace, []byte(subject+"\x00"+key)).String(), nil
}

// replayCreate answers a repeated idempotent create with the task the
// first one made, or refuses a key reused for another request.
func (s *Server) replayCreate(w http.ResponseWriter, r *http.Request, req task.CreateRequest, t *task.Task) error {
	if !req.SameAs(t) {
		return httpjson.Errorf(http.StatusUnprocessableEntity, CodeIdempotencyKeyReused,
			"%s was used for task %s, created with another request", IdempotencyKeyHeader, t.ID)
	}
	w.Header().Set("Idempotent-Replayed", "true")
	s.writeCreated(w, r, t, http.StatusOK)
	return nil
}

// writeCreated answers a create with the task's ID, status and links.
func (s *Server) writeCreated(w http.ResponseWriter, r *http.Request, t *task.Task, status int) {
	auditTaskID(r, t.ID)
	s.caughtUp(r.Context(), t.Revision)
	self := "/api/v1/tasks/" + t.ID
	w.Header().Set("Location", self)
	httpjson.WriteJSON(w, status, createResponse{
		TaskID: t.ID, Status: t.Status, CreatedAt: t.Metadata.CreatedAt, Revision: t.Revision,
		Links: links{Self: self, Approve: self + "/approve"},
	})
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	t, err := s.svc.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(t.Revision, 10)))
	if p, _ := auth.PrincipalFrom(r.Context()); p.Role < auth.RoleOperator {
		redactSecrets(&t.Metadata)
	}
	httpjson.WriteJSON(w, http.StatusOK, t)
	return nil
}

// Redacted replaces, for viewers, what a task's creator may have put
// there as a secret.
const Redacted = "<redacted>"

// redactSecrets hides a task's root password hash (crackable offline)
// and user-data (cloud-config often carries passwords and keys) from
// viewers: they see that each was set, not what it is. Operators, who
// create tasks, see them.
func redactSecrets(md *task.Metadata) {
	if md.RootPasswordHash != "" {
		md.RootPasswordHash = Redacted
	}
	if md.UserData != "" {
		md.UserData = Redacted
	}
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

// Codes of a refused region deletion.
const (
	CodeRegionOnline      = "region_online"       // 409: its heartbeat lives or a process leads it
	CodeRegionActiveTasks = "region_active_tasks" // 409: it has tasks that have not ended
)

// deleteRegion forgets a decommissioned region: its status, capabilities
// and last heartbeat, which keep a dead region listed offline for ever.
// A region that is online (its heartbeat lives, or a process of it leads)
// or has tasks that have not ended is refused with 409; its ended tasks
// are left to retention.
func (s *Server) deleteRegion(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := lpmos.ValidateRegionID(id); err != nil {
		return &task.ValidationError{Field: "region_id", Reason: err.Error()}
	}
	ctx := r.Context()
	active, err := s.cfg.Store.List(ctx, task.RegionTasksPrefix(id), store.ListOptions{Limit: 1})
	if err != nil {
		return err
	}
	if len(active.KVs) > 0 {
		return httpjson.Errorf(http.StatusConflict, CodeRegionActiveTasks,
			"region %s has tasks that have not ended: cancel them first", id)
	}
	clientKeys := task.RegionsPrefix + id + "/client/"
	known, err := s.cfg.Store.List(ctx, clientKeys, store.ListOptions{Limit: 1})
	if err != nil {
		return err
	}
	if len(known.KVs) == 0 {
		return httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "no region %s", id)
	}
	res, err := s.cfg.Store.Txn(ctx, store.Txn{
		If:   []store.Compare{store.Missing(task.RegionHeartbeatKey(id)), store.Missing(task.RegionLeaderKey(id))},
		Then: []store.Op{store.OpDeletePrefix(clientKeys)},
	})
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return httpjson.Errorf(http.StatusConflict, CodeRegionOnline,
			"region %s is online (its heartbeat lives or one of its processes leads it): stop it first", id)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	httpjson.WriteJSON(w, http.StatusOK, map[string]string{"subject": p.Subject, "role": p.Role.String()})
	return nil
}
