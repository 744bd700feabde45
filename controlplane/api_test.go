package controlplane_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/controlplane/webhook"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/internal/promlint"
	"github.com/lpmos/lpmos/internal/syncbuf"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

const (
	viewerToken   = "viewer-token-0123456789"
	operatorToken = "operator-token-0123456789"
	adminToken    = "admin-token-0123456789abc"
)

var hsSecret = []byte("0123456789abcdef0123456789abcdef-hs256")

type testCP struct {
	t     *testing.T
	st    store.Store
	srv   *controlplane.Server
	ts    *httptest.Server
	audit *syncbuf.Buffer
	svc   *task.Service // the region's side
}

type cpOption func(*controlplane.Config)

var rsaKey = func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}()

// startCP runs a control plane on st over real HTTP.
func startCP(t *testing.T, st store.Store, opts ...cpOption) *testCP {
	t.Helper()
	audit := &syncbuf.Buffer{}
	cfg := controlplane.Config{
		Store: st,
		Auth: auth.Config{
			Tokens: []auth.StaticToken{
				{Token: viewerToken, Subject: "vera", Role: auth.RoleViewer},
				{Token: operatorToken, Subject: "otto", Role: auth.RoleOperator},
				{Token: adminToken, Subject: "ada", Role: auth.RoleAdmin},
			},
			JWT: &auth.JWTConfig{HS256Secret: hsSecret, RS256Keys: []*rsa.PublicKey{&rsaKey.PublicKey}},
		},
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		AuditLogger: slog.New(slog.NewJSONHandler(audit, nil)),
		RateLimit:   10000, RateBurst: 10000,
		SignInFailureLimit: 10000, SignInFailureBurst: 10000,
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := controlplane.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	// Every API exchange of the tests is checked against the OpenAPI document.
	ts := httptest.NewServer(checkedAPI(t, srv.Handler()))
	t.Cleanup(func() {
		ts.Close()
		cancel()
		<-done
	})
	cp := &testCP{t: t, st: st, srv: srv, ts: ts, audit: audit, svc: task.NewService(st, task.Config{})}
	require.Eventually(t, func() bool {
		code, _ := cp.do("GET", "/readyz", "", nil)
		return code == http.StatusOK
	}, 30*time.Second, 20*time.Millisecond)
	return cp
}

// do sends a request with a JSON body (any; a string is sent as is) and
// returns the status and decoded JSON body.
func (cp *testCP) do(method, path, token string, body any, headers ...string) (int, map[string]any) {
	cp.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(cp.t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, cp.ts.URL+path, rd)
	require.NoError(cp.t, err)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(cp.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(cp.t, err)
	var out map[string]any
	if len(data) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(cp.t, json.Unmarshal(data, &out), "body: %s", data)
	}
	return resp.StatusCode, out
}

func createBody(mac string) map[string]any {
	return map[string]any{"region_id": "dc1", "target_mac": mac, "os_type": "ubuntu", "os_version": "22.04",
		"disk_layout": "auto", "network_config": "dhcp", "tags": map[string]string{"environment": "production"}}
}

func (cp *testCP) create(mac string) string {
	cp.t.Helper()
	code, body := cp.do("POST", "/api/v1/tasks", operatorToken, createBody(mac))
	require.Equal(cp.t, http.StatusCreated, code, "%v", body)
	return body["task_id"].(string)
}

// toPendingApproval plays the region's part up to the approval.
func (cp *testCP) toPendingApproval(id string) {
	cp.t.Helper()
	ctx := context.Background()
	_, err := cp.svc.MarkReady(ctx, id, "region:dc1")
	require.NoError(cp.t, err)
	_, err = cp.svc.MarkBooting(ctx, id, "region:dc1")
	require.NoError(cp.t, err)
	_, err = cp.svc.ReportHardware(ctx, id, "region:dc1", hardware.Info{CPU: hardware.CPU{Model: "Xeon", Cores: 28, Threads: 56}, Memory: hardware.Memory{TotalGB: 256}})
	require.NoError(cp.t, err)
}

func storeRevision(t *testing.T, st store.Store) int64 {
	res, err := st.List(context.Background(), task.Root, store.ListOptions{Limit: 1})
	require.NoError(t, err)
	return res.Revision
}

func errCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func TestAPIHappyPath(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t))

	code, body := cp.do("POST", "/api/v1/tasks", operatorToken, createBody("00:1A:2B:3C:4D:5E"))
	require.Equal(t, http.StatusCreated, code)
	id := body["task_id"].(string)
	assert.Equal(t, "pending", body["status"])
	assert.NotEmpty(t, body["created_at"])
	assert.Equal(t, map[string]any{"self": "/api/v1/tasks/" + id, "approve": "/api/v1/tasks/" + id + "/approve"}, body["links"])

	code, body = cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, id, body["task_id"])
	meta := body["metadata"].(map[string]any)
	assert.Equal(t, "00:1a:2b:3c:4d:5e", meta["target_mac"])
	assert.Equal(t, "token:otto", meta["created_by"], "created_by is the authenticated caller, by how it signed in")
	assert.Len(t, body["timeline"], 1)

	// Read your own write: the list (served from the cache) has it at once.
	code, body = cp.do("GET", "/api/v1/tasks?region_id=dc1&status=pending", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, float64(1), body["total"])
	assert.Equal(t, float64(50), body["limit"])
	assert.Equal(t, float64(0), body["offset"])
	assert.Equal(t, id, body["tasks"].([]any)[0].(map[string]any)["task_id"])

	cp.toPendingApproval(id)
	code, body = cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "pending_approval", body["status"])
	assert.Equal(t, "Xeon", body["hardware"].(map[string]any)["cpu"].(map[string]any)["model"])
	rev := fmt.Sprint(int64(body["revision"].(float64)))

	code, body = cp.do("PUT", "/api/v1/tasks/"+id+"/approve", operatorToken, map[string]any{"approved": true, "notes": "Hardware verified"}, "If-Match", `"`+rev+`"`)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, "approved", body["status"])
	assert.Equal(t, "installing", body["next_status"])
	approval := body["approval"].(map[string]any)
	assert.Equal(t, "approved", approval["status"])
	assert.Equal(t, "token:otto", approval["approved_by"])
	assert.NotEmpty(t, approval["approved_at"])

	code, _ = cp.do("DELETE", "/api/v1/tasks/"+id+"?reason=changed+my+mind", operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	code, body = cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "cancelled", body["status"])

	// Reject, on another task.
	id2 := cp.create("00:1a:2b:3c:4d:5f")
	cp.toPendingApproval(id2)
	code, body = cp.do("PUT", "/api/v1/tasks/"+id2+"/reject", operatorToken, map[string]any{"reason": "Insufficient disk space"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, "rejected", body["status"])
	assert.Equal(t, "Insufficient disk space", body["approval"].(map[string]any)["reason"])
	assert.Equal(t, "token:otto", body["approval"].(map[string]any)["rejected_by"])

	// approved=false is a rejection with the notes as reason.
	id3 := cp.create("00:1a:2b:3c:4d:60")
	cp.toPendingApproval(id3)
	code, body = cp.do("PUT", "/api/v1/tasks/"+id3+"/approve", operatorToken, map[string]any{"approved": false, "notes": "wrong rack"})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, "rejected", body["status"])

	code, body = cp.do("GET", "/api/v1/whoami", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, map[string]any{"subject": "token:vera", "role": "viewer"}, body)
}

