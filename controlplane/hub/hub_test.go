package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/task"
)

// These tests talk to the hub over real WebSocket connections on loopback.
// They never assert on timing: waits are generous upper bounds, and a
// client's "sync" (an invalid message, answered with an error in order) is
// the barrier that says everything sent before it has been processed.

const (
	hubTestTask1 = "0a1b2c3d-1111-4eee-8fff-111111111111"
	hubTestTask2 = "0a1b2c3d-2222-4eee-8fff-222222222222"
	hubTestWait  = 20 * time.Second
)

type hubTestServer struct {
	hub    *Hub
	srv    *httptest.Server
	reg    *prometheus.Registry
	cancel context.CancelFunc
	runErr chan error
	once   sync.Once
	err    error
}

// hubTestAuth stands in for the auth middleware.
func hubTestAuth(next http.Handler, role auth.Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := auth.WithPrincipal(r.Context(), auth.Principal{Subject: "tester", Role: role, Method: "token"})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// newHubTest starts a hub with cfg (after tweak, which may lower its
// limits) behind a server that authenticates every request as a viewer.
func newHubTest(t *testing.T, cfg Config, tweak ...func(*Hub)) *hubTestServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := New(cfg)
	for _, f := range tweak {
		f(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &hubTestServer{hub: h, reg: reg, cancel: cancel, runErr: make(chan error, 1)}
	go func() { ts.runErr <- h.Run(ctx) }()
	ts.srv = httptest.NewServer(hubTestAuth(h, auth.RoleViewer))
	t.Cleanup(func() {
		assert.NoError(t, ts.stop())
		ts.srv.Close()
	})
	return ts
}

// stop ends Run and returns its error.
func (ts *hubTestServer) stop() error {
	ts.once.Do(func() {
		ts.cancel()
		select {
		case ts.err = <-ts.runErr:
		case <-time.After(hubTestWait):
			ts.err = errors.New("Run did not return")
		}
	})
	return ts.err
}

func (ts *hubTestServer) wsURL() string { return "ws" + strings.TrimPrefix(ts.srv.URL, "http") }

func (ts *hubTestServer) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return hubMetricValue(t, ts.reg, name, labels...)
}

// hubMetricValue reads one gauge or counter; labels are name, value pairs.
func hubMetricValue(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

var hubTestDialer = websocket.Dialer{
	Subprotocols:     []string{Subprotocol, "bearer.secret-token"},
	HandshakeTimeout: hubTestWait,
}

// hubTestMsg is any server message.
type hubTestMsg struct {
	Type       string          `json:"type"`
	TaskID     string          `json:"task_id"`
	Status     string          `json:"status"`
	RegionID   string          `json:"region_id"`
	Revision   int64           `json:"revision"`
	Stage      string          `json:"stage"`
	Percentage int             `json:"percentage"`
	Message    string          `json:"message"`
	Hardware   json.RawMessage `json:"hardware"`
	At         time.Time       `json:"at"`
}

// hubTestClient reads its connection in a goroutine into msgs.
type hubTestClient struct {
	conn *websocket.Conn
	msgs chan hubTestMsg
	err  error // why the connection ended; read after msgs is closed
}

func (ts *hubTestServer) dial(t *testing.T) *hubTestClient {
	t.Helper()
	conn, resp, err := hubTestDialer.Dial(ts.wsURL(), nil)
	require.NoError(t, err)
	resp.Body.Close()
	return hubTestStart(t, conn)
}

func hubTestStart(t *testing.T, conn *websocket.Conn) *hubTestClient {
	c := &hubTestClient{conn: conn, msgs: make(chan hubTestMsg, 10000)}
	go func() {
		defer close(c.msgs)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			var m hubTestMsg
			if err := json.Unmarshal(data, &m); err != nil {
				c.err = fmt.Errorf("undecodable server message %q: %w", data, err)
				return
			}
			c.msgs <- m
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		for range c.msgs { // wait for the reader to end
		}
	})
	return c
}

// next returns the next message.
func (c *hubTestClient) next(t *testing.T) hubTestMsg {
	t.Helper()
	select {
	case m, ok := <-c.msgs:
		require.True(t, ok, "connection ended: %v", c.err)
		return m
	case <-time.After(hubTestWait):
		t.Fatal("no message from the hub")
	}
	return hubTestMsg{}
}

func (c *hubTestClient) send(t *testing.T, v any) {
	t.Helper()
	require.NoError(t, c.conn.WriteJSON(v))
}

// sync is the barrier: the hub answers an unknown message type with an
// error, after everything queued for this client before.
func (c *hubTestClient) sync(t *testing.T) {
	t.Helper()
	c.send(t, map[string]string{"type": "sync"})
	m := c.next(t)
	require.Equal(t, "error", m.Type, "expected nothing before the sync reply, got %+v", m)
	require.Contains(t, m.Message, "unknown message type")
}

// subscribe subscribes and waits for the acknowledgement: from then on
// every published change reaches the client.
func (c *hubTestClient) subscribe(t *testing.T, id string) {
	t.Helper()
	c.send(t, map[string]string{"type": "subscribe", "task_id": id})
	m := c.next(t)
	require.Equal(t, hubTestMsg{Type: "subscribed", TaskID: id}, m, "expected the acknowledgement first")
}

// ended waits for the connection to end and returns why.
func (c *hubTestClient) ended(t *testing.T) error {
	t.Helper()
	timeout := time.After(hubTestWait)
	for {
		select {
		case _, ok := <-c.msgs:
			if !ok {
				return c.err
			}
		case <-timeout:
			t.Fatal("connection still open")
		}
	}
}

func hubTestStatus(id string, rev int64, st task.Status) task.Change {
	return task.Change{TaskID: id, Revision: rev, Status: st}
}

func hubTestProgress(id string, rev int64, pct int) task.Change {
	return task.Change{TaskID: id, Revision: rev, Progress: &task.Progress{
		Stage: task.StageDownloading, Percentage: pct, Message: fmt.Sprintf("at %d%%", pct)}}
}

func TestHubHandshakeRefused(t *testing.T) {
	tests := []struct {
		name    string
		handler func(h *Hub) http.Handler
		header  http.Header
		stopped bool
		status  int
		code    string
	}{
		{name: "no principal", handler: func(h *Hub) http.Handler { return h },
			status: http.StatusUnauthorized, code: "unauthorized"},
		{name: "no role", handler: func(h *Hub) http.Handler { return hubTestAuth(h, auth.RoleNone) },
			status: http.StatusForbidden, code: "forbidden"},
		{name: "foreign origin", handler: func(h *Hub) http.Handler { return hubTestAuth(h, auth.RoleAdmin) },
			header: http.Header{"Origin": {"https://evil.example"}},
			status: http.StatusForbidden, code: "forbidden"},
		{name: "after Run ended", handler: func(h *Hub) http.Handler { return hubTestAuth(h, auth.RoleViewer) },
			stopped: true, status: http.StatusServiceUnavailable, code: "unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := New(Config{Logger: slog.New(slog.DiscardHandler)})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			runErr := make(chan error, 1)
			go func() { runErr <- h.Run(ctx) }()
			if tt.stopped {
				cancel()
				require.NoError(t, <-runErr)
			}
			srv := httptest.NewServer(tt.handler(h))
			defer srv.Close()

			conn, resp, err := hubTestDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), tt.header)
			if conn != nil {
				conn.Close()
			}
			require.ErrorIs(t, err, websocket.ErrBadHandshake)
			defer resp.Body.Close()
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.Empty(t, resp.Header.Get("Upgrade"))
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var body struct {
				Error struct{ Code, Message string }
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
			assert.Equal(t, tt.code, body.Error.Code)
			assert.NotEmpty(t, body.Error.Message)
			assert.Zero(t, h.Clients())
		})
	}
}

