package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// memCP runs a control plane on a fresh memory store.
func memCP(t *testing.T, opts ...cpOption) *testCP {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	return startCP(t, st, opts...)
}

// tickingTasks gives the task service a clock that advances a second per
// reading, so that creation order is visible in created_at.
func tickingTasks(c *controlplane.Config) {
	var tick atomic.Int64
	base := time.Date(2026, 1, 29, 10, 0, 0, 0, time.UTC)
	c.Now = time.Now
	c.TaskConfig.Now = func() time.Time { return base.Add(time.Duration(tick.Add(1)) * time.Second) }
}

// dumpStore returns every key under /lpmos/ with its value.
func dumpStore(t *testing.T, st store.Store) map[string]string {
	t.Helper()
	res, err := st.List(context.Background(), task.Root, store.ListOptions{})
	require.NoError(t, err)
	m := make(map[string]string, len(res.KVs))
	for _, kv := range res.KVs {
		m[kv.Key] = string(kv.Value)
	}
	return m
}

// auditEntries parses the audit log.
func (cp *testCP) auditEntries() []map[string]any {
	cp.t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(cp.audit.String()), "\n") {
		if line == "" {
			continue
		}
		var e map[string]any
		require.NoError(cp.t, json.Unmarshal([]byte(line), &e))
		out = append(out, e)
	}
	return out
}

func itemsOf(body map[string]any, key string) []map[string]any {
	var out []map[string]any
	list, _ := body[key].([]any)
	for _, v := range list {
		out = append(out, v.(map[string]any))
	}
	return out
}

func errorOf(item map[string]any) (code, field string) {
	e, _ := item["error"].(map[string]any)
	code, _ = e["code"].(string)
	field, _ = e["field"].(string)
	return code, field
}

func TestAPIBatchCreate(t *testing.T) {
	cp := memCP(t)
	active := cp.create("00:1a:2b:3c:a0:00")
	badOS := createBody("00:1a:2b:3c:a0:02")
	badOS["os_type"] = "windows"
	before := dumpStore(t, cp.st)
	auditBefore := len(cp.auditEntries())

	code, body := cp.do("POST", "/api/v1/tasks/batch", operatorToken, map[string]any{"tasks": []any{
		createBody("00:1a:2b:3c:a0:01"),
		badOS,
		createBody("00-1A-2B-3C-A0-01"), // item 0's machine
		createBody("00:1a:2b:3c:a0:00"), // has an active task
		createBody("00:1a:2b:3c:a0:03"),
	}})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, float64(2), body["created"])
	assert.Equal(t, float64(3), body["failed"])
	results := itemsOf(body, "results")
	require.Len(t, results, 5)
	for i, r := range results {
		assert.Equal(t, float64(i), r["index"])
	}
	var created []string
	for _, i := range []int{0, 4} {
		tk := results[i]["task"].(map[string]any)
		assert.Equal(t, "pending", tk["status"])
		id := tk["task_id"].(string)
		assert.Equal(t, map[string]any{"self": "/api/v1/tasks/" + id, "approve": "/api/v1/tasks/" + id + "/approve"}, tk["links"])
		assert.Nil(t, results[i]["error"])
		created = append(created, id)
	}
	for i, want := range map[int][2]string{1: {"invalid_request", "os_type"}, 2: {"invalid_request", "target_mac"}, 3: {"conflict", ""}} {
		code, field := errorOf(results[i])
		assert.Equal(t, want, [2]string{code, field}, "item %d: %v", i, results[i])
		assert.NotEmpty(t, results[i]["error"].(map[string]any)["message"])
		assert.Nil(t, results[i]["task"])
	}
	assert.Contains(t, results[3]["error"].(map[string]any)["message"], active)

	// Only the two created tasks were written.
	after := dumpStore(t, cp.st)
	var added []string
	for k := range after {
		if _, ok := before[k]; !ok {
			added = append(added, k)
		}
	}
	assert.Len(t, added, 10, "five keys per created task: %v", added)
	for _, k := range added {
		assert.True(t, strings.Contains(k, created[0]) || strings.Contains(k, created[1]) ||
			strings.Contains(k, "00:1a:2b:3c:a0:01") || strings.Contains(k, "00:1a:2b:3c:a0:03"), k)
	}

	// Read your writes: the list has them at once, created by the caller.
	code, body = cp.do("GET", "/api/v1/tasks?created_by=token:otto&sort=created_at", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(3), body["total"])

	// One audit record per item, as single creates would have written, and
	// one for the call.
	entries := cp.auditEntries()[auditBefore:]
	require.Len(t, entries, 6)
	for i, wantStatus := range []float64{201, 400, 400, 409, 201} {
		e := entries[i]
		assert.Equal(t, "task.create", e["action"])
		assert.Equal(t, "task.batch_create", e["batch"])
		assert.Equal(t, float64(i), e["index"])
		assert.Equal(t, wantStatus, e["status"], "%v", e)
		assert.Equal(t, "token:otto", e["actor"])
	}
	assert.Equal(t, created[0], entries[0]["task_id"])
	assert.Equal(t, created[1], entries[4]["task_id"])
	assert.Equal(t, "task.batch_create", entries[5]["action"])
	assert.Equal(t, float64(200), entries[5]["status"])
}

