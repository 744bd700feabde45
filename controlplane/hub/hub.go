// Package hub is the control plane's WebSocket endpoint (/ws): it streams
// task changes to subscribed browsers. It is fed by the control plane's one
// task watch (Publish) and never reads the store itself; it serves callers
// that the control plane has already authenticated (an auth.Principal in
// the request context). It must never slow the watch that feeds it: the
// delivery rules are on Hub.
//
// The protocol: a client offers the subprotocols ["lpmos.v1",
// "bearer.<token>"] (browsers cannot set headers on a WebSocket) and the
// server selects "lpmos.v1". Client messages are {"type": "subscribe" or
// "unsubscribe", "task_id": a task ID or "*"}; server messages are
//
//	{"type": "subscribed" or "unsubscribed", "task_id"}
//	{"type": "status",   "task_id", "status", "region_id", "revision", "at"}
//	{"type": "progress", "task_id", "stage", "percentage", "message"}
//	{"type": "hardware", "task_id", "hardware": {...}}
//	{"type": "error",    "message"}
//
// A "subscribed" message acknowledges a subscription at the exact point it
// took effect: every change published after it reaches the client, none
// before it does. A client that loads over REST once the acknowledgement
// arrived misses nothing. "at" is when the change was made (its newest
// timeline entry), so a client can tell how late a message reached it.
package hub

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/task"
)

// Config configures a Hub. The zero value is usable.
type Config struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the hub's metrics; nil means no metrics.
	Registerer prometheus.Registerer
	// QueueSize is how many messages may wait for one client before it is
	// too slow to keep (default DefaultQueueSize).
	QueueSize int
	// ProgressInterval is the coalescing window of progress messages per
	// client (default 1s).
	ProgressInterval time.Duration
	// PingInterval is how often each client is pinged (default 20s); a
	// client that sends nothing, not even a pong, for twice as long is
	// disconnected.
	PingInterval time.Duration
	// WriteTimeout bounds every write to a client (default 10s): a write
	// to the socket that cannot complete within it fails, and the client
	// is dropped. The deadline is renewed once a tenth of it has passed
	// rather than for every write, so a write may get nine tenths of it.
	WriteTimeout time.Duration
	// CheckOrigin accepts or refuses a handshake by its Origin header. The
	// default accepts requests without Origin (not from a browser) and those
	// whose Origin host is the request's Host, so that another site open in
	// the operator's browser cannot ride on its credentials.
	CheckOrigin func(*http.Request) bool
}

// DefaultQueueSize is Config.QueueSize's default. A bulk approval moves up
// to a thousand tasks within a second, and a client following "*" gets a
// status message for each at once: the queue holds a few such bursts
// (about 56 bytes a message, the message itself being shared), so that
// only a client that really stopped reading is dropped.
const DefaultQueueSize = 4096

// Subprotocol is the one subprotocol the hub selects. A client offers it
// along with "bearer.<token>", which is never echoed back (see Token).
const Subprotocol = "lpmos.v1"

// Token returns the bearer token a WebSocket handshake offers as a
// "bearer.<token>" subprotocol, or "": browsers cannot set an
// Authorization header on a WebSocket.
func Token(r *http.Request) string {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), "bearer."); ok {
				return tok
			}
		}
	}
	return ""
}

const (
	// readLimit bounds a client message; subscribe messages are tiny.
	readLimit = 4 << 10
	// maxSubscriptions bounds the task IDs one client follows; a client
	// that wants more subscribes to "*".
	maxSubscriptions = 1000
	// A client may send clientRate messages per second, in bursts of
	// clientBurst (a page subscribing to each task it lists); one that
	// keeps sending faster is disconnected.
	clientRate  = 20
	clientBurst = 100
	// closeTimeout bounds the close frame, and how long Run waits for
	// clients to close cleanly before it closes their sockets.
	closeTimeout = time.Second
	// maxRegions bounds the task → region memory (see Hub.regions).
	maxRegions = 100_000
)

// msgKind is the type of a server message.
type msgKind uint8

const (
	kindStatus msgKind = iota
	kindProgress
	kindHardware
	kindError
	kindAck
	numKinds
)