func TestHubHandshake(t *testing.T) {
	ts := newHubTest(t, Config{})
	tests := []struct {
		name   string
		header http.Header
	}{
		{"no origin", nil},
		{"same origin", http.Header{"Origin": {ts.srv.URL}}},
	}
	parent := t
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, resp, err := hubTestDialer.Dial(ts.wsURL(), tt.header)
			require.NoError(t, err)
			hubTestStart(parent, conn) // stays connected
			resp.Body.Close()
			assert.Equal(t, http.StatusSwitchingProtocols, resp.StatusCode)
			assert.Equal(t, "lpmos.v1", conn.Subprotocol())
			assert.Equal(t, []string{"lpmos.v1"}, resp.Header.Values("Sec-Websocket-Protocol"), "the bearer token must not be echoed")
			require.Eventually(t, func() bool { return ts.hub.Clients() == i+1 }, hubTestWait, 5*time.Millisecond)
			assert.Equal(t, float64(i+1), ts.metric(t, "lpmos_ws_clients"))
		})
	}

	// Not a WebSocket request at all.
	req, err := http.NewRequest(http.MethodGet, ts.srv.URL, nil)
	require.NoError(t, err)
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	body, _ := io.ReadAll(resp.Body)
	assert.Contains(t, string(body), `"invalid_request"`)
}

