package region

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/lpmos/lpmos/task"
)

// OpenTelemetry tracing (Config.TracerProvider). Not to be confused with
// the machines' boot traces (trace.go), which are kept in the store for
// operators whatever the tracing: these spans go to a tracing backend.
//
// The region's spans join their task's trace (task.Metadata.TraceParent):
//
//	region prepare                         checking the boot files, marking the task ready
//	region boot script                     serving a machine's iPXE script (lpmos.script: which kind)
//	POST /api/v1/agent/report, ...         an agent's call, a child of the traceparent it sent
//
// and the task moves they make are spans of the task service beneath
// them ("task <event>").

// TracerName is the instrumentation scope of the region's spans.
const TracerName = "github.com/lpmos/lpmos/region"

// Span attributes of the region's spans besides the task's.
const (
	attrScript     = attribute.Key("lpmos.script")
	attrHTTPMethod = attribute.Key("http.request.method")
	attrHTTPRoute  = attribute.Key("http.route")
	attrHTTPStatus = attribute.Key("http.response.status_code")
)

// agentTraceParent is the trace context an agent of t carries on its
// kernel line (lpmos.traceparent=): the task's, written out anew so
// that only a well-formed value reaches the script; empty if it has none.
func agentTraceParent(ctx context.Context, t *task.Task) string {
	sc := task.ParseTraceParent(t.Metadata.TraceParent)
	if !sc.IsValid() {
		return ""
	}
	return task.FormatTraceParent(oteltrace.ContextWithRemoteSpanContext(ctx, sc))
}

// agentSpan starts the span of an agent's call that carries a valid
// traceparent header (the agent's kernel line had one), as a server span
// beneath it; a call without one gets no span of its own (the task
// moves it makes still join the task's trace). The returned function
// ends the span with the call's outcome.
func (r *Region) agentSpan(req *http.Request) (*http.Request, func(status int, who *caller)) {
	sc := task.ParseTraceParent(req.Header.Get("traceparent"))
	if !sc.IsValid() {
		return req, func(int, *caller) {}
	}
	route := req.Pattern
	ctx, span := r.tracer.Start(oteltrace.ContextWithRemoteSpanContext(req.Context(), sc), route,
		oteltrace.WithSpanKind(oteltrace.SpanKindServer),
		oteltrace.WithAttributes(attrHTTPMethod.String(req.Method), attrHTTPRoute.String(route), task.AttrRegion.String(r.cfg.RegionID)))
	return req.WithContext(ctx), func(status int, who *caller) {
		span.SetAttributes(attrHTTPStatus.Int(status))
		if !who.mac.IsZero() {
			span.SetAttributes(task.AttrMAC.String(who.mac.String()))
		}
		if who.taskID != "" {
			span.SetAttributes(task.AttrTaskID.String(who.taskID))
		}
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
		span.End()
	}
}
