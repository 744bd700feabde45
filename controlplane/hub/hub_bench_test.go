//go:build unix

package hub_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
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
// It reports the delivery latency of status messages (publish to client
// read: the revision field carries the publish time), status messages lost
// (the benchmark fails on any), ordering errors (a task's "completed" must
// follow its final 100% progress), progress messages per task and client
// (coalescing), the cost of one Publish, and the memory per client. Both
// ends of every connection live in this process, so the memory is that of
// a server end plus a client end.
func BenchmarkHubFanout(b *testing.B) {
	n := 1000
	if os.Getenv("LPMOS_WS_BENCH_FULL") == "1" {
		n = 10000
	}
	// Each client costs two descriptors here. Go raises the soft limit to
	// the hard one at start-up; if that is not enough, say so and run with
	// the clients that fit.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil {
		if fit := (int(min(lim.Cur, 1<<30)) - 256) / 2; n > fit {
			b.Logf("RLIMIT_NOFILE is %d: room for %d clients, not %d; raise the hard limit (ulimit -Hn) for a full run", lim.Cur, fit, n)
			n = max(fit, 1)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	h := hub.New(hub.Config{Logger: slog.New(slog.DiscardHandler)})
	hubCtx, stopHub := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- h.Run(hubCtx) }()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := auth.Principal{Subject: "bench", Role: auth.RoleViewer, Method: "token"}
		h.ServeHTTP(w, r.WithContext(auth.WithPrincipal(r.Context(), p)))
	}))
	defer srv.Close()

	env := &hubBenchEnv{ctx: ctx, hub: h, n: n}
	var err error
	env.clients, err = hubBenchConnect(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), n, &env.received)
	var wg sync.WaitGroup
	defer func() {
		stopHub()
		<-runDone
		for _, c := range env.clients {
			c.conn.Close()
		}
		wg.Wait()
	}()
	for _, c := range env.clients {
		wg.Go(c.read)
	}
	if err != nil {
		b.Fatal(err)
	}
	for h.Clients() < n { // registered just after the handshake
		if ctx.Err() != nil {
			b.Fatalf("%d of %d clients registered", h.Clients(), n)
		}
		time.Sleep(time.Millisecond)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	env.heapKB = float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(n) / 1024
	env.stackKB = float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n) / 1024

	b.Run("burst", func(b *testing.B) { env.run(b, false) })
	b.Run("single", func(b *testing.B) { env.run(b, true) })
}

const (
	hubBenchTasks    = 20
	hubBenchProgress = 20
)

var hubBenchStatuses = []task.Status{task.StatusReady, task.StatusBooting, task.StatusPendingApproval, task.StatusApproved, task.StatusInstalling}

type hubBenchEnv struct {
	ctx             context.Context
	hub             *hub.Hub
	n               int
	clients         []*hubBenchClient
	received        atomic.Int64 // status messages, all clients
	lastRev         int64
	heapKB, stackKB float64
}

// revision returns a fresh revision that is also the publish time.
func (e *hubBenchEnv) revision() int64 {
	e.lastRev = max(time.Now().UnixNano(), e.lastRev+1)
	return e.lastRev
}

// waitFor waits until the clients together have received want status
// messages, and fails if any is lost.
func (e *hubBenchEnv) waitFor(b *testing.B, want int64) {
	for e.received.Load() < want && e.hub.Clients() == e.n && e.ctx.Err() == nil {
		time.Sleep(100 * time.Microsecond)
	}
	if got := e.received.Load(); got < want {
		b.ReportMetric(float64(want-got), "lost-status")
		b.Fatalf("%d status messages lost (%d of %d clients still connected)", want-got, e.hub.Clients(), e.n)
	}
}

func (e *hubBenchEnv) run(b *testing.B, single bool) {
	for _, c := range e.clients {
		c.reset()
	}
	ids := make([]string, hubBenchTasks)
	for i := range ids {
		ids[i] = fmt.Sprintf("00000000-0000-4000-8000-%012x", i+1)
	}
	want := e.received.Load()
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

	var lat []time.Duration
	var orderErrors, progress int64
	for _, c := range e.clients {
		c.mu.Lock()
		lat = append(lat, c.latencies...)
		orderErrors += c.orderErrors
		progress += c.progress
		c.mu.Unlock()
	}
	slices.Sort(lat)
	ms := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
	b.ReportMetric(0, "lost-status")
	b.ReportMetric(float64(orderErrors), "order-errors")
	b.ReportMetric(float64(progress)/float64(e.n*b.N*hubBenchTasks), "progress-msgs/task/client")
	b.ReportMetric(float64(publishTime.Microseconds())/float64(publishes), "µs/publish")
	b.ReportMetric(e.heapKB, "heap-KB/client")
	b.ReportMetric(e.stackKB, "stack-KB/client")
	b.ReportMetric(float64(e.n), "clients")
	if orderErrors > 0 {
		b.Fatalf("%d times a task's completed status overtook its final progress", orderErrors)
	}
}

type hubBenchClient struct {
	conn     *websocket.Conn
	received *atomic.Int64

	mu          sync.Mutex
	latencies   []time.Duration
	orderErrors int64
	progress    int64
	lastPct     map[string]int
}

func (c *hubBenchClient) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latencies, c.orderErrors, c.progress = c.latencies[:0], 0, 0
	clear(c.lastPct)
}

// hubBenchConnect dials n clients, a few at a time, and subscribes each to
// "*". It returns the clients connected so far along with any error.
func hubBenchConnect(ctx context.Context, url string, n int, received *atomic.Int64) ([]*hubBenchClient, error) {
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
				out[i], errs[i] = hubBenchDial(ctx, dialer, url)
			}
		})
	}
	wg.Wait()
	var clients []*hubBenchClient
	for _, c := range out {
		if c != nil {
			c.received = received
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
	return &hubBenchClient{conn: conn, lastPct: map[string]int{}}, nil
}

func (c *hubBenchClient) read() {
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		now := time.Now().UnixNano()
		var m struct {
			Type       string `json:"type"`
			TaskID     string `json:"task_id"`
			Status     string `json:"status"`
			Revision   int64  `json:"revision"`
			Percentage int    `json:"percentage"`
		}
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		c.mu.Lock()
		switch m.Type {
		case "progress":
			c.progress++
			c.lastPct[m.TaskID] = m.Percentage
		case "status":
			c.latencies = append(c.latencies, time.Duration(now-m.Revision))
			if m.Status == string(task.StatusCompleted) {
				if c.lastPct[m.TaskID] != 100 {
					c.orderErrors++
				}
				delete(c.lastPct, m.TaskID)
			}
		}
		c.mu.Unlock()
		if m.Type == "status" {
			c.received.Add(1)
		}
	}
}