func TestHubSubscriptions(t *testing.T) {
	// No progress window ever ends: progress is sent only when a status of
	// its task flushes it, which makes the sequence deterministic.
	ts := newHubTest(t, Config{ProgressInterval: time.Hour})
	one, all := ts.dial(t), ts.dial(t)
	one.subscribe(t, hubTestTask1)
	all.subscribe(t, "*")

	hw := &hardware.Info{CPU: hardware.CPU{Model: "EPYC", Cores: 64, Threads: 128}, Memory: hardware.Memory{TotalGB: 512}}
	changes := []task.Change{
		{TaskID: hubTestTask1, Revision: 10, Created: true, Status: task.StatusPending,
			Metadata: &task.Metadata{ID: hubTestTask1, RegionID: "dc1"}},
		{TaskID: hubTestTask2, Revision: 11, Created: true, Status: task.StatusPending,
			Metadata: &task.Metadata{ID: hubTestTask2, RegionID: "dc2"}},
		{TaskID: hubTestTask1, Revision: 12, Hardware: hw, Status: task.StatusPendingApproval},
		{TaskID: hubTestTask2, Revision: 13, Hardware: hw},
		hubTestProgress(hubTestTask1, 14, 45),
		hubTestProgress(hubTestTask2, 15, 50),
		hubTestStatus(hubTestTask1, 16, task.StatusCompleted),
		hubTestStatus(hubTestTask2, 17, task.StatusFailed),
		{TaskID: hubTestTask1, Err: errors.New("compacted")}, // ignored
		{TaskID: hubTestTask1, Revision: 18, Deleted: true},  // nothing to say
	}
	for _, c := range changes {
		ts.hub.Publish(c)
	}

	created := map[string]int64{hubTestTask1: 10, hubTestTask2: 11}
	check := func(t *testing.T, c *hubTestClient, id, region string) {
		t.Helper()
		m := c.next(t)
		assert.Equal(t, hubTestMsg{Type: "status", TaskID: id, Status: "pending", RegionID: region, Revision: created[id]}, m)

		m = c.next(t)
		assert.Equal(t, "hardware", m.Type)
		assert.Equal(t, id, m.TaskID)
		var got hardware.Info
		require.NoError(t, json.Unmarshal(m.Hardware, &got))
		assert.Equal(t, *hw, got)

		if id == hubTestTask1 { // the hardware report came with the status
			m = c.next(t)
			assert.Equal(t, hubTestMsg{Type: "status", TaskID: id, Status: "pending_approval", RegionID: region, Revision: 12}, m)
		}
		m = c.next(t)
		pct := map[string]int{hubTestTask1: 45, hubTestTask2: 50}[id]
		assert.Equal(t, hubTestMsg{Type: "progress", TaskID: id, Stage: "downloading", Percentage: pct, Message: fmt.Sprintf("at %d%%", pct)}, m)

		m = c.next(t)
		final := map[string]hubTestMsg{
			hubTestTask1: {Type: "status", TaskID: id, Status: "completed", RegionID: region, Revision: 16},
			hubTestTask2: {Type: "status", TaskID: id, Status: "failed", RegionID: region, Revision: 17},
		}[id]
		assert.Equal(t, final, m)
	}
	t.Run("one task", func(t *testing.T) {
		check(t, one, hubTestTask1, "dc1")
		one.sync(t) // nothing of task 2
	})
	t.Run("all tasks", func(t *testing.T) {
		// Split the stream by task: order holds per task.
		byTask := map[string][]hubTestMsg{}
		for range 9 {
			m := all.next(t)
			byTask[m.TaskID] = append(byTask[m.TaskID], m)
		}
		all.sync(t)
		for id, region := range map[string]string{hubTestTask1: "dc1", hubTestTask2: "dc2"} {
			c := &hubTestClient{msgs: make(chan hubTestMsg, len(byTask[id]))}
			for _, m := range byTask[id] {
				c.msgs <- m
			}
			check(t, c, id, region)
		}
	})
	t.Run("unsubscribe", func(t *testing.T) {
		one.send(t, map[string]string{"type": "unsubscribe", "task_id": hubTestTask1})
		assert.Equal(t, hubTestMsg{Type: "unsubscribed", TaskID: hubTestTask1}, one.next(t))
		all.send(t, map[string]string{"type": "unsubscribe", "task_id": "*"})
		assert.Equal(t, hubTestMsg{Type: "unsubscribed", TaskID: "*"}, all.next(t))
		ts.hub.Publish(hubTestStatus(hubTestTask1, 20, task.StatusPending))
		ts.hub.Publish(hubTestProgress(hubTestTask1, 21, 10))
		ts.hub.Publish(hubTestStatus(hubTestTask1, 22, task.StatusReady))
		one.sync(t)
		all.sync(t)
	})
	t.Run("metrics", func(t *testing.T) {
		// task 1: 3 status, 1 hardware, 1 progress, to each client; task 2:
		// 2 status, 1 hardware, 1 progress, to the "*" client.
		assert.Equal(t, float64(3+3+2), ts.metric(t, "lpmos_ws_messages_sent_total", "type", "status"))
		assert.Equal(t, float64(1+1+1), ts.metric(t, "lpmos_ws_messages_sent_total", "type", "hardware"))
		assert.Equal(t, float64(1+1+1), ts.metric(t, "lpmos_ws_messages_sent_total", "type", "progress"))
		assert.Equal(t, float64(2), ts.metric(t, "lpmos_ws_clients"))
	})
}

