package client

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/task"
)

// Created is the answer to a create: the new task's ID, status and
// revision.
type Created struct {
	TaskID    string      `json:"task_id"`
	Status    task.Status `json:"status"`
	CreatedAt time.Time   `json:"created_at"`
	Revision  int64       `json:"revision"`
	Links     struct {
		Self    string `json:"self"`
		Approve string `json:"approve"`
	} `json:"links"`
	// Replayed: the create carried an idempotency key the control plane
	// had already seen, and this is the task that first create made (its
	// status is the task's status now).
	Replayed bool `json:"-"`
}

// CreateOption modifies a Create.
type CreateOption func(*createOptions)

type createOptions struct {
	key      string
	attempts int
}

// IdempotencyKey sends key as the create's Idempotency-Key (at most 255
// printable ASCII characters, unique per intended task, e.g. an order
// number and the MAC). The control plane then makes at most one task per
// key and caller: a repeat is answered with the task the first one made
// (Created.Replayed), and a repeat with another request is refused
// (ErrIdempotencyKeyReused). That makes the create safe to repeat, so Create
// repeats it, up to attempts times in all (default 5), when the answer is
// lost (a connection error) or is 503 (the store electing a leader),
// waiting Retry-After or the client's backoff between attempts.
func IdempotencyKey(key string, attempts ...int) CreateOption {
	return func(o *createOptions) {
		o.key = key
		o.attempts = 5
		if len(attempts) > 0 && attempts[0] > 0 {
			o.attempts = attempts[0]
		}
	}
}

// Create asks for an install (POST /api/v1/tasks). The control plane
// records the caller as the creator; req.CreatedBy is not sent.
func (c *Client) Create(ctx context.Context, req task.CreateRequest, opts ...CreateOption) (*Created, error) {
	o := createOptions{attempts: 1}
	for _, opt := range opts {
		opt(&o)
	}
	var header http.Header
	if o.key != "" {
		header = http.Header{"Idempotency-Key": {o.key}}
	}
	wait := c.minBackoff
	for attempt := 1; ; attempt++ {
		var out Created
		resp, err := c.call(ctx, http.MethodPost, "/api/v1/tasks", nil, header, req, &out)
		if err == nil {
			if out.TaskID == "" {
				return nil, fmt.Errorf("POST /api/v1/tasks: %w", errNoBody)
			}
			out.Replayed = resp.Header.Get("Idempotent-Replayed") == "true"
			return &out, nil
		}
		var ae *Error
		retryable := o.key != "" && (resp == nil || errors.As(err, &ae) && ae.Code == CodeUnavailable)
		if !retryable || attempt >= o.attempts || ctx.Err() != nil {
			return nil, err
		}
		d := wait/2 + rand.N(wait/2+1)
		if ae != nil && ae.RetryAfter > 0 {
			d = ae.RetryAfter
		}
		wait = min(2*wait, c.maxBackoff)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(d):
		}
	}
}

// BatchItem is the outcome of one request of a batch create, at its index:
// the task made, or the error a single create would have answered (an
// *Error; the item wrote nothing).
type BatchItem struct {
	Index int
	Task  *Created
	Err   error
}

// BatchResult is the answer to a batch create: one item per request, in
// order.
type BatchResult struct {
	Created int
	Failed  int
	Items   []BatchItem
}