var kindNames = [numKinds]string{"status", "progress", "hardware", "error", "ack"}

// Reasons for lpmos_ws_clients_dropped_total: the hub closed a client.
const (
	dropSlow        = "slow"         // its queue had no room for a status or hardware message
	dropWriteFailed = "write_failed" // a write failed or timed out
	dropPongTimeout = "pong_timeout" // it stopped answering pings
	dropRateLimited = "rate_limited" // it sent too many messages
	dropTooLarge    = "too_large"    // it sent a message over readLimit
)

// outMsg is one server message. A message published to every interested
// client is framed once (pm) and the frame shared by all of them; a reply
// to one client is just its bytes (data). Neither is ever modified.
type outMsg struct {
	kind   msgKind
	taskID string
	pm     *websocket.PreparedMessage
	data   []byte
}

// Hub is the /ws endpoint: it streams the control plane's task watch to
// subscribed browsers. Run must be running for it to be stopped cleanly
// (http.Server.Shutdown does not wait for hijacked connections); ServeHTTP
// refuses new clients once Run has returned.
//
// The delivery rules follow from one constraint: Publish is called by the
// control plane's watch loop, which also feeds its list cache and its
// webhooks, so nothing a browser does may slow it down. Publish therefore
// never touches the network: it marshals and frames each message once (a
// PreparedMessage) and appends the shared frame to the bounded queue of
// every interested client, under that client's lock only. One writer
// goroutine per client drains its queue onto the socket (gorilla allows one
// concurrent writer), the frames of all the messages waiting at once in one
// write (see batchConn); the ServeHTTP goroutine stays on as the client's
// reader. What happens when a client cannot keep up depends on what would be
// lost:
//
//   - Status and hardware messages (and error replies) are never dropped. A
//     client whose queue has no room for one is disconnected with close
//     code 1013 ("try again later"): the dashboard reloads over REST and
//     reconnects, which is cheaper and more honest than a gap it cannot
//     see. If its writer is stuck on a full socket, the connection closes
//     when that write times out (WriteTimeout); Publish never waits for it.
//   - Progress is a level, not an event: only the latest value matters. It
//     is coalesced per client and task: a progress message waits in the
//     client's pending map, a newer one for the same task replaces it, and
//     the pending ones are queued when the client's window ends. A window
//     opens with the first progress pending after a quiet spell and lasts
//     ProgressInterval, so progress is at most that late, comes at most
//     once per task per window (but see the next rule), and the last of a
//     burst is never lost. A pending progress that finds the queue full
//     waits for the next window rather than costing the connection.
//   - Order per task is kept: before a status or hardware message of a task
//     is queued, that task's pending progress is queued first (even
//     mid-window), so the 100% of an install arrives before its
//     "completed". Within one change, hardware and progress precede the
//     status.
//
// A client receives nothing until it subscribes, and nothing that happened
// before: a dashboard subscribes first and then loads over REST, so that no
// change falls between the two.
type Hub struct {
	cfg      Config
	log      *slog.Logger
	upgrader websocket.Upgrader
	metrics  *metrics

	// Limits on a client, fields so that tests can lower them.
	maxSubs  int
	msgRate  rate.Limit
	msgBurst int

	mu      sync.RWMutex
	clients map[*client]struct{} // receiving messages
	live    map[*client]struct{} // whose writer has not yet closed the socket
	running bool
	stopped bool
	// wg counts the ServeHTTP calls past the authentication check (each
	// becomes a client's reader) and the clients' writers.
	wg sync.WaitGroup

	// regions remembers each live task's region from its creation, since a
	// status change does not carry it. Tasks created before this control
	// plane started are unknown here and their messages omit region_id.
	regionMu sync.Mutex
	regions  map[string]string
}

