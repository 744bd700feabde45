// Command lpmosctl drives an LPMOS control plane from a terminal or a
// script, through the typed client package: it creates, lists, approves,
// rejects, cancels and watches install tasks, registers machines and
// powers them through their BMCs, manages auto-approval rules and lists
// regions.
//
//	export LPMOS_URL=http://localhost:8080 LPMOS_TOKEN=...
//	lpmosctl tasks create --region dc1 --os debian --os-version 12 02:00:00:00:00:01
//	lpmosctl tasks list --status pending_approval
//	lpmosctl tasks approve <id>
//	lpmosctl tasks watch <id>
//
// LPMOS_URL and LPMOS_TOKEN (or --url and --token, which win) say where
// and as whom. Tables are for people; -o json prints what scripts parse.
// tasks watch draws a progress bar per task, redrawn in place on a
// terminal, a line per change elsewhere. The exit status says what went
// wrong, so that a script can branch on it without reading the message:
//
//	0 ok, 1 failure, 2 usage (or input the API refused as invalid, 400),
//	3 not found (404), 4 conflict (409/412), 5 auth (401/403),
//	6 unreachable (no answer, or 502/503/504)
//
// "lpmosctl completion bash|zsh" prints a completion script.
//
// It is a thin binary: the HTTP and WebSocket work is the client
// package's; this command only parses the command line and renders the
// answers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run is the whole command: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := newApp(stdout, stderr, getenv)
	err := a.main(ctx, args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if ue, ok := errors.AsType[*usageError](err); !ok || !ue.reported {
		fmt.Fprintln(stderr, "lpmosctl:", err)
	}
	return exitCode(err)
}
