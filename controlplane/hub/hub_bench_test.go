//go:build unix

package hub_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/controlplane/hub"
	"github.com/lpmos/lpmos/task"
)

// BenchmarkHubFanout connects N WebSocket clients over loopback (1,000, or
// 10,000 with LPMOS_WS_BENCH_FULL=1), all subscribed to "*". An iteration
// publishes the life of hubBenchTasks installs: five status changes each,
// hubBenchProgress progress reports each, then "completed".
//
//   - burst: the whole iteration is published at once, as a watch does
//     after a stall; latency is then mostly the time to drain the burst.
//   - single: each status change is published once the previous one has
//     reached every client; latency is that of one change's fan-out.
//
// The client ends live in a child process (this test binary again, see
// TestMain): 10,000 connections take 20,000 descriptors in one process,
// more than the usual hard limit, and the server's figures (CPU, memory,
// profiles) are then the server's alone. Both processes share the
// machine's cores.
//
// It reports the delivery latency of status messages (publish to client
// read: the revision field carries the publish time), status messages lost
// (the benchmark fails on any), ordering errors (per client, status
// revisions must increase and a task's "completed" must follow its final
// 100% progress; the benchmark fails on any), progress messages per task
// and client (coalescing), the cost of one Publish, the CPU time of each
// end per delivered status (the figure that does not depend on the load
// of the machine) and the server's memory per client.
func BenchmarkHubFanout(b *testing.B) {
	n := 1000
	if os.Getenv("LPMOS_WS_BENCH_FULL") == "1" {
		n = 10000
	}
	hubBenchRaiseNoFile(b, n)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	// Dropped clients are logged with their reason.
	h := hub.New(hub.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	hubCtx, stopHub := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- h.Run(hubCtx) }()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := auth.Principal{Subject: "bench", Role: auth.RoleViewer, Method: "token"}
		h.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	}))
	defer srv.Close()
	defer func() {
		stopHub()
		<-runDone
	}()

	clients, err := hubBenchStartClients(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), n)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := clients.stop(); err != nil {
			b.Error(err)
		}
	}()
	for h.Clients() < n { // registered just after the handshake
		if ctx.Err() != nil {
			b.Fatalf("%d of %d clients registered", h.Clients(), n)
		}
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	env := &hubBenchEnv{ctx: ctx, hub: h, n: n, clients: clients}
	env.heapKB = float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(n) / 1024
	env.stackKB = float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n) / 1024

	b.Run("burst", func(b *testing.B) { env.run(b, false) })
	b.Run("single", func(b *testing.B) { env.run(b, true) })
}

// hubBenchRaiseNoFile raises the soft descriptor limit to the hard one
// (Go does so at start-up too; this says it) and fails if n clients do not
// fit: each process holds one end of each connection.
func hubBenchRaiseNoFile(b *testing.B, n int) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("getrlimit: %v", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			b.Fatalf("raising RLIMIT_NOFILE to its hard limit %d: %v", lim.Max, err)
		}
	}
	if need := uint64(n) + 256; lim.Cur < need {
		b.Fatalf("RLIMIT_NOFILE is %d, %d clients need %d: raise the hard limit (ulimit -Hn)", lim.Cur, n, need)
	}
}

const (
	hubBenchTasks    = 20
	hubBenchProgress = 20
	// hubBenchChildEnv tells the test binary to be the clients' process.
	hubBenchChildEnv = "LPMOS_HUB_BENCH_CLIENTS"
)

var hubBenchStatuses = []task.Status{task.StatusReady, task.StatusBooting, task.StatusPendingApproval, task.StatusApproved, task.StatusInstalling}

type hubBenchEnv struct {
	ctx             context.Context
	hub             *hub.Hub
	n               int
	clients         *hubBenchClients
	lastRev         int64
	heapKB, stackKB float64
}

// revision returns a fresh revision that is also the publish time.
func (e *hubBenchEnv) revision() int64 {
	e.lastRev = max(time.Now().UnixNano(), e.lastRev+1)
	return e.lastRev
}

// waitFor waits until the clients together have received want status
// messages, and fails if any is lost: a client was dropped (the hub logs
// why) or the client process ended.
func (e *hubBenchEnv) waitFor(b *testing.B, want int64) {
	got := e.clients.waitFor(e.ctx, want, func() bool { return e.hub.Clients() == e.n })
	if got < want {
		b.ReportMetric(float64(want-got), "lost-status")
		b.Fatalf("%d status messages lost (%d of %d clients still connected)", want-got, e.hub.Clients(), e.n)
	}
}

