package controlplane

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/controlplane/webhook"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// DeadLetter is one entry of the dead-letter list: a task that failed on
// its last allowed attempt, or a webhook delivery that gave up.
type DeadLetter struct {
	Kind task.DLQKind `json:"kind"`
	ID   string       `json:"id"`
	// At is when it died: the task's failure, the delivery's last attempt.
	At      time.Time             `json:"at"`
	Task    *task.DeadTask        `json:"task,omitempty"`
	Webhook *webhook.DeadDelivery `json:"webhook,omitempty"`
}

// dlqCache follows /lpmos/dlq/: the list is served from memory, as the
// task list is.
type dlqCache struct {
	log     *slog.Logger
	mu      sync.RWMutex
	entries map[string]DeadLetter // by key
	synced  chan struct{}
	once    sync.Once
}

func newDLQCache(log *slog.Logger) *dlqCache {
	return &dlqCache{log: log, entries: map[string]DeadLetter{}, synced: make(chan struct{})}
}

func (c *dlqCache) run(ctx context.Context, st store.Store) {
	storeWatchLoop(ctx, st, c.log, task.DLQPrefix, func(kvs []store.KV) {
		entries := make(map[string]DeadLetter, len(kvs))
		for _, kv := range kvs {
			if e, ok := c.decode(kv.Key, kv.Value); ok {
				entries[kv.Key] = e
			}
		}
		c.mu.Lock()
		c.entries = entries
		c.mu.Unlock()
		c.once.Do(func() { close(c.synced) })
	}, func(ev store.Event) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if ev.Type == store.EventDelete {
			delete(c.entries, ev.KV.Key)
			return
		}
		if e, ok := c.decode(ev.KV.Key, ev.KV.Value); ok {
			c.entries[ev.KV.Key] = e
		}
	})
}

func (c *dlqCache) decode(key string, value []byte) (DeadLetter, bool) {
	kind, id, ok := task.ParseDLQKey(key)
	if !ok {
		return DeadLetter{}, false
	}
	e := DeadLetter{Kind: kind, ID: id}
	var err error
	switch kind {
	case task.DLQTasks:
		e.Task = new(task.DeadTask)
		if err = json.Unmarshal(value, e.Task); err == nil {
			e.At = e.Task.DeadAt
		}
	case task.DLQWebhooks:
		e.Webhook = new(webhook.DeadDelivery)
		if err = json.Unmarshal(value, e.Webhook); err == nil {
			e.At = e.Webhook.GaveUpAt
		}
	}
	if err != nil {
		c.log.Warn("ignoring an unreadable dead letter", "key", key, "err", err)
		return DeadLetter{}, false
	}
	return e, true
}

func (c *dlqCache) isSynced() bool {
	select {
	case <-c.synced:
		return true
	default:
		return false
	}
}

// list returns the entries of kind (all kinds if empty), newest first.
func (c *dlqCache) list(kind task.DLQKind) []DeadLetter {
	c.mu.RLock()
	out := make([]DeadLetter, 0, len(c.entries))
	for _, e := range c.entries {
		if kind == "" || e.Kind == kind {
			out = append(out, e)
		}
	}
	c.mu.RUnlock()
	slices.SortFunc(out, func(a, b DeadLetter) int {
		return cmp.Or(b.At.Compare(a.At), strings.Compare(string(a.Kind), string(b.Kind)), strings.Compare(a.ID, b.ID))
	})
	return out
}

// count counts the entries by kind.
func (c *dlqCache) count() map[task.DLQKind]int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := map[task.DLQKind]int{}
	for _, e := range c.entries {
		out[e.Kind]++
	}
	return out
}

type dlqResponse struct {
	Entries []DeadLetter `json:"entries"`
	Total   int          `json:"total"`
	Limit   int          `json:"limit"`
	Offset  int          `json:"offset"`
}

// listDLQ serves GET /api/v1/dlq?kind=&limit=&offset=, newest first,
// paginated as the task list is.
func (s *Server) listDLQ(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	kind := task.DLQKind(q.Get("kind"))
	if kind != "" && !kind.Valid() {
		return &task.ValidationError{Field: "kind", Reason: "must be tasks or webhooks"}
	}
	limit, err := queryInt(q, "limit")
	if err != nil {
		return err
	}
	offset, err := queryInt(q, "offset")
	if err != nil {
		return err
	}
	switch {
	case limit < 0:
		return &task.ValidationError{Field: "limit", Reason: "must not be negative"}
	case limit == 0:
		limit = task.DefaultLimit
	case limit > task.MaxLimit:
		return &task.ValidationError{Field: "limit", Reason: "too large"}
	}
	if offset < 0 {
		return &task.ValidationError{Field: "offset", Reason: "must not be negative"}
	}
	if !s.dlq.isSynced() {
		w.Header().Set("Retry-After", "1")
		return httpjson.Errorf(http.StatusServiceUnavailable, httpjson.CodeUnavailable, "dead-letter list is loading")
	}
	all := s.dlq.list(kind)
	page := all[min(offset, len(all)):min(offset+limit, len(all))]
	httpjson.WriteJSON(w, http.StatusOK, dlqResponse{Entries: page, Total: len(all), Limit: limit, Offset: offset})
	return nil
}

// ackDLQ serves DELETE /api/v1/dlq/{kind}/{id}: the operator has seen the
// dead letter; it leaves the list. 404 if there is none (acknowledged
// already).
func (s *Server) ackDLQ(w http.ResponseWriter, r *http.Request) error {
	kind, id := task.DLQKind(r.PathValue("kind")), r.PathValue("id")
	switch kind {
	case task.DLQTasks:
		if err := lpmos.ValidateTaskID(id); err != nil {
			return &task.ValidationError{Field: "id", Reason: err.Error()}
		}
	case task.DLQWebhooks:
		if !webhook.DeliveryIDValid(id) {
			return &task.ValidationError{Field: "id", Reason: "not a webhook delivery ID (msg_ and 24 hex digits)"}
		}
	default:
		return &task.ValidationError{Field: "kind", Reason: "must be tasks or webhooks"}
	}
	key := task.DLQKey(kind, id)
	res, err := s.cfg.Store.Txn(r.Context(), store.Txn{
		If:   []store.Compare{store.Exists(key)},
		Then: []store.Op{store.OpDelete(key)},
	})
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "no dead letter %s/%s", kind, id)
	}
	s.dlq.forget(key)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// forget drops a dead letter this replica just deleted, so that its
// next list does not show it before the watch brings the delete.
func (c *dlqCache) forget(key string) {
	c.mu.Lock()
	delete(c.entries, key)
	c.mu.Unlock()
}