// New returns a hub; start it with Run.
func New(cfg Config) *Hub {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 20 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.CheckOrigin == nil {
		cfg.CheckOrigin = sameOrigin
	}
	h := &Hub{
		cfg:      cfg,
		log:      cfg.Logger,
		metrics:  newMetrics(cfg.Registerer),
		maxSubs:  maxSubscriptions,
		msgRate:  clientRate,
		msgBurst: clientBurst,
		clients:  map[*client]struct{}{},
		live:     map[*client]struct{}{},
		regions:  map[string]string{},
	}
	h.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.WriteTimeout,
		// Client messages are small: a small read buffer. Writes borrow a
		// buffer from the pool only while writing, so idle clients, the
		// common case, hold none.
		ReadBufferSize:  1024,
		WriteBufferSize: 4096,
		WriteBufferPool: &sync.Pool{},
		// Only "lpmos.v1" can be selected: the "bearer.<token>" the client
		// also offers is never echoed back.
		Subprotocols: []string{Subprotocol},
		CheckOrigin:  cfg.CheckOrigin,
		Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
			code := httpjson.CodeInvalidRequest
			if status == http.StatusForbidden {
				code = httpjson.CodeForbidden
			}
			httpjson.WriteError(w, httpjson.Errorf(status, code, "%v", reason))
		},
	}
	return h
}

// sameOrigin is the default CheckOrigin.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// Run serves until ctx ends, then closes every client connection (close
// code 1001) and returns once all the hub's goroutines have exited. It
// returns an error only if it is called twice.
func (h *Hub) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.running || h.stopped {
		h.mu.Unlock()
		return errors.New("websocket hub: Run called twice")
	}
	h.running = true
	h.mu.Unlock()

	<-ctx.Done()

	h.mu.Lock()
	h.stopped = true
	clients := make([]*client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	h.mu.Unlock()
	for _, c := range clients {
		if c.markClosing(websocket.CloseGoingAway, "server shutting down") {
			h.remove(c, "")
		}
	}

	// Writers send their close frame and close their socket; one stuck
	// writing to a client that does not read would hold on for up to
	// WriteTimeout, so after a grace period the sockets are closed under
	// them.
	done := make(chan struct{})
	go func() {
		h.wg.Wait()
		close(done)
	}()
	grace := time.NewTimer(2 * closeTimeout)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		h.mu.RLock()
		for c := range h.live {
			c.conn.Close()
		}
		h.mu.RUnlock()
		<-done
	}
	return nil
}

// Clients returns the number of connected clients.
func (h *Hub) Clients() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.clients)
}

// Publish sends a task change to the clients subscribed to its task. It is
// called from the watch loop and never waits for a client: it only appends
// to queues, dropping the clients whose queue is full (the delivery rules
// are on Hub). A change carrying Err is ignored. It is safe for concurrent
// use, though one caller keeps the order of changes.
func (h *Hub) Publish(ch task.Change) {
	if ch.Err != nil || ch.TaskID == "" {
		return
	}
	var buf [3]outMsg
	msgs := h.translate(ch, buf[:0])
	if len(msgs) == 0 {
		return
	}
	var slow []*client
	h.mu.RLock()
	for c := range h.clients {
		if !c.deliver(msgs) {
			slow = append(slow, c)
		}
	}
	h.mu.RUnlock()
	for _, c := range slow {
		h.remove(c, dropSlow)
	}
}

// The server messages, as in the package doc.
type (
	statusMsg struct {
		Type     string      `json:"type"`
		TaskID   string      `json:"task_id"`
		Status   task.Status `json:"status"`
		RegionID string      `json:"region_id,omitempty"`
		Revision int64       `json:"revision"`
		At       time.Time   `json:"at,omitzero"`
	}
	progressMsg struct {
		Type       string     `json:"type"`
		TaskID     string     `json:"task_id"`
		Stage      task.Stage `json:"stage"`
		Percentage int        `json:"percentage"`
		Message    string     `json:"message"`
	}
	hardwareMsg struct {
		Type     string         `json:"type"`
		TaskID   string         `json:"task_id"`
		Hardware *hardware.Info `json:"hardware"`
	}
	errorMsg struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	ackMsg struct {
		Type   string `json:"type"` // "subscribed" or "unsubscribed"
		TaskID string `json:"task_id"`
	}
)

