package client_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

const (
	viewerToken   = "viewer-token-0123456789"
	operatorToken = "operator-token-0123456789"
)

// testCP is a real control plane on a store, served over real HTTP by an
// httptest server whose handler can be swapped: restart replaces the
// control plane as a redeploy would, behind the same address.
type testCP struct {
	t       *testing.T
	st      store.Store
	opts    []func(*controlplane.Config)
	ts      *httptest.Server
	svc     *task.Service // the region's side
	handler atomic.Pointer[http.Handler]

	mu   sync.Mutex
	stop func() // stops the running control plane
}

// startCP runs a control plane on st (a memory store if nil).
func startCP(t *testing.T, st store.Store, opts ...func(*controlplane.Config)) *testCP {
	t.Helper()
	return startCPServer(t, st, httptest.NewServer, opts...)
}

// startCPServer is startCP with the test server's constructor
// (httptest.NewTLSServer for HTTPS).
func startCPServer(t *testing.T, st store.Store, newServer func(http.Handler) *httptest.Server, opts ...func(*controlplane.Config)) *testCP {
	t.Helper()
	if st == nil {
		mem := memory.New()
		t.Cleanup(func() { mem.Close() })
		st = mem
	}
	cp := &testCP{t: t, st: st, opts: opts, svc: task.NewService(st, task.Config{})}
	cp.ts = newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*cp.handler.Load()).ServeHTTP(w, r)
	}))
	cp.start()
	t.Cleanup(func() {
		cp.ts.Close()
		cp.mu.Lock()
		defer cp.mu.Unlock()
		cp.stop()
	})
	return cp
}

// start builds and runs a control plane and routes the server to it once
// it is ready.
func (cp *testCP) start() {
	cp.t.Helper()
	cfg := controlplane.Config{
		Store: cp.st,
		Auth: auth.Config{Tokens: []auth.StaticToken{
			{Token: viewerToken, Subject: "vera", Role: auth.RoleViewer},
			{Token: operatorToken, Subject: "otto", Role: auth.RoleOperator},
		}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		RateLimit: 10000, RateBurst: 10000,
		SignInFailureLimit: 10000, SignInFailureBurst: 10000,
	}
	for _, o := range cp.opts {
		o(&cfg)
	}
	srv, err := controlplane.New(cfg)
	require.NoError(cp.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	h := srv.Handler()
	require.Eventually(cp.t, func() bool {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code == http.StatusOK
	}, 30*time.Second, 10*time.Millisecond)
	cp.mu.Lock()
	cp.stop = func() { cancel(); <-done }
	cp.mu.Unlock()
	cp.handler.Store(&h)
}

// shutdown stops the control plane: its hub closes every WebSocket and
// refuses new ones, as a replica going away does. Requests still reach
// it until restart.
func (cp *testCP) shutdown() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.stop()
	cp.stop = func() {}
}

// client returns a client of the control plane with token.
func (cp *testCP) client(token string, opts ...client.Option) *client.Client {
	cp.t.Helper()
	c, err := client.New(cp.ts.URL, append([]client.Option{client.WithToken(token)}, opts...)...)
	require.NoError(cp.t, err)
	return c
}

func createReq(mac string) task.CreateRequest {
	return task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "22.04",
		Tags: map[string]string{"environment": "production"}}
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
