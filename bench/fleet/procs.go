package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one child process the fleet started; it is stopped by its PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited
	err  error         // its exit, once done is closed

	// usage as last sampled while it ran (a process's /proc entry is gone
	// once it has been reaped). The sampler loop and the leader kill
	// sample concurrently: mu guards it.
	mu    sync.Mutex
	usage procUsage
}

// procUsage is what /proc says of a process.
type procUsage struct {
	PeakRSS, RSS int64         // bytes (VmHWM, VmRSS)
	CPU          time.Duration // user + system
}

// startProc starts path with args and env (on top of this process's),
// its output going to logPath. The child dies with the fleet if the fleet
// dies (see setDeathSignal).
func startProc(name, path, logPath string, env []string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: f, done: make(chan struct{})}
	go func() { // owned: ends when the process exits, which stop ensures
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// sample reads the process's memory and CPU from /proc while it runs.
func (p *proc) sample() procUsage {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited() {
		return p.usage
	}
	u, err := readUsage(p.cmd.Process.Pid)
	if err == nil && u.PeakRSS > 0 { // an exited, not yet reaped process has no memory figures
		p.usage = u
	}
	return p.usage
}

// stop sends SIGTERM, waits up to timeout for the exit and kills the
// process if it has not exited by then. It returns the exit error of a
// process that did not stop cleanly.
func (p *proc) stop(timeout time.Duration) error {
	if p.exited() {
		return fmt.Errorf("%s had exited before it was stopped: %v (log %s)", p.name, p.err, p.log.Name())
	}
	p.sample()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s: %w (log %s)", p.name, p.err, p.log.Name())
		}
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %v of SIGTERM: killed (log %s)", p.name, timeout, p.log.Name())
	}
}

// tail returns the end of the process's log, for an error message.
func (p *proc) tail() string {
	data, err := os.ReadFile(p.log.Name())
	if err != nil {
		return ""
	}
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}

// readUsage reads VmHWM and VmRSS from /proc/pid/status and utime + stime
// from /proc/pid/stat.
func readUsage(pid int) (procUsage, error) {
	var u procUsage
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmHWM":
			u.PeakRSS = n << 10
		case "VmRSS":
			u.RSS = n << 10
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The command name (field 2) may hold spaces: fields count from the
	// last ')'. utime and stime are fields 14 and 15, in clock ticks.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, errors.New("malformed /proc/pid/stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return u, errors.New("short /proc/pid/stat")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	u.CPU = time.Duration(ut+st) * time.Second / clockTicks
	return u, nil
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// selfUsage is the fleet process's own usage (simulated machines,
// operator and dashboards).
func selfUsage() procUsage {
	u, _ := readUsage(os.Getpid())
	return u
}

// freePorts returns n distinct free TCP ports on 127.0.0.1, all held until
// every one is chosen so that none is handed out twice.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// waitHTTP polls url until it answers 200, the process exits or ctx ends.
func waitHTTP(ctx context.Context, p *proc, url string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited before it was ready: %v\n%s", p.name, p.err, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %w\n%s", p.name, url, ctx.Err(), p.tail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// buildBinaries builds the region and control-plane binaries into dir.
func buildBinaries(ctx context.Context, dir string) (region, controlPlane string, err error) {
	region, controlPlane = filepath.Join(dir, "region"), filepath.Join(dir, "control-plane")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/",
		"github.com/lpmos/lpmos/examples/region", "github.com/lpmos/lpmos/examples/control-plane")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return region, controlPlane, nil
}