// translate appends ch's messages to msgs, each marshalled once. Within a
// change, hardware and progress come before the status, so that a final
// progress or a hardware report reaches the client before the status it led
// to.
func (h *Hub) translate(ch task.Change, msgs []outMsg) []outMsg {
	add := func(kind msgKind, v any) {
		data, err := json.Marshal(v)
		var pm *websocket.PreparedMessage
		if err == nil {
			pm, err = websocket.NewPreparedMessage(websocket.TextMessage, data)
		}
		if err != nil { // cannot happen with these types; never send half a change
			h.log.Error("cannot marshal websocket message", "task_id", ch.TaskID, "type", kindNames[kind], "err", err)
			return
		}
		msgs = append(msgs, outMsg{kind: kind, taskID: ch.TaskID, pm: pm})
	}
	if ch.Hardware != nil {
		add(kindHardware, hardwareMsg{Type: "hardware", TaskID: ch.TaskID, Hardware: ch.Hardware})
	}
	if p := ch.Progress; p != nil {
		add(kindProgress, progressMsg{Type: "progress", TaskID: ch.TaskID, Stage: p.Stage, Percentage: p.Percentage, Message: p.Message})
	}
	region := h.region(ch)
	if ch.Status != "" {
		add(kindStatus, statusMsg{Type: "status", TaskID: ch.TaskID, Status: ch.Status, RegionID: region, Revision: ch.Revision, At: ch.At()})
	}
	return msgs
}

// region returns the task's region, learning it from a creation and
// forgetting it when the task ends.
func (h *Hub) region(ch task.Change) string {
	h.regionMu.Lock()
	defer h.regionMu.Unlock()
	if md := ch.Metadata; md != nil && md.RegionID != "" && len(h.regions) < maxRegions {
		h.regions[ch.TaskID] = md.RegionID
	}
	r := h.regions[ch.TaskID]
	if ch.Deleted || ch.Status.Terminal() {
		delete(h.regions, ch.TaskID)
	}
	return r
}

// ServeHTTP is the /ws endpoint. The caller must be authenticated by the
// middleware before it (a Principal in the request context) and be at least
// a viewer.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p, ok := auth.PrincipalFrom(r.Context())
	if !ok {
		httpjson.WriteError(w, httpjson.Errorf(http.StatusUnauthorized, httpjson.CodeUnauthorized,
			"authentication required: offer the subprotocols %q and \"bearer.<token>\"", Subprotocol))
		return
	}
	if p.Role < auth.RoleViewer {
		httpjson.WriteError(w, httpjson.Errorf(http.StatusForbidden, httpjson.CodeForbidden, "live updates need the viewer role"))
		return
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		httpjson.WriteError(w, httpjson.Errorf(http.StatusServiceUnavailable, httpjson.CodeUnavailable, "the server is shutting down"))
		return
	}
	h.wg.Add(1) // this goroutine, which becomes the client's reader
	h.mu.Unlock()
	defer h.wg.Done()

	hw := &hijacker{ResponseWriter: w}
	conn, err := h.upgrader.Upgrade(hw, r, nil) // on error, the upgrader has answered
	if err != nil {
		h.log.Debug("websocket handshake failed", "subject", p.Subject, "remote", r.RemoteAddr, "err", err)
		return
	}
	c := &client{
		hub:     h,
		conn:    conn,
		batch:   hw.conn.withTimeout(h.cfg.WriteTimeout),
		subject: p.Subject,
		limiter: rate.NewLimiter(h.msgRate, h.msgBurst),
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseGoingAway, "server shutting down"), time.Now().Add(closeTimeout))
		conn.Close()
		return
	}
	h.clients[c] = struct{}{}
	h.live[c] = struct{}{}
	h.metrics.connected() // under mu, so that the gauge agrees with Clients
	h.wg.Add(1)
	h.mu.Unlock()
	h.log.Debug("websocket client connected", "subject", p.Subject, "remote", r.RemoteAddr)

	go c.writeLoop()
	c.readLoop()
}

