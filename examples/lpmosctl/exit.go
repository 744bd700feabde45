package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"

	"github.com/lpmos/lpmos/client"
)

// The exit statuses, a contract with scripts: keep them stable.
const (
	exitOK          = 0
	exitFailure     = 1 // anything else, e.g. a 500, or a watched task that did not complete
	exitUsage       = 2 // bad command line, or input the API refused as invalid (400)
	exitNotFound    = 3 // 404: no such task, or a filter that selects none
	exitConflict    = 4 // 409/412: the task's status does not allow it, it changed since --revision, the MAC is busy
	exitAuth        = 5 // 401/403: no or a bad token, or a role that may not do it
	exitUnreachable = 6 // no answer (connection refused, DNS, timeout) or 502/503/504: retry later
)

// exitCodesHelp documents the statuses in -h.
const exitCodesHelp = `Exit status:
  0  success
  1  failure (e.g. a server error; watch: a watched task did not complete)
  2  usage: a bad command line, or input the API refused as invalid (400)
  3  not found (404): no such task, or a filter that selects none
  4  conflict (409, 412): the task's status does not allow it, it changed
     since --revision, or the machine already has an active task
  5  authentication or permission (401, 403)
  6  unreachable: no answer (refused, DNS, timeout) or 502, 503, 504
`

// usageError is a bad command line. reported says its message (and the
// usage) were printed already, by the flag package.
type usageError struct {
	err      error
	reported bool
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usagef is a usage error.
func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// exitCode maps an error to the exit status scripts branch on.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	if e, ok := client.AsError(err); ok {
		return statusExit(e.StatusCode)
	}
	var (
		ue2 *url.Error
		op  *net.OpError
		dns *net.DNSError
	)
	if errors.As(err, &ue2) || errors.As(err, &op) || errors.As(err, &dns) {
		return exitUnreachable
	}
	return exitFailure
}

// statusExit maps an HTTP status of a refusal to an exit status.
func statusExit(code int) int {
	switch code {
	case http.StatusBadRequest:
		return exitUsage
	case http.StatusNotFound:
		return exitNotFound
	case http.StatusConflict, http.StatusPreconditionFailed:
		return exitConflict
	case http.StatusUnauthorized, http.StatusForbidden:
		return exitAuth
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return exitUnreachable
	}
	return exitFailure
}