func TestAPIRegions(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)
	ctx := context.Background()
	caps, _ := json.Marshal(task.Capabilities{OS: []task.OSOffering{{Type: "ubuntu", Version: "24.04", Kind: "image"}}})
	_, err := st.Put(ctx, task.RegionCapabilitiesKey("dc1"), caps)
	require.NoError(t, err)
	_, err = st.Put(ctx, task.RegionStatusKey("dc1"), []byte("online"))
	require.NoError(t, err)
	_, err = st.Put(ctx, task.RegionHeartbeatKey("dc1"), []byte("2026-01-29T10:00:00Z"))
	require.NoError(t, err)
	_, err = st.Put(ctx, task.RegionStatusKey("dc2"), []byte("online")) // no heartbeat: offline

	require.NoError(t, err)
	var regions []any
	require.Eventually(t, func() bool {
		code, body := cp.do("GET", "/api/v1/regions", viewerToken, nil)
		require.Equal(t, http.StatusOK, code)
		regions, _ = body["regions"].([]any)
		return len(regions) == 2
	}, 10*time.Second, 20*time.Millisecond)
	dc1 := regions[0].(map[string]any)
	assert.Equal(t, "dc1", dc1["region_id"])
	assert.Equal(t, "online", dc1["status"])
	assert.Equal(t, "2026-01-29T10:00:00Z", dc1["last_heartbeat"])
	assert.Equal(t, "offline", regions[1].(map[string]any)["status"])

	// The capabilities are enforced at creation.
	req := createBody("00:1a:2b:3c:4d:61")
	code, body := cp.do("POST", "/api/v1/tasks", operatorToken, req)
	require.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, body["error"].(map[string]any)["message"], "cannot install ubuntu 22.04")
	req["os_version"] = "24.04"
	code, _ = cp.do("POST", "/api/v1/tasks", operatorToken, req)
	require.Equal(t, http.StatusCreated, code)
}

// The regions list counts each region's active tasks by status, so the
// dashboard's regions page needs one request.
func TestAPIRegionsCountActiveTasks(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)
	ctx := context.Background()
	for key, value := range map[string]string{
		task.RegionStatusKey("dc1"):    task.RegionOnline,
		task.RegionHeartbeatKey("dc1"): "2026-01-29T10:00:00Z",
		task.RegionStatusKey("dc2"):    task.RegionOnline,
	} {
		_, err := st.Put(ctx, key, []byte(value))
		require.NoError(t, err)
	}
	create := func(region, mac string) string {
		tk, err := cp.svc.Create(ctx, task.CreateRequest{RegionID: region, TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "test"})
		require.NoError(t, err)
		return tk.ID
	}
	create("dc1", "00:1a:2b:3c:4d:01")
	cp.toPendingApproval(create("dc1", "00:1a:2b:3c:4d:02"))
	ended := create("dc1", "00:1a:2b:3c:4d:03")
	_, err := cp.svc.Cancel(ctx, ended, "test", "")
	require.NoError(t, err)
	create("dc3", "00:1a:2b:3c:4d:04") // a region that never registered is not listed

	want := []any{
		map[string]any{"region_id": "dc1", "status": "online", "last_heartbeat": "2026-01-29T10:00:00Z",
			"active_tasks": map[string]any{"pending": float64(1), "pending_approval": float64(1)}},
		map[string]any{"region_id": "dc2", "status": "offline", "active_tasks": map[string]any{}},
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		code, body := cp.do("GET", "/api/v1/regions", viewerToken, nil)
		assert.Equal(c, http.StatusOK, code)
		assert.Equal(c, want, body["regions"])
	}, 10*time.Second, 20*time.Millisecond)
}