// remove takes c, already marked closing, out of the hub and wakes its
// writer to close the connection. reason is empty unless the hub dropped c.
func (h *Hub) remove(c *client, reason string) {
	h.mu.Lock()
	delete(h.clients, c)
	h.metrics.disconnected(reason)
	h.mu.Unlock()
	close(c.done)
	if reason != "" {
		h.log.Warn("websocket client dropped", "subject", c.subject, "remote", c.conn.RemoteAddr().String(), "reason", reason)
	} else {
		h.log.Debug("websocket client disconnected", "subject", c.subject, "remote", c.conn.RemoteAddr().String())
	}
}

// client is one connection. Publish and the reader fill its queue under
// mu; only its writer goroutine writes to conn.
type client struct {
	hub     *Hub
	conn    *websocket.Conn
	batch   *batchConn // under conn, used by the writer only
	subject string
	limiter *rate.Limiter // used by the reader only
	wake    chan struct{} // capacity 1: the queue or pending map changed
	done    chan struct{} // closed by Hub.remove

	mu   sync.Mutex
	all  bool                // subscribed to "*"
	subs map[string]struct{} // task IDs subscribed to
	// queue[head:] are the messages waiting for the writer.
	queue []outMsg
	head  int
	// pending holds the latest progress of each task, waiting for the end
	// of the client's window.
	pending   map[string]outMsg
	closing   bool
	closeCode int // 0: close the socket without a close frame
	closeText string
}

func (c *client) wantsLocked(taskID string) bool {
	if c.all {
		return true
	}
	_, ok := c.subs[taskID]
	return ok
}

func (c *client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// markClosing makes c refuse further messages and records how its writer
// should close the connection. Only the caller that gets true may remove c.
func (c *client) markClosing(code int, text string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.markClosingLocked(code, text)
}

func (c *client) markClosingLocked(code int, text string) bool {
	if c.closing {
		return false
	}
	c.closing, c.closeCode, c.closeText = true, code, text
	c.queue, c.head, c.pending = nil, 0, nil // nothing more will be written
	return true
}

// deliver queues the messages of one change that c subscribed to. It
// returns false if a message that must not be lost found the queue full:
// c is then marked closing and the caller must remove it.
func (c *client) deliver(msgs []outMsg) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return true
	}
	wake := false
	for _, m := range msgs {
		if !c.wantsLocked(m.taskID) {
			continue
		}
		if m.kind == kindProgress {
			if len(c.pending) == 0 {
				wake = true // the writer opens a window
				if c.pending == nil {
					c.pending = map[string]outMsg{}
				}
			}
			c.pending[m.taskID] = m
			continue
		}
		if !c.pushLocked(m) {
			return false
		}
		wake = true
	}
	if wake {
		c.signal()
	}
	return true
}

// pushLocked queues m, preceded by its task's pending progress so that the
// task's messages keep their order. It returns false, having marked c
// closing, if they do not fit.
func (c *client) pushLocked(m outMsg) bool {
	p, hasProgress := c.pending[m.taskID]
	need := 1
	if hasProgress {
		need = 2
	}
	if len(c.queue)-c.head+need > c.hub.cfg.QueueSize {
		c.markClosingLocked(websocket.CloseTryAgainLater, "too slow: reload over REST and reconnect")
		return false
	}
	if hasProgress {
		delete(c.pending, m.taskID)
		c.appendLocked(p)
	}
	c.appendLocked(m)
	return true
}

func (c *client) appendLocked(m outMsg) {
	if len(c.queue) == cap(c.queue) && c.head > 0 {
		n := copy(c.queue, c.queue[c.head:])
		clear(c.queue[n:])
		c.queue, c.head = c.queue[:n], 0
	}
	c.queue = append(c.queue, m)
}

// flushProgress ends the client's progress window: the pending progress
// of the tasks it still follows is queued. What does not fit stays pending
// for the next window: progress may wait, it is not worth a disconnection.
func (c *client) flushProgress() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, m := range c.pending {
		if !c.wantsLocked(id) {
			delete(c.pending, id)
			continue
		}
		if len(c.queue)-c.head >= c.hub.cfg.QueueSize {
			break
		}
		c.appendLocked(m)
		delete(c.pending, id)
	}
}

