// Package cmdtest runs the example binaries as real processes for their
// tests: it builds the binary once per test binary, starts it with
// arguments, and reports how it exited and what it printed. It is how the
// binaries' command-line contract (exit statuses, signals, output) is
// tested.
package cmdtest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/syncbuf"
)

// Main builds the package in the current directory (the one under test)
// into a temporary directory, sets *bin to its path and runs the tests.
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(cmdtest.Main(m, &bin)) }
func Main(m *testing.M, bin *string) int {
	dir, err := os.MkdirTemp("", "cmdtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cmdtest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cmdtest:", err)
		return 1
	}
	*bin = filepath.Join(dir, filepath.Base(wd))
	if out, err := exec.Command("go", "build", "-o", *bin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "cmdtest: go build: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// Process is a started binary.
type Process struct {
	t      testing.TB
	cmd    *exec.Cmd
	out    syncbuf.Buffer // stdout and stderr, interleaved
	done   chan struct{}
	waited error
}

// Start starts bin with args; env entries are added to the environment.
// The process is killed when the test ends if it is still running.
func Start(t testing.TB, bin string, env []string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	require.NoError(t, p.cmd.Start())
	go func() {
		p.waited = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), p.out.String())
		}
	})
	return p
}

// Output is what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(sig))
}

// Wait waits at most timeout for the process to exit and returns its exit
// status; the test fails if it does not exit in time or dies of a signal.
func (p *Process) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		require.FailNow(p.t, "the process did not exit in time", "after %s; output:\n%s", timeout, p.Output())
	}
	var ee *exec.ExitError
	if errors.As(p.waited, &ee) {
		ws, ok := ee.Sys().(syscall.WaitStatus)
		require.True(p.t, ok && ws.Exited(), "the process did not exit normally: %v", p.waited)
		return ws.ExitStatus()
	}
	require.NoError(p.t, p.waited)
	return 0
}

// Run starts bin with args and waits at most timeout for it to exit; it
// returns the exit status and the output.
func Run(t testing.TB, timeout time.Duration, bin string, args ...string) (int, string) {
	t.Helper()
	p := Start(t, bin, nil, args...)
	code := p.Wait(timeout)
	return code, p.Output()
}

// FreeAddr is a loopback address with a port nobody listened on a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// Occupied listens on a loopback port for the rest of the test and returns
// its address, for checking that a binary told to listen there fails.
func Occupied(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// WaitOK waits until url answers 200 OK, for at most 30 s.
func (p *Process) WaitOK(url string) {
	p.t.Helper()
	require.Eventually(p.t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "%s never answered 200; output:\n%s", url, p.Output())
}
