package cmdutil

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// OtelFlag registers --otel: trace tasks with OpenTelemetry (Tracing).
func OtelFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("otel", false, "trace tasks with OpenTelemetry, exported over OTLP/gRPC as the standard OTEL_* variables say "+
		"(OTEL_EXPORTER_OTLP_ENDPOINT, default localhost:4317); also on when OTEL_TRACES_EXPORTER=otlp")
}

// Tracing decides whether the binary traces, and if so builds the tracer
// provider the libraries are given (their Config.TracerProvider); stop
// flushes and ends it. It is on when on (--otel) is set or
// OTEL_TRACES_EXPORTER is otlp, and off, even with --otel, when
// OTEL_TRACES_EXPORTER is none or OTEL_SDK_DISABLED is true: the
// provider is then nil, which the libraries take as no tracing at all.
//
// The exporter is OTLP over gRPC, configured by the standard variables
// (OTEL_EXPORTER_OTLP_ENDPOINT or _TRACES_ENDPOINT, _HEADERS, _TIMEOUT,
// _COMPRESSION, _CERTIFICATE, _INSECURE); other exporters and protocols
// are refused. The resource is service (overridden by OTEL_SERVICE_NAME)
// with OTEL_RESOURCE_ATTRIBUTES and the host name; the sampler follows
// OTEL_TRACES_SAMPLER (default: parent-based, always on) and the batching
// OTEL_BSP_*. Nothing global is set.
func Tracing(ctx context.Context, on bool, service string, lookupEnv func(string) (string, bool), log *slog.Logger) (tp trace.TracerProvider, stop func(), err error) {
	env := func(k string) string { v, _ := lookupEnv(k); return strings.TrimSpace(v) }
	noop := func() {}
	if strings.EqualFold(env("OTEL_SDK_DISABLED"), "true") {
		if on {
			log.Warn("tracing is off: OTEL_SDK_DISABLED=true overrides --otel")
		}
		return nil, noop, nil
	}
	switch exp := strings.ToLower(env("OTEL_TRACES_EXPORTER")); exp {
	case "":
	case "otlp":
		on = true
	case "none":
		if on {
			log.Warn("tracing is off: OTEL_TRACES_EXPORTER=none overrides --otel")
		}
		return nil, noop, nil
	default:
		return nil, nil, Usagef("OTEL_TRACES_EXPORTER=%q: only otlp (or none) is supported", exp)
	}
	if !on {
		return nil, noop, nil
	}
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := env(k); p != "" {
			if p != "grpc" {
				return nil, nil, Usagef("%s=%q: only grpc is supported", k, p)
			}
			break // the traces' own setting wins
		}
	}
	exporter, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("OpenTelemetry exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName(service)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
		resource.WithHost(), resource.WithTelemetrySDK())
	if errors.Is(err, resource.ErrPartialResource) {
		log.Warn("OpenTelemetry resource is partial", "err", err)
	} else if err != nil {
		return nil, nil, Usagef("OpenTelemetry resource: %v", err)
	}
	provider := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	log.Info("tracing with OpenTelemetry", "service", serviceName(res, service))
	return provider, func() {
		// Flush what is left, without holding up the exit for long.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := provider.Shutdown(ctx); err != nil {
			log.Warn("OpenTelemetry shutdown", "err", err)
		}
	}, nil
}

func serviceName(res *resource.Resource, fallback string) string {
	if v, ok := res.Set().Value(semconv.ServiceNameKey); ok {
		return v.AsString()
	}
	return fallback
}
