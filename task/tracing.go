package task

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Tracing (OpenTelemetry): a task is one trace. Create starts its root
// span, "task <id>", and keeps the span's W3C trace context in the
// task's metadata (Metadata.TraceParent); every later move of the task,
// by whichever process, is a span in that trace ("task <event>"), with
// the status it moved to as a span event. TraceContext hands the
// context to the region's own spans, and the region hands it to the
// agent on its kernel command line. With the default no-op
// TracerProvider (Config.TracerProvider unset) nothing is recorded and
// no trace context is stored.

// TracerName is the instrumentation scope of the task service's spans.
const TracerName = "github.com/lpmos/lpmos/task"

// Span attributes of the spans of a task, in every package.
const (
	AttrTaskID = attribute.Key("task.id")
	AttrMAC    = attribute.Key("task.mac")
	AttrRegion = attribute.Key("task.region")
	AttrEvent  = attribute.Key("task.event")
	// SpanEventStatus is the span event of a status transition, with
	// AttrStatusFrom and AttrStatusTo.
	SpanEventStatus = "status"
	AttrStatusFrom  = attribute.Key("task.status.from")
	AttrStatusTo    = attribute.Key("task.status.to")
)

// traceparent is the W3C Trace Context header and carrier key.
const traceparent = "traceparent"

var propagator = propagation.TraceContext{}

// SpanAttrs are the attributes that say which task a span is about.
func SpanAttrs(t *Task) []attribute.KeyValue {
	return []attribute.KeyValue{
		AttrTaskID.String(t.ID),
		AttrMAC.String(t.Metadata.TargetMAC.String()),
		AttrRegion.String(t.Metadata.RegionID),
	}
}

// ParseTraceParent reads a W3C traceparent value; the span context is
// invalid if the value is not one.
func ParseTraceParent(v string) trace.SpanContext {
	if v == "" {
		return trace.SpanContext{}
	}
	ctx := propagator.Extract(context.Background(), propagation.MapCarrier{traceparent: v})
	return trace.SpanContextFromContext(ctx)
}

// FormatTraceParent is the W3C traceparent value of the span context in
// ctx; empty if it has none.
func FormatTraceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c[traceparent]
}

// TraceContext returns ctx with the task's trace context as the parent
// of the spans started from it, so that they join the task's trace. A
// ctx whose span is in the task's trace already is returned as it is,
// and so is ctx for a task without a trace context (created with
// tracing off).
func TraceContext(ctx context.Context, t *Task) context.Context {
	sc := ParseTraceParent(t.Metadata.TraceParent)
	if !sc.IsValid() {
		return ctx
	}
	if cur := trace.SpanContextFromContext(ctx); cur.IsValid() && cur.TraceID() == sc.TraceID() {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// StartTaskSpan starts a span of t's trace (see TraceContext) named name,
// with the task's attributes. A span ctx carried from another trace (an
// operator's tool calling the API) is linked to it. A task created
// untraced (no Metadata.TraceParent) stays so: its span is only started
// beneath a span ctx carries, and otherwise it is ctx's non-recording
// one, so that a task is a trace or nothing, decided once at its root.
func StartTaskSpan(ctx context.Context, tracer trace.Tracer, t *Task, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if t.Metadata.TraceParent == "" && !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx)
	}
	opts = append(opts, trace.WithAttributes(SpanAttrs(t)...))
	parent := TraceContext(ctx, t)
	if cur := trace.SpanContextFromContext(ctx); cur.IsValid() && !cur.Equal(trace.SpanContextFromContext(parent)) {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: cur}))
	}
	return tracer.Start(parent, name, opts...)
}

// tracerOf is the service's tracer: the configured provider's, or a
// no-op one.
func tracerOf(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer(TracerName)
}

// statusEvent records a status transition on span.
func statusEvent(span trace.Span, from, to Status) {
	if from == to || !span.IsRecording() {
		return
	}
	span.AddEvent(SpanEventStatus, trace.WithAttributes(AttrStatusFrom.String(string(from)), AttrStatusTo.String(string(to))))
}

// endSpan ends a span of a service call, with its error if it failed.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