// next pops the next queued message, if any, and says how many are queued
// after it, whether progress is pending and whether the client is closing.
func (c *client) next() (m outMsg, ok bool, queued int, pending, closing bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return outMsg{}, false, 0, false, true
	}
	pending = len(c.pending) > 0
	if c.head == len(c.queue) {
		return outMsg{}, false, 0, pending, false
	}
	m = c.queue[c.head]
	c.queue[c.head] = outMsg{}
	c.head++
	if c.head == len(c.queue) {
		c.queue, c.head = c.queue[:0], 0
		if cap(c.queue) > 64 {
			c.queue = nil // give back what a burst grew: most clients are idle most of the time
		}
	}
	return m, true, len(c.queue) - c.head, pending, false
}

// writeLoop is the client's only writer: queued messages, pings, the end
// of progress windows and finally the close frame.
func (c *client) writeLoop() {
	h := c.hub
	defer func() {
		c.conn.Close() // ends the reader too
		h.mu.Lock()
		delete(h.live, c)
		h.mu.Unlock()
		h.wg.Done()
	}()
	ping := time.NewTicker(h.cfg.PingInterval)
	defer ping.Stop()
	window := time.NewTimer(h.cfg.ProgressInterval)
	window.Stop()
	defer window.Stop()
	windowOpen := false

	fail := func(err error) {
		h.log.Debug("websocket write failed", "subject", c.subject, "err", err)
		if c.markClosing(0, "") {
			h.remove(c, dropWriteFailed)
		}
	}
	// The messages queued at once leave in one write: the batch is held
	// from the first of them to the last, not for those queued meanwhile,
	// which would make the first ones wait.
	held := 0   // messages of the held batch still to write
	streak := 0 // messages written since the writer last waited
	for {
		m, ok, queued, pending, closing := c.next()
		if held > 0 && !ok { // only when closing: the writer alone pops
			held = 0
			if err := c.batch.release(); err != nil && !closing {
				fail(err)
				return
			}
		}
		if closing {
			c.mu.Lock()
			code, text := c.closeCode, c.closeText
			c.mu.Unlock()
			if code != 0 {
				deadline := time.Now().Add(min(closeTimeout, h.cfg.WriteTimeout))
				_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), deadline)
			}
			return
		}
		if pending && !windowOpen {
			window.Reset(h.cfg.ProgressInterval)
			windowOpen = true
		}
		if ok {
			if held == 0 && queued > 0 {
				c.batch.hold()
				held = 1 + queued
			}
			if err := c.write(m); err != nil {
				fail(err)
				return
			}
			if held > 0 {
				if held--; held == 0 {
					if err := c.batch.release(); err != nil {
						fail(err)
						return
					}
				}
			}
			// With nothing more queued, the wait below sees to pings and
			// windows, unless messages keep coming just in time.
			if streak++; queued == 0 && streak < 64 {
				continue
			}
			// A client that is always busy still gets its pings and its
			// progress windows.
			select {
			case <-ping.C:
				if err := c.ping(); err != nil {
					fail(err)
					return
				}
			case <-window.C:
				windowOpen = false
				c.flushProgress()
			default:
			}
			continue
		}
		streak = 0
		select {
		case <-c.wake:
		case <-c.done:
		case <-window.C:
			windowOpen = false
			c.flushProgress()
		case <-ping.C:
			if err := c.ping(); err != nil {
				fail(err)
				return
			}
		}
	}
}

func (c *client) write(m outMsg) error {
	// No deadline is set here: batchConn bounds each write to the socket
	// by WriteTimeout, from when it happens.
	var err error
	if m.pm != nil {
		err = c.conn.WritePreparedMessage(m.pm)
	} else {
		err = c.conn.WriteMessage(websocket.TextMessage, m.data)
	}
	if err != nil {
		return err
	}
	c.hub.metrics.sent(m.kind)
	return nil
}

func (c *client) ping() error {
	return c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.hub.cfg.WriteTimeout))
}

// hijacker hands the upgrader a batchConn around the hijacked connection.
type hijacker struct {
	http.ResponseWriter
	conn *batchConn
}

func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the response writer cannot be hijacked")
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.conn = &batchConn{Conn: nc}
	return h.conn, brw, nil
}

