package task_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

func tracedService(t *testing.T) (*task.Service, *tracetest.InMemoryExporter) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	return task.NewService(st, task.Config{TracerProvider: tp}), exp
}

func attrOf(s tracetest.SpanStub, k attribute.Key) string {
	for _, a := range s.Attributes {
		if a.Key == k {
			return a.Value.AsString()
		}
	}
	return ""
}

// A traced task is one trace: the root span of its creation, whose
// context the task keeps, and a span per move beneath it, each with the
// status it moved to as an event. A move made from another trace (an
// operator's tool) links to it.
func TestTaskIsOneTrace(t *testing.T) {
	svc, exp := tracedService(t)
	ctx := t.Context()
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:00:00:01", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	root := task.ParseTraceParent(tk.Metadata.TraceParent)
	require.True(t, root.IsValid(), "trace_parent %q", tk.Metadata.TraceParent)
	got, err := svc.Get(ctx, tk.ID)
	require.NoError(t, err)
	assert.Equal(t, tk.Metadata.TraceParent, got.Metadata.TraceParent, "kept in the store")

	_, err = svc.MarkReady(ctx, tk.ID, "region")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, tk.ID, "region")
	require.NoError(t, err)
	_, err = svc.ReportHardware(ctx, tk.ID, "agent", hardware.Info{CPU: hardware.CPU{Model: "x", Cores: 1, Threads: 1}})
	require.NoError(t, err)
	other, span := sdktrace.NewTracerProvider().Tracer("ops").Start(ctx, "operator tool")
	_, err = svc.Approve(other, tk.ID, "ops", "")
	require.NoError(t, err)
	span.End()
	_, err = svc.Approve(ctx, tk.ID, "ops", "") // refused: an error span
	require.Error(t, err)

	spans := exp.GetSpans()
	require.Len(t, spans, 6)
	byName := map[string]tracetest.SpanStub{}
	for _, s := range spans {
		assert.Equal(t, root.TraceID(), s.SpanContext.TraceID(), s.Name)
		assert.Equal(t, tk.ID, attrOf(s, task.AttrTaskID), s.Name)
		assert.Equal(t, "52:54:00:00:00:01", attrOf(s, task.AttrMAC), s.Name)
		assert.Equal(t, "dc1", attrOf(s, task.AttrRegion), s.Name)
		if s.Name != "task "+tk.ID {
			assert.Equal(t, root.SpanID(), s.Parent.SpanID(), "%s is a child of the root", s.Name)
		}
		byName[s.Name] = s
	}
	rootSpan := byName["task "+tk.ID]
	assert.False(t, rootSpan.Parent.IsValid(), "the root has no parent")
	assert.Equal(t, root.SpanID(), rootSpan.SpanContext.SpanID())
	approve := spans[4]
	require.Equal(t, "task approved", approve.Name)
	require.Len(t, approve.Links, 1)
	assert.Equal(t, span.SpanContext().TraceID(), approve.Links[0].SpanContext.TraceID())

	var moves []string
	for _, s := range spans {
		for _, ev := range s.Events {
			if ev.Name == task.SpanEventStatus {
				for _, a := range ev.Attributes {
					if a.Key == task.AttrStatusTo {
						moves = append(moves, a.Value.AsString())
					}
				}
			}
		}
	}
	assert.Equal(t, []string{"pending", "ready", "booting", "pending_approval", "approved"}, moves)
	assert.Equal(t, "Error", spans[5].Status.Code.String(), "the refused approval")
}

// Without a TracerProvider nothing is traced and the task keeps no trace
// context, whatever context the caller has.
func TestUntracedTaskHasNoTraceParent(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	svc := task.NewService(st, task.Config{})
	sc := task.ParseTraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	require.True(t, sc.IsValid())
	ctx := trace.ContextWithRemoteSpanContext(t.Context(), sc)
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:00:00:01", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	assert.Empty(t, tk.Metadata.TraceParent)
	kv, err := st.Get(t.Context(), task.TaskKey(tk.ID, task.FieldMetadata))
	require.NoError(t, err)
	assert.NotContains(t, string(kv.Value), "trace_parent")
}

// A retry is a task of its own, so a trace of its own, whose root links
// to the attempt it retries.
func TestRetryIsATraceLinkedToItsFirstAttempt(t *testing.T) {
	svc, exp := tracedService(t)
	ctx := t.Context()
	first, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:00:00:02", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	_, err = svc.Cancel(ctx, first.ID, "ops", "wrong disk")
	require.NoError(t, err)
	exp.Reset()
	second, err := svc.Retry(ctx, first.ID, "ops")
	require.NoError(t, err)

	firstSC := task.ParseTraceParent(first.Metadata.TraceParent)
	secondSC := task.ParseTraceParent(second.Metadata.TraceParent)
	require.True(t, secondSC.IsValid())
	assert.NotEqual(t, firstSC.TraceID(), secondSC.TraceID())
	got, err := svc.Get(ctx, second.ID)
	require.NoError(t, err)
	assert.Equal(t, second.Metadata.TraceParent, got.Metadata.TraceParent)

	spans := exp.GetSpans()
	require.Len(t, spans, 1)
	root := spans[0]
	assert.Equal(t, "task "+second.ID, root.Name)
	assert.Equal(t, secondSC.SpanID(), root.SpanContext.SpanID())
	assert.False(t, root.Parent.IsValid())
	require.Len(t, root.Links, 1)
	assert.Equal(t, firstSC, root.Links[0].SpanContext)
}