func TestAPIErrorsWriteNothing(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)
	pending := cp.create("00:1a:2b:3c:4d:01")
	decided := cp.create("00:1a:2b:3c:4d:02")
	cp.toPendingApproval(decided)
	_, body := cp.do("GET", "/api/v1/tasks/"+decided, viewerToken, nil)
	staleRev := fmt.Sprint(int64(body["revision"].(float64)) - 1)

	big := createBody("00:1a:2b:3c:4d:03")
	big["tags"] = map[string]string{"k": strings.Repeat("x", 1<<20)}
	withCreator := createBody("00:1a:2b:3c:4d:04")
	withCreator["created_by"] = "someone-else"
	unknownField := createBody("00:1a:2b:3c:4d:05")
	unknownField["colour"] = "blue"

	tests := []struct {
		name    string
		method  string
		path    string
		body    any
		headers []string
		status  int
		code    string
		field   string
	}{
		{"malformed JSON", "POST", "/api/v1/tasks", `{"region_id": "dc1",`, nil, 400, "invalid_request", ""},
		{"trailing data", "POST", "/api/v1/tasks", `{"region_id":"dc1"} {}`, nil, 400, "invalid_request", ""},
		{"not an object", "POST", "/api/v1/tasks", `[1,2]`, nil, 400, "invalid_request", ""},
		{"unknown field", "POST", "/api/v1/tasks", unknownField, nil, 400, "invalid_request", ""},
		{"created_by cannot be set", "POST", "/api/v1/tasks", withCreator, nil, 400, "invalid_request", ""},
		{"invalid MAC", "POST", "/api/v1/tasks", createBody("00:1a:2b:3c:4d"), nil, 400, "invalid_request", "target_mac"},
		{"invalid region", "POST", "/api/v1/tasks", func() any { b := createBody("00:1a:2b:3c:4d:06"); b["region_id"] = "DC_1"; return b }(), nil, 400, "invalid_request", "region_id"},
		{"unknown OS", "POST", "/api/v1/tasks", func() any { b := createBody("00:1a:2b:3c:4d:07"); b["os_type"] = "windows"; return b }(), nil, 400, "invalid_request", "os_type"},
		{"bad hostname tag", "POST", "/api/v1/tasks", func() any {
			b := createBody("00:1a:2b:3c:4d:07")
			b["tags"] = map[string]string{"hostname": "web_01;reboot"}
			return b
		}(), nil, 400, "invalid_request", "tags.hostname"},
		{"bad ssh_key tag", "POST", "/api/v1/tasks", func() any {
			b := createBody("00:1a:2b:3c:4d:07")
			b["tags"] = map[string]string{"ssh_key": "ssh-ed25519 AAAA a\nssh-rsa BBBB evil"}
			return b
		}(), nil, 400, "invalid_request", "tags.ssh_key"},
		{"escape in tag", "POST", "/api/v1/tasks", func() any {
			b := createBody("00:1a:2b:3c:4d:07")
			b["tags"] = map[string]string{"rack": "r1\u001b[2J"}
			return b
		}(), nil, 400, "invalid_request", "tags.rack"},
		{"wrong content type", "POST", "/api/v1/tasks", createBody("00:1a:2b:3c:4d:08"), []string{"Content-Type", "text/plain"}, 415, "unsupported_media_type", ""},
		{"oversize body", "POST", "/api/v1/tasks", big, nil, 413, "too_large", ""},
		{"second task for a MAC", "POST", "/api/v1/tasks", createBody("00-1A-2B-3C-4D-01"), nil, 409, "conflict", ""},
		{"unknown task", "GET", "/api/v1/tasks/00000000-0000-4000-8000-000000000001", nil, nil, 404, "not_found", ""},
		{"malformed task ID", "GET", "/api/v1/tasks/not-a-uuid", nil, nil, 400, "invalid_request", "task_id"},
		{"approve a pending task", "PUT", "/api/v1/tasks/" + pending + "/approve", map[string]any{"approved": true}, nil, 409, "invalid_transition", ""},
		{"approve without decision", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"notes": "x"}, nil, 400, "invalid_request", "approved"},
		{"reject without reason", "PUT", "/api/v1/tasks/" + decided + "/reject", map[string]any{"reason": ""}, nil, 400, "invalid_request", "reason"},
		{"stale If-Match", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", staleRev}, 409, "conflict", ""},
		{"garbage If-Match", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "abc"}, 400, "invalid_request", ""},
		{"If-Match " + staleRev + "abc", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", staleRev + "abc"}, 400, "invalid_request", ""},
		{"If-Match " + "25abc", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "25abc"}, 400, "invalid_request", ""},
		{"If-Match " + "25 26", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "25 26"}, 400, "invalid_request", ""},
		{"If-Match " + "+25", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "+25"}, 400, "invalid_request", ""},
		{"If-Match " + "0x19", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "0x19"}, 400, "invalid_request", ""},
		{"If-Match " + "1e3", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "1e3"}, 400, "invalid_request", ""},
		{"If-Match " + "0", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "0"}, 400, "invalid_request", ""},
		{"If-Match " + "-3", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "-3"}, 400, "invalid_request", ""},
		{"If-Match " + "*", "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", "*"}, 400, "invalid_request", ""},
		{"If-Match " + `W/"25"`, "PUT", "/api/v1/tasks/" + decided + "/approve", map[string]any{"approved": true}, []string{"If-Match", `W/"25"`}, 400, "invalid_request", ""},
		{"cancel unknown task", "DELETE", "/api/v1/tasks/00000000-0000-4000-8000-000000000001", nil, nil, 404, "not_found", ""},
		{"bad list limit", "GET", "/api/v1/tasks?limit=abc", nil, nil, 400, "invalid_request", "limit"},
		{"bad list status", "GET", "/api/v1/tasks?status=done", nil, nil, 400, "invalid_request", "status"},
		{"huge list limit", "GET", "/api/v1/tasks?limit=100000", nil, nil, 400, "invalid_request", "limit"},
		{"unknown endpoint", "GET", "/api/v1/nothing", nil, nil, 404, "not_found", ""},
		{"GET of the batch endpoint", "GET", "/api/v1/tasks/batch", nil, nil, 405, "method_not_allowed", ""},
		{"GET of bulk approve", "GET", "/api/v1/tasks/approve", nil, nil, 405, "method_not_allowed", ""},
		{"PATCH a task", "PATCH", "/api/v1/tasks/" + pending, map[string]any{"os": "x"}, nil, 405, "method_not_allowed", ""},
		{"POST to the regions", "POST", "/api/v1/regions", map[string]any{}, nil, 405, "method_not_allowed", ""},
		{"retry a pending task", "POST", "/api/v1/tasks/" + pending + "/retry", nil, nil, 409, "not_retryable", ""},
		{"retry unknown task", "POST", "/api/v1/tasks/00000000-0000-4000-8000-000000000001/retry", nil, nil, 404, "not_found", ""},
		{"retry malformed task ID", "POST", "/api/v1/tasks/not-a-uuid/retry", nil, nil, 400, "invalid_request", "task_id"},
		{"retry with garbage If-Match", "POST", "/api/v1/tasks/" + pending + "/retry", nil, []string{"If-Match", "abc"}, 400, "invalid_request", ""},
		{"dead letters of unknown kind", "GET", "/api/v1/dlq?kind=machines", nil, nil, 400, "invalid_request", "kind"},
		{"bad dead-letter limit", "GET", "/api/v1/dlq?limit=-1", nil, nil, 400, "invalid_request", "limit"},
		{"bad dead-letter offset", "GET", "/api/v1/dlq?offset=x", nil, nil, 400, "invalid_request", "offset"},
		{"acknowledge unknown kind", "DELETE", "/api/v1/dlq/machines/" + pending, nil, nil, 400, "invalid_request", "kind"},
		{"acknowledge malformed task ID", "DELETE", "/api/v1/dlq/tasks/x", nil, nil, 400, "invalid_request", "id"},
		{"acknowledge malformed delivery ID", "DELETE", "/api/v1/dlq/webhooks/msg_zz", nil, nil, 400, "invalid_request", "id"},
		{"acknowledge unknown dead letter", "DELETE", "/api/v1/dlq/tasks/" + pending, nil, nil, 404, "not_found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := storeRevision(t, st)
			code, body := cp.do(tt.method, tt.path, adminToken, tt.body, tt.headers...)
			assert.Equal(t, tt.status, code, "%v", body)
			assert.Equal(t, tt.code, errCode(body), "%v", body)
			if tt.field != "" {
				assert.Equal(t, tt.field, body["error"].(map[string]any)["field"])
			}
			assert.NotEmpty(t, body["error"].(map[string]any)["message"])
			assert.Equal(t, before, storeRevision(t, st), "an error writes nothing")
		})
	}
}

