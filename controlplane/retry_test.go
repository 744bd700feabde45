package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/webhook"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// fail fails a task as its region would.
func (cp *testCP) fail(id, code string) {
	cp.t.Helper()
	_, err := cp.svc.Fail(context.Background(), id, "region:dc1", task.ErrorInfo{Code: code, Message: "it broke"})
	require.NoError(cp.t, err)
}

// metricsText scrapes /metrics.
func (cp *testCP) metricsText() string {
	cp.t.Helper()
	req, _ := http.NewRequest("GET", cp.ts.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+viewerToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(cp.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(cp.t, err)
	return string(data)
}

// dlq lists the dead letters (query: "?kind=tasks" and the like).
func (cp *testCP) dlq(query string) []map[string]any {
	cp.t.Helper()
	code, body := cp.do("GET", "/api/v1/dlq"+query, viewerToken, nil)
	require.Equal(cp.t, http.StatusOK, code, "%v", body)
	return itemsOf(body, "entries")
}

func TestAPIRetry(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st, func(c *controlplane.Config) { c.MaxAttempts = 2 })
	first := cp.create("52:54:00:73:00:01")
	code, body := cp.do("POST", "/api/v1/tasks/"+first+"/retry", operatorToken, nil)
	require.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "not_retryable", errCode(body), "a pending task is not retried")

	cp.fail(first, "download_failed")
	code, body = cp.do("POST", "/api/v1/tasks/"+first+"/retry", viewerToken, nil)
	require.Equal(t, http.StatusForbidden, code, "viewers cannot retry")

	code, body = cp.do("POST", "/api/v1/tasks/"+first+"/retry", operatorToken, nil)
	require.Equal(t, http.StatusCreated, code, "%v", body)
	second := body["task_id"].(string)
	assert.NotEqual(t, first, second)
	assert.Equal(t, "pending", body["status"])
	assert.Equal(t, first, body["retry_of"])
	assert.Equal(t, float64(2), body["attempt"])
	assert.Equal(t, float64(2), body["max_attempts"])
	assert.Equal(t, "/api/v1/tasks/"+second, body["links"].(map[string]any)["self"])

	code, body = cp.do("GET", "/api/v1/tasks/"+second, viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	meta := body["metadata"].(map[string]any)
	assert.Equal(t, first, meta["retry_of"])
	assert.Equal(t, float64(2), meta["attempt"])
	assert.Equal(t, "token:otto", meta["created_by"])

	// The list shows the chain both ways (read your writes: at once,
	// unless this replica's view trails by more than its 2 s bound, which
	// a loaded test machine can make it do).
	rows := map[string]map[string]any{}
	require.Eventually(t, func() bool {
		code, body := cp.do("GET", "/api/v1/tasks?mac=52:54:00:73:00:01", viewerToken, nil)
		if !assert.Equal(t, http.StatusOK, code, "%v", body) { // not require: this runs in Eventually's goroutine
			return false
		}
		clear(rows)
		for _, row := range itemsOf(body, "tasks") {
			rows[row["task_id"].(string)] = row
		}
		return len(rows) == 2 && rows[first]["retried_as"] != nil
	}, 10*time.Second, 20*time.Millisecond, "the list shows both attempts")
	assert.Equal(t, second, rows[first]["retried_as"])
	assert.Equal(t, float64(1), rows[first]["attempt"])
	assert.Equal(t, first, rows[second]["retry_of"])
	assert.Equal(t, float64(2), rows[second]["attempt"])
	assert.Equal(t, float64(2), rows[second]["max_attempts"])

	before := storeRevision(t, st)
	code, body = cp.do("POST", "/api/v1/tasks/"+first+"/retry", operatorToken, nil)
	require.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "already_retried", errCode(body))
	code, body = cp.do("POST", "/api/v1/tasks/"+second+"/retry", operatorToken, nil)
	require.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "not_retryable", errCode(body))
	assert.Equal(t, before, storeRevision(t, st), "refusals write nothing")

	// The last attempt fails into the dead-letter list and is not retried.
	assert.Empty(t, cp.dlq(""))
	cp.fail(second, "timeout")
	code, body = cp.do("POST", "/api/v1/tasks/"+second+"/retry", operatorToken, nil)
	require.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "attempts_exhausted", errCode(body))
	var dead []map[string]any
	require.Eventually(t, func() bool { dead = cp.dlq(""); return len(dead) == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, "tasks", dead[0]["kind"])
	assert.Equal(t, second, dead[0]["id"])
	rec := dead[0]["task"].(map[string]any)
	assert.Equal(t, "timeout", rec["error"].(map[string]any)["code"])
	assert.Equal(t, "pending", rec["error"].(map[string]any)["stage"])
	assert.Equal(t, float64(2), rec["attempts"])
	assert.Equal(t, first, rec["retry_of"])
	assert.NotEmpty(t, rec["timeline"])
	assert.Contains(t, cp.metricsText(), `lpmos_dead_letters{kind="tasks"} 1`)
	assert.Contains(t, cp.metricsText(), `lpmos_task_retries_total{trigger="manual"} 1`)

	// A machine with an active task is not retried onto.
	third := cp.create("52:54:00:73:00:02")
	cp.fail(third, "timeout")
	busy := cp.create("52:54:00:73:00:02")
	code, body = cp.do("POST", "/api/v1/tasks/"+third+"/retry", operatorToken, nil)
	require.Equal(t, http.StatusConflict, code)
	assert.Equal(t, "active_task", errCode(body))
	assert.Contains(t, body["error"].(map[string]any)["message"], busy)

	// Acknowledged, it leaves the list, on this replica at once.
	code, _ = cp.do("DELETE", "/api/v1/dlq/tasks/"+second, viewerToken, nil)
	require.Equal(t, http.StatusForbidden, code)
	code, body = cp.do("DELETE", "/api/v1/dlq/tasks/"+second, operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code, "%v", body)
	assert.Empty(t, cp.dlq(""))
	code, body = cp.do("DELETE", "/api/v1/dlq/tasks/"+second, operatorToken, nil)
	require.Equal(t, http.StatusNotFound, code)
	assert.Equal(t, "not_found", errCode(body))
	entries := cp.auditEntries()
	var actions []string
	for _, e := range entries {
		actions = append(actions, fmt.Sprint(e["action"]))
	}
	assert.Contains(t, actions, "task.retry")
	assert.Contains(t, actions, "dlq.acknowledge")
}

