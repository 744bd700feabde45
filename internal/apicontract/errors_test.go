package apicontract_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// answer is what a client sees of a refused request.
type answer struct {
	status int
	body   httpjson.Body
	raw    []byte
	header http.Header
}

// call sends a request; body is sent as is if it is a string, as JSON
// otherwise.
func call(t *testing.T, method, url, contentType, token string, body any) answer {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, header: resp.Header}
	a.raw, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	if len(a.raw) > 0 {
		require.NoError(t, json.Unmarshal(a.raw, &a.body), "%s", a.raw)
	}
	return a
}

const (
	adminToken = "admin-token-0123456789abc"
	unknownID  = "00000000-0000-4000-8000-000000000001"
)

// controlPlane is a control plane on the memory store.
type controlPlane struct {
	url string
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	srv, err := controlplane.New(controlplane.Config{
		Store:  st,
		Auth:   auth.Config{Tokens: []auth.StaticToken{{Token: adminToken, Subject: "ada", Role: auth.RoleAdmin}}},
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ts.Close()
		cancel()
		<-done
	})
	require.Eventually(t, func() bool {
		return call(t, "GET", ts.URL+"/readyz", "", "", nil).status == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond)
	return &controlPlane{url: ts.URL}
}

func (cp *controlPlane) do(t *testing.T, method, path string, body any) answer {
	t.Helper()
	ct := ""
	if body != nil {
		ct = "application/json"
	}
	return call(t, method, cp.url+path, ct, adminToken, body)
}

func createRequest(mac string) map[string]any {
	return map[string]any{"region_id": "dc1", "target_mac": mac, "os_type": "ubuntu", "os_version": "22.04"}
}

// faultStore is the memory store with two faults a test can switch on for
// one task: hidden, its keys read as absent (as if it were deleted before
// the region's watch told it so); contended, every transaction on it fails
// its comparison (as if other writers always won).
type faultStore struct {
	store.Store
	hidden    atomic.Value // task ID
	contended atomic.Value // task ID
}

func (s *faultStore) faulty(v *atomic.Value, key string) bool {
	id, _ := v.Load().(string)
	return id != "" && strings.HasPrefix(key, task.TaskPrefix(id))
}

func (s *faultStore) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	res, err := s.Store.List(ctx, prefix, opts)
	if err == nil && s.faulty(&s.hidden, prefix) {
		res.KVs = nil
	}
	return res, err
}

func (s *faultStore) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	for _, c := range txn.If {
		if s.faulty(&s.contended, c.Key) {
			res, err := s.Store.List(ctx, c.Key, store.ListOptions{Limit: 1})
			return store.TxnResult{Succeeded: false, Revision: res.Revision}, err
		}
	}
	return s.Store.Txn(ctx, txn)
}

// agentRegion is a region on a faultStore, with one machine booted into
// its agent: the task is booting and tok is its agent token.
type agentRegion struct {
	url  string
	st   *faultStore
	mac  string
	task string
	tok  string
}

var tokenRe = regexp.MustCompile(`lpmos\.token=([0-9a-f]+)`)

func startRegion(t *testing.T) *agentRegion {
	t.Helper()
	mem := memory.New()
	t.Cleanup(func() { mem.Close() })
	st := &faultStore{Store: mem}

	bootDir := t.TempDir()
	for _, f := range []string{"vmlinuz", "initramfs.cpio.zst"} {
		require.NoError(t, os.WriteFile(filepath.Join(bootDir, f), []byte(f), 0o644))
	}
	// The region needs its public URL before the server exists.
	var handler http.Handler
	var mu sync.RWMutex
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.RLock()
		h := handler
		mu.RUnlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	reg, err := region.New(region.Config{RegionID: "dc1", Store: st, PublicURL: ts.URL, BootDir: bootDir,
		Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	mu.Lock()
	handler = reg.Handler()
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// The control plane's part, straight on the store: a task for a machine.
	const mac = "52:54:00:12:34:56"
	svc := task.NewService(st, task.Config{})
	tk, err := svc.Create(context.Background(), task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "22.04", CreatedBy: "ops"})
	require.NoError(t, err)
	// The machine fetches its boot script once the region has readied the
	// task: that moves it to booting and hands it an agent token.
	var tok string
	require.Eventually(t, func() bool {
		resp, err := http.Get(ts.URL + "/boot/" + mac + ".ipxe")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := tokenRe.FindSubmatch(body); resp.StatusCode == http.StatusOK && m != nil {
			tok = string(m[1])
			return true
		}
		return false
	}, 30*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		got, err := svc.Get(context.Background(), tk.ID)
		require.NoError(t, err)
		return got.Status == task.StatusBooting
	}, 30*time.Second, 10*time.Millisecond)
	return &agentRegion{url: ts.URL, st: st, mac: mac, task: tk.ID, tok: tok}
}

func (r *agentRegion) report() agent.ReportRequest {
	return agent.ReportRequest{MACAddress: r.mac, TaskID: r.task, Hardware: hardware.Info{CPU: hardware.CPU{Cores: 1}}}
}