func signJWT(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	require.NoError(t, err)
	return tok
}

func TestAuthMatrix(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)
	exp := time.Now().Add(time.Hour).Unix()
	hsOperator := signJWT(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "jwt-hs@example.com", "role": "operator", "exp": exp})
	rsViewer := signJWT(t, jwt.SigningMethodRS256, rsaKey, jwt.MapClaims{"sub": "jwt-rs@example.com", "role": "viewer", "exp": exp})
	expired := signJWT(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "x", "role": "admin", "exp": time.Now().Add(-time.Hour).Unix()})
	noExp := signJWT(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "x", "role": "admin"})
	century := signJWT(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "x", "role": "admin", "iat": time.Now().Unix(), "exp": time.Now().AddDate(100, 0, 0).Unix()})
	wrongKey := signJWT(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-123"), jwt.MapClaims{"sub": "x", "role": "admin", "exp": exp})
	noRole := signJWT(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "x", "exp": exp})
	unsigned := signJWT(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.MapClaims{"sub": "x", "role": "admin", "exp": exp})

	// Each endpoint with the role it needs; mutations use a fresh task so
	// that an allowed call succeeds for real.
	type endpoint struct {
		name   string
		needs  auth.Role
		call   func(token string) int
		wantOK int
	}
	mac := 0
	fresh := func() string {
		mac++
		return cp.create(fmt.Sprintf("00:1a:2b:3c:5d:%02x", mac))
	}
	endpoints := []endpoint{
		{"list", auth.RoleViewer, func(tok string) int { c, _ := cp.do("GET", "/api/v1/tasks", tok, nil); return c }, 200},
		{"get", auth.RoleViewer, func(tok string) int { c, _ := cp.do("GET", "/api/v1/tasks/"+fresh(), tok, nil); return c }, 200},
		{"regions", auth.RoleViewer, func(tok string) int { c, _ := cp.do("GET", "/api/v1/regions", tok, nil); return c }, 200},
		{"boot trace", auth.RoleViewer, func(tok string) int {
			c, _ := cp.do("GET", "/api/v1/machines/00:1a:2b:3c:5d:ff/trace", tok, nil)
			return c
		}, 200},
		{"metrics", auth.RoleViewer, func(tok string) int { c, _ := cp.do("GET", "/metrics", tok, nil); return c }, 200},
		{"create", auth.RoleOperator, func(tok string) int {
			mac++
			c, _ := cp.do("POST", "/api/v1/tasks", tok, createBody(fmt.Sprintf("00:1a:2b:3c:5d:%02x", mac)))
			return c
		}, 201},
		{"approve", auth.RoleOperator, func(tok string) int {
			id := fresh()
			cp.toPendingApproval(id)
			c, _ := cp.do("PUT", "/api/v1/tasks/"+id+"/approve", tok, map[string]any{"approved": true})
			return c
		}, 200},
		{"reject", auth.RoleOperator, func(tok string) int {
			id := fresh()
			cp.toPendingApproval(id)
			c, _ := cp.do("PUT", "/api/v1/tasks/"+id+"/reject", tok, map[string]any{"reason": "no"})
			return c
		}, 200},
		{"cancel", auth.RoleOperator, func(tok string) int { c, _ := cp.do("DELETE", "/api/v1/tasks/"+fresh(), tok, nil); return c }, 204},
		{"batch create", auth.RoleOperator, func(tok string) int {
			mac++
			c, _ := cp.do("POST", "/api/v1/tasks/batch", tok, map[string]any{"tasks": []any{createBody(fmt.Sprintf("00:1a:2b:3c:5d:%02x", mac))}})
			return c
		}, 200},
		{"bulk cancel", auth.RoleOperator, func(tok string) int {
			c, _ := cp.do("POST", "/api/v1/tasks/cancel", tok, map[string]any{"ids": []string{fresh()}})
			return c
		}, 200},
	}
	callers := []struct {
		name  string
		token string
		role  auth.Role
	}{
		{"anonymous", "", auth.RoleNone},
		{"garbage token", "not-a-token", auth.RoleNone},
		{"expired JWT", expired, auth.RoleNone},
		{"JWT without exp", noExp, auth.RoleNone},
		{"JWT for 100 years", century, auth.RoleNone},
		{"JWT with wrong key", wrongKey, auth.RoleNone},
		{"JWT without role", noRole, auth.RoleNone},
		{"unsigned JWT", unsigned, auth.RoleNone},
		{"viewer", viewerToken, auth.RoleViewer},
		{"RS256 viewer", rsViewer, auth.RoleViewer},
		{"operator", operatorToken, auth.RoleOperator},
		{"HS256 operator", hsOperator, auth.RoleOperator},
		{"admin", adminToken, auth.RoleAdmin},
	}
	for _, c := range callers {
		for _, e := range endpoints {
			t.Run(c.name+"/"+e.name, func(t *testing.T) {
				got := e.call(c.token)
				switch {
				case c.role == auth.RoleNone:
					assert.Equal(t, http.StatusUnauthorized, got)
				case c.role < e.needs:
					assert.Equal(t, http.StatusForbidden, got)
				default:
					assert.Equal(t, e.wantOK, got)
				}
			})
		}
	}

	// The JWT's subject becomes created_by.
	code, body := cp.do("POST", "/api/v1/tasks", hsOperator, createBody("00:1a:2b:3c:5e:01"))
	require.Equal(t, http.StatusCreated, code)
	_, body = cp.do("GET", "/api/v1/tasks/"+body["task_id"].(string), viewerToken, nil)
	assert.Equal(t, "jwt:jwt-hs@example.com", body["metadata"].(map[string]any)["created_by"])

	// Health endpoints are open; the dashboard shell too (it asks for a token itself).
	for _, p := range []string{"/healthz", "/readyz", "/"} {
		code, _ := cp.do("GET", p, "", nil)
		assert.Equal(t, http.StatusOK, code, p)
	}
}