// Two operators retry one task through two replicas at once: exactly one
// new task.
func TestAPIRetryRace(t *testing.T) {
	st := etcdtest.NewStore(t)
	a, b := startCP(t, st), startCP(t, st)
	for round := range 3 {
		mac := fmt.Sprintf("52:54:00:74:00:%02x", round)
		id := a.create(mac)
		a.fail(id, "timeout")
		const racers = 6
		codes := make(chan int, racers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range racers {
			cp := []*testCP{a, b}[i%2]
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				req, _ := http.NewRequest("POST", cp.ts.URL+"/api/v1/tasks/"+id+"/retry", nil)
				req.Header.Set("Authorization", "Bearer "+operatorToken)
				resp, err := http.DefaultClient.Do(req)
				if !assert.NoError(t, err) {
					return
				}
				resp.Body.Close()
				codes <- resp.StatusCode
			}()
		}
		close(start)
		wg.Wait()
		close(codes)
		won := 0
		for c := range codes {
			if c == http.StatusCreated {
				won++
			} else {
				assert.Equal(t, http.StatusConflict, c)
			}
		}
		assert.Equal(t, 1, won, "exactly one retry wins")
		require.Eventually(t, func() bool {
			_, body := b.do("GET", "/api/v1/tasks?mac="+mac, viewerToken, nil)
			return body["total"] == float64(2)
		}, 10*time.Second, 10*time.Millisecond, "the failed task and one retry")
	}
}

