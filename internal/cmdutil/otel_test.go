package cmdutil

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// Tracing is off unless --otel or OTEL_TRACES_EXPORTER=otlp asks for it,
// and OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED turn it off; what
// it cannot do is a usage error.
func TestTracingDecision(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tt := range []struct {
		name    string
		on      bool
		env     map[string]string
		want    bool
		wantErr string
	}{
		{"off by default", false, nil, false, ""},
		{"an endpoint alone does not turn it on", false, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, false, ""},
		{"--otel", true, nil, true, ""},
		{"OTEL_TRACES_EXPORTER=otlp", false, map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, ""},
		{"OTEL_TRACES_EXPORTER=none wins over --otel", true, map[string]string{"OTEL_TRACES_EXPORTER": "none"}, false, ""},
		{"OTEL_SDK_DISABLED wins", true, map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false, ""},
		{"other exporters refused", true, map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, "only otlp"},
		{"http protocol refused", true, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, false, "only grpc"},
		{"the traces' protocol wins", true, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, true, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tp, stop, err := Tracing(t.Context(), tt.on, "lpmos-test", envOf(tt.env), log)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrUsage)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			defer stop()
			assert.Equal(t, tt.want, tp != nil)
		})
	}
}

// collector is an OTLP/gRPC trace receiver: what a collector receives.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu   sync.Mutex
	reqs []*collectortrace.ExportTraceServiceRequest
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs = append(c.reqs, req)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// With tracing on, spans reach the collector OTEL_EXPORTER_OTLP_ENDPOINT
// names, under the binary's service name unless OTEL_SERVICE_NAME says
// otherwise, at the latest when stop flushes them.
func TestTracingExportsToTheOTLPEndpoint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	col := &collector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, col)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	for _, tt := range []struct{ serviceEnv, want string }{{"", "lpmos-test"}, {"dc1-region", "dc1-region"}} {
		col.mu.Lock()
		col.reqs = nil
		col.mu.Unlock()
		// The exporter reads the standard variables from the environment.
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
		t.Setenv("OTEL_SERVICE_NAME", tt.serviceEnv)
		tp, stop, err := Tracing(t.Context(), true, "lpmos-test", envOf(nil), slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		_, span := tp.Tracer("test").Start(t.Context(), "task 1")
		span.End()
		stop()

		col.mu.Lock()
		var names []string
		var service string
		for _, req := range col.reqs {
			for _, rs := range req.ResourceSpans {
				for _, a := range rs.Resource.Attributes {
					if a.Key == "service.name" {
						service = a.Value.GetStringValue()
					}
				}
				for _, ss := range rs.ScopeSpans {
					for _, s := range ss.Spans {
						names = append(names, s.Name)
					}
				}
			}
		}
		col.mu.Unlock()
		assert.Equal(t, []string{"task 1"}, names)
		assert.Equal(t, tt.want, service)
	}
}