func TestAuditLog(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t))
	id := cp.create("00:1a:2b:3c:6d:01")
	code, _ := cp.do("DELETE", "/api/v1/tasks/"+id, viewerToken, nil) // forbidden
	require.Equal(t, http.StatusForbidden, code)
	code, _ = cp.do("DELETE", "/api/v1/tasks/"+id, adminToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil) // reads are not audited

	var entries []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(cp.audit.String()), "\n") {
		var e map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &e))
		entries = append(entries, e)
	}
	require.Len(t, entries, 3)
	want := []struct {
		actor, action string
		status        float64
	}{{"token:otto", "task.create", 201}, {"token:vera", "task.cancel", 403}, {"token:ada", "task.cancel", 204}}
	for i, w := range want {
		assert.Equal(t, w.actor, entries[i]["actor"])
		assert.Equal(t, w.action, entries[i]["action"])
		assert.Equal(t, w.status, entries[i]["status"])
		assert.NotEmpty(t, entries[i]["at"])
	}
	for i, e := range entries {
		assert.Equal(t, id, e["task_id"], "entry %d names the task, the create too", i)
	}
}

func TestRateLimitFailedSignIns(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) { c.SignInFailureLimit, c.SignInFailureBurst = 1, 3 })
	codes := map[int]int{}
	for range 10 {
		code, _ := cp.do("GET", "/api/v1/tasks", "guessed-token-123456", nil)
		codes[code]++
	}
	assert.Positive(t, codes[http.StatusTooManyRequests])
	assert.GreaterOrEqual(t, codes[http.StatusUnauthorized], 3)
	code, _ := cp.do("GET", "/api/v1/tasks", viewerToken, nil)
	assert.Equal(t, http.StatusOK, code, "a valid token still gets in")
}