// batchSize is the most a batch holds before it is written out.
const batchSize = 16 << 10

var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, batchSize); return &b }}

// batchConn is a client's connection under its websocket.Conn. Between
// hold and release, it gathers what gorilla writes (one frame a message,
// and the pongs its reader sends) and writes it out in one go, when
// release is called or batchSize is reached: a burst of queued messages
// costs one system call rather than one per message.
//
// It also owns the write deadline: gorilla sets one before every frame,
// that of the message (none: the hub sets none on the websocket.Conn) or
// that of a control frame. Without one, a write to the socket gets timeout
// from when it happens (not from when its message was framed, which may be
// long before on a loaded machine), renewed only once a tenth of it has
// passed; a control frame's deadline applies as given.
type batchConn struct {
	net.Conn

	mu       sync.Mutex
	timeout  time.Duration
	holding  bool
	buf      *[]byte   // from batchPool while holding
	deadline time.Time // the last one gorilla set
	applied  time.Time // the one the connection has
}

func (b *batchConn) withTimeout(d time.Duration) *batchConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timeout = d
	return b
}

func (b *batchConn) hold() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holding = true
}

// release writes out what was held and stops holding.
func (b *batchConn) release() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holding = false
	err := b.flushLocked()
	if b.buf != nil {
		*b.buf = (*b.buf)[:0]
		batchPool.Put(b.buf)
		b.buf = nil
	}
	return err
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.holding && len(p) <= batchSize {
		if b.buf == nil {
			b.buf = batchPool.Get().(*[]byte)
		}
		if len(*b.buf)+len(p) > batchSize {
			if err := b.flushLocked(); err != nil {
				return 0, err
			}
		}
		*b.buf = append(*b.buf, p...)
		return len(p), nil
	}
	if err := b.flushLocked(); err != nil {
		return 0, err
	}
	return b.writeLocked(p)
}

func (b *batchConn) flushLocked() error {
	if b.buf == nil || len(*b.buf) == 0 {
		return nil
	}
	_, err := b.writeLocked(*b.buf)
	*b.buf = (*b.buf)[:0]
	return err
}

func (b *batchConn) writeLocked(p []byte) (int, error) {
	d := b.deadline
	if d.IsZero() && b.timeout > 0 {
		d = b.applied
		if now := time.Now(); d.Sub(now) < b.timeout-b.timeout/10 {
			d = now.Add(b.timeout)
		}
	}
	if !d.Equal(b.applied) {
		if err := b.Conn.SetWriteDeadline(d); err != nil {
			return 0, err
		}
		b.applied = d
	}
	return b.Conn.Write(p)
}

func (b *batchConn) SetWriteDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.deadline = t
	return nil
}

func (b *batchConn) SetDeadline(t time.Time) error {
	if err := b.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return b.SetWriteDeadline(t)
}

// clientMsg is what a client sends.
type clientMsg struct {
	Type   string `json:"type"`
	TaskID string `json:"task_id"`
}

// readLoop runs in the ServeHTTP goroutine until the connection ends.
func (c *client) readLoop() {
	h := c.hub
	pongWait := 2 * h.cfg.PingInterval
	c.conn.SetReadLimit(readLimit)
	_ = c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(pongWait))
	})
	for {
		typ, data, err := c.conn.ReadMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(pongWait))
		if !c.limiter.Allow() {
			if c.markClosing(websocket.ClosePolicyViolation, "too many messages") {
				h.remove(c, dropRateLimited)
			}
			return
		}
		msg := "binary messages are not supported"
		if typ == websocket.TextMessage {
			var ok bool
			if msg, ok = c.handle(data); !ok {
				c.hub.remove(c, dropSlow)
				return
			}
		}
		if msg != "" && !c.reply(msg) {
			return
		}
	}
}

// readFailed ends a client whose read failed: a close or reset by the
// client, a read deadline passed without pong, or an oversized message.
func (c *client) readFailed(err error) {
	reason := ""
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		reason = dropTooLarge // gorilla has sent the close frame
	case errors.As(err, &ne) && ne.Timeout():
		reason = dropPongTimeout
	}
	if c.markClosing(0, "") { // false: the hub closed it first
		c.hub.remove(c, reason)
	}
}