// TestTaskErrorsAnswerAlikeOnBothAPIs provokes each task error through the
// real handlers of the control plane's REST API and of the region's agent
// API, and requires the same status and code from both.
func TestTaskErrorsAnswerAlikeOnBothAPIs(t *testing.T) {
	cp := startControlPlane(t)
	rg := startRegion(t)
	pending := cp.do(t, "POST", "/api/v1/tasks", createRequest("00:1a:2b:3c:4d:01"))
	require.Equal(t, http.StatusCreated, pending.status, "%s", pending.raw)
	var created struct {
		TaskID string `json:"task_id"`
	}
	require.NoError(t, json.Unmarshal(pending.raw, &created))
	oversized := createRequest("00:1a:2b:3c:4d:02")
	oversized["tags"] = map[string]string{"k": strings.Repeat("x", 1<<20)} // over MaxCreateBodyBytes
	unknownField := createRequest("00:1a:2b:3c:4d:03")
	unknownField["colour"] = "blue"

	tests := []struct {
		name   string
		status int
		code   string
		field  bool // a field is named
		cp     func(t *testing.T) answer
		region func(t *testing.T) answer
	}{
		{
			name: "validation error", status: http.StatusBadRequest, code: httpjson.CodeInvalidRequest, field: true,
			cp: func(t *testing.T) answer {
				return cp.do(t, "POST", "/api/v1/tasks", createRequest("00:1a:2b:3c:4d"))
			},
			region: func(t *testing.T) answer {
				r := rg.report()
				r.Hardware.CPU.Cores = -4
				return call(t, "POST", rg.url+agent.PathReport, "application/json", rg.tok, r)
			},
		},
		{
			name: "unknown field", status: http.StatusBadRequest, code: httpjson.CodeInvalidRequest,
			cp: func(t *testing.T) answer { return cp.do(t, "POST", "/api/v1/tasks", unknownField) },
			region: func(t *testing.T) answer {
				return call(t, "POST", rg.url+agent.PathReport, "application/json", rg.tok,
					`{"mac_address":"`+rg.mac+`","hardware":{},"colour":"blue"}`)
			},
		},
		{
			name: "oversized body", status: http.StatusRequestEntityTooLarge, code: httpjson.CodeTooLarge,
			cp: func(t *testing.T) answer { return cp.do(t, "POST", "/api/v1/tasks", oversized) },
			region: func(t *testing.T) answer {
				return call(t, "POST", rg.url+agent.PathReport, "application/json", rg.tok,
					`{"mac_address":"`+strings.Repeat("x", agent.MaxBodyBytes)+`"}`)
			},
		},
		{
			name: "wrong content type", status: http.StatusUnsupportedMediaType, code: httpjson.CodeUnsupportedMediaType,
			cp: func(t *testing.T) answer {
				return call(t, "POST", cp.url+"/api/v1/tasks", "text/plain", adminToken, createRequest("00:1a:2b:3c:4d:04"))
			},
			region: func(t *testing.T) answer {
				return call(t, "POST", rg.url+agent.PathReport, "text/plain", rg.tok, rg.report())
			},
		},
		{
			name: "no token", status: http.StatusUnauthorized, code: httpjson.CodeUnauthorized,
			cp: func(t *testing.T) answer { return call(t, "GET", cp.url+"/api/v1/tasks", "", "", nil) },
			region: func(t *testing.T) answer {
				return call(t, "POST", rg.url+agent.PathReport, "application/json", "", rg.report())
			},
		},
		{
			name: "illegal transition", status: http.StatusConflict, code: httpjson.CodeInvalidTransition,
			cp: func(t *testing.T) answer {
				return cp.do(t, "PUT", "/api/v1/tasks/"+created.TaskID+"/approve", map[string]any{"approved": true})
			},
			region: func(t *testing.T) answer {
				// A booting task has installed nothing that could boot.
				return call(t, "POST", rg.url+agent.PathPhoneHome+rg.task+"?token="+rg.tok, "application/x-www-form-urlencoded", "", "instance_id="+rg.task)
			},
		},
		{
			name: "task not found", status: http.StatusNotFound, code: httpjson.CodeNotFound,
			cp: func(t *testing.T) answer { return cp.do(t, "GET", "/api/v1/tasks/"+unknownID, nil) },
			region: func(t *testing.T) answer {
				rg.st.hidden.Store(rg.task)
				defer rg.st.hidden.Store("")
				return call(t, "POST", rg.url+agent.PathReport, "application/json", rg.tok, rg.report())
			},
		},
		{
			name: "conflict", status: http.StatusConflict, code: httpjson.CodeConflict,
			cp: func(t *testing.T) answer {
				return cp.do(t, "POST", "/api/v1/tasks", createRequest("00-1A-2B-3C-4D-01")) // the MAC has an active task
			},
			region: func(t *testing.T) answer {
				rg.st.contended.Store(rg.task)
				defer rg.st.contended.Store("")
				return call(t, "POST", rg.url+agent.PathReport, "application/json", rg.tok, rg.report())
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for api, do := range map[string]func(*testing.T) answer{"control plane": tt.cp, "region": tt.region} {
				a := do(t)
				assert.Equal(t, tt.status, a.status, "%s: %s", api, a.raw)
				require.NotNil(t, a.body.Error, "%s: %s", api, a.raw)
				assert.Equal(t, tt.code, a.body.Error.Code, "%s: %s", api, a.raw)
				assert.NotEmpty(t, a.body.Error.Message, api)
				if tt.field {
					assert.NotEmpty(t, a.body.Error.Field, "%s: %s", api, a.raw)
				}
				assert.Equal(t, "application/json", a.header.Get("Content-Type"), api)
				if tt.status == http.StatusUnauthorized {
					assert.True(t, strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer"), api)
				}
				if api == "region" {
					// What the agent's client reads of it.
					var wire agent.Error
					require.NoError(t, json.Unmarshal(a.raw, &wire))
					assert.Equal(t, a.body.Error.Code, wire.Error.Code)
					assert.Equal(t, a.body.Error.Message, wire.Error.Message)
					assert.Equal(t, a.body.Error.Field, wire.Error.Field)
				}
			}
		})
	}
}
