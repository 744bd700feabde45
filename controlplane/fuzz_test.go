package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// fuzzCP is a control plane on a memory store, called through its handler
// without a network, with one task waiting for approval ("$TASK" in
// fuzzed input) so decisions get past the lookup.
type fuzzCP struct {
	tb      testing.TB
	st      store.Store
	svc     *task.Service
	h       http.Handler
	pending string
	macs    int
}

func startFuzzCP(f *testing.F) *fuzzCP {
	f.Helper()
	st := memory.New()
	f.Cleanup(func() { st.Close() })
	srv, err := controlplane.New(controlplane.Config{
		Store:       st,
		Auth:        auth.Config{Tokens: []auth.StaticToken{{Token: operatorToken, Subject: "otto", Role: auth.RoleOperator}}},
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		AuditLogger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// The fuzzer calls far faster than any operator.
		RateLimit: 1e9, RateBurst: 1e9,
	})
	require.NoError(f, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		<-done
	})
	cp := &fuzzCP{tb: f, st: st, svc: task.NewService(st, task.Config{})}
	// Every fuzzed exchange is also checked against the OpenAPI document.
	cp.h = checkedAPIFor(func() testing.TB { return cp.tb }, srv.Handler())
	require.Eventually(f, func() bool {
		return cp.serve(httptest.NewRequest("GET", "/readyz", nil)).Code == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond)
	return cp
}

func (cp *fuzzCP) serve(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	cp.h.ServeHTTP(rec, req)
	return rec
}

// ensurePending plays the region's part for a new task when a fuzzed
// decision moved the pending one on.
func (cp *fuzzCP) ensurePending() {
	ctx := context.Background()
	if cp.pending != "" {
		t, err := cp.svc.Get(ctx, cp.pending)
		require.NoError(cp.tb, err)
		if t.Status == task.StatusPendingApproval {
			return
		}
	}
	cp.macs++
	t, err := cp.svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: fmt.Sprintf("02:00:00:00:%02x:%02x", cp.macs>>8&0xff, cp.macs&0xff),
		OSType: "ubuntu", OSVersion: "22.04", CreatedBy: "fuzz"})
	require.NoError(cp.tb, err)
	_, err = cp.svc.MarkReady(ctx, t.ID, "region:dc1")
	require.NoError(cp.tb, err)
	_, err = cp.svc.MarkBooting(ctx, t.ID, "region:dc1")
	require.NoError(cp.tb, err)
	_, err = cp.svc.ReportHardware(ctx, t.ID, "region:dc1", hardware.Info{CPU: hardware.CPU{Cores: 2}})
	require.NoError(cp.tb, err)
	cp.pending = t.ID
}

// revision is the store's current revision: it moves with any write.
func (cp *fuzzCP) revision(t *testing.T) int64 {
	res, err := cp.st.List(context.Background(), task.Root, store.ListOptions{Limit: 1})
	require.NoError(t, err)
	return res.Revision
}

// requireAPIError checks an error answer is the API's JSON error.
func requireAPIError(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"), "%s", rec.Body)
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e), "%s", rec.Body)
	require.NotEmpty(t, e.Error.Code, "%s", rec.Body)
}

// FuzzAPIBodies sends fuzzed JSON bodies to every endpoint that decodes
// one: task create, batch create, bulk approve/reject/cancel and the
// single decisions. The control plane never answers 5xx, answers every
// refusal with a JSON error carrying a code, and writes nothing to the
// store when it refuses the request.
func FuzzAPIBodies(f *testing.F) {
	endpoints := []struct{ method, path string }{
		{"POST", "/api/v1/tasks"},
		{"POST", "/api/v1/tasks/batch"},
		{"POST", "/api/v1/tasks/approve"},
		{"POST", "/api/v1/tasks/reject"},
		{"POST", "/api/v1/tasks/cancel"},
		{"PUT", "/api/v1/tasks/$TASK/approve"},
		{"PUT", "/api/v1/tasks/$TASK/reject"},
		{"POST", "/api/v1/tasks/$TASK/retry"}, // the task is pending: never retried
	}
	create := `{"region_id":"dc1","target_mac":"00:1a:2b:3c:4d:5e","os_type":"ubuntu","os_version":"22.04","tags":{"environment":"production"}}`
	for _, s := range []struct {
		endpoint uint8
		body     string
	}{
		{0, create},
		{0, `{"region_id":"dc1","target_mac":"00:1a:2b:3c:4d:5e","os_type":"ubuntu","os_version":"22.04","disk_layout":"auto","network_config":"dhcp"}`},
		{0, `{"region_id":"dc1","target_mac":"zz","os_type":"windows","os_version":"","tags":{"":"x"}}`},
		{0, `{"region_id":"dc1","target_mac":"00:1a:2b:3c:4d:5f","os_type":"ubuntu","os_version":"22.04","bogus":true}`},
		{0, create + create},
		{1, `{"tasks":[` + create + `,{"target_mac":"bad"},` + create + `]}`},
		{1, `{"tasks":[]}`},
		{1, `{"tasks":null}`},
		{2, `{"ids":["$TASK"],"notes":"ok"}`},
		{2, `{"filter":{"status":["pending_approval"],"region_id":"dc1"},"limit":5,"notes":"all"}`},
		{2, `{"ids":["$TASK"],"filter":{"os_type":"ubuntu"}}`},
		{3, `{"ids":["$TASK","nope"],"reason":"no"}`},
		{3, `{"filter":{"mac_prefix":"02:00"},"reason":"no"}`},
		{4, `{"ids":["$TASK"]}`},
		{4, `{"filter":{}}`},
		{4, `{"filter":{"status":["bogus"]}}`},
		{4, `{"filter":{"tags":{"environment":"production"},"created_by":"fuzz"}}`},
		{5, `{"approved":true,"notes":"looks fine"}`},
		{5, `{"approved":false,"notes":"wrong rack"}`},
		{5, `{"approved":false}`},
		{5, `{}`},
		{6, `{"reason":"wrong disks"}`},
		{6, `{"reason":""}`},
		{7, ``}, {7, `{"x":1}`},
		{0, ``}, {1, `[]`}, {2, `null`}, {3, `{`}, {4, `"x"`}, {5, "\x00\xff"}, {6, `{"reason":1}`},
	} {
		f.Add(s.endpoint, s.body)
	}
	cp := startFuzzCP(f)
	f.Fuzz(func(t *testing.T, endpoint uint8, body string) {
		cp.tb = t
		cp.ensurePending()
		e := endpoints[int(endpoint)%len(endpoints)]
		expand := strings.NewReplacer("$TASK", cp.pending)
		req := httptest.NewRequest(e.method, expand.Replace(e.path), strings.NewReader(expand.Replace(body)))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+operatorToken)
		before := cp.revision(t)
		rec := cp.serve(req)
		require.Less(t, rec.Code, 500, "%s", rec.Body)
		if rec.Code >= 400 {
			requireAPIError(t, rec)
			require.Equal(t, before, cp.revision(t), "a refused request wrote to the store: %s", rec.Body)
		}
	})
}