// handle applies a client message and returns the error to report, if
// any. A subscription that took effect is acknowledged in the same critical
// section as it changed, so the acknowledgement sits exactly between the
// changes the client gets and those it does not; ok is false if the
// acknowledgement did not fit in the queue (c is then closing and must be
// removed).
func (c *client) handle(data []byte) (reply string, ok bool) {
	var m clientMsg
	if err := json.Unmarshal(data, &m); err != nil {
		return `malformed message: want {"type": "subscribe" or "unsubscribe", "task_id": a task ID or "*"}`, true
	}
	if m.Type != "subscribe" && m.Type != "unsubscribe" {
		return fmt.Sprintf("unknown message type %q: want subscribe or unsubscribe", truncate(m.Type)), true
	}
	if m.TaskID != "*" {
		if err := lpmos.ValidateTaskID(m.TaskID); err != nil {
			return fmt.Sprintf(`task_id: %v; want a task ID or "*"`, err), true
		}
	}
	ack, err := json.Marshal(ackMsg{Type: m.Type + "d", TaskID: m.TaskID})
	if err != nil { // cannot happen: two strings
		return "", true
	}
	c.mu.Lock()
	switch {
	case m.TaskID == "*":
		c.all = m.Type == "subscribe"
	case m.Type == "unsubscribe":
		delete(c.subs, m.TaskID)
	default:
		if _, ok := c.subs[m.TaskID]; !ok && len(c.subs) >= c.hub.maxSubs {
			c.mu.Unlock()
			return fmt.Sprintf(`too many subscriptions (at most %d): subscribe to "*" instead`, c.hub.maxSubs), true
		}
		if c.subs == nil {
			c.subs = map[string]struct{}{}
		}
		c.subs[m.TaskID] = struct{}{}
	}
	ok = c.closing || c.pushLocked(outMsg{kind: kindAck, taskID: m.TaskID, data: ack})
	c.mu.Unlock()
	if ok {
		c.signal()
	}
	return "", ok
}

// reply queues an error message for the client. Like a status it must not
// be lost, so a full queue drops the client; reply then returns false.
func (c *client) reply(message string) bool {
	data, err := json.Marshal(errorMsg{Type: "error", Message: message})
	if err != nil {
		return true
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	ok := c.pushLocked(outMsg{kind: kindError, data: data})
	c.mu.Unlock()
	if !ok {
		c.hub.remove(c, dropSlow)
		return false
	}
	c.signal()
	return true
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// metrics are the hub's metrics; a nil *metrics records nothing.
type metrics struct {
	clients prometheus.Gauge
	sentBy  [numKinds]prometheus.Counter
	dropped *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		clients: register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lpmos_ws_clients",
			Help: "WebSocket clients connected to the hub.",
		})),
		dropped: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_ws_clients_dropped_total",
			Help: "WebSocket clients the hub disconnected, by reason (slow, write_failed, pong_timeout, rate_limited, too_large).",
		}, []string{"reason"})),
	}
	sent := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lpmos_ws_messages_sent_total",
		Help: "Messages written to WebSocket clients, by type.",
	}, []string{"type"}))
	for k, name := range kindNames {
		m.sentBy[k] = sent.WithLabelValues(name)
	}
	for _, r := range []string{dropSlow, dropWriteFailed, dropPongTimeout, dropRateLimited, dropTooLarge} {
		m.dropped.WithLabelValues(r) // present at zero, so that rates work from the start
	}
	return m
}

// register registers c, or returns the collector already registered
// under its name (a second hub on the same registry shares the metrics).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(fmt.Sprintf("register websocket hub metrics: %v", err))
	}
	return c
}

func (m *metrics) connected() {
	if m != nil {
		m.clients.Inc()
	}
}

func (m *metrics) disconnected(reason string) {
	if m == nil {
		return
	}
	m.clients.Dec()
	if reason != "" {
		m.dropped.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) sent(k msgKind) {
	if m != nil {
		m.sentBy[k].Inc()
	}
}
