package redfishsim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// QEMU is a Backend that runs a QEMU virtual machine and drives it over
// QMP on a unix socket:
//
//   - PowerOn starts QEMU paused (-S) with the QMP socket, connects, and
//     sends "cont". QMP cannot change the boot device of a running
//     machine, so the boot override is applied when the machine starts:
//     Command gets it and puts it into QEMU's arguments (e.g. -boot
//     order=n for "Pxe").
//   - PowerState is On while QEMU runs (QMP "query-status"); a guest
//     that powers itself off ends QEMU, which is Off.
//   - PowerOff sends "system_powerdown" (graceful: an ACPI power button
//     press, which the guest may ignore) or "quit" (forced), and waits for
//     QEMU to exit; if the context ends first, QEMU is killed.
//
// Close stops QEMU. A QEMU value is for one machine and one test.
type QEMU struct {
	// Command returns QEMU's argv (binary first) for a start that boots
	// from boot ("Pxe", "Hdd" or "" for no override). QEMU adds the QMP
	// socket and -S.
	Command func(boot string) []string
	// Dir holds the QMP socket and QEMU's output (qemu.log).
	Dir string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

func (q *QEMU) sock() string { return filepath.Join(q.Dir, "qmp.sock") }

// running reports whether QEMU runs. Called with q.mu held.
func (q *QEMU) running() bool {
	if q.done == nil {
		return false
	}
	select {
	case <-q.done:
		return false
	default:
		return true
	}
}

func (q *QEMU) PowerState(ctx context.Context) (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running() {
		return PowerOff, nil
	}
	var st struct{ Status string }
	if err := q.qmp(ctx, "query-status", &st); err != nil {
		if !q.running() {
			return PowerOff, nil
		}
		return "", err
	}
	if st.Status == "shutdown" {
		return PowerOff, nil
	}
	return PowerOn, nil
}

func (q *QEMU) PowerOn(ctx context.Context, boot string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.running() {
		return errors.New("redfishsim: qemu already runs")
	}
	argv := q.Command(boot)
	if len(argv) == 0 {
		return errors.New("redfishsim: no QEMU command")
	}
	_ = os.Remove(q.sock())
	argv = append(argv, "-S", "-qmp", "unix:"+q.sock()+",server=on,wait=off")
	logf, err := os.OpenFile(filepath.Join(q.Dir, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redfishsim: start qemu: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	q.cmd, q.done = cmd, done
	// The socket appears once QEMU has set up; then let the CPUs run.
	for {
		if err := q.qmp(ctx, "cont", nil); err == nil {
			return nil
		} else if !q.running() {
			return fmt.Errorf("redfishsim: qemu exited at start (see %s): %w", filepath.Join(q.Dir, "qemu.log"), err)
		} else if ctx.Err() != nil {
			q.kill()
			return fmt.Errorf("redfishsim: qemu did not start: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (q *QEMU) PowerOff(ctx context.Context, graceful bool) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running() {
		return nil
	}
	cmd := "quit"
	if graceful {
		cmd = "system_powerdown"
	}
	if err := q.qmp(ctx, cmd, nil); err != nil && q.running() && !graceful {
		q.kill()
		return nil
	}
	select {
	case <-q.done:
		return nil
	case <-ctx.Done():
		if graceful {
			return fmt.Errorf("redfishsim: the guest did not power off: %w", ctx.Err())
		}
		q.kill()
		return nil
	}
}

// Close stops QEMU if it runs and waits for it.
func (q *QEMU) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.running() {
		q.kill()
	}
	return nil
}

// kill ends QEMU and waits for it. Called with q.mu held.
func (q *QEMU) kill() {
	_ = syscall.Kill(-q.cmd.Process.Pid, syscall.SIGKILL)
	<-q.done
}

// qmp runs one QMP command on a fresh connection and decodes its return
// value into out (if not nil). Called with q.mu held.
func (q *QEMU) qmp(ctx context.Context, command string, out any) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", q.sock())
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	// read returns the next reply, skipping asynchronous events.
	read := func() (json.RawMessage, error) {
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return nil, err
			}
			var msg struct {
				Return json.RawMessage
				Error  *struct{ Class, Desc string }
				QMP    json.RawMessage
				Event  string
			}
			if err := json.Unmarshal(line, &msg); err != nil {
				return nil, fmt.Errorf("qmp: %w", err)
			}
			switch {
			case msg.Error != nil:
				return nil, fmt.Errorf("qmp: %s: %s", msg.Error.Class, msg.Error.Desc)
			case msg.Event != "":
				continue
			case msg.QMP != nil:
				return msg.QMP, nil
			default:
				return msg.Return, nil
			}
		}
	}
	if _, err := read(); err != nil { // greeting
		return err
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		if err := enc.Encode(map[string]string{"execute": cmd}); err != nil {
			return err
		}
		ret, err := read()
		if err != nil {
			if cmd == "quit" && q.waitExit(ctx) {
				return nil // QEMU may close the socket before it answers
			}
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if cmd == command && out != nil {
			if err := json.Unmarshal(ret, out); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
		}
	}
	return nil
}

// waitExit waits (bounded by ctx) for QEMU to exit.
func (q *QEMU) waitExit(ctx context.Context) bool {
	select {
	case <-q.done:
		return true
	case <-ctx.Done():
		return false
	}
}