// FuzzListQuery lists tasks with fuzzed query strings (the list filter's
// parsing): never a 5xx, a JSON error with a code for a bad parameter.
func FuzzListQuery(f *testing.F) {
	for _, q := range []string{
		"",
		"region_id=dc1&status=pending,approved&status=failed",
		"mac=00:1a:2b:3c:4d:5e&mac_prefix=00:1a&os_type=ubuntu&os_version=22.04",
		"tag=environment=production&tag=rack=r1&created_by=otto",
		"sort=created_at&limit=10&offset=5",
		"sort=-created_at&limit=0",
		"limit=-1", "limit=abc", "offset=99999999999999999999", "mac=xyz", "status=,,,", "tag=novalue",
		"status=bogus", "sort=nope", "%zz", "a=%00",
	} {
		f.Add(q)
	}
	cp := startFuzzCP(f)
	cp.ensurePending()
	f.Fuzz(func(t *testing.T, query string) {
		cp.tb = t
		req := httptest.NewRequest("GET", "/api/v1/tasks", nil)
		req.URL.RawQuery = query
		req.Header.Set("Authorization", "Bearer "+operatorToken)
		rec := cp.serve(req)
		require.Less(t, rec.Code, 500, "%s", rec.Body)
		if rec.Code >= 400 {
			requireAPIError(t, rec)
		} else {
			require.True(t, json.Valid(rec.Body.Bytes()), "%s", rec.Body)
		}
	})
}

// FuzzDLQ lists the dead letters with fuzzed query strings and
// acknowledges fuzzed kinds and IDs: never a 5xx, a JSON error with a code
// when refused, and a refused acknowledgement writes nothing.
func FuzzDLQ(f *testing.F) {
	for _, s := range []struct{ query, kind, id string }{
		{"", "tasks", "00000000-0000-4000-8000-000000000001"},
		{"kind=tasks&limit=10&offset=5", "webhooks", "msg_0123456789abcdef01234567"},
		{"kind=webhooks", "machines", "x"},
		{"kind=bogus", "tasks", "not-a-uuid"},
		{"limit=-1&offset=x", "webhooks", "msg_ZZ"},
		{"limit=100000", "", ""},
		{"%zz", "tasks", "%2e%2e"},
	} {
		f.Add(s.query, s.kind, s.id)
	}
	cp := startFuzzCP(f)
	cp.ensurePending()
	f.Fuzz(func(t *testing.T, query, kind, id string) {
		cp.tb = t
		req := httptest.NewRequest("GET", "/api/v1/dlq", nil)
		req.URL.RawQuery = query
		req.Header.Set("Authorization", "Bearer "+operatorToken)
		rec := cp.serve(req)
		require.Less(t, rec.Code, 500, "%s", rec.Body)
		if rec.Code >= 400 {
			requireAPIError(t, rec)
		} else {
			require.True(t, json.Valid(rec.Body.Bytes()), "%s", rec.Body)
		}

		req = httptest.NewRequest("DELETE", "/api/v1/dlq/x/y", nil)
		req.URL.Path = "/api/v1/dlq/" + kind + "/" + id
		req.URL.RawPath = ""
		req.Header.Set("Authorization", "Bearer "+operatorToken)
		before := cp.revision(t)
		rec = cp.serve(req)
		require.Less(t, rec.Code, 500, "%s", rec.Body)
		// A path the mux cleans first ("//", "/./") is redirected (3xx).
		require.GreaterOrEqual(t, rec.Code, 300, "there is no dead letter to acknowledge: %s", rec.Body)
		if rec.Header().Get("Content-Type") == "application/json" {
			requireAPIError(t, rec)
		}
		require.Equal(t, before, cp.revision(t), "a refused request wrote to the store")
	})
}
