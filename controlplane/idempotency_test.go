package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// post sends a create with an Idempotency-Key and returns the status, the
// decoded body and the answer's headers.
func (cp *testCP) post(token, key string, body any) (int, map[string]any, http.Header) {
	cp.t.Helper()
	data, err := json.Marshal(body)
	require.NoError(cp.t, err)
	req, err := http.NewRequest("POST", cp.ts.URL+"/api/v1/tasks", bytes.NewReader(data))
	require.NoError(cp.t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(cp.t, err)
	defer resp.Body.Close()
	var out map[string]any
	require.NoError(cp.t, json.NewDecoder(resp.Body).Decode(&out))
	return resp.StatusCode, out, resp.Header
}

func countTasks(t *testing.T, st store.Store) int {
	t.Helper()
	page, err := task.NewService(st, task.Config{}).List(context.Background(), task.Filter{Limit: task.MaxLimit})
	require.NoError(t, err)
	return page.Total
}

// A create repeated with the same Idempotency-Key (the client lost the
// answer, or got a 503 during an etcd election) finds the task the first
// one made, whatever became of it; the key with another request is
// refused and writes nothing.
func TestIdempotentCreate(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)

	code, first, h := cp.post(operatorToken, "order-17/machine-1", createBody("00:1a:2b:3c:6d:01"))
	require.Equal(t, http.StatusCreated, code, "%v", first)
	assert.Empty(t, h.Get("Idempotent-Replayed"))
	id := first["task_id"].(string)

	code, again, h := cp.post(operatorToken, "order-17/machine-1", createBody("00-1A-2B-3C-6D-01"))
	require.Equal(t, http.StatusOK, code, "%v", again)
	assert.Equal(t, "true", h.Get("Idempotent-Replayed"))
	assert.Equal(t, id, again["task_id"])
	assert.Equal(t, "/api/v1/tasks/"+id, h.Get("Location"))
	assert.Equal(t, 1, countTasks(t, st))

	// Still the same task once it has ended (and the MAC is free again).
	code, _ = cp.do("DELETE", "/api/v1/tasks/"+id, operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	code, again, _ = cp.post(operatorToken, "order-17/machine-1", createBody("00:1a:2b:3c:6d:01"))
	require.Equal(t, http.StatusOK, code, "%v", again)
	assert.Equal(t, id, again["task_id"])
	assert.Equal(t, string(task.StatusCancelled), again["status"])

	// The key is the caller's: another caller's same key is its own task.
	code, other, _ := cp.post(adminToken, "order-17/machine-1", createBody("00:1a:2b:3c:6d:01"))
	require.Equal(t, http.StatusCreated, code, "%v", other)
	assert.NotEqual(t, id, other["task_id"])

	// The same key with another request: 422, nothing written.
	before := storeRevision(t, st)
	changed := createBody("00:1a:2b:3c:6d:01")
	changed["os_version"] = "24.04"
	code, body, _ := cp.post(operatorToken, "order-17/machine-1", changed)
	assert.Equal(t, http.StatusUnprocessableEntity, code, "%v", body)
	assert.Equal(t, "idempotency_key_reused", errCode(body))
	assert.Equal(t, before, storeRevision(t, st))

	for name, key := range map[string]string{
		"too long":  strings.Repeat("k", 256),
		"not ASCII": "clé",
		"control":   "a\tb",
	} {
		t.Run(name, func(t *testing.T) {
			before := storeRevision(t, st)
			code, body, _ := cp.post(operatorToken, key, createBody("00:1a:2b:3c:6d:09"))
			assert.Equal(t, http.StatusBadRequest, code, "%v", body)
			assert.Equal(t, "Idempotency-Key", body["error"].(map[string]any)["field"])
			assert.Equal(t, before, storeRevision(t, st))
		})
	}
}

// Callers racing with one key make one task between them, and every one
// of them is told its ID.
func TestIdempotentCreateRace(t *testing.T) {
	st := memory.New()
	cp := startCP(t, st)
	const racers = 8
	ids := make([]any, racers)
	codes := make([]int, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			codes[i], ids[i], _ = func() (int, any, http.Header) {
				code, body, h := cp.post(operatorToken, "race", createBody("00:1a:2b:3c:6d:20"))
				return code, body["task_id"], h
			}()
		})
	}
	wg.Wait()
	created := 0
	for i := range racers {
		assert.Contains(t, []int{http.StatusCreated, http.StatusOK}, codes[i])
		if codes[i] == http.StatusCreated {
			created++
		}
		assert.Equal(t, ids[0], ids[i])
	}
	assert.Equal(t, 1, created)
	assert.Equal(t, 1, countTasks(t, st))
}

// flakyStore fails every transaction as an etcd cluster electing a leader
// does, while fail is set.
type flakyStore struct {
	store.Store
	fail atomic.Bool
}

func (f *flakyStore) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	if f.fail.Load() {
		return store.TxnResult{}, fmt.Errorf("txn: %w: etcdserver: leader changed", store.ErrUnavailable)
	}
	return f.Store.Txn(ctx, txn)
}

// An unavailable store is a 503 with Retry-After, not a 500: the caller
// may retry, and with an Idempotency-Key the retry is safe.
func TestStoreUnavailableAnswers503(t *testing.T) {
	st := &flakyStore{Store: memory.New()}
	cp := startCP(t, st)
	st.fail.Store(true)
	code, body, h := cp.post(operatorToken, "k1", createBody("00:1a:2b:3c:6d:30"))
	assert.Equal(t, http.StatusServiceUnavailable, code, "%v", body)
	assert.Equal(t, "unavailable", errCode(body))
	assert.Equal(t, "2", h.Get("Retry-After"))

	st.fail.Store(false)
	code, body, _ = cp.post(operatorToken, "k1", createBody("00:1a:2b:3c:6d:30"))
	assert.Equal(t, http.StatusCreated, code, "%v", body)
	assert.Equal(t, 1, countTasks(t, st))
}
