package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/task"
)

// The API's error codes (the "code" of its error body), what callers branch
// on besides the status.
const (
	CodeInvalidRequest       = "invalid_request"        // 400: malformed or invalid input; Field names it when known
	CodeUnauthorized         = "unauthorized"           // 401
	CodeForbidden            = "forbidden"              // 403
	CodeNotFound             = "not_found"              // 404
	CodeMethodNotAllowed     = "method_not_allowed"     // 405: the path exists for other methods
	CodeRequestTimeout       = "request_timeout"        // 408
	CodeInvalidTransition    = "invalid_transition"     // 409: the task's status does not allow this
	CodeConflict             = "conflict"               // 409: the task changed (If-Match), or the MAC has an active task
	CodeCapacity             = "capacity"               // 409: too many active tasks; retry once some end
	CodeNotRetryable         = "not_retryable"          // 409: only failed or cancelled tasks can be retried
	CodeAlreadyRetried       = "already_retried"        // 409: the task was retried already
	CodeAttemptsExhausted    = "attempts_exhausted"     // 409: the task was its last allowed attempt
	CodeActiveTask           = "active_task"            // 409: a retry's machine has an active task
	CodeTooLarge             = "too_large"              // 413
	CodeUnsupportedMediaType = "unsupported_media_type" // 415
	CodeRateLimited          = "rate_limited"           // 429
	CodeInternal             = "internal"               // 500
	CodeUnavailable          = "unavailable"            // 503: retry after Retry-After
	CodeIdempotencyKeyReused = "idempotency_key_reused" // 422: the Idempotency-Key was used for another request
)

// codeError is a sentinel that matches every *Error with its code.
type codeError string

func (e codeError) Error() string { return "lpmos: " + string(e) }

// Sentinels to match an *Error with errors.Is by its API code.
var (
	ErrInvalidRequest    error = codeError(CodeInvalidRequest)
	ErrUnauthorized      error = codeError(CodeUnauthorized)
	ErrForbidden         error = codeError(CodeForbidden)
	ErrNotFound          error = codeError(CodeNotFound)
	ErrInvalidTransition error = codeError(CodeInvalidTransition)
	ErrConflict          error = codeError(CodeConflict)
	ErrCapacity          error = codeError(CodeCapacity)
	ErrNotRetryable      error = codeError(CodeNotRetryable)
	ErrAlreadyRetried    error = codeError(CodeAlreadyRetried)
	ErrAttemptsExhausted error = codeError(CodeAttemptsExhausted)
	ErrActiveTask        error = codeError(CodeActiveTask)
	ErrTooLarge          error = codeError(CodeTooLarge)
	ErrRateLimited       error = codeError(CodeRateLimited)
	ErrInternal          error = codeError(CodeInternal)
	ErrUnavailable       error = codeError(CodeUnavailable)
	// ErrIdempotencyKeyReused: see IdempotencyKey.
	ErrIdempotencyKeyReused error = codeError(CodeIdempotencyKeyReused)
)

// taskSentinels are the task service's sentinels an API code stands for,
// so that code written against task.Service branches the same way here.
var taskSentinels = map[string]error{
	CodeInvalidRequest:    task.ErrInvalid,
	CodeNotFound:          task.ErrNotFound,
	CodeInvalidTransition: task.ErrInvalidTransition,
	CodeConflict:          task.ErrConflict,
	CodeNotRetryable:      task.ErrConflict,
	CodeAlreadyRetried:    task.ErrConflict,
	CodeAttemptsExhausted: task.ErrConflict,
	CodeActiveTask:        task.ErrConflict,
}

// Error is a refused request: the HTTP status and the API's error body
// {"error": {"code", "message", "field"}}. Every non-2xx answer comes back
// as one, also from a proxy that answered in its own format (Code is then
// empty and Message holds the start of its body).
type Error struct {
	// StatusCode is the HTTP status, e.g. 404.
	StatusCode int
	// Code is the API's error code (a Code* constant), e.g. "not_found".
	Code string
	// Message is the API's explanation, for a person.
	Message string
	// Field names the input the error is about (a body field such as
	// "target_mac" or "filter.status", or a query parameter), if the API
	// said.
	Field string
	// RetryAfter is the answer's Retry-After, zero if it had none.
	RetryAfter time.Duration
	// Method and Path name the request.
	Method, Path string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d", e.Method, e.Path, e.StatusCode)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Field != "" {
		b.WriteString(" (" + e.Field + ")")
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

// Is matches the sentinel of e's code (ErrNotFound for "not_found", ...)
// and the task service's sentinel it stands for (task.ErrNotFound, ...).
func (e *Error) Is(target error) bool {
	if c, ok := target.(codeError); ok {
		return string(c) == e.Code
	}
	return e.Code != "" && taskSentinels[e.Code] == target
}

// IsCode reports whether err is, or wraps, an *Error with that API code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// AsError returns the *Error err is or wraps, if any.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

// apiError is the error object of the API's bodies, in an error answer or
// in a batch or bulk item.
type apiError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

// itemError turns a batch or bulk item's error object into an *Error with
// the status a single call would have been answered with.
func itemError(method, path string, ae *apiError) error {
	if ae == nil {
		return nil
	}
	return &Error{StatusCode: codeStatus[ae.Code], Code: ae.Code, Message: ae.Message, Field: ae.Field, Method: method, Path: path}
}

// codeStatus is each code's HTTP status, for the errors of batch items,
// which carry no status of their own.
var codeStatus = map[string]int{
	CodeInvalidRequest:       http.StatusBadRequest,
	CodeUnauthorized:         http.StatusUnauthorized,
	CodeForbidden:            http.StatusForbidden,
	CodeNotFound:             http.StatusNotFound,
	CodeRequestTimeout:       http.StatusRequestTimeout,
	CodeInvalidTransition:    http.StatusConflict,
	CodeConflict:             http.StatusConflict,
	CodeCapacity:             http.StatusConflict,
	CodeTooLarge:             http.StatusRequestEntityTooLarge,
	CodeUnsupportedMediaType: http.StatusUnsupportedMediaType,
	CodeRateLimited:          http.StatusTooManyRequests,
	CodeInternal:             http.StatusInternalServerError,
	CodeUnavailable:          http.StatusServiceUnavailable,
}

// readError reads a non-2xx answer into an *Error, reading at most
// maxErrorBytes of its body.
func readError(method, path string, resp *http.Response) error {
	e := &Error{StatusCode: resp.StatusCode, Method: method, Path: path, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBytes))
	if err != nil && len(data) == 0 {
		e.Message = fmt.Sprintf("%s (reading the body: %v)", http.StatusText(resp.StatusCode), err)
		return e
	}
	var body struct {
		Error *apiError `json:"error"`
	}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/json" && json.Unmarshal(data, &body) == nil && body.Error != nil {
		e.Code, e.Message, e.Field = body.Error.Code, body.Error.Message, body.Error.Field
		return e
	}
	// Not the API's answer (a proxy's, say): keep a readable start of it.
	e.Message = http.StatusText(resp.StatusCode)
	if s := strings.TrimSpace(string(data)); s != "" {
		if len(s) > 200 {
			s = s[:200] + "..."
		}
		e.Message += ": " + strings.ToValidUTF8(s, "?")
	}
	return e
}

// retryAfter parses a Retry-After value: delay seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(min(n, 1<<31)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