// CreateBatch creates up to task.MaxBatch tasks in one call (POST
// /api/v1/tasks/batch), each on its own: one bad request fails only
// itself. The call as a whole fails (nothing written) when the batch is
// empty, too long or too large.
func (c *Client) CreateBatch(ctx context.Context, reqs []task.CreateRequest) (*BatchResult, error) {
	const path = "/api/v1/tasks/batch"
	var out struct {
		Created int `json:"created"`
		Failed  int `json:"failed"`
		Results []struct {
			Index int       `json:"index"`
			Task  *Created  `json:"task"`
			Error *apiError `json:"error"`
		} `json:"results"`
	}
	body := struct {
		Tasks []task.CreateRequest `json:"tasks"`
	}{reqs}
	if body.Tasks == nil {
		body.Tasks = []task.CreateRequest{} // let the server say it is empty
	}
	if _, err := c.call(ctx, http.MethodPost, path, nil, nil, body, &out); err != nil {
		return nil, err
	}
	res := &BatchResult{Created: out.Created, Failed: out.Failed, Items: make([]BatchItem, len(out.Results))}
	for i, r := range out.Results {
		res.Items[i] = BatchItem{Index: r.Index, Task: r.Task, Err: itemError(http.MethodPost, path, r.Error)}
	}
	return res, nil
}

// Get returns the whole task: metadata, hardware, approval, progress,
// error, logs and timeline. Its Revision is what IfMatch takes.
func (c *Client) Get(ctx context.Context, id string) (*task.Task, error) {
	var t task.Task
	if _, err := c.call(ctx, http.MethodGet, taskPath(id), nil, nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

func taskPath(id string) string { return "/api/v1/tasks/" + url.PathEscape(id) }

// ListOptions are a list's filters and page; zero fields do not filter.
// A task must pass every filter given.
type ListOptions struct {
	RegionID string
	// Statuses: the task is in any one of them.
	Statuses []task.Status
	// MAC selects one machine's tasks, in any spelling lpmos.ParseMAC
	// takes; MACPrefix the machines whose MAC starts with it ("52:54:00").
	MAC       string
	MACPrefix string
	OSType    string
	OSVersion string
	// Tags: the task carries each of these keys with exactly this value.
	Tags map[string]string
	// CreatedBy is the creator's subject, exactly ("jwt:alice").
	CreatedBy string
	// Sort is the order (default task.SortNewest).
	Sort task.Sort
	// Limit is the page size (server default task.DefaultLimit, at most
	// task.MaxLimit); Offset skips that many tasks of the ordered result.
	Limit  int
	Offset int
}

func (o ListOptions) query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("region_id", o.RegionID)
	if len(o.Statuses) > 0 {
		sts := make([]string, len(o.Statuses))
		for i, s := range o.Statuses {
			sts[i] = string(s)
		}
		q.Set("status", strings.Join(sts, ","))
	}
	set("mac", o.MAC)
	set("mac_prefix", o.MACPrefix)
	set("os_type", o.OSType)
	set("os_version", o.OSVersion)
	keys := make([]string, 0, len(o.Tags))
	for k := range o.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a stable URL, for logs and caches
	for _, k := range keys {
		q.Add("tag", k+"="+o.Tags[k])
	}
	set("created_by", o.CreatedBy)
	set("sort", string(o.Sort))
	if o.Limit != 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Offset != 0 {
		q.Set("offset", strconv.Itoa(o.Offset))
	}
	return q
}

// Page is one page of a list and the number of tasks matching the filters.
// A list entry is a summary: of its task it carries ID, Status, Revision,
// Progress, Error and, in Metadata, ID, RegionID, TargetMAC, OSType,
// OSVersion, CreatedAt, CreatedBy, Tags, Attempt, MaxAttempts and
// RetryOf; its Timeline holds only the retried entry, if any (so that
// Task.RetriedAs works); Get returns the rest.
type Page struct {
	Tasks  []*task.Task
	Total  int
	Limit  int
	Offset int
}

// summary is a list entry as the API sends it.
type summary struct {
	TaskID      string            `json:"task_id"`
	Status      task.Status       `json:"status"`
	Revision    int64             `json:"revision"`
	RegionID    string            `json:"region_id"`
	TargetMAC   lpmos.MAC         `json:"target_mac"`
	OSType      string            `json:"os_type"`
	OSVersion   string            `json:"os_version"`
	CreatedAt   time.Time         `json:"created_at"`
	CreatedBy   string            `json:"created_by"`
	Tags        map[string]string `json:"tags"`
	Progress    *task.Progress    `json:"progress"`
	Error       *task.ErrorInfo   `json:"error"`
	Attempt     int               `json:"attempt"`
	MaxAttempts int               `json:"max_attempts"`
	RetryOf     string            `json:"retry_of"`
	RetriedAs   string            `json:"retried_as"`
}

func (s *summary) task() *task.Task {
	t := &task.Task{
		ID: s.TaskID, Status: s.Status, Revision: s.Revision, Progress: s.Progress, Error: s.Error,
		Metadata: task.Metadata{
			ID: s.TaskID, RegionID: s.RegionID, TargetMAC: s.TargetMAC, OSType: s.OSType, OSVersion: s.OSVersion,
			CreatedAt: s.CreatedAt, CreatedBy: s.CreatedBy, Tags: s.Tags,
			Attempt: s.Attempt, MaxAttempts: s.MaxAttempts, RetryOf: s.RetryOf,
		},
	}
	if s.RetriedAs != "" {
		// The one timeline entry a summary carries: so that RetriedAs
		// answers on a list entry as on a whole task.
		t.Timeline = []task.TimelineEntry{{Event: task.TimelineRetried, Status: s.Status, RetriedAs: s.RetriedAs}}
	}
	return t
}

// List returns one page of tasks (GET /api/v1/tasks).
func (c *Client) List(ctx context.Context, opts ListOptions) (*Page, error) {
	var out struct {
		Tasks  []summary `json:"tasks"`
		Total  int       `json:"total"`
		Limit  int       `json:"limit"`
		Offset int       `json:"offset"`
	}
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/tasks", opts.query(), nil, nil, &out); err != nil {
		return nil, err
	}
	p := &Page{Tasks: make([]*task.Task, len(out.Tasks)), Total: out.Total, Limit: out.Limit, Offset: out.Offset}
	for i := range out.Tasks {
		p.Tasks[i] = out.Tasks[i].task()
	}
	return p, nil
}