func TestHubBadClientMessages(t *testing.T) {
	ts := newHubTest(t, Config{})
	c := ts.dial(t)
	tests := []struct {
		name string
		typ  int
		data string
		want string
	}{
		{"not JSON", websocket.TextMessage, `subscribe me`, "malformed"},
		{"JSON array", websocket.TextMessage, `["subscribe"]`, "malformed"},
		{"unknown type", websocket.TextMessage, `{"type":"hello","task_id":"*"}`, "unknown message type"},
		{"no type", websocket.TextMessage, `{"task_id":"*"}`, "unknown message type"},
		{"no task_id", websocket.TextMessage, `{"type":"subscribe"}`, "task_id"},
		{"bad task_id", websocket.TextMessage, `{"type":"subscribe","task_id":"../etc"}`, "task_id"},
		{"uppercase task_id", websocket.TextMessage, `{"type":"subscribe","task_id":"` + strings.ToUpper(hubTestTask1) + `"}`, "task_id"},
		{"nil task_id", websocket.TextMessage, `{"type":"unsubscribe","task_id":"00000000-0000-0000-0000-000000000000"}`, "task_id"},
		{"binary", websocket.BinaryMessage, `{"type":"subscribe","task_id":"*"}`, "binary"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, c.conn.WriteMessage(tt.typ, []byte(tt.data)))
			m := c.next(t)
			assert.Equal(t, "error", m.Type)
			assert.Contains(t, m.Message, tt.want)
		})
	}
	// Still connected and usable.
	c.subscribe(t, hubTestTask1)
	ts.hub.Publish(hubTestStatus(hubTestTask1, 5, task.StatusReady))
	assert.Equal(t, "ready", c.next(t).Status)
	assert.Equal(t, 1, ts.hub.Clients())
}

