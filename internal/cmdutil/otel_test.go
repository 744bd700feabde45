package cmdutil

import (
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/otlptest"
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

// With tracing on, spans reach the collector OTEL_EXPORTER_OTLP_ENDPOINT
// names, under the binary's service name unless OTEL_SERVICE_NAME says
// otherwise, at the latest when stop flushes them.
func TestTracingExportsToTheOTLPEndpoint(t *testing.T) {
	col := otlptest.Start(t)
	for _, tt := range []struct{ serviceEnv, want string }{{"", "lpmos-test"}, {"dc1-region", "dc1-region"}} {
		col.Reset()
		// The exporter reads the standard variables from the environment.
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", col.Endpoint)
		t.Setenv("OTEL_SERVICE_NAME", tt.serviceEnv)
		tp, stop, err := Tracing(t.Context(), true, "lpmos-test", envOf(nil), slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		_, span := tp.Tracer("test").Start(t.Context(), "task 1")
		span.End()
		stop()
		spans := col.Spans()
		require.Len(t, spans, 1)
		assert.Equal(t, "task 1", spans[0].Name)
		assert.Equal(t, tt.want, spans[0].Service)
	}
}