// Tasks walks every task matching opts, a page at a time (opts.Limit is
// the page size, default task.MaxLimit; opts.Offset where to start),
// yielding list summaries as List does. It stops at the first error,
// which it yields. The API pages by offset, so tasks created or deleted
// during the walk shift the pages: the walk never yields a task twice,
// and unless opts.Sort says otherwise it goes oldest first
// (task.SortOldest), where new tasks land after its position and are
// either yielded or not, without shifting the others; a task deleted
// behind the walk's position (by retention) can still make it skip one.
func (c *Client) Tasks(ctx context.Context, opts ListOptions) iter.Seq2[*task.Task, error] {
	return func(yield func(*task.Task, error) bool) {
		if opts.Sort == "" {
			opts.Sort = task.SortOldest
		}
		if opts.Limit <= 0 {
			opts.Limit = task.MaxLimit
		}
		seen := map[string]struct{}{}
		for {
			p, err := c.List(ctx, opts)
			if err != nil {
				yield(nil, err)
				return
			}
			for _, t := range p.Tasks {
				if _, dup := seen[t.ID]; dup {
					continue
				}
				seen[t.ID] = struct{}{}
				if !yield(t, nil) {
					return
				}
			}
			opts.Offset += len(p.Tasks)
			if len(p.Tasks) == 0 || opts.Offset >= p.Total {
				return
			}
		}
	}
}

// ListAll collects Tasks into a slice.
func (c *Client) ListAll(ctx context.Context, opts ListOptions) ([]*task.Task, error) {
	var all []*task.Task
	for t, err := range c.Tasks(ctx, opts) {
		if err != nil {
			return all, err
		}
		all = append(all, t)
	}
	return all, nil
}

// MoveOption qualifies a single-task approve, reject or cancel.
type MoveOption func(*moveOptions)

type moveOptions struct {
	ifMatch    int64
	hasIfMatch bool
}

