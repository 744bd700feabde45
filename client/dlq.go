package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/lpmos/lpmos/task"
)

// Retried is the answer to a retry: the new attempt (a new task) and
// where it stands in its chain.
type Retried struct {
	Created
	// RetryOf is the task retried; Attempt the new task's number, of at
	// most MaxAttempts.
	RetryOf     string `json:"retry_of"`
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"max_attempts"`
}

// Retry starts a new attempt of a failed or cancelled task (POST
// /api/v1/tasks/{id}/retry): a new task with the same spec, linked to it.
// Refusals are 409s with their own codes: ErrNotRetryable (the task has
// not failed or been cancelled), ErrAlreadyRetried, ErrAttemptsExhausted
// (it was the last allowed attempt) and ErrActiveTask (its machine has an
// active task); all of them also match task.ErrConflict. IfMatch applies
// to the task retried.
func (c *Client) Retry(ctx context.Context, id string, opts ...MoveOption) (*Retried, error) {
	var out Retried
	if _, err := c.call(ctx, http.MethodPost, taskPath(id)+"/retry", nil, moveHeader(opts), nil, &out); err != nil {
		return nil, err
	}
	if out.TaskID == "" {
		return nil, fmt.Errorf("POST %s/retry: %w", taskPath(id), errNoBody)
	}
	return &out, nil
}

// DeadDelivery is a webhook delivery that gave up, as the dead-letter list
// shows it.
type DeadDelivery struct {
	ID string `json:"id"`
	// URL is the endpoint without credentials, query or fragment.
	URL       string      `json:"url"`
	Event     string      `json:"event"`
	TaskID    string      `json:"task_id"`
	Status    task.Status `json:"status"`
	Revision  int64       `json:"revision"`
	Attempts  int         `json:"attempts"`
	Error     string      `json:"error"`
	FirstAt   time.Time   `json:"first_attempt_at"`
	GaveUpAt  time.Time   `json:"gave_up_at"`
	ReplicaID string      `json:"replica_id"`
}

// DeadLetter is one entry of the dead-letter list: Task is set for kind
// task.DLQTasks (a task that failed on its last allowed attempt), Webhook
// for task.DLQWebhooks.
type DeadLetter struct {
	Kind    task.DLQKind   `json:"kind"`
	ID      string         `json:"id"`
	At      time.Time      `json:"at"`
	Task    *task.DeadTask `json:"task,omitempty"`
	Webhook *DeadDelivery  `json:"webhook,omitempty"`
}

// DLQOptions select a page of the dead-letter list.
type DLQOptions struct {
	// Kind keeps one kind (empty: both).
	Kind task.DLQKind
	// Limit (server default task.DefaultLimit, at most task.MaxLimit) and
	// Offset page through the list, newest first.
	Limit, Offset int
}

// DLQPage is one page of the dead-letter list and its length.
type DLQPage struct {
	Entries []DeadLetter `json:"entries"`
	Total   int          `json:"total"`
	Limit   int          `json:"limit"`
	Offset  int          `json:"offset"`
}

// DLQ returns a page of the dead-letter list (GET /api/v1/dlq), newest
// first.
func (c *Client) DLQ(ctx context.Context, opts DLQOptions) (*DLQPage, error) {
	q := url.Values{}
	if opts.Kind != "" {
		q.Set("kind", string(opts.Kind))
	}
	if opts.Limit != 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Offset != 0 {
		q.Set("offset", strconv.Itoa(opts.Offset))
	}
	var out DLQPage
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/dlq", q, nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AckDLQ acknowledges a dead letter (DELETE /api/v1/dlq/{kind}/{id}): it
// leaves the list. ErrNotFound if it is not there (acknowledged already).
func (c *Client) AckDLQ(ctx context.Context, kind task.DLQKind, id string) error {
	_, err := c.call(ctx, http.MethodDelete, "/api/v1/dlq/"+url.PathEscape(string(kind))+"/"+url.PathEscape(id), nil, nil, nil, nil)
	return err
}