func (e *hubBenchEnv) run(b *testing.B, single bool) {
	start, err := e.clients.reset()
	if err != nil {
		b.Fatal(err)
	}
	want := start
	ids := make([]string, hubBenchTasks)
	for i := range ids {
		ids[i] = fmt.Sprintf("00000000-0000-4000-8000-%012x", i+1)
	}
	var publishTime time.Duration
	var publishes int
	status := func(id string, st task.Status) {
		start := time.Now()
		e.hub.Publish(task.Change{TaskID: id, Revision: e.revision(), Status: st})
		publishTime += time.Since(start)
		publishes++
		want += int64(e.n)
		if single {
			e.waitFor(b, want)
		}
	}
	cpu0 := hubBenchCPU()
	b.ResetTimer()
	for range b.N {
		for _, st := range hubBenchStatuses {
			for _, id := range ids {
				status(id, st)
			}
		}
		for p := 1; p <= hubBenchProgress; p++ {
			for _, id := range ids {
				start := time.Now()
				e.hub.Publish(task.Change{TaskID: id, Revision: e.revision(), Progress: &task.Progress{
					Stage: task.StageWriting, Percentage: 100 * p / hubBenchProgress, Message: "writing the image"}})
				publishTime += time.Since(start)
				publishes++
			}
		}
		for _, id := range ids {
			status(id, task.StatusCompleted)
		}
		e.waitFor(b, want)
	}
	b.StopTimer()
	serverCPU := hubBenchCPU() - cpu0

	r, err := e.clients.report()
	if err != nil {
		b.Fatal(err)
	}
	delivered := float64(want - start)
	b.ReportMetric(r.p50/1e6, "p50-ms")
	b.ReportMetric(r.p99/1e6, "p99-ms")
	b.ReportMetric(0, "lost-status")
	b.ReportMetric(float64(r.orderErrors), "order-errors")
	b.ReportMetric(float64(r.progress)/float64(e.n*b.N*hubBenchTasks), "progress-msgs/task/client")
	b.ReportMetric(float64(publishTime.Microseconds())/float64(publishes), "µs/publish")
	b.ReportMetric(float64(serverCPU.Nanoseconds())/1e3/delivered, "server-CPU-µs/status")
	b.ReportMetric(float64(r.cpu.Nanoseconds())/1e3/delivered, "client-CPU-µs/status")
	b.ReportMetric(e.heapKB, "heap-KB/client")
	b.ReportMetric(e.stackKB, "stack-KB/client")
	b.ReportMetric(float64(e.n), "clients")
	if r.orderErrors > 0 {
		b.Fatalf("%d messages out of order (a status revision not above the previous one, or a completed before its final progress)", r.orderErrors)
	}
}

// hubBenchCPU is the CPU time (user and system) this process has used.
func hubBenchCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// hubBenchClients is the child process holding the client ends. The
// parent talks to it in lines: it writes "reset" (answered "ok <status
// messages received so far>") and "report" (answered "report <p50 ns>
// <p99 ns> <order errors> <progress messages> <CPU ns>", since the reset);
// the child also writes "recv <count>" whenever its clients have together
// received a multiple of N status messages, so that "recv" follows each
// change that reached every client. Closing its standard input ends it.
type hubBenchClients struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	replies chan string // lines other than "recv"
	exited  chan struct{}

	mu       sync.Mutex
	received int64
	changed  chan struct{} // closed and replaced when received grows
}

type hubBenchReport struct {
	p50, p99              float64 // ns
	orderErrors, progress int64
	cpu                   time.Duration
}

// hubBenchStartClients starts the child process and waits until its n
// clients are connected and subscribed.
func hubBenchStartClients(ctx context.Context, url string, n int) (*hubBenchClients, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", hubBenchChildEnv, url, n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the clients' process: %w", err)
	}
	c := &hubBenchClients{cmd: cmd, stdin: stdin, replies: make(chan string, 1), exited: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "recv "); ok {
				got, _ := strconv.ParseInt(v, 10, 64)
				c.mu.Lock()
				if got > c.received {
					c.received = got
					close(c.changed)
					c.changed = make(chan struct{})
				}
				c.mu.Unlock()
				continue
			}
			c.replies <- line
		}
	}()
	line, err := c.reply(ctx)
	if err != nil {
		c.stop()
		return nil, err
	}
	if line != "ready" {
		c.stop()
		return nil, fmt.Errorf("clients' process: %s", line)
	}
	return c, nil
}