// IfMatch makes a move happen only if the task's status has not moved
// since the read that returned revision (Task.Revision, a list entry's
// or an event's); otherwise it fails with ErrConflict and writes nothing.
func IfMatch(revision int64) MoveOption {
	return func(o *moveOptions) { o.ifMatch, o.hasIfMatch = revision, true }
}

// moveHeader turns the options into request headers.
func moveHeader(opts []MoveOption) http.Header {
	var o moveOptions
	for _, opt := range opts {
		opt(&o)
	}
	if !o.hasIfMatch {
		return nil
	}
	// Quoted, as the ETag of a GET is.
	return http.Header{"If-Match": {strconv.Quote(strconv.FormatInt(o.ifMatch, 10))}}
}

// Decision is the answer to an approve or reject.
type Decision struct {
	TaskID   string         `json:"task_id"`
	Status   task.Status    `json:"status"`
	Revision int64          `json:"revision"`
	Approval *task.Approval `json:"approval"`
	// NextStatus is what an approved task moves to next (installing).
	NextStatus task.Status `json:"next_status,omitempty"`
}

// Approve approves a task's hardware (PUT /api/v1/tasks/{id}/approve),
// with optional notes.
func (c *Client) Approve(ctx context.Context, id, notes string, opts ...MoveOption) (*Decision, error) {
	var out Decision
	body := struct {
		Approved bool   `json:"approved"`
		Notes    string `json:"notes,omitempty"`
	}{true, notes}
	if _, err := c.call(ctx, http.MethodPut, taskPath(id)+"/approve", nil, moveHeader(opts), body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Reject rejects a task's hardware (PUT /api/v1/tasks/{id}/reject); the
// reason is required.
func (c *Client) Reject(ctx context.Context, id, reason string, opts ...MoveOption) (*Decision, error) {
	var out Decision
	body := struct {
		Reason string `json:"reason"`
	}{reason}
	if _, err := c.call(ctx, http.MethodPut, taskPath(id)+"/reject", nil, moveHeader(opts), body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Cancel cancels a task that has not ended (DELETE /api/v1/tasks/{id});
// the reason, if any, is recorded in its timeline.
func (c *Client) Cancel(ctx context.Context, id, reason string, opts ...MoveOption) error {
	var q url.Values
	if reason != "" {
		q = url.Values{"reason": {reason}}
	}
	_, err := c.call(ctx, http.MethodDelete, taskPath(id), q, moveHeader(opts), nil, nil)
	return err
}

// Selection names the tasks of a bulk move: IDs (1 to task.MaxBatch), or
// a Filter, not both.
type Selection struct {
	IDs    []string
	Filter *BulkFilter
	// Limit caps how many tasks a filter moves, the oldest first (default
	// and maximum task.MaxBatch); BulkResult.Truncated says more matched.
	Limit int
}

// ByIDs selects tasks by ID.
func ByIDs(ids ...string) Selection { return Selection{IDs: ids} }

// ByFilter selects the tasks a filter matches.
func ByFilter(f BulkFilter) Selection { return Selection{Filter: &f} }

// BulkFilter selects tasks as a list's filters do. It matches only tasks in
// a status the move applies to (approve, reject: pending_approval; cancel:
// any not ended); Statuses may narrow that, not widen it. It must name at
// least one criterion.
type BulkFilter struct {
	RegionID  string            `json:"region_id,omitempty"`
	Statuses  []task.Status     `json:"status,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	MACPrefix string            `json:"mac_prefix,omitempty"`
	OSType    string            `json:"os_type,omitempty"`
	OSVersion string            `json:"os_version,omitempty"`
	CreatedBy string            `json:"created_by,omitempty"`
}

// Moved is a task a bulk call moved, with its new status and revision.
type Moved struct {
	TaskID   string      `json:"task_id"`
	Status   task.Status `json:"status"`
	Revision int64       `json:"revision"`
}

// Unmoved is a task a bulk call did not move, and why (an *Error:
// ErrInvalidTransition for the wrong status, ErrNotFound, ErrConflict, or
// ErrInvalidRequest for a malformed or repeated ID).
type Unmoved struct {
	TaskID string
	Err    error
}

// BulkResult is the answer to a bulk approve, reject or cancel.
type BulkResult struct {
	// Matched counts the tasks selected: the IDs given, or the tasks the
	// filter matched (of which at most the selection's limit were tried).
	Matched int
	// Truncated says the filter matched more than the limit: call again
	// for the next ones.
	Truncated bool
	Moved     []Moved
	Failed    []Unmoved
}

// BulkApprove approves the selected tasks (POST /api/v1/tasks/approve),
// each on its own.
func (c *Client) BulkApprove(ctx context.Context, sel Selection, notes string) (*BulkResult, error) {
	return c.bulk(ctx, "/api/v1/tasks/approve", sel, "notes", notes)
}

// BulkReject rejects the selected tasks (POST /api/v1/tasks/reject), each
// on its own; the reason is required.
func (c *Client) BulkReject(ctx context.Context, sel Selection, reason string) (*BulkResult, error) {
	return c.bulk(ctx, "/api/v1/tasks/reject", sel, "reason", reason)
}

// BulkCancel cancels the selected tasks (POST /api/v1/tasks/cancel), each
// on its own.
func (c *Client) BulkCancel(ctx context.Context, sel Selection, reason string) (*BulkResult, error) {
	return c.bulk(ctx, "/api/v1/tasks/cancel", sel, "reason", reason)
}

func (c *Client) bulk(ctx context.Context, path string, sel Selection, textField, text string) (*BulkResult, error) {
	body := map[string]any{}
	if sel.IDs != nil {
		body["ids"] = sel.IDs
	}
	if sel.Filter != nil {
		body["filter"] = sel.Filter
	}
	if sel.Limit != 0 {
		body["limit"] = sel.Limit
	}
	if text != "" {
		body[textField] = text
	}
	var out struct {
		Matched   int     `json:"matched"`
		Truncated bool    `json:"truncated"`
		Moved     []Moved `json:"moved"`
		Failed    []struct {
			TaskID string    `json:"task_id"`
			Error  *apiError `json:"error"`
		} `json:"failed"`
	}
	if _, err := c.call(ctx, http.MethodPost, path, nil, nil, body, &out); err != nil {
		return nil, err
	}
	res := &BulkResult{Matched: out.Matched, Truncated: out.Truncated, Moved: out.Moved, Failed: make([]Unmoved, len(out.Failed))}
	for i, f := range out.Failed {
		res.Failed[i] = Unmoved{TaskID: f.TaskID, Err: itemError(http.MethodPost, path, f.Error)}
	}
	return res, nil
}

// Region is a region as the control plane sees it.
type Region struct {
	ID string `json:"region_id"`
	// Status is "online" while the region's heartbeat lives and it has
	// not said it is going offline, else "offline".
	Status        string `json:"status"`
	LastHeartbeat string `json:"last_heartbeat,omitempty"`
	// Leader is the instance ID of the region process that leads it (of
	// several run for one region, only the leader answers machines).
	Leader       string             `json:"leader,omitempty"`
	Capabilities *task.Capabilities `json:"capabilities,omitempty"`
	// ActiveTasks counts the region's tasks that have not ended, by
	// status; nil while the control plane's task view is still loading.
	ActiveTasks map[task.Status]int `json:"active_tasks"`
}

// Regions lists the regions the control plane knows, by ID.
func (c *Client) Regions(ctx context.Context) ([]Region, error) {
	var out struct {
		Regions []Region `json:"regions"`
	}
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/regions", nil, nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Regions, nil
}

// DeleteRegion forgets a decommissioned region (DELETE
// /api/v1/regions/{id}, admin): refused with 409 while it is online or has
// tasks that have not ended (codes region_online, region_active_tasks).
func (c *Client) DeleteRegion(ctx context.Context, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/api/v1/regions/"+url.PathEscape(id), nil, nil, nil, nil)
	return err
}