// With two replicas, a task failed on its last attempt is in the
// dead-letter list once, and so is the webhook delivery of its failure
// that gave up; both replicas list them, and an acknowledgement on one
// clears both.
func TestDeadLettersOnceWithTwoReplicas(t *testing.T) {
	for _, s := range []struct {
		name string
		new  func(t *testing.T) store.Store
	}{
		{"memory", func(t *testing.T) store.Store { st := memory.New(); t.Cleanup(func() { st.Close() }); return st }},
		{"etcd", func(t *testing.T) store.Store { return etcdtest.NewStore(t) }},
	} {
		t.Run(s.name, func(t *testing.T) {
			st := s.new(t)
			var hits atomic.Int32
			hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				http.Error(w, "no", http.StatusBadRequest)
			}))
			defer hook.Close()
			start := time.Now()
			var ahead atomic.Int64
			replica := func(name string) *testCP {
				return startCP(t, st, func(c *controlplane.Config) {
					c.MaxAttempts = 1
					c.ReplicaID = name
					c.Now = func() time.Time { return start.Add(time.Duration(ahead.Load())) }
					c.PendingTimeout, c.PendingCheckInterval = time.Minute, 5*time.Millisecond
					c.Webhooks = webhook.Config{URLs: []string{hook.URL}, Secret: []byte("s"), Events: []task.Status{task.StatusFailed}}
				})
			}
			a, b := replica("a"), replica("b")
			id := a.create("52:54:00:75:00:01")
			ahead.Add(int64(2 * time.Minute)) // both replicas time it out, racing

			for _, cp := range []*testCP{a, b} {
				require.EventuallyWithT(t, func(c *assert.CollectT) {
					_, body := cp.do("GET", "/api/v1/dlq", viewerToken, nil)
					entries := itemsOf(body, "entries")
					if !assert.Len(c, entries, 2) {
						return
					}
					kinds := map[string]map[string]any{}
					for _, e := range entries {
						kinds[e["kind"].(string)] = e
					}
					assert.Equal(c, id, kinds["tasks"]["id"])
					assert.Equal(c, "region_unavailable", kinds["tasks"]["task"].(map[string]any)["error"].(map[string]any)["code"])
					if w, ok := kinds["webhooks"]["webhook"].(map[string]any); assert.True(c, ok) {
						assert.Equal(c, id, w["task_id"])
						assert.Equal(c, "task.failed", w["event"])
					}
				}, 20*time.Second, 10*time.Millisecond)
			}
			res, err := st.List(context.Background(), task.DLQPrefix, store.ListOptions{})
			require.NoError(t, err)
			assert.Len(t, res.KVs, 2, "one task record and one webhook record")
			assert.Equal(t, int32(1), hits.Load(), "the failure was delivered once (and refused)")

			_, body := a.do("GET", "/api/v1/dlq?kind=webhooks", viewerToken, nil)
			hooks := itemsOf(body, "entries")
			require.Len(t, hooks, 1)
			assert.Equal(t, float64(1), body["total"])
			code, _ := b.do("DELETE", "/api/v1/dlq/webhooks/"+hooks[0]["id"].(string), operatorToken, nil)
			require.Equal(t, http.StatusNoContent, code)
			code, _ = b.do("DELETE", "/api/v1/dlq/tasks/"+id, operatorToken, nil)
			require.Equal(t, http.StatusNoContent, code)
			require.Eventually(t, func() bool { return len(a.dlq("")) == 0 }, 10*time.Second, 10*time.Millisecond, "gone from the other replica too")
		})
	}
}

func TestDLQPagination(t *testing.T) {
	cp := memCP(t, func(c *controlplane.Config) { c.MaxAttempts = 1 })
	var ids []string
	for i := range 5 {
		id := cp.create(fmt.Sprintf("52:54:00:76:00:%02x", i))
		cp.fail(id, "timeout")
		ids = append(ids, id)
	}
	require.Eventually(t, func() bool { return len(cp.dlq("")) == 5 }, 10*time.Second, 10*time.Millisecond)
	code, body := cp.do("GET", "/api/v1/dlq?limit=2&offset=1&kind=tasks", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(5), body["total"])
	assert.Equal(t, float64(2), body["limit"])
	assert.Equal(t, float64(1), body["offset"])
	page := itemsOf(body, "entries")
	require.Len(t, page, 2)
	all := cp.dlq("")
	assert.Equal(t, all[1]["id"], page[0]["id"], "newest first, stable")
	assert.Equal(t, all[2]["id"], page[1]["id"])
	assert.Empty(t, cp.dlq("?kind=webhooks"))
	assert.Empty(t, cp.dlq("?offset=10"))
}

