package agenttest_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/task"
)

// otelLab is a control plane and a region over one embedded etcd, each
// with its own tracer provider (nil: tracing off), as two processes
// would have, exporting to one in-memory exporter.
type otelLab struct {
	t         *testing.T
	api       *client.Client
	apiURL    string
	regionURL string
}

const otelToken = "operator-token-0123456789"

func tracerProvider(t *testing.T, exp *tracetest.InMemoryExporter, service string) *sdktrace.TracerProvider {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
		sdktrace.WithResource(resource.NewSchemaless(semconv.ServiceName(service))))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return tp
}

func newOtelLab(t *testing.T, cpTP, regionTP oteltrace.TracerProvider) *otelLab {
	st := etcdtest.NewStore(t)
	ctx, cancel := context.WithCancel(context.Background())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	regionURL := "http://" + ln.Addr().String()
	reg, err := region.New(region.Config{
		RegionID: "dc1", Store: st, PublicURL: regionURL, BootDir: bootDir(t, "raw", rawImage(4096), ""),
		HeartbeatTTL: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond,
		ProgressInterval: 100 * time.Millisecond, ApprovalWait: 5 * time.Second,
		Logger: quiet, TracerProvider: regionTP,
	})
	require.NoError(t, err)
	regSrv := &http.Server{Handler: reg.Handler()}

	cp, err := controlplane.New(controlplane.Config{
		Store:          st,
		Auth:           auth.Config{Tokens: []auth.StaticToken{{Token: otelToken, Subject: "otto", Role: auth.RoleOperator}}},
		Logger:         quiet,
		TracerProvider: cpTP,
	})
	require.NoError(t, err)
	cpSrv := httptest.NewServer(cp.Handler())

	done := make(chan struct{}, 3)
	go func() { defer func() { done <- struct{}{} }(); _ = reg.Run(ctx) }()
	go func() { defer func() { done <- struct{}{} }(); _ = regSrv.Serve(ln) }()
	go func() { defer func() { done <- struct{}{} }(); _ = cp.Run(ctx) }()
	t.Cleanup(func() {
		cpSrv.Close()
		_ = regSrv.Close()
		cancel()
		for range 3 {
			<-done
		}
	})
	api, err := client.New(cpSrv.URL, client.WithToken(otelToken))
	require.NoError(t, err)
	return &otelLab{t: t, api: api, apiURL: cpSrv.URL, regionURL: regionURL}
}

// install runs one task's whole lifecycle through the REST API, the
// region and the real agent: create, boot script, hardware report,
// approval, install with progress, completion. It returns the task
// as it ended and the agent's configuration from its kernel line.
func (l *otelLab) install(mac string) (*task.Task, agent.Config) {
	t := l.t
	ctx := context.Background()
	var created *client.Created
	// The control plane accepts the task once it has heard of the
	// region's capabilities.
	require.Eventually(t, func() bool {
		var err error
		created, err = l.api.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04"})
		return err == nil
	}, 20*time.Second, 20*time.Millisecond)
	waitStatus := func(want task.Status) *task.Task {
		var got *task.Task
		require.Eventually(t, func() bool {
			var err error
			got, err = l.api.Get(ctx, created.TaskID)
			require.NoError(t, err)
			return got.Status == want
		}, 30*time.Second, 10*time.Millisecond, "task never reached %s", want)
		return got
	}
	waitStatus(task.StatusReady)

	var script string
	require.Eventually(t, func() bool {
		resp, err := http.Get(l.regionURL + "/boot/" + mac + ".ipxe")
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		script = string(b)
		return resp.StatusCode == http.StatusOK
	}, 10*time.Second, 20*time.Millisecond)
	m := kernelLine.FindStringSubmatch(script)
	require.NotNil(t, m, "%s", script)
	cfg, err := agent.ParseCmdline("vmlinuz " + m[1])
	require.NoError(t, err, m[1])
	cfg.Logger = quiet
	cfg.Retry = agent.RetryPolicy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, MaxElapsed: 30 * time.Second, Attempts: 1000}
	cfg.ApprovalWait = 2 * time.Second

	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": install.Demo{Speed: 200}})
	waitStatus(task.StatusPendingApproval)
	_, err = l.api.Approve(ctx, created.TaskID, "")
	require.NoError(t, err)
	require.NoError(t, result(t, res))
	return waitStatus(task.StatusCompleted), cfg
}

func serviceOf(s tracetest.SpanStub) string {
	v, _ := s.Resource.Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}