func (c *hubBenchClients) reply(ctx context.Context) (string, error) {
	select {
	case line := <-c.replies:
		return line, nil
	case <-c.exited:
		return "", errors.New("the clients' process ended")
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *hubBenchClients) ask(cmd string) (string, error) {
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		return "", err
	}
	return c.reply(context.Background())
}

// waitFor waits until the clients received want status messages in all,
// or their process ended, ctx ended or ok returned false (checked every
// 100 ms). It returns the count.
func (c *hubBenchClients) waitFor(ctx context.Context, want int64, ok func() bool) int64 {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		c.mu.Lock()
		got, changed := c.received, c.changed
		c.mu.Unlock()
		if got >= want {
			return got
		}
		select {
		case <-changed:
		case <-tick.C:
			if !ok() {
				return got
			}
		case <-c.exited:
			return got
		case <-ctx.Done():
			return got
		}
	}
}

// reset clears the clients' statistics and returns the status messages
// received so far.
func (c *hubBenchClients) reset() (int64, error) {
	line, err := c.ask("reset")
	if err != nil {
		return 0, err
	}
	v, ok := strings.CutPrefix(line, "ok ")
	if !ok {
		return 0, fmt.Errorf("clients' process: %s", line)
	}
	return strconv.ParseInt(v, 10, 64)
}

func (c *hubBenchClients) report() (hubBenchReport, error) {
	line, err := c.ask("report")
	if err != nil {
		return hubBenchReport{}, err
	}
	var r hubBenchReport
	var cpu int64
	if _, err := fmt.Sscanf(line, "report %g %g %d %d %d", &r.p50, &r.p99, &r.orderErrors, &r.progress, &cpu); err != nil {
		return r, fmt.Errorf("clients' process: %q: %w", line, err)
	}
	r.cpu = time.Duration(cpu)
	return r, nil
}

// stop ends the child process and waits for it.
func (c *hubBenchClients) stop() error {
	c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
	}
	if err := c.cmd.Wait(); err != nil {
		return fmt.Errorf("clients' process: %w", err)
	}
	return nil
}

// TestMain runs the clients' process when the benchmark starts this binary
// as one, and the tests otherwise.
func TestMain(m *testing.M) {
	if spec := os.Getenv(hubBenchChildEnv); spec != "" {
		if err := hubBenchChild(spec); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// hubBenchChild is the clients' process: spec is "<url> <n>".
func hubBenchChild(spec string) error {
	url, nstr, _ := strings.Cut(spec, " ")
	n, err := strconv.Atoi(nstr)
	if err != nil {
		return fmt.Errorf("%s: %q: %w", hubBenchChildEnv, spec, err)
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out := bufio.NewWriter(os.Stdout)
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}

	var received atomic.Int64
	wake := make(chan struct{}, 1)
	// Each client reads from the start: the hub pings a client that has
	// been connected for PingInterval and drops it if it does not answer,
	// and connecting all of them may take longer than that.
	var wg sync.WaitGroup
	clients, err := hubBenchConnect(ctx, url, n, func(c *hubBenchClient) {
		wg.Go(func() {
			c.read(func() {
				if received.Add(1)%int64(n) == 0 {
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			})
		})
	})
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
		wg.Wait()
	}()
	if err != nil {
		return err
	}
	// The reporter says "recv" after each round, off the readers' path.
	repDone := make(chan struct{})
	defer func() { <-repDone }()
	stopRep := make(chan struct{})
	defer close(stopRep)
	go func() {
		defer close(repDone)
		for {
			select {
			case <-wake:
				say("recv %d", received.Load())
			case <-stopRep:
				return
			}
		}
	}()
	say("ready")

	var cpu0 time.Duration
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "reset":
			for _, c := range clients {
				c.reset()
			}
			cpu0 = hubBenchCPU()
			say("ok %d", received.Load())
		case "report":
			cpu := hubBenchCPU() - cpu0
			var lat []int64
			var orderErrors, progress int64
			for _, c := range clients {
				c.mu.Lock()
				lat = append(lat, c.latencies...)
				orderErrors += c.orderErrors
				progress += c.progress
				c.mu.Unlock()
			}
			slices.Sort(lat)
			q := func(q float64) int64 {
				if len(lat) == 0 {
					return 0
				}
				return lat[int(q*float64(len(lat)-1))]
			}
			say("report %d %d %d %d %d", q(0.50), q(0.99), orderErrors, progress, cpu.Nanoseconds())
		default:
			say("unknown command %q", in.Text())
		}
	}
	return nil
}

