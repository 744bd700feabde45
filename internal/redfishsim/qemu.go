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
//   - A guest's reboot is a reset inside the same QEMU process, which
//     hands the firmware the boot order of the devices' bootindex
//     properties as they are at the reset. QEMU is a Rebooter: with NIC
//     and Disk set, SetResetBoot reorders their bootindex over QMP
//     (qom-set), and a second QMP socket listens for the RESET events of
//     the guest's reboots, which it reports to the Server.
//
// Close stops QEMU. A QEMU value is for one machine and one test.
type QEMU struct {
	// Command returns QEMU's argv (binary first) for a start that boots
	// from boot ("Pxe", "Hdd" or "" for no override). QEMU adds the QMP
	// sockets and -S. With NIC and Disk set, its boot order must be the
	// one SetResetBoot gives (see DiskFirst).
	Command func(boot string) []string
	// Dir holds the QMP sockets and QEMU's output (qemu.log).
	Dir string
	// NIC and Disk are the QEMU device IDs (-device ...,id=) of the
	// machine's network card and boot disk, whose bootindex SetResetBoot
	// orders. Without them a guest's reboot boots as QEMU started.
	NIC, Disk string

	mu        sync.Mutex
	cmd       *exec.Cmd
	done      chan struct{} // closed when cmd has exited
	resetBoot string        // what the next reset boots from
	onReset   func(boot string)
	events    sync.WaitGroup // the event monitors
}

// PID is the process ID of the running QEMU (the command's first
// process, which may exec QEMU in place, as ip netns exec does), 0 while
// the machine is off.
func (q *QEMU) PID() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running() {
		return 0
	}
	return q.cmd.Process.Pid
}

// DiskFirst reports whether a boot from boot ("Pxe", "Hdd" or "") tries
// the disk before the network: all but "Pxe" do, as a server whose
// installed disk comes first and the network after it.
func DiskFirst(boot string) bool { return boot != "Pxe" }

func (q *QEMU) sock() string      { return filepath.Join(q.Dir, "qmp.sock") }
func (q *QEMU) eventSock() string { return filepath.Join(q.Dir, "qmp-events.sock") }

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
	if err := q.qmp(ctx, &st, qmpCmd{Execute: "query-status"}); err != nil {
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
	_ = os.Remove(q.eventSock())
	argv = append(argv, "-S", "-qmp", "unix:"+q.sock()+",server=on,wait=off",
		"-qmp", "unix:"+q.eventSock()+",server=on,wait=off")
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
	q.cmd, q.done, q.resetBoot = cmd, done, boot
	// The sockets appear once QEMU has set up; then listen for events and
	// let the CPUs run.
	watching := false
	for {
		var err error
		if !watching {
			err = q.watch(ctx)
			watching = err == nil
		}
		if err == nil {
			if err = q.qmp(ctx, nil, qmpCmd{Execute: "cont"}); err == nil {
				return nil
			}
		}
		switch {
		case !q.running():
			return fmt.Errorf("redfishsim: qemu exited at start (see %s): %w", filepath.Join(q.Dir, "qemu.log"), err)
		case ctx.Err() != nil:
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
	if err := q.qmp(ctx, nil, qmpCmd{Execute: cmd}); err != nil && q.running() && !graceful {
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

// Close stops QEMU if it runs and waits for it and its event monitor.
func (q *QEMU) Close() error {
	q.mu.Lock()
	if q.running() {
		q.kill()
	}
	q.mu.Unlock()
	q.events.Wait()
	return nil
}

// SetResetBoot orders the bootindex of NIC and Disk for boot (see
// DiskFirst). QEMU gives the firmware the new order at the next reset.
func (q *QEMU) SetResetBoot(ctx context.Context, boot string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.running() || q.NIC == "" || q.Disk == "" || boot == q.resetBoot {
		return nil
	}
	first, second := q.NIC, q.Disk
	if DiskFirst(boot) {
		first, second = second, first
	}
	// A bootindex in use by another device is refused, so both are
	// cleared (-1: none) before they are given again.
	var cmds []qmpCmd
	for _, set := range []struct {
		id    string
		index int
	}{{first, -1}, {second, -1}, {first, 1}, {second, 2}} {
		cmds = append(cmds, qmpCmd{Execute: "qom-set", Arguments: map[string]any{
			"path": "/machine/peripheral/" + set.id, "property": "bootindex", "value": set.index}})
	}
	if err := q.qmp(ctx, nil, cmds...); err != nil {
		if !q.running() {
			return nil
		}
		return fmt.Errorf("redfishsim: boot order for %q: %w", boot, err)
	}
	q.resetBoot = boot
	return nil
}

// OnReset sets the function called after each reset of the guest.
func (q *QEMU) OnReset(fn func(boot string)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.onReset = fn
}

// watch connects to the event socket and starts the event monitor, which
// reports the guest's resets until QEMU exits. Called with q.mu held.
func (q *QEMU) watch(ctx context.Context) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", q.eventSock())
	if err != nil {
		return err
	}
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := qmpRead(r); err == nil { // greeting
		if err = json.NewEncoder(c).Encode(qmpCmd{Execute: "qmp_capabilities"}); err == nil {
			_, err = qmpRead(r)
		}
	}
	if err != nil {
		c.Close()
		return fmt.Errorf("qmp events: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	q.events.Add(1)
	go func() {
		defer q.events.Done()
		defer c.Close()
		q.monitor(r)
	}()
	return nil
}

// monitor reads events until the connection ends (QEMU exited) and
// reports each reset the guest made.
func (q *QEMU) monitor(r *bufio.Reader) {
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var ev struct {
			Event string
			Data  struct{ Guest bool }
		}
		if json.Unmarshal(line, &ev) != nil || ev.Event != "RESET" || !ev.Data.Guest {
			continue
		}
		q.mu.Lock()
		boot, fn := q.resetBoot, q.onReset
		q.mu.Unlock()
		if fn != nil {
			fn(boot)
		}
	}
}

// kill ends QEMU and waits for it. Called with q.mu held.
func (q *QEMU) kill() {
	_ = syscall.Kill(-q.cmd.Process.Pid, syscall.SIGKILL)
	<-q.done
}

// qmpCmd is a QMP command.
type qmpCmd struct {
	Execute   string         `json:"execute"`
	Arguments map[string]any `json:"arguments,omitempty"`
}

// qmpRead returns the next reply, skipping asynchronous events.
func qmpRead(r *bufio.Reader) (json.RawMessage, error) {
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

// qmp runs QMP commands in order on a fresh connection, stopping at the
// first error, and decodes the last one's return value into out (if not
// nil). Called with q.mu held.
func (q *QEMU) qmp(ctx context.Context, out any, cmds ...qmpCmd) error {
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
	if _, err := qmpRead(r); err != nil { // greeting
		return err
	}
	for i, cmd := range append([]qmpCmd{{Execute: "qmp_capabilities"}}, cmds...) {
		if err := enc.Encode(cmd); err != nil {
			return err
		}
		ret, err := qmpRead(r)
		if err != nil {
			if cmd.Execute == "quit" && q.waitExit(ctx) {
				return nil // QEMU may close the socket before it answers
			}
			return fmt.Errorf("qmp %s: %w", cmd.Execute, err)
		}
		if i == len(cmds) && out != nil {
			if err := json.Unmarshal(ret, out); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd.Execute, err)
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
