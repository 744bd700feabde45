// Package httpjson is the JSON-over-HTTP layer the control plane's REST API
// and the region's agent API share, so that both speak one error contract:
// the error body {"error": {"code", "message", "field"}}, one mapping of
// the task service's sentinel errors to a status and a code, one strict
// request decoder, JSON answers with the same security headers, and bearer
// token parsing.
//
// It knows HTTP and the task and store errors, nothing of routes, roles or stores:
// which endpoints exist and who may call them stays with the two APIs.
package httpjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// The error codes, what clients branch on besides the status.
const (
	CodeInvalidRequest       = "invalid_request"           // 400: malformed or invalid input; Field names it when known
	CodeUnauthorized         = "unauthorized"              // 401
	CodeForbidden            = "forbidden"                 // 403
	CodeNotFound             = "not_found"                 // 404
	CodeMethodNotAllowed     = "method_not_allowed"        // 405: the path exists for other methods (Allow lists them)
	CodeRequestTimeout       = "request_timeout"           // 408: the body did not arrive in time
	CodeInvalidTransition    = "invalid_transition"        // 409: the task's status does not allow this
	CodeConflict             = "conflict"                  // 409: the task changed under the caller; re-read
	CodeCapacity             = "capacity"                  // 409: too many active tasks (in all or in the region); retry once some end
	CodeNotRetryable         = task.RetryNotRetryable      // 409: only failed or cancelled tasks can be retried
	CodeAlreadyRetried       = task.RetryAlreadyRetried    // 409: the task was retried already
	CodeAttemptsExhausted    = task.RetryAttemptsExhausted // 409: the task was its last allowed attempt
	CodeActiveTask           = task.RetryActiveTask        // 409: a retry's machine has an active task
	CodeTooLarge             = "too_large"                 // 413
	CodeUnsupportedMediaType = "unsupported_media_type"    // 415
	CodeRateLimited          = "rate_limited"              // 429
	CodeInternal             = "internal"                  // 500; the message never says more
	CodeUnavailable          = "unavailable"               // 503: retry after Retry-After (the store is electing a leader, or out of reach)
)

// UnavailableRetryAfter is the Retry-After of a 503 for an unavailable
// store: an etcd leader election takes about a second or two.
const UnavailableRetryAfter = 2 * time.Second

// Error is a refused request: the status it is answered with and the
// body's error object. Handlers return it (or any error, mapped by From).
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// Challenge is the WWW-Authenticate value of a 401 (default "Bearer").
	Challenge string `json:"-"`
	// RetryAfter, when positive, is sent as Retry-After (whole seconds).
	RetryAfter time.Duration `json:"-"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Body is the JSON body of every refused request.
type Body struct {
	Error *Error `json:"error"`
}

// From maps an error to its answer, in one place for both APIs. An *Error
// anywhere in the chain is answered as is; the task service's sentinels
// get their status and code; an unavailable store is a 503 with
// Retry-After (the request may succeed later; for a create, retry it with
// the same Idempotency-Key); anything else is a 500 whose message hides
// the cause (the caller logs it).
func From(err error) *Error {
	var e *Error
	var ve *task.ValidationError
	var mbe *http.MaxBytesError
	var re *task.RetryError
	switch {
	case errors.As(err, &e):
		return e
	case errors.As(err, &re):
		return &Error{Status: http.StatusConflict, Code: re.Reason, Message: err.Error()}
	case errors.As(err, &ve):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidRequest, Message: err.Error(), Field: ve.Field}
	case errors.Is(err, task.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalidRequest, Message: err.Error()}
	case errors.Is(err, task.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: err.Error()}
	case errors.Is(err, task.ErrInvalidTransition):
		return &Error{Status: http.StatusConflict, Code: CodeInvalidTransition, Message: err.Error()}
	case errors.Is(err, task.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: err.Error()}
	case errors.As(err, &mbe):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: fmt.Sprintf("request body larger than %d bytes", mbe.Limit)}
	case errors.Is(err, task.ErrFenced):
		// A region process deposed as its region's leader: the machine
		// retries and reaches the new leader.
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "this region process no longer leads its region; retry", RetryAfter: time.Second}
	case errors.Is(err, store.ErrUnavailable):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: "the store is unavailable for a moment; retry", RetryAfter: UnavailableRetryAfter}
	}
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error"}
}

// WriteJSON answers with v as JSON. API answers are data for a program,
// never a document for a browser to sniff, render, frame or cache.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers with err mapped by From, and returns the mapping so
// that the caller can log what a 500 hides.
func WriteError(w http.ResponseWriter, err error) *Error {
	e := From(err)
	if e.Status == http.StatusUnauthorized {
		challenge := e.Challenge
		if challenge == "" {
			challenge = "Bearer"
		}
		w.Header().Set("WWW-Authenticate", challenge)
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
	}
	WriteJSON(w, e.Status, Body{Error: e})
	return e
}

// Decode reads a JSON request body strictly: Content-Type
// application/json, at most limit bytes, no unknown fields, one value and
// nothing after it. Its errors are *Error (408 when the body does not
// arrive before the server's read deadline), or an *http.MaxBytesError
// (which From maps to 413).
func Decode(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return Errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMediaType, "Content-Type must be application/json")
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	var mbe *http.MaxBytesError
	if err := dec.Decode(v); err != nil {
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The server's body read deadline (a client trickling its
			// body): not malformed, just too slow.
			return Errorf(http.StatusRequestTimeout, CodeRequestTimeout, "request body not received in time")
		}
		return Errorf(http.StatusBadRequest, CodeInvalidRequest, "malformed JSON body: %v", err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		if errors.As(err, &mbe) {
			return err
		}
		return Errorf(http.StatusBadRequest, CodeInvalidRequest, "malformed JSON body: trailing data after the value")
	}
	return nil
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header (the scheme in any case), or "" if there is none.
func BearerToken(r *http.Request) string {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}