func TestHubSubscriptionLimit(t *testing.T) {
	ts := newHubTest(t, Config{}, func(h *Hub) { h.maxSubs = 2 })
	c := ts.dial(t)
	c.subscribe(t, hubTestTask1)
	c.subscribe(t, hubTestTask1) // again: not a new one
	c.subscribe(t, hubTestTask2)
	c.send(t, map[string]string{"type": "subscribe", "task_id": "33333333-3333-4333-8333-333333333333"})
	m := c.next(t)
	assert.Equal(t, "error", m.Type)
	assert.Contains(t, m.Message, "too many subscriptions")
	c.subscribe(t, "*") // always possible
	ts.hub.Publish(hubTestStatus("33333333-3333-4333-8333-333333333333", 3, task.StatusReady))
	assert.Equal(t, "ready", c.next(t).Status)
}

func TestHubRateLimit(t *testing.T) {
	// A burst of 5 and no refill, so that the 6th message is the offence,
	// and the last one sent: the hub closes a connection it has read
	// entirely, and the close frame is not lost to a TCP reset.
	ts := newHubTest(t, Config{}, func(h *Hub) { h.msgRate, h.msgBurst = rate.Every(time.Hour), 5 })
	c := ts.dial(t)
	for range 6 {
		c.send(t, map[string]string{"type": "subscribe", "task_id": "*"})
	}
	var ce *websocket.CloseError
	require.ErrorAs(t, c.ended(t), &ce)
	assert.Equal(t, websocket.ClosePolicyViolation, ce.Code)
	require.Eventually(t, func() bool { return ts.hub.Clients() == 0 }, hubTestWait, 5*time.Millisecond)
	assert.Equal(t, float64(1), ts.metric(t, "lpmos_ws_clients_dropped_total", "reason", "rate_limited"))
}

func TestHubStatusOrder(t *testing.T) {
	ts := newHubTest(t, Config{})
	c := ts.dial(t)
	c.subscribe(t, hubTestTask1)
	const n = 200 // within the default queue, whatever the scheduling
	for i := range n {
		ts.hub.Publish(hubTestStatus(hubTestTask1, int64(i+1), task.Statuses()[i%len(task.Statuses())]))
	}
	for i := range n {
		m := c.next(t)
		require.Equal(t, "status", m.Type)
		require.Equal(t, int64(i+1), m.Revision, "status messages lost or reordered")
		require.Equal(t, string(task.Statuses()[i%len(task.Statuses())]), m.Status)
	}
	c.sync(t)
}

func TestHubProgressCoalescing(t *testing.T) {
	ts := newHubTest(t, Config{ProgressInterval: 100 * time.Millisecond})
	c := ts.dial(t)
	c.subscribe(t, "*")
	ids := []string{hubTestTask1, hubTestTask2}
	const n = 50
	for i := range n {
		for _, id := range ids {
			ts.hub.Publish(hubTestProgress(id, int64(i+1), 2*(i+1)))
		}
	}
	got := map[string][]int{}
	for done := 0; done < len(ids); {
		m := c.next(t)
		require.Equal(t, "progress", m.Type)
		got[m.TaskID] = append(got[m.TaskID], m.Percentage)
		if m.Percentage == 2*n {
			done++
		}
	}
	c.sync(t) // nothing after the final progress
	for _, id := range ids {
		pcts := got[id]
		t.Logf("task %s: %d of %d progress messages sent: %v", id, len(pcts), n, pcts)
		assert.LessOrEqual(t, len(pcts), 5, "progress not coalesced")
		assert.IsIncreasing(t, pcts)
		assert.Equal(t, 2*n, pcts[len(pcts)-1], "the last progress must arrive")
	}
}

func TestHubStatusFlushesPendingProgress(t *testing.T) {
	ts := newHubTest(t, Config{ProgressInterval: time.Hour})
	c := ts.dial(t)
	c.subscribe(t, "*")
	ts.hub.Publish(hubTestProgress(hubTestTask1, 1, 30))
	ts.hub.Publish(hubTestProgress(hubTestTask2, 2, 31))
	ts.hub.Publish(hubTestProgress(hubTestTask1, 3, 40))
	ts.hub.Publish(hubTestStatus(hubTestTask1, 4, task.StatusFailed))
	// Progress and status in one change: the progress comes first.
	ts.hub.Publish(task.Change{TaskID: hubTestTask2, Revision: 5, Status: task.StatusCompleted,
		Progress: &task.Progress{Stage: task.StageCompleted, Percentage: 100}})

	want := []hubTestMsg{
		{Type: "progress", TaskID: hubTestTask1, Stage: "downloading", Percentage: 40, Message: "at 40%"},
		{Type: "status", TaskID: hubTestTask1, Status: "failed", Revision: 4},
		{Type: "progress", TaskID: hubTestTask2, Stage: "completed", Percentage: 100},
		{Type: "status", TaskID: hubTestTask2, Status: "completed", Revision: 5},
	}
	for _, w := range want {
		assert.Equal(t, w, c.next(t))
	}
	c.sync(t)
}