func TestRateLimit(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) { c.RateLimit, c.RateBurst = 1, 3 })
	codes := map[int]int{}
	for range 10 {
		code, _ := cp.do("GET", "/api/v1/tasks", viewerToken, nil)
		codes[code]++
	}
	assert.Positive(t, codes[http.StatusTooManyRequests])
	assert.GreaterOrEqual(t, codes[http.StatusOK], 3)

	// A JWT whose sub is the static token's subject is another caller:
	// its own bucket, its own name in the audit log.
	namesake := signJWT(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "vera", "role": "viewer", "exp": time.Now().Add(time.Hour).Unix()})
	code, body := cp.do("GET", "/api/v1/whoami", namesake, nil)
	require.Equal(t, http.StatusOK, code, "the static token's limit is not the JWT's")
	assert.Equal(t, "jwt:vera", body["subject"])
}

func wsDial(t *testing.T, cp *testCP, token string) *websocket.Conn {
	t.Helper()
	url := "ws" + strings.TrimPrefix(cp.ts.URL, "http") + "/ws"
	d := websocket.Dialer{Subprotocols: []string{"lpmos.v1", "bearer." + token}, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := d.Dial(url, nil)
	require.NoError(t, err)
	assert.Equal(t, "lpmos.v1", resp.Header.Get("Sec-WebSocket-Protocol"))
	t.Cleanup(func() { conn.Close() })
	require.NoError(t, conn.WriteJSON(map[string]string{"type": "subscribe", "task_id": "*"}))
	// Every change after the acknowledgement reaches the client.
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	var ack map[string]any
	require.NoError(t, conn.ReadJSON(&ack))
	require.Equal(t, map[string]any{"type": "subscribed", "task_id": "*"}, ack)
	return conn
}

// Two control planes on one etcd: a change made through one is in the
// other's list and on its WebSocket.
func TestTwoReplicas(t *testing.T) {
	st := etcdtest.NewStore(t)
	a := startCP(t, st)
	b := startCP(t, st)
	ws := wsDial(t, b, viewerToken)

	start := time.Now()
	id := a.create("00:1a:2b:3c:7d:01")
	require.Eventually(t, func() bool {
		_, body := b.do("GET", "/api/v1/tasks?status=pending", viewerToken, nil)
		return body["total"] == float64(1) && body["tasks"].([]any)[0].(map[string]any)["task_id"] == id
	}, 10*time.Second, 10*time.Millisecond)
	t.Logf("replica B listed the task %v after A created it", time.Since(start))

	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	for {
		var msg map[string]any
		require.NoError(t, ws.ReadJSON(&msg))
		if msg["type"] == "status" && msg["task_id"] == id {
			assert.Equal(t, "pending", msg["status"])
			break
		}
	}
	t.Logf("replica B pushed the status over WebSocket %v after A created it", time.Since(start))

	// And the other way round, for a decision.
	a.toPendingApproval(id)
	code, _ := b.do("PUT", "/api/v1/tasks/"+id+"/approve", operatorToken, map[string]any{"approved": true})
	require.Equal(t, http.StatusOK, code)
	require.Eventually(t, func() bool {
		_, body := a.do("GET", "/api/v1/tasks?status=approved", viewerToken, nil)
		return body["total"] == float64(1)
	}, 10*time.Second, 10*time.Millisecond)
}

func TestMetricsEndpoint(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)
	cp.create("00:1a:2b:3c:8d:01")
	gone := cp.create("00:1a:2b:3c:8d:02")
	code, body := cp.do("DELETE", "/api/v1/tasks/"+gone, operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code, "%v", body)
	_, err := st.Put(context.Background(), task.RegionHeartbeatKey("dc1"), []byte("2026-01-29T10:00:00Z"))
	require.NoError(t, err)
	scrape := func() string {
		req, _ := http.NewRequest("GET", cp.ts.URL+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+viewerToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return string(data)
	}
	var text string
	require.Eventually(t, func() bool {
		text = scrape()
		return strings.Contains(text, `lpmos_region_up{region="dc1"} 1`) &&
			strings.Contains(text, `lpmos_tasks_ended_total{status="cancelled"} 1`)
	}, 10*time.Second, 10*time.Millisecond, "no region up or ended task in:\n%s", text)
	fams, err := promlint.Parse(text)
	require.NoError(t, err)
	for _, err := range promlint.Lint(fams, "lpmos_") {
		t.Error(err)
	}
	assert.Contains(t, text, `lpmos_tasks_ended_total{status="failed"} 0`, "every final status from the start")
	assert.Contains(t, text, `lpmos_http_requests_total{code="201",route="POST /api/v1/tasks"} 2`)
	assert.Contains(t, text, `lpmos_tasks{status="pending"} 1`)
	assert.Contains(t, text, `lpmos_tasks{status="cancelled"} 1`)
	assert.Contains(t, text, "lpmos_ws_clients")
	assert.Contains(t, text, "lpmos_watch_lag_seconds")
	assert.Contains(t, text, "lpmos_webhook_failures_total")
	assert.Contains(t, text, "lpmos_regions_offline 0")
	assert.Contains(t, text, `lpmos_dead_letters{kind="tasks"} 0`)
	assert.Contains(t, text, `lpmos_dead_letters{kind="webhooks"} 0`)
	assert.Contains(t, text, `lpmos_task_retries_total{trigger="auto"} 0`)
}

// TestRetentionPurgesEndedTasks: with a retention, ended tasks disappear
// from the store and from the API; active ones stay.
func TestRetentionPurgesEndedTasks(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st, func(c *controlplane.Config) {
		c.Retention, c.PurgeInterval = time.Millisecond, 20*time.Millisecond
	})
	ended := cp.create("52:54:00:70:00:01")
	active := cp.create("52:54:00:70:00:02")
	code, body := cp.do("DELETE", "/api/v1/tasks/"+ended+"?reason=gone", operatorToken, nil)
	require.Equal(t, http.StatusNoContent, code, "%v", body)

	require.Eventually(t, func() bool {
		code, _ := cp.do("GET", "/api/v1/tasks/"+ended, viewerToken, nil)
		return code == http.StatusNotFound
	}, 10*time.Second, 20*time.Millisecond, "the ended task is purged")
	res, err := st.List(context.Background(), task.TaskPrefix(ended), store.ListOptions{})
	require.NoError(t, err)
	assert.Empty(t, res.KVs)
	require.Eventually(t, func() bool {
		_, body := cp.do("GET", "/api/v1/tasks", viewerToken, nil)
		tasks, _ := body["tasks"].([]any)
		return len(tasks) == 1 && tasks[0].(map[string]any)["task_id"] == active
	}, 10*time.Second, 20*time.Millisecond, "the list shows only the active task")
	code, _ = cp.do("GET", "/api/v1/tasks/"+active, viewerToken, nil)
	assert.Equal(t, http.StatusOK, code, "an active task is never purged")
}