// One task's lifecycle, through a real control plane, etcd, a region
// and the agent, is one connected trace: a root span at its creation in
// the control plane, and beneath it the region's and the control plane's
// spans, the agent's calls among them, each with its parent present.
func TestTaskLifecycleIsOneTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole install over embedded etcd")
	}
	exp := tracetest.NewInMemoryExporter()
	l := newOtelLab(t, tracerProvider(t, exp, "lpmos-control-plane"), tracerProvider(t, exp, "lpmos-region"))
	got, cfg := l.install("52:54:00:aa:00:71")

	root := task.ParseTraceParent(got.Metadata.TraceParent)
	require.True(t, root.IsValid(), "the task keeps its trace context: %q", got.Metadata.TraceParent)
	assert.Equal(t, got.Metadata.TraceParent, cfg.TraceParent, "the agent got it on its kernel line")

	spans := exp.GetSpans()
	byID := map[oteltrace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range spans {
				t.Logf("%-20s %-40s %s <- %s", serviceOf(s), s.Name, s.SpanContext.SpanID(), s.Parent.SpanID())
			}
		}
	})
	var roots []string
	names := map[string][]string{} // service → span names
	for _, s := range spans {
		assert.Equal(t, root.TraceID(), s.SpanContext.TraceID(), "span %q of %s is in the task's trace", s.Name, serviceOf(s))
		if !s.Parent.IsValid() {
			roots = append(roots, s.Name)
		} else {
			_, ok := byID[s.Parent.SpanID()]
			assert.True(t, ok, "the parent of span %q of %s was recorded", s.Name, serviceOf(s))
		}
		names[serviceOf(s)] = append(names[serviceOf(s)], s.Name)
	}
	assert.Equal(t, []string{"task " + got.ID}, roots, "one root: the task's creation")
	assert.Equal(t, root.SpanID(), byID[root.SpanID()].SpanContext.SpanID())
	assert.Subset(t, names["lpmos-control-plane"], []string{"task " + got.ID, "task approved"})
	assert.Subset(t, names["lpmos-region"], []string{
		"region prepare", "task prepared", "region boot script", "task boot_started",
		"POST " + agent.PathReport, "task hardware_reported",
		"GET " + agent.PathApproval + "{mac}", "POST " + agent.PathProgress, "task completed",
	})

	// The agent's calls carry the task's context: their server spans are
	// children of the root, and the moves they make children of them.
	for _, s := range spans {
		switch s.Name {
		case "POST " + agent.PathReport, "POST " + agent.PathProgress:
			assert.Equal(t, oteltrace.SpanKindServer, s.SpanKind)
			assert.Equal(t, root.SpanID(), s.Parent.SpanID(), s.Name)
		case "task hardware_reported":
			assert.Equal(t, "POST "+agent.PathReport, byID[s.Parent.SpanID()].Name)
		}
	}

	// The status transitions are span events, in order.
	var moves []string
	for _, s := range spans {
		for _, ev := range s.Events {
			if ev.Name != task.SpanEventStatus {
				continue
			}
			for _, a := range ev.Attributes {
				if a.Key == task.AttrStatusTo {
					moves = append(moves, a.Value.AsString())
				}
			}
		}
	}
	for _, want := range []task.Status{task.StatusPending, task.StatusReady, task.StatusBooting, task.StatusPendingApproval,
		task.StatusApproved, task.StatusInstalling, task.StatusCompleted} {
		assert.Contains(t, moves, string(want))
	}
}

// With tracing off in the control plane, which decides at a task's
// creation, the task keeps no trace context, its agent carries none,
// and a region that traces records nothing of it.
func TestUntracedTaskLeavesNoSpans(t *testing.T) {
	if testing.Short() {
		t.Skip("a whole install over embedded etcd")
	}
	exp := tracetest.NewInMemoryExporter()
	l := newOtelLab(t, nil, tracerProvider(t, exp, "lpmos-region"))
	got, cfg := l.install("52:54:00:aa:00:72")
	assert.Empty(t, got.Metadata.TraceParent)
	assert.Empty(t, cfg.TraceParent)
	req, err := http.NewRequest(http.MethodGet, l.apiURL+"/api/v1/tasks/"+got.ID, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+otelToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", raw)
	assert.True(t, strings.Contains(string(raw), `"metadata"`), "%s", raw)
	assert.False(t, strings.Contains(string(raw), "trace_parent"), "no trace field in the task: %s", raw)
	assert.Empty(t, exp.GetSpans())
}