// hubTestBigHardware is a hardware report of about 40 KB, to fill socket
// buffers quickly.
func hubTestBigHardware() *hardware.Info {
	hw := &hardware.Info{CPU: hardware.CPU{Model: "big", Cores: 1}}
	for i := range 256 {
		hw.Disks = append(hw.Disks, hardware.Disk{
			Device: fmt.Sprintf("/dev/sd%d", i), SizeGB: 1000, Type: hardware.DiskHDD,
			Model: strings.Repeat("m", 100), Serial: fmt.Sprintf("S%08d", i)})
	}
	return hw
}

func TestHubSlowClient(t *testing.T) {
	ts := newHubTest(t, Config{QueueSize: 8, WriteTimeout: 5 * time.Second})

	// The slow client subscribes, reads the sync reply, and then never reads
	// again. (Its receive buffer is left alone: shrunk, it would make the
	// final read crawl, one delayed ACK per window.)
	slowConn, resp, err := hubTestDialer.Dial(ts.wsURL(), nil)
	require.NoError(t, err)
	resp.Body.Close()
	defer slowConn.Close()
	require.NoError(t, slowConn.WriteJSON(map[string]string{"type": "subscribe", "task_id": "*"}))
	_, data, err := slowConn.ReadMessage()
	require.NoError(t, err)
	require.JSONEq(t, `{"type":"subscribed","task_id":"*"}`, string(data))

	healthy := ts.dial(t)
	healthy.subscribe(t, "*")

	// The publisher runs apart so that a blocking Publish shows as a
	// timeout rather than a hung test. It goes in lockstep with the healthy
	// client (whose queue therefore never fills) until the slow one is
	// dropped, then publishes a few more.
	hw := hubTestBigHardware()
	const maxRounds, after = 5000, 20
	done := make(chan error, 1)
	go func() {
		extra := -1
		for rev := int64(1); rev <= maxRounds && extra < after; rev++ {
			ts.hub.Publish(task.Change{TaskID: hubTestTask1, Revision: rev, Status: task.StatusInstalling, Hardware: hw})
			for _, want := range []string{"hardware", "status"} {
				select {
				case m, ok := <-healthy.msgs:
					if !ok {
						done <- fmt.Errorf("healthy client disconnected: %v", healthy.err)
						return
					}
					if m.Type != want || (want == "status" && m.Revision != rev) {
						done <- fmt.Errorf("healthy client got %s rev %d, want %s rev %d", m.Type, m.Revision, want, rev)
						return
					}
				case <-time.After(hubTestWait):
					done <- fmt.Errorf("healthy client got nothing for rev %d", rev)
					return
				}
			}
			switch {
			case extra >= 0:
				extra++
			case ts.hub.Clients() == 1:
				extra = 0
			}
		}
		if extra < after {
			done <- errors.New("the slow client was never dropped")
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(3 * time.Minute):
		t.Fatal("Publish blocked")
	}

	assert.Equal(t, 1, ts.hub.Clients())
	assert.Equal(t, float64(1), ts.metric(t, "lpmos_ws_clients_dropped_total", "reason", "slow"))
	assert.Equal(t, float64(1), ts.metric(t, "lpmos_ws_clients"))

	// The slow client's connection is closed: reading on, it finds the end
	// after what was buffered (with a 1013 close frame if there was room).
	require.NoError(t, slowConn.SetReadDeadline(time.Now().Add(hubTestWait)))
	for {
		_, _, err := slowConn.ReadMessage()
		if err == nil {
			continue
		}
		var ne net.Error
		require.False(t, errors.As(err, &ne) && ne.Timeout(), "slow client's connection not closed: %v", err)
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			assert.Equal(t, websocket.CloseTryAgainLater, ce.Code)
		}
		break
	}
}