// The control plane feeds its task watch to the webhook notifier.
func TestWebhooksAreFedByTheWatch(t *testing.T) {
	secret := []byte("webhook-secret")
	got := make(chan *http.Request, 10)
	bodies := make(chan []byte, 10)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- r
		bodies <- body
	}))
	defer hook.Close()
	cp := startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) {
		c.Webhooks = webhook.Config{URLs: []string{hook.URL}, Secret: secret}
	})
	id := cp.create("00:1a:2b:3c:9d:01")
	cp.toPendingApproval(id)
	select {
	case r := <-got:
		body := <-bodies
		assert.Equal(t, "task.pending_approval", r.Header.Get("X-LPMOS-Event"))
		assert.NoError(t, webhook.Verify(secret, r.Header, body, time.Now(), 0))
		var p webhook.Payload
		require.NoError(t, json.Unmarshal(body, &p))
		assert.Equal(t, id, p.TaskID)
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook")
	}
}

func TestConfigValidation(t *testing.T) {
	st := etcdtest.NewStore(t)
	admin := auth.Config{Tokens: []auth.StaticToken{{Token: adminToken, Subject: "a", Role: auth.RoleAdmin}}}
	for name, cfg := range map[string]controlplane.Config{
		"no store":           {Auth: admin},
		"nobody can sign in": {Store: st},
		"bad webhook URL":    {Store: st, Auth: admin, Webhooks: webhook.Config{URLs: []string{"ftp://example.com/hook"}, Secret: []byte("s")}},
		"unsigned webhooks":  {Store: st, Auth: admin, Webhooks: webhook.Config{URLs: []string{"http://example.com/hook"}}},
		"negative attempts":  {Store: st, Auth: admin, MaxAttempts: -1},
		"too many attempts":  {Store: st, Auth: admin, MaxAttempts: 101},
	} {
		_, err := controlplane.New(cfg)
		assert.Error(t, err, name)
	}
}