// Automatic retry: a failure is retried after the backoff (on the
// control plane's clock), once across two replicas, up to the last
// attempt; a failure retrying cannot fix is left to the operator.
func TestAutoRetry(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	start := time.Now()
	var ahead atomic.Int64
	replica := func() *testCP {
		return startCP(t, st, func(c *controlplane.Config) {
			c.Now = func() time.Time { return start.Add(time.Duration(ahead.Load())) }
			c.TaskConfig.Now = c.Now
			c.AutoRetry, c.AutoRetryCheckInterval = true, 5*time.Millisecond
		})
	}
	a, b := replica(), replica()
	svc := task.NewService(st, task.Config{Now: func() time.Time { return start.Add(time.Duration(ahead.Load())) }})
	ctx := context.Background()
	fail := func(id, code string) {
		_, err := svc.Fail(ctx, id, "region:dc1", task.ErrorInfo{Code: code, Message: "it broke"})
		require.NoError(t, err)
	}
	retryOf := func(id string) map[string]any {
		_, body := a.do("GET", "/api/v1/tasks?limit=1000", viewerToken, nil)
		var found []map[string]any
		for _, row := range itemsOf(body, "tasks") {
			if row["retry_of"] == id {
				found = append(found, row)
			}
		}
		if len(found) > 1 {
			t.Fatalf("task %s retried %d times", id, len(found))
		}
		if len(found) == 0 {
			return nil
		}
		return found[0]
	}

	noDisk := a.create("52:54:00:77:00:01")
	first := a.create("52:54:00:77:00:02")
	fail(noDisk, "no_disk")
	fail(first, "download_failed")
	ahead.Add(int64(10 * time.Second))
	assert.Nil(t, retryOf(first), "not before the backoff (15-30 s for the first failure)")

	ahead.Add(int64(21 * time.Second))
	var second map[string]any
	require.Eventually(t, func() bool { second = retryOf(first); return second != nil }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, float64(2), second["attempt"])
	assert.Equal(t, "control-plane:auto-retry", second["created_by"])

	// The second failure waits 30-60 s.
	fail(second["task_id"].(string), "timeout")
	ahead.Add(int64(61 * time.Second))
	var third map[string]any
	require.Eventually(t, func() bool { third = retryOf(second["task_id"].(string)); return third != nil }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, float64(3), third["attempt"])
	// By now every round has seen the no_disk failure due, and left it.
	assert.Nil(t, retryOf(noDisk), "no_disk is not retried automatically")

	// The third was the last: a dead letter, never retried.
	fail(third["task_id"].(string), "timeout")
	ahead.Add(int64(10 * time.Minute))
	require.Eventually(t, func() bool { return len(b.dlq("?kind=tasks")) == 1 }, 10*time.Second, 5*time.Millisecond)
	// A later failure, due after the last one, shows that rounds ran past it.
	later := a.create("52:54:00:77:00:03")
	fail(later, "timeout")
	ahead.Add(int64(31 * time.Second))
	require.Eventually(t, func() bool { return retryOf(later) != nil }, 10*time.Second, 5*time.Millisecond)
	assert.Nil(t, retryOf(third["task_id"].(string)), "the last attempt is not retried")

	total := 0
	for _, cp := range []*testCP{a, b} {
		for _, line := range strings.Split(cp.metricsText(), "\n") {
			var n int
			if _, err := fmt.Sscanf(line, `lpmos_task_retries_total{trigger="auto"} %d`, &n); err == nil {
				total += n
			}
		}
	}
	assert.Equal(t, 3, total, "three automatic retries across both replicas")
}