func TestHubKeepAlive(t *testing.T) {
	ts := newHubTest(t, Config{PingInterval: 500 * time.Millisecond})
	alive := ts.dial(t) // gorilla answers pings while reading
	alive.subscribe(t, "*")
	conn, resp, err := hubTestDialer.Dial(ts.wsURL(), nil)
	require.NoError(t, err)
	resp.Body.Close()
	conn.SetPingHandler(func(string) error { return nil }) // reads, but never answers
	deaf := hubTestStart(t, conn)

	require.Error(t, deaf.ended(t))
	require.Eventually(t, func() bool { return ts.hub.Clients() == 1 }, hubTestWait, 5*time.Millisecond)
	assert.Equal(t, float64(1), ts.metric(t, "lpmos_ws_clients_dropped_total", "reason", "pong_timeout"))

	// By now the answering client has outlived several ping periods.
	ts.hub.Publish(hubTestStatus(hubTestTask1, 1, task.StatusBooting))
	assert.Equal(t, "booting", alive.next(t).Status)
}

// hubTestGoroutines counts the goroutines of the program, not those of
// the runtime (which starts some lazily, so NumGoroutine would not do).
func hubTestGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	return strings.Count(stacks, "\n\ngoroutine ") + 1, stacks
}

func TestHubRunStops(t *testing.T) {
	before, _ := hubTestGoroutines()
	ts := newHubTest(t, Config{})
	var clients []*hubTestClient
	for range 5 {
		c := ts.dial(t)
		c.subscribe(t, "*")
		clients = append(clients, c)
	}
	// The clients may be mid-burst when the server stops.
	for i := range 100 {
		ts.hub.Publish(hubTestStatus(hubTestTask1, int64(i+1), task.StatusInstalling))
	}

	require.NoError(t, ts.stop())
	assert.Zero(t, ts.hub.Clients())
	for _, c := range clients {
		var ce *websocket.CloseError
		require.ErrorAs(t, c.ended(t), &ce)
		assert.Equal(t, websocket.CloseGoingAway, ce.Code)
	}
	assert.Error(t, ts.hub.Run(context.Background()), "Run twice")

	// Refused from now on.
	_, resp, err := hubTestDialer.Dial(ts.wsURL(), nil)
	require.ErrorIs(t, err, websocket.ErrBadHandshake)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)

	ts.srv.Close()
	// Polled here rather than with Eventually, whose own goroutine counts.
	for deadline := time.Now().Add(hubTestWait); ; time.Sleep(10 * time.Millisecond) {
		n, stacks := hubTestGoroutines()
		if n <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines leaked:\n%s", n-before, stacks)
		}
	}
}

func TestHubMetricsOptional(t *testing.T) {
	// No registerer: no metrics, nothing breaks. Two hubs on one registry
	// share the metrics.
	reg := prometheus.NewRegistry()
	for _, r := range []prometheus.Registerer{nil, reg, reg} {
		h := New(Config{Registerer: r, Logger: slog.New(slog.DiscardHandler)})
		srv := httptest.NewServer(hubTestAuth(h, auth.RoleViewer))
		conn, resp, err := hubTestDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Eventually(t, func() bool { return h.Clients() == 1 }, hubTestWait, 5*time.Millisecond)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.NoError(t, h.Run(ctx)) // accepted before Run, stopped by it
		_, _, err = conn.ReadMessage()
		assert.Error(t, err)
		conn.Close()
		srv.Close()
	}
	assert.Equal(t, float64(0), hubMetricValue(t, reg, "lpmos_ws_clients"))
}

func TestToken(t *testing.T) {
	tests := []struct {
		name      string
		protocols []string // Sec-WebSocket-Protocol header values
		want      string
	}{
		{"offered with the subprotocol", []string{"lpmos.v1, bearer.abc"}, "abc"},
		{"in its own header", []string{"lpmos.v1", "bearer.abc"}, "abc"},
		{"first one wins", []string{"bearer.abc,bearer.def"}, "abc"},
		{"none offered", []string{"lpmos.v1"}, ""},
		{"no header", nil, ""},
		{"prefix only", []string{"bearer."}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			for _, p := range tt.protocols {
				r.Header.Add("Sec-WebSocket-Protocol", p)
			}
			assert.Equal(t, tt.want, Token(r))
		})
	}
}

