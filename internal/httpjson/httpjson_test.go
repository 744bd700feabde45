package httpjson_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

func TestFrom(t *testing.T) {
	own := httpjson.Errorf(http.StatusTeapot, "teapot", "short and stout")
	tests := []struct {
		name   string
		err    error
		status int
		code   string
		field  string
	}{
		{"validation error names its field", fmt.Errorf("create: %w", &task.ValidationError{Field: "target_mac", Reason: "bad"}), 400, httpjson.CodeInvalidRequest, "target_mac"},
		{"invalid", fmt.Errorf("x: %w", task.ErrInvalid), 400, httpjson.CodeInvalidRequest, ""},
		{"not found", fmt.Errorf("x: %w", task.ErrNotFound), 404, httpjson.CodeNotFound, ""},
		{"invalid transition", fmt.Errorf("x: %w", &task.TransitionError{From: task.StatusPending, Event: task.EventApproved}), 409, httpjson.CodeInvalidTransition, ""},
		{"conflict", fmt.Errorf("x: %w", task.ErrConflict), 409, httpjson.CodeConflict, ""},
		{"active task", &task.ActiveTaskError{MAC: lpmos.MAC{}, TaskID: "t"}, 409, httpjson.CodeConflict, ""},
		{"retry refused", fmt.Errorf("x: %w", &task.RetryError{Reason: task.RetryAttemptsExhausted, Message: "no attempts left"}), 409, httpjson.CodeAttemptsExhausted, ""},
		{"body too large", fmt.Errorf("x: %w", &http.MaxBytesError{Limit: 10}), 413, httpjson.CodeTooLarge, ""},
		{"own error, wrapped", fmt.Errorf("x: %w", own), http.StatusTeapot, "teapot", ""},
		{"store unavailable", fmt.Errorf("create task: %w", fmt.Errorf("txn: %w (etcdserver: leader changed)", store.ErrUnavailable)), 503, httpjson.CodeUnavailable, ""},
		{"anything else", errors.New("disk on fire"), 500, httpjson.CodeInternal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := httpjson.From(tt.err)
			assert.Equal(t, tt.status, e.Status)
			assert.Equal(t, tt.code, e.Code)
			assert.Equal(t, tt.field, e.Field)
			assert.NotEmpty(t, e.Message)
		})
	}
	assert.Equal(t, "internal error", httpjson.From(errors.New("secret detail")).Message, "a 500 does not leak its cause")
}

func TestWriteErrorUnavailableSaysWhenToRetry(t *testing.T) {
	w := httptest.NewRecorder()
	got := httpjson.WriteError(w, fmt.Errorf("get: %w", store.ErrUnavailable))
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Equal(t, "2", w.Header().Get("Retry-After"))
	assert.Equal(t, httpjson.CodeUnavailable, got.Code)
	assert.NotContains(t, w.Body.String(), "store: unavailable", "the cause stays in the server's log")
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	got := httpjson.WriteError(w, &task.ValidationError{Field: "os_type", Reason: "unknown"})
	assert.Equal(t, http.StatusBadRequest, got.Status)
	assert.Equal(t, http.StatusBadRequest, w.Code)
	for h, v := range map[string]string{
		"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
		"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
	} {
		assert.Equal(t, v, w.Header().Get(h), h)
	}
	assert.JSONEq(t, `{"error":{"code":"invalid_request","message":"invalid request: os_type: unknown","field":"os_type"}}`, w.Body.String())

	// A 401 carries its challenge, by default a bare Bearer.
	w = httptest.NewRecorder()
	httpjson.WriteError(w, httpjson.Errorf(http.StatusUnauthorized, httpjson.CodeUnauthorized, "who?"))
	assert.Equal(t, "Bearer", w.Header().Get("WWW-Authenticate"))
	assert.JSONEq(t, `{"error":{"code":"unauthorized","message":"who?"}}`, w.Body.String(), "no field when none is known")
	w = httptest.NewRecorder()
	httpjson.WriteError(w, &httpjson.Error{Status: http.StatusUnauthorized, Code: httpjson.CodeUnauthorized, Message: "who?", Challenge: `Bearer realm="x"`})
	assert.Equal(t, `Bearer realm="x"`, w.Header().Get("WWW-Authenticate"))
}