func TestAPIBulkMoves(t *testing.T) {
	cp := memCP(t, tickingTasks)
	mk := func(mac, rack string) string {
		b := createBody(mac)
		b["tags"] = map[string]string{"rack": rack}
		code, body := cp.do("POST", "/api/v1/tasks", operatorToken, b)
		require.Equal(t, http.StatusCreated, code, "%v", body)
		return body["task_id"].(string)
	}
	r1a, r1b := mk("52:54:00:b0:00:01", "r1"), mk("52:54:00:b0:00:02", "r1")
	r2a, r2b := mk("52:54:00:b0:00:03", "r2"), mk("52:54:00:b0:00:04", "r2")
	pending := mk("52:54:00:b0:00:05", "r2")
	for _, id := range []string{r1a, r1b, r2a, r2b} {
		cp.toPendingApproval(id)
	}
	statusOf := func(id string) string {
		_, body := cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
		return body["status"].(string)
	}
	unknown := "00000000-0000-4000-8000-000000000001"

	// By IDs: each moves or fails on its own, and says why.
	before := dumpStore(t, cp.st)
	auditBefore := len(cp.auditEntries())
	code, body := cp.do("POST", "/api/v1/tasks/approve", operatorToken, map[string]any{
		"ids": []string{r1a, pending, unknown, r1a, "nope"}, "notes": "racked and cabled"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, float64(5), body["matched"])
	assert.Equal(t, false, body["truncated"])
	moved := itemsOf(body, "moved")
	require.Len(t, moved, 1)
	assert.Equal(t, r1a, moved[0]["task_id"])
	assert.Equal(t, "approved", moved[0]["status"])
	assert.NotZero(t, moved[0]["revision"])
	failed := itemsOf(body, "failed")
	require.Len(t, failed, 4)
	want := [][3]string{{pending, "invalid_transition", ""}, {unknown, "not_found", ""}, {r1a, "invalid_request", "task_id"}, {"nope", "invalid_request", "task_id"}}
	for i, f := range failed {
		code, field := errorOf(f)
		assert.Equal(t, want[i], [3]string{f["task_id"].(string), code, field}, "%v", f)
	}
	assert.Equal(t, "approved", statusOf(r1a))
	after := dumpStore(t, cp.st)
	for k, v := range before {
		if !strings.Contains(k, r1a) {
			assert.Equal(t, v, after[k], "a task that did not move is unchanged: %s", k)
		}
	}
	entries := cp.auditEntries()[auditBefore:]
	require.Len(t, entries, 6, "one record per task and one for the call")
	for i, w := range []struct {
		id     string
		status float64
	}{{r1a, 200}, {pending, 409}, {unknown, 404}, {r1a, 400}, {"nope", 400}} {
		assert.Equal(t, "task.approve", entries[i]["action"])
		assert.Equal(t, "task.bulk_approve", entries[i]["batch"])
		assert.Equal(t, w.id, entries[i]["task_id"])
		assert.Equal(t, w.status, entries[i]["status"])
	}
	assert.Equal(t, "task.bulk_approve", entries[5]["action"])

	// By filter, a page at a time, the oldest first: the filter selects
	// only tasks the move applies to (the pending r2 task is not one).
	code, body = cp.do("POST", "/api/v1/tasks/approve", operatorToken, map[string]any{
		"filter": map[string]any{"region_id": "dc1", "tags": map[string]string{"rack": "r2"}}, "limit": 1})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, float64(2), body["matched"])
	assert.Equal(t, true, body["truncated"])
	require.Len(t, itemsOf(body, "moved"), 1)
	assert.Equal(t, r2a, itemsOf(body, "moved")[0]["task_id"])
	assert.Empty(t, itemsOf(body, "failed"))

	code, body = cp.do("POST", "/api/v1/tasks/approve", operatorToken, map[string]any{
		"filter": map[string]any{"tags": map[string]string{"rack": "r2"}}})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, float64(1), body["matched"])
	assert.Equal(t, false, body["truncated"])
	assert.Equal(t, r2b, itemsOf(body, "moved")[0]["task_id"])

	// Reject what is left of rack r1; cancel every pending task.
	code, body = cp.do("POST", "/api/v1/tasks/reject", operatorToken, map[string]any{
		"filter": map[string]any{"tags": map[string]string{"rack": "r1"}, "status": []string{"pending_approval"}}, "reason": "wrong rack"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Len(t, itemsOf(body, "moved"), 1)
	assert.Equal(t, r1b, itemsOf(body, "moved")[0]["task_id"])
	assert.Equal(t, "rejected", statusOf(r1b))

	code, body = cp.do("POST", "/api/v1/tasks/cancel", operatorToken, map[string]any{
		"filter": map[string]any{"status": []string{"pending"}}, "reason": "decommissioned"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Len(t, itemsOf(body, "moved"), 1)
	assert.Equal(t, "cancelled", itemsOf(body, "moved")[0]["status"])
	assert.Equal(t, "cancelled", statusOf(pending))

	// Cancel by IDs: the approved ones move, the ended ones say why not.
	code, body = cp.do("POST", "/api/v1/tasks/cancel", operatorToken, map[string]any{"ids": []string{r1a, r1b, pending}})
	require.Equal(t, http.StatusOK, code, "%v", body)
	require.Len(t, itemsOf(body, "moved"), 1)
	assert.Equal(t, r1a, itemsOf(body, "moved")[0]["task_id"])
	for _, f := range itemsOf(body, "failed") {
		code, _ := errorOf(f)
		assert.Equal(t, "invalid_transition", code)
		assert.Contains(t, f["error"].(map[string]any)["message"], "cancelled")
	}

	// The filter now matches nothing to approve: a clear 404.
	code, body = cp.do("POST", "/api/v1/tasks/approve", operatorToken, map[string]any{"filter": map[string]any{"region_id": "dc1"}})
	assert.Equal(t, http.StatusNotFound, code, "%v", body)
	assert.Equal(t, "not_found", errCode(body))
}

func TestAPIBatchAndBulkBadInput(t *testing.T) {
	cp := memCP(t, func(c *controlplane.Config) { c.MaxBatchBodyBytes = 512 << 10 })
	pending := cp.create("00:1a:2b:3c:c0:01")
	decided := cp.create("00:1a:2b:3c:c0:02")
	cp.toPendingApproval(decided)

	tooMany := make([]any, task.MaxBatch+1)
	for i := range tooMany {
		tooMany[i] = createBody(fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff))
	}
	tooManyIDs := make([]string, task.MaxBatch+1)
	for i := range tooManyIDs {
		tooManyIDs[i] = decided
	}
	withCreator := createBody("00:1a:2b:3c:c0:03")
	withCreator["created_by"] = "mallory"
	oversize := map[string]any{"tasks": []any{map[string]any{"region_id": strings.Repeat("x", 600<<10)}}}

	tests := []struct {
		name   string
		token  string
		path   string
		body   any
		status int
		code   string
		field  string
	}{
		{"batch over the limit", operatorToken, "/api/v1/tasks/batch", map[string]any{"tasks": tooMany}, 400, "invalid_request", "tasks"},
		{"empty batch", operatorToken, "/api/v1/tasks/batch", map[string]any{"tasks": []any{}}, 400, "invalid_request", "tasks"},
		{"no tasks", operatorToken, "/api/v1/tasks/batch", map[string]any{}, 400, "invalid_request", "tasks"},
		{"an item sets created_by", operatorToken, "/api/v1/tasks/batch", map[string]any{"tasks": []any{createBody("00:1a:2b:3c:c0:04"), withCreator}}, 400, "invalid_request", ""},
		{"batch body too large", operatorToken, "/api/v1/tasks/batch", oversize, 413, "too_large", ""},
		{"batch by a viewer", viewerToken, "/api/v1/tasks/batch", map[string]any{"tasks": []any{createBody("00:1a:2b:3c:c0:05")}}, 403, "forbidden", ""},
		{"neither ids nor filter", operatorToken, "/api/v1/tasks/approve", map[string]any{"notes": "x"}, 400, "invalid_request", "ids"},
		{"ids and filter", operatorToken, "/api/v1/tasks/approve", map[string]any{"ids": []string{decided}, "filter": map[string]any{"region_id": "dc1"}}, 400, "invalid_request", "filter"},
		{"empty filter", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{}}, 400, "invalid_request", "filter"},
		{"filter status the move does not apply to", operatorToken, "/api/v1/tasks/approve", map[string]any{"filter": map[string]any{"status": []string{"pending"}}}, 400, "invalid_request", "filter.status"},
		{"cancel ended tasks by filter", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{"status": []string{"completed"}}}, 400, "invalid_request", "filter.status"},
		{"unknown filter status", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{"status": []string{"done"}}}, 400, "invalid_request", "filter.status"},
		{"bad filter region", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{"region_id": "DC 1"}}, 400, "invalid_request", "filter.region_id"},
		{"bad filter tag", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{"tags": map[string]string{"a b": "c"}}}, 400, "invalid_request", "filter.tags"},
		{"unknown filter field", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{"colour": "blue"}}, 400, "invalid_request", ""},
		{"filter matches nothing", operatorToken, "/api/v1/tasks/cancel", map[string]any{"filter": map[string]any{"region_id": "dc9"}}, 404, "not_found", "filter"},
		{"filter matches only tasks in the wrong status", operatorToken, "/api/v1/tasks/approve", map[string]any{"filter": map[string]any{"mac_prefix": "00:1a:2b:3c:c0:01"}}, 404, "not_found", "filter"},
		{"limit without a filter", operatorToken, "/api/v1/tasks/approve", map[string]any{"ids": []string{decided}, "limit": 5}, 400, "invalid_request", "limit"},
		{"limit over the maximum", operatorToken, "/api/v1/tasks/approve", map[string]any{"filter": map[string]any{"region_id": "dc1"}, "limit": task.MaxBatch + 1}, 400, "invalid_request", "limit"},
		{"too many ids", operatorToken, "/api/v1/tasks/cancel", map[string]any{"ids": tooManyIDs}, 400, "invalid_request", "ids"},
		{"reject without reason", operatorToken, "/api/v1/tasks/reject", map[string]any{"ids": []string{decided}}, 400, "invalid_request", "reason"},
		{"approve notes too long", operatorToken, "/api/v1/tasks/approve", map[string]any{"ids": []string{decided}, "notes": strings.Repeat("x", task.MaxTextLen+1)}, 400, "invalid_request", "notes"},
		{"approve takes notes, not a reason", operatorToken, "/api/v1/tasks/approve", map[string]any{"ids": []string{decided}, "reason": "x"}, 400, "invalid_request", ""},
		{"bulk by a viewer", viewerToken, "/api/v1/tasks/cancel", map[string]any{"ids": []string{pending}}, 403, "forbidden", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dumpStore(t, cp.st)
			rev := storeRevision(t, cp.st)
			code, body := cp.do("POST", tt.path, tt.token, tt.body)
			assert.Equal(t, tt.status, code, "%v", body)
			assert.Equal(t, tt.code, errCode(body), "%v", body)
			if tt.field != "" {
				assert.Equal(t, tt.field, body["error"].(map[string]any)["field"], "%v", body)
			}
			assert.NotEmpty(t, body["error"].(map[string]any)["message"])
			assert.Equal(t, before, dumpStore(t, cp.st), "nothing written")
			assert.Equal(t, rev, storeRevision(t, cp.st), "nothing written")
		})
	}

	// A bulk call whose every task is in the wrong status: each says why,
	// and nothing is written.
	before := dumpStore(t, cp.st)
	code, body := cp.do("POST", "/api/v1/tasks/reject", operatorToken, map[string]any{"ids": []string{pending}, "reason": "no"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Empty(t, itemsOf(body, "moved"))
	require.Len(t, itemsOf(body, "failed"), 1)
	c, _ := errorOf(itemsOf(body, "failed")[0])
	assert.Equal(t, "invalid_transition", c)
	assert.Equal(t, before, dumpStore(t, cp.st))
}

func TestAPIListFilters(t *testing.T) {
	cp := memCP(t, tickingTasks)
	mk := func(mac, region, os, version string, tags map[string]string, token string) string {
		b := createBody(mac)
		b["region_id"], b["os_type"], b["os_version"], b["tags"] = region, os, version, tags
		code, body := cp.do("POST", "/api/v1/tasks", token, b)
		require.Equal(t, http.StatusCreated, code, "%v", body)
		return body["task_id"].(string)
	}
	ids := []string{
		mk("52:54:00:00:00:01", "dc1", "ubuntu", "22.04", map[string]string{"rack": "r1", "env": "prod"}, operatorToken),
		mk("52:54:00:00:01:02", "dc1", "debian", "12", map[string]string{"rack": "r2", "env": "prod"}, operatorToken),
		mk("52:54:01:00:00:03", "dc2", "ubuntu", "24.04", map[string]string{"rack": "r1"}, adminToken),
		mk("02:00:00:00:00:04", "dc2", "ubuntu", "22.04", nil, adminToken),
	}
	code, _ := cp.do("DELETE", "/api/v1/tasks/"+ids[0], operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code)

	tests := []struct {
		query string
		want  []int
	}{
		{"", []int{3, 2, 1, 0}},
		{"mac=52-54-00-00-01-02", []int{1}},
		{"mac=52:54:00:00:01:03", nil},
		{"mac_prefix=52:54:00", []int{1, 0}},
		{"mac_prefix=5254", []int{2, 1, 0}},
		{"os_type=ubuntu", []int{3, 2, 0}},
		{"os_type=ubuntu&os_version=22.04", []int{3, 0}},
		{"tag=rack=r1", []int{2, 0}},
		{"tag=rack=r1&tag=env=prod", []int{0}},
		{"tag=env=dev", nil},
		{"created_by=token:ada", []int{3, 2}},
		{"created_by=ada", nil}, // exact: the name alone is not the subject
		{"created_by=token:otto&status=pending", []int{1}},
		{"sort=created_at", []int{0, 1, 2, 3}},
		{"sort=-created_at", []int{3, 2, 1, 0}},
		{"sort=status", []int{3, 2, 1, 0}},  // pending, newest first, then cancelled
		{"sort=-status", []int{0, 3, 2, 1}}, // cancelled, then pending
		{"sort=created_at&limit=2&offset=1", []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			code, body := cp.do("GET", "/api/v1/tasks?"+tt.query, viewerToken, nil)
			require.Equal(t, http.StatusOK, code, "%v", body)
			var got, want []string
			for _, e := range itemsOf(body, "tasks") {
				got = append(got, e["task_id"].(string))
			}
			for _, i := range tt.want {
				want = append(want, ids[i])
			}
			assert.Equal(t, want, got)
		})
	}

	for _, bad := range []struct{ query, field string }{
		{"mac=52:54:00", "mac"},
		{"mac_prefix=52:54:zz", "mac_prefix"},
		{"mac_prefix=52:54:00:00:00:01:ff", "mac_prefix"},
		{"os_type=Ubuntu", "os_type"},
		{"os_version=..", "os_version"},
		{"tag=rack", "tag"},
		{"tag=bad%20key=x", "tag"},
		{"tag=rack=r1&tag=rack=r2", "tag"},
		{"created_by=%01", "created_by"},
		{"sort=name", "sort"},
		{"sort=created_at&limit=-1", "limit"},
	} {
		t.Run("bad "+bad.query, func(t *testing.T) {
			code, body := cp.do("GET", "/api/v1/tasks?"+bad.query, viewerToken, nil)
			assert.Equal(t, http.StatusBadRequest, code, "%v", body)
			assert.Equal(t, "invalid_request", errCode(body))
			assert.Equal(t, bad.field, body["error"].(map[string]any)["field"], "%v", body)
		})
	}
}