// A status message carries when the change was made (its newest timeline
// entry), so that a client can tell how late it arrived; a change without a
// timeline sends none.
func TestHubStatusAt(t *testing.T) {
	ts := newHubTest(t, Config{})
	c := ts.dial(t)
	c.subscribe(t, "*")
	at := time.Date(2026, 12, 4, 10, 0, 0, 123_000_000, time.UTC)
	ch := hubTestStatus(hubTestTask1, 7, task.StatusInstalling)
	ch.Timeline = []task.TimelineEntry{
		{Timestamp: at.Add(-time.Minute), Event: "created", Status: task.StatusPending},
		{Timestamp: at, Event: "installing", Status: task.StatusInstalling},
	}
	ts.hub.Publish(ch)
	m := c.next(t)
	require.Equal(t, "status", m.Type)
	assert.True(t, at.Equal(m.At), "at %v, want %v", m.At, at)

	ts.hub.Publish(hubTestStatus(hubTestTask1, 8, task.StatusCompleted))
	m = c.next(t)
	require.Equal(t, "completed", m.Status)
	assert.True(t, m.At.IsZero(), "at %v for a change without a timeline", m.At)
}

// TestBatchConn checks that what is written while a batch is held leaves
// in one write on release, and that the write deadline is applied. Over
// net.Pipe, a write returns only once the peer has read it, so writes that
// return with no reader were held.
func TestBatchConn(t *testing.T) {
	t.Run("held writes leave together", func(t *testing.T) {
		server, peer := net.Pipe()
		defer peer.Close()
		b := &batchConn{Conn: server}
		defer b.Close()
		b.hold()
		for _, s := range []string{"one ", "two ", "three"} {
			n, err := b.Write([]byte(s))
			require.NoError(t, err)
			assert.Equal(t, len(s), n)
		}
		released := make(chan error, 1)
		go func() { released <- b.release() }()
		buf := make([]byte, 64)
		n, err := peer.Read(buf)
		require.NoError(t, err)
		assert.Equal(t, "one two three", string(buf[:n]), "one read gets the whole batch")
		require.NoError(t, <-released)
	})
	t.Run("a full batch is written out", func(t *testing.T) {
		server, peer := net.Pipe()
		defer peer.Close()
		b := &batchConn{Conn: server}
		defer b.Close()
		got := make(chan []byte, 1)
		go func() {
			data, _ := io.ReadAll(peer)
			got <- data
		}()
		b.hold()
		chunk := strings.Repeat("x", 1000)
		var want strings.Builder
		for range 3 * batchSize / len(chunk) {
			_, err := b.Write([]byte(chunk))
			require.NoError(t, err)
			want.WriteString(chunk)
		}
		require.NoError(t, b.release())
		require.NoError(t, b.Close())
		assert.Equal(t, want.String(), string(<-got))
	})
	t.Run("the write deadline applies", func(t *testing.T) {
		server, peer := net.Pipe()
		defer peer.Close()
		b := &batchConn{Conn: server}
		defer b.Close()
		require.NoError(t, b.SetWriteDeadline(time.Now().Add(-time.Second)))
		_, err := b.Write([]byte("late"))
		var ne net.Error
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout())

		b.hold()
		_, err = b.Write([]byte("held"))
		require.NoError(t, err, "a held write waits for the release")
		err = b.release()
		require.ErrorAs(t, err, &ne)
		assert.True(t, ne.Timeout())
	})
	t.Run("without a deadline, the timeout applies from the write", func(t *testing.T) {
		server, peer := net.Pipe()
		defer peer.Close()
		b := (&batchConn{Conn: server}).withTimeout(time.Hour)
		defer b.Close()
		require.NoError(t, b.SetWriteDeadline(time.Now().Add(-time.Second)))
		require.NoError(t, b.SetWriteDeadline(time.Time{}), "what gorilla sets before a message's frame")
		go io.Copy(io.Discard, peer)
		_, err := b.Write([]byte("in time"))
		require.NoError(t, err)
		b.mu.Lock()
		defer b.mu.Unlock()
		assert.WithinDuration(t, time.Now().Add(time.Hour), b.applied, 10*time.Minute)
	})
}
