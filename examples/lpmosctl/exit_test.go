package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/trace"
)

func TestExitCode(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"none", nil, exitOK},
		{"usage", usagef("bad"), exitUsage},
		{"usage wrapped", fmt.Errorf("x: %w", usagef("bad")), exitUsage},
		{"invalid input", &client.Error{StatusCode: 400, Code: client.CodeInvalidRequest}, exitUsage},
		{"not found", &client.Error{StatusCode: 404, Code: client.CodeNotFound}, exitNotFound},
		{"conflict", &client.Error{StatusCode: 409, Code: client.CodeConflict}, exitConflict},
		{"invalid transition", fmt.Errorf("bulk: %w", &client.Error{StatusCode: 409, Code: client.CodeInvalidTransition}), exitConflict},
		{"precondition failed", &client.Error{StatusCode: 412}, exitConflict},
		{"unauthorized", &client.Error{StatusCode: 401, Code: client.CodeUnauthorized}, exitAuth},
		{"forbidden", &client.Error{StatusCode: 403, Code: client.CodeForbidden}, exitAuth},
		{"proxy without a backend", &client.Error{StatusCode: 502}, exitUnreachable},
		{"unavailable", &client.Error{StatusCode: 503, Code: client.CodeUnavailable}, exitUnreachable},
		{"rate limited", &client.Error{StatusCode: 429, Code: client.CodeRateLimited}, exitFailure},
		{"internal", &client.Error{StatusCode: 500, Code: client.CodeInternal}, exitFailure},
		{"refused", &url.Error{Op: "Get", URL: "http://x", Err: refused}, exitUnreachable},
		{"websocket dial", fmt.Errorf("GET /ws: %w", refused), exitUnreachable},
		{"no such host", &net.DNSError{Err: "no such host", Name: "cp.invalid"}, exitUnreachable},
		{"other", errors.New("3 of 3 tasks did not complete"), exitFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, exitCode(tc.err))
		})
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		pos     []string
		out     string
		revised bool
	}{
		{[]string{"a", "-o", "json", "b"}, []string{"a", "b"}, "json", false},
		{[]string{"-o", "json", "a"}, []string{"a"}, "json", false},
		{[]string{"a", "--revised", "--", "-o", "b"}, []string{"a", "-o", "b"}, "table", true},
		{nil, nil, "table", false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		out := fs.String("o", "table", "")
		revised := fs.Bool("revised", false, "")
		pos, err := parseInterspersed(fs, tc.args)
		require.NoError(t, err, tc.args)
		assert.Equal(t, tc.pos, pos, tc.args)
		assert.Equal(t, tc.out, *out, tc.args)
		assert.Equal(t, tc.revised, *revised, tc.args)
	}
}

func TestBarAndPercent(t *testing.T) {
	assert.Equal(t, "[..........]", bar(0, 10))
	assert.Equal(t, "[####......]", bar(45, 10))
	assert.Equal(t, "[##########]", bar(100, 10))
	assert.Equal(t, 100, percent("completed", nil), "a completed task is full whatever it reported last")
	assert.Equal(t, 0, percent("pending", nil))
}

func TestPrintable(t *testing.T) {
	assert.Equal(t, "a?[2Jb?c", printable("a\x1b[2Jb\tc"))
	assert.Equal(t, "héllo", printable("héllo"))
	assert.Equal(t, "hé", truncate("héllo", 2))
	assert.Equal(t, "ab", truncate("ab", 5))
}

// The environment gives the defaults; flags, before or after the command,
// win over it.
func TestFlagsOverEnvironment(t *testing.T) {
	env := map[string]string{"LPMOS_URL": "http://env:1", "LPMOS_TOKEN": "env-token"}
	for _, tc := range []struct {
		args       []string
		url, token string
	}{
		{[]string{"version"}, "http://env:1", "env-token"},
		{[]string{"--url", "http://flag:2", "version"}, "http://flag:2", "env-token"},
		{[]string{"version", "--token", "flag-token"}, "http://env:1", "flag-token"},
	} {
		a := newApp(new(discard), new(discard), func(k string) string { return env[k] })
		require.NoError(t, a.main(context.Background(), tc.args))
		assert.Equal(t, tc.url, a.g.url, tc.args)
		assert.Equal(t, tc.token, a.g.token, tc.args)
	}
	a := newApp(new(discard), new(discard), func(string) string { return "" })
	assert.Equal(t, defaultURL, a.g.url)
}

type discard struct{}

func (*discard) Write(p []byte) (int, error) { return len(p), nil }

// --follow prints each event once: a late region's older event and a
// folded repeat are new, an event read again is not.
func TestNewTraceEvents(t *testing.T) {
	at := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	discover := trace.Event{Time: at, Region: "dc1", Kind: trace.KindDHCP, Outcome: trace.OutcomeOK, Message: "DISCOVER → OFFER"}
	script := trace.Event{Time: at.Add(2 * time.Second), Region: "dc1", Kind: trace.KindScript, Outcome: trace.OutcomeOK, Message: "agent script"}
	late := trace.Event{Time: at.Add(time.Second), Region: "dc2", Kind: trace.KindDHCP, Outcome: trace.OutcomeIgnored, Message: "DISCOVER ignored"}
	folded := discover
	folded.Time, folded.Count = at.Add(3*time.Second), 2
	var n newEvents
	steps := []struct {
		name string
		read []trace.Event
		want []trace.Event
	}{
		{"first read", []trace.Event{discover, script}, []trace.Event{discover, script}},
		{"the same again", []trace.Event{discover, script}, nil},
		{"another region's older event", []trace.Event{discover, late, script}, []trace.Event{late}},
		{"a repeat folded in", []trace.Event{late, script, folded}, []trace.Event{folded}},
	}
	for _, s := range steps {
		assert.Equal(t, s.want, n.of(s.read), s.name)
	}
}