type hubBenchClient struct {
	conn *websocket.Conn

	mu          sync.Mutex
	latencies   []int64 // ns
	orderErrors int64
	progress    int64
	lastRev     int64
	lastPct     map[string]int
}

func (c *hubBenchClient) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latencies, c.orderErrors, c.progress = c.latencies[:0], 0, 0
	clear(c.lastPct)
}

// hubBenchConnect dials n clients, a few at a time, subscribes each to "*"
// and starts it. It returns the clients connected so far along with any
// error.
func hubBenchConnect(ctx context.Context, url string, n int, start func(*hubBenchClient)) ([]*hubBenchClient, error) {
	dialer := websocket.Dialer{
		Subprotocols:     []string{"lpmos.v1", "bearer.bench"},
		HandshakeTimeout: 30 * time.Second,
		ReadBufferSize:   1024,
		WriteBufferSize:  512,
	}
	out := make([]*hubBenchClient, n)
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				if out[i], errs[i] = hubBenchDial(ctx, dialer, url); out[i] != nil {
					start(out[i])
				}
			}
		})
	}
	wg.Wait()
	var clients []*hubBenchClient
	for _, c := range out {
		if c != nil {
			clients = append(clients, c)
		}
	}
	if err := errors.Join(errs...); err != nil || len(clients) < n {
		return clients, fmt.Errorf("%d of %d clients connected: %v", len(clients), n, err)
	}
	return clients, nil
}

func hubBenchDial(ctx context.Context, dialer websocket.Dialer, url string) (*hubBenchClient, error) {
	conn, resp, err := dialer.DialContext(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	// Subscribe; the acknowledgement says it is in force.
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","task_id":"*"}`)); err != nil {
		conn.Close()
		return nil, err
	}
	if _, data, err := conn.ReadMessage(); err != nil || !strings.Contains(string(data), `"subscribed"`) {
		conn.Close()
		return nil, fmt.Errorf("subscribing: %q, %v", data, err)
	}
	// gorilla's own ping handler gives the pong one second and gives up
	// silently: on a loaded machine, a starved client would then miss two
	// pings in a row and be dropped. A browser answers pings at once.
	conn.SetPingHandler(func(data string) error {
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Minute))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	return &hubBenchClient{conn: conn, lastPct: map[string]int{}}, nil
}

// read reads until the connection ends, calling gotStatus after each
// status message. It decodes only the fields it checks, by hand: a
// dashboard's JSON decoding is not the hub's cost, and here it would take
// the server's CPU.
func (c *hubBenchClient) read(gotStatus func()) {
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		typ := hubBenchField(data, "type")
		isStatus := string(typ) == "status"
		c.mu.Lock()
		switch {
		case string(typ) == "progress":
			c.progress++
			c.lastPct[string(hubBenchField(data, "task_id"))], _ = strconv.Atoi(string(hubBenchField(data, "percentage")))
		case isStatus:
			rev, _ := strconv.ParseInt(string(hubBenchField(data, "revision")), 10, 64)
			c.latencies = append(c.latencies, now-rev)
			if rev <= c.lastRev {
				c.orderErrors++
			}
			c.lastRev = rev
			if string(hubBenchField(data, "status")) == string(task.StatusCompleted) {
				id := string(hubBenchField(data, "task_id"))
				if c.lastPct[id] != 100 {
					c.orderErrors++
				}
				delete(c.lastPct, id)
			}
		}
		c.mu.Unlock()
		if isStatus {
			gotStatus()
		}
	}
}

// hubBenchField returns the value of a top-level field of a flat JSON
// object whose strings hold no quotes or commas (the hub's messages here),
// without its quotes.
func hubBenchField(data []byte, name string) []byte {
	key := `"` + name + `":`
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return nil
	}
	v := data[i+len(key):]
	if end := bytes.IndexAny(v, ",}"); end >= 0 {
		v = v[:end]
	}
	return bytes.Trim(v, `"`)
}