// A region whose heartbeat expired (it died without saying goodbye) stays
// listed, offline, with the time of its last heartbeat from the
// capabilities it wrote with it.
func TestAPIRegionDiedStaysListed(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st)
	ctx := context.Background()
	last := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	caps, _ := json.Marshal(task.Capabilities{OS: []task.OSOffering{{Type: "ubuntu", Version: "24.04", Kind: "image"}}, UpdatedAt: last})
	_, err := st.Put(ctx, task.RegionCapabilitiesKey("dc3"), caps)
	require.NoError(t, err)
	_, err = st.Put(ctx, task.RegionStatusKey("dc3"), []byte("online"))
	require.NoError(t, err)
	lease, err := st.Grant(ctx, time.Hour)
	require.NoError(t, err)
	_, err = st.Put(ctx, task.RegionHeartbeatKey("dc3"), []byte(last.Format(time.RFC3339Nano)), store.WithLease(lease))
	require.NoError(t, err)
	region := func() map[string]any {
		code, body := cp.do("GET", "/api/v1/regions", viewerToken, nil)
		require.Equal(t, http.StatusOK, code)
		regions, _ := body["regions"].([]any)
		if len(regions) != 1 {
			return nil
		}
		return regions[0].(map[string]any)
	}
	require.Eventually(t, func() bool { r := region(); return r != nil && r["status"] == "online" }, 10*time.Second, 10*time.Millisecond)
	assert.Contains(t, cp.metricsText(), "lpmos_regions_offline 0\n")

	require.NoError(t, st.Revoke(ctx, lease)) // as if the lease expired
	require.Eventually(t, func() bool { r := region(); return r != nil && r["status"] == "offline" }, 10*time.Second, 10*time.Millisecond)
	r := region()
	assert.Equal(t, "dc3", r["region_id"])
	assert.Equal(t, "2026-12-04T10:00:00Z", r["last_heartbeat"])
	assert.NotNil(t, r["capabilities"])
	assert.Contains(t, cp.metricsText(), "lpmos_regions_offline 1\n", "the metric counts it")
}

// A decommissioned region is forgotten by an admin, once it is offline
// and has no task that has not ended; refusals write nothing.
func TestAPIDeleteRegion(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st)
	ctx := context.Background()
	put := func(key, value string, opts ...store.PutOption) {
		_, err := st.Put(ctx, key, []byte(value), opts...)
		require.NoError(t, err)
	}
	put(task.RegionCapabilitiesKey("dc4"), `{"os":[]}`)
	put(task.RegionStatusKey("dc4"), task.RegionOnline)
	lease, err := st.Grant(ctx, time.Hour)
	require.NoError(t, err)
	put(task.RegionHeartbeatKey("dc4"), time.Now().UTC().Format(time.RFC3339Nano), store.WithLease(lease))
	put(task.RegionLeaderKey("dc4"), "rack4 http://10.0.4.2:8081", store.WithLease(lease))
	id := cp.create("00:1a:2b:3c:9d:01") // in dc1
	_ = id

	refused := func(name, path, token string, status int, code string) {
		t.Helper()
		before := storeRevision(t, st)
		got, body := cp.do("DELETE", path, token, nil)
		assert.Equal(t, status, got, "%s: %v", name, body)
		assert.Equal(t, code, errCode(body), name)
		assert.Equal(t, before, storeRevision(t, st), "%s writes nothing", name)
	}
	refused("operator", "/api/v1/regions/dc4", operatorToken, http.StatusForbidden, "forbidden")
	refused("online", "/api/v1/regions/dc4", adminToken, http.StatusConflict, "region_online")
	refused("bad ID", "/api/v1/regions/DC_4", adminToken, http.StatusBadRequest, "invalid_request")
	refused("unknown", "/api/v1/regions/dc9", adminToken, http.StatusNotFound, "not_found")
	refused("active tasks", "/api/v1/regions/dc1", adminToken, http.StatusConflict, "region_active_tasks")

	require.NoError(t, st.Revoke(ctx, lease)) // dc4 died
	code, body := cp.do("DELETE", "/api/v1/regions/dc4", adminToken, nil)
	require.Equal(t, http.StatusNoContent, code, "%v", body)
	res, err := st.List(ctx, task.RegionsPrefix+"dc4/", store.ListOptions{})
	require.NoError(t, err)
	assert.Empty(t, res.KVs)
	require.Eventually(t, func() bool {
		_, body := cp.do("GET", "/api/v1/regions", viewerToken, nil)
		regions, _ := body["regions"].([]any)
		return len(regions) == 0
	}, 10*time.Second, 10*time.Millisecond, "the region is no longer listed")
	assert.Contains(t, cp.audit.String(), `"action":"region.delete"`)
}

// TestAPIMethodNotAllowedSaysAllow: a known path asked with a method it
// does not take answers 405 with the methods it takes in Allow, also
// where a wildcard route of another method would take the path.
func TestAPIMethodNotAllowedSaysAllow(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t))
	tests := []struct {
		method, path, allow string
	}{
		{"GET", "/api/v1/tasks/batch", "POST"},
		{"PUT", "/api/v1/tasks", "POST, GET"},
		{"POST", "/api/v1/rules/r1", "GET, PUT, DELETE"},
		{"GET", "/api/v1/machines/00:1a:2b:3c:4d:01/power", "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, cp.ts.URL+tt.path, nil)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+adminToken)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
			assert.Equal(t, tt.allow, resp.Header.Get("Allow"))
		})
	}
}
