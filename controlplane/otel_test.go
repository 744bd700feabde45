package controlplane_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/task"
)

// A task created through the API with tracing on keeps its trace context
// (metadata.trace_parent, in the OpenAPI document); a create that
// carries a traceparent header makes the task's root span a child of
// the caller's span, in the caller's trace.
func TestAPITracesTasks(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	cp := startCP(t, etcdtest.NewStore(t), func(c *controlplane.Config) { c.TracerProvider = tp })

	const caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	code, body := cp.do("POST", "/api/v1/tasks", operatorToken, createBody("00:1a:2b:3c:4d:71"), "traceparent", caller)
	require.Equal(t, http.StatusCreated, code, "%v", body)
	id := body["task_id"].(string)
	code, got := cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	tp1, _ := got["metadata"].(map[string]any)["trace_parent"].(string)
	sc := task.ParseTraceParent(tp1)
	require.True(t, sc.IsValid(), "trace_parent %q", tp1)
	callerSC := task.ParseTraceParent(caller)
	assert.Equal(t, callerSC.TraceID(), sc.TraceID(), "in the caller's trace")

	plain := cp.create("00:1a:2b:3c:4d:72")
	spans := exp.GetSpans()
	require.Len(t, spans, 2)
	assert.Equal(t, "task "+id, spans[0].Name)
	assert.Equal(t, callerSC.SpanID(), spans[0].Parent.SpanID(), "a child of the caller's span")
	assert.Equal(t, "task "+plain, spans[1].Name)
	assert.False(t, spans[1].Parent.IsValid(), "without a traceparent the task's span is a root")
	assert.NotEqual(t, callerSC.TraceID(), spans[1].SpanContext.TraceID())
}