func TestDecode(t *testing.T) {
	type body struct {
		Name string `json:"name"`
	}
	tests := []struct {
		name        string
		contentType string
		body        string
		want        string // the decoded name; or the error code
		status      int    // of the error, 0 if none
	}{
		{"ok", "application/json", `{"name":"a"}`, "a", 0},
		{"with charset", "application/json; charset=utf-8", `{"name":"b"}`, "b", 0},
		{"trailing space", "application/json", "{\"name\":\"c\"}\n ", "c", 0},
		{"wrong type", "text/plain", `{"name":"a"}`, httpjson.CodeUnsupportedMediaType, 415},
		{"no type", "", `{"name":"a"}`, httpjson.CodeUnsupportedMediaType, 415},
		{"malformed", "application/json", `{"name":`, httpjson.CodeInvalidRequest, 400},
		{"unknown field", "application/json", `{"name":"a","colour":"blue"}`, httpjson.CodeInvalidRequest, 400},
		{"two values", "application/json", `{"name":"a"} {}`, httpjson.CodeInvalidRequest, 400},
		{"trailing garbage", "application/json", `{"name":"a"} x`, httpjson.CodeInvalidRequest, 400},
		{"not an object", "application/json", `[1]`, httpjson.CodeInvalidRequest, 400},
		{"too large", "application/json", `{"name":"` + strings.Repeat("x", 100) + `"}`, httpjson.CodeTooLarge, 413},
		{"too large after the value", "application/json", `{"name":"a"}` + strings.Repeat(" ", 100), httpjson.CodeTooLarge, 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tt.body))
			if tt.contentType != "" {
				r.Header.Set("Content-Type", tt.contentType)
			}
			var v body
			err := httpjson.Decode(httptest.NewRecorder(), r, 64, &v)
			if tt.status == 0 {
				require.NoError(t, err)
				assert.Equal(t, tt.want, v.Name)
				return
			}
			e := httpjson.From(err)
			assert.Equal(t, tt.status, e.Status, "%v", err)
			assert.Equal(t, tt.want, e.Code)
		})
	}
}

// timedOutBody is a request body whose read hit the server's deadline, as
// a connection's read does when a client trickles its body.
type timedOutBody struct{}

func (timedOutBody) Read([]byte) (int, error) { return 0, os.ErrDeadlineExceeded }

func TestDecodeBodyTimeoutIs408(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/", io.MultiReader(strings.NewReader(`{"na`), timedOutBody{}))
	r.Header.Set("Content-Type", "application/json")
	var v struct{ Name string }
	e := httpjson.From(httpjson.Decode(httptest.NewRecorder(), r, 64, &v))
	assert.Equal(t, http.StatusRequestTimeout, e.Status)
	assert.Equal(t, httpjson.CodeRequestTimeout, e.Code)
}

func TestBearerToken(t *testing.T) {
	for header, want := range map[string]string{
		"Bearer abc":    "abc",
		"bearer abc ":   "abc",
		"BEARER  abc":   "abc",
		"Basic abc":     "",
		"Bearer":        "",
		"":              "",
		"Token abc def": "",
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		assert.Equal(t, want, httpjson.BearerToken(r), "%q", header)
	}
}

// The body decodes as the wire shape the agent and the dashboard read.
func TestBodyShape(t *testing.T) {
	data, err := json.Marshal(httpjson.Body{Error: &httpjson.Error{Status: 409, Code: "conflict", Message: "m", Field: "f", Challenge: "c"}})
	require.NoError(t, err)
	assert.JSONEq(t, `{"error":{"code":"conflict","message":"m","field":"f"}}`, string(data), "status and challenge are not in the body")
}
