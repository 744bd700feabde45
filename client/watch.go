package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	"github.com/gorilla/websocket"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/task"
)

// Limits of a watch, matching the hub's.
const (
	// MaxWatchTasks is the most task IDs one Watch follows (the hub's
	// limit per connection); to follow more, watch All.
	MaxWatchTasks = 1000
	// wsSubprotocol is the protocol the hub speaks.
	wsSubprotocol = "lpmos.v1"
	// wsReadLimit bounds one server message; a hardware report is the
	// largest, a few KiB to a few hundred.
	wsReadLimit = 4 << 20
	// wsIdleTimeout is how long a connection may stay silent, pings
	// included, before it counts as dead: the hub pings every 20 s.
	wsIdleTimeout = 70 * time.Second
	// wsWriteTimeout bounds a subscribe message or a pong.
	wsWriteTimeout = 10 * time.Second
	// wsDialTimeout bounds the handshake of one connection attempt.
	wsDialTimeout = 30 * time.Second
	// resyncByGet is how many tasks a resync reads one by one; beyond it
	// a resync pages through the list instead, which costs fewer
	// requests against the per-caller rate limit.
	resyncByGet = 16
)

// Subscription says which tasks Watch follows: the tasks named by TaskIDs,
// or every task (All), not both.
type Subscription struct {
	TaskIDs []string
	All     bool
	// Seen holds the revision of each task the caller already knows (a
	// Task's or list entry's Revision); a resync reports a task only once
	// its revision passes it. A task missing from Seen is reported as it
	// is when the watch starts. Watch does not modify the map.
	Seen map[string]int64
}

// EventType is the kind of an Event.
type EventType string

// The kinds of events.
const (
	// EventStatus: a task's status changed (Status is set).
	EventStatus EventType = "status"
	// EventProgress: the install reported progress (Progress is set). It
	// is a level, coalesced by the server to about one per second.
	EventProgress EventType = "progress"
	// EventHardware: the agent reported the machine (Hardware is set).
	EventHardware EventType = "hardware"
	// EventLive: the watch is connected, the server has acknowledged the
	// subscription and the resync is done: every change from here on is
	// reported. It follows the start and every reconnection.
	EventLive EventType = "live"
	// EventDisconnected: the connection dropped (Err says why); Watch
	// reconnects, resyncs and reports EventLive again.
	EventDisconnected EventType = "disconnected"
)

// Event is what a Watcher reports. Which fields are set depends on Type.
type Event struct {
	Type     EventType
	TaskID   string
	Status   *StatusChange
	Progress *task.Progress // Stage, Percentage and Message
	Hardware *hardware.Info
	Err      error
}

// StatusChange is a task's new status.
type StatusChange struct {
	Status   task.Status
	RegionID string // empty if the server did not know it
	// Revision is the task's revision after the change, what IfMatch
	// takes; a watcher reports each revision of a task at most once, in
	// increasing order.
	Revision int64
	// At is when the change was made, zero if unknown (a resync from a
	// list).
	At time.Time
	// Resync is set when the watcher read this status over REST after
	// (re)connecting, because it moved past the last one reported: the
	// statuses in between, if any, were missed while disconnected (the
	// task's timeline has them).
	Resync bool
}

// Watcher follows tasks until its context ends or Close is called. Its one
// goroutine owns the connection, reconnecting as needed.
type Watcher struct {
	events chan Event
	done   chan struct{}
	cancel context.CancelFunc
	err    error // why it stopped; set before done is closed
}

// Events delivers the watch's events; it is closed when the watcher stops.
// A caller that stops reading holds the connection up, and the server
// eventually drops a client too slow to take its messages: the watcher
// then reconnects and resyncs, so statuses are not lost, only late.
func (w *Watcher) Events() <-chan Event { return w.events }

// Done is closed once the watcher has stopped and its goroutines exited.
func (w *Watcher) Done() <-chan struct{} { return w.done }

// Err says, once Done is closed, why the watcher stopped: the context's
// error, or an error reconnecting cannot fix (the token was refused).
func (w *Watcher) Err() error {
	select {
	case <-w.done:
		return w.err
	default:
		return nil
	}
}

// Close stops the watcher and waits for its goroutines. It returns the
// error that stopped it before, if any.
func (w *Watcher) Close() error {
	w.cancel()
	<-w.done
	if errors.Is(w.err, context.Canceled) {
		return nil
	}
	return w.err
}

// watchState is what the watcher's goroutine owns: the subscription and
// the newest revision reported per task.
type watchState struct {
	c    *Client
	sub  Subscription
	seen map[string]int64
}

// Watch follows the subscribed tasks over the WebSocket /ws. It returns
// once the first connection is live: the server acknowledged the
// subscription and the tasks were read over REST, so that the first events
// report their status as it is now (unless Seen already knows it), then
// every change. A failure of that first connection is returned, and so is
// ErrNotFound for a subscribed task that does not exist. Later drops are
// survived: see EventDisconnected and EventLive.
func (c *Client) Watch(ctx context.Context, sub Subscription) (*Watcher, error) {
	switch {
	case sub.All && len(sub.TaskIDs) > 0:
		return nil, errors.New("client: watch: give TaskIDs or All, not both")
	case !sub.All && len(sub.TaskIDs) == 0:
		return nil, errors.New("client: watch: give TaskIDs or All")
	case len(sub.TaskIDs) > MaxWatchTasks:
		return nil, fmt.Errorf("client: watch: %d tasks, at most %d (watch All instead)", len(sub.TaskIDs), MaxWatchTasks)
	}
	ids := make([]string, 0, len(sub.TaskIDs))
	for _, id := range sub.TaskIDs {
		if err := lpmos.ValidateTaskID(id); err != nil {
			return nil, fmt.Errorf("client: watch: %w", err)
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	sub.TaskIDs = ids
	st := &watchState{c: c, sub: sub, seen: make(map[string]int64, len(sub.Seen))}
	for id, rev := range sub.Seen {
		st.seen[id] = rev
	}
	ctx, cancel := context.WithCancel(ctx)
	conn, pending, err := st.connect(ctx, true)
	if err != nil {
		cancel()
		return nil, err
	}
	w := &Watcher{events: make(chan Event, 64), done: make(chan struct{}), cancel: cancel}
	go w.run(ctx, st, conn, pending)
	return w, nil
}

// run is the watcher's goroutine: it reports pending events, pumps the
// connection, and reconnects when it drops, until ctx ends.
func (w *Watcher) run(ctx context.Context, st *watchState, conn *wsConn, pending []Event) {
	defer close(w.done)
	defer close(w.events)
	emit := func(ev Event) bool {
		select {
		case w.events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	backoff := st.c.minBackoff
	for {
		for _, ev := range pending {
			if !emit(ev) {
				break
			}
		}
		err := conn.pump(ctx, st, emit)
		conn.close()
		if ctx.Err() != nil {
			w.err = ctx.Err()
			return
		}
		emit(Event{Type: EventDisconnected, Err: err})
		for {
			// Equal jitter: at least half the backoff, so that a server
			// that drops everyone is not hammered, and spread over the
			// other half, so that they do not all come back at once.
			wait := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-ctx.Done():
				w.err = ctx.Err()
				return
			case <-time.After(wait):
			}
			conn, pending, err = st.connect(ctx, false)
			if err == nil {
				backoff = st.c.minBackoff
				break
			}
			if ctx.Err() != nil {
				w.err = ctx.Err()
				return
			}
			if permanent(err) {
				w.err = err
				return
			}
			st.c.log.Debug("watch: reconnection failed", "err", err, "next_in", backoff)
			backoff = min(2*backoff, st.c.maxBackoff)
		}
	}
}

// permanent reports whether reconnecting cannot fix err: the server
// refused the caller or the request itself.
func permanent(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch e.StatusCode {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
		return true
	}
	return false
}

// wsConn is one WebSocket connection, closed when the watch's context ends
// so that a blocked read returns.
type wsConn struct {
	conn *websocket.Conn
	stop func() bool
}

func (c *wsConn) close() {
	c.stop()
	_ = c.conn.Close()
}

// wsMessage is any server message of the hub.
type wsMessage struct {
	Type       string         `json:"type"`
	TaskID     string         `json:"task_id"`
	Status     task.Status    `json:"status"`
	RegionID   string         `json:"region_id"`
	Revision   int64          `json:"revision"`
	At         time.Time      `json:"at"`
	Stage      task.Stage     `json:"stage"`
	Percentage int            `json:"percentage"`
	Message    string         `json:"message"`
	Hardware   *hardware.Info `json:"hardware"`
}

// errServer is a hub "error" message: it refused a client message.
type errServer struct{ message string }

func (e *errServer) Error() string { return "websocket server error: " + e.message }

// connect dials /ws, subscribes, waits for every acknowledgement and then
// resyncs over REST. It returns the live connection and the events to
// report before its next messages: those that arrived while it waited and
// the resync's, deduplicated, then EventLive. first says this is Watch's
// first connection, on which a subscribed task that does not exist is an
// error.
func (st *watchState) connect(ctx context.Context, first bool) (_ *wsConn, pending []Event, err error) {
	c := st.c
	u := *c.base
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
	u.Path += "/ws"
	h := http.Header{}
	c.authorize(h)
	dctx, cancel := context.WithTimeout(ctx, wsDialTimeout)
	defer cancel()
	conn, resp, err := c.dialer().DialContext(dctx, u.String(), h)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, nil, readError(http.MethodGet, "/ws", resp)
		}
		return nil, nil, fmt.Errorf("GET /ws: %w", err)
	}
	wc := &wsConn{conn: conn, stop: context.AfterFunc(ctx, func() { _ = conn.Close() })}
	defer func() {
		if err != nil {
			wc.close()
		}
	}()
	if p := conn.Subprotocol(); p != wsSubprotocol {
		return nil, nil, fmt.Errorf("GET /ws: the server speaks %q, not %q", p, wsSubprotocol)
	}
	conn.SetReadLimit(wsReadLimit)
	conn.SetPingHandler(func(data string) error {
		_ = conn.SetReadDeadline(time.Now().Add(wsIdleTimeout))
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(wsWriteTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})

	awaiting := map[string]bool{}
	subscribe := func(id string) error {
		awaiting[id] = true
		_ = conn.SetWriteDeadline(time.Now().Add(wsWriteTimeout))
		return conn.WriteJSON(map[string]string{"type": "subscribe", "task_id": id})
	}
	if st.sub.All {
		err = subscribe("*")
	}
	for _, id := range st.sub.TaskIDs {
		if err != nil {
			break
		}
		err = subscribe(id)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("websocket subscribe: %w", err)
	}
	// Changes may arrive between the acknowledgements: they are reported
	// (deduplicated like any other) before the resync's.
	for len(awaiting) > 0 {
		m, err := readMessage(conn)
		if err != nil {
			return nil, nil, fmt.Errorf("websocket: waiting for the subscription's acknowledgement: %w", err)
		}
		if m.Type == "subscribed" {
			delete(awaiting, m.TaskID)
			continue
		}
		if ev, ok := st.event(m); ok {
			pending = append(pending, ev...)
		}
	}
	// Everything after the acknowledgements reaches the connection, so a
	// read now misses nothing that happened while disconnected.
	synced, err := st.resync(ctx, first)
	if err != nil {
		return nil, nil, err
	}
	pending = append(pending, synced...)
	pending = append(pending, Event{Type: EventLive})
	return wc, pending, nil
}

// dialer dials like the client's HTTP transport: its proxy, TLS and dialer.
func (c *Client) dialer() *websocket.Dialer {
	d := &websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: wsDialTimeout,
		Subprotocols:     []string{wsSubprotocol},
	}
	t, ok := c.http.Transport.(*http.Transport)
	if c.http.Transport == nil {
		t, ok = http.DefaultTransport.(*http.Transport)
	}
	if ok && t != nil {
		d.Proxy = t.Proxy
		d.NetDialContext = t.DialContext
		if t.TLSClientConfig != nil {
			d.TLSClientConfig = t.TLSClientConfig.Clone()
		}
	}
	return d
}

// readMessage reads one server message, within the idle timeout.
func readMessage(conn *websocket.Conn) (*wsMessage, error) {
	_ = conn.SetReadDeadline(time.Now().Add(wsIdleTimeout))
	typ, data, err := conn.ReadMessage()
	if err != nil {
		return nil, err
	}
	var m wsMessage
	if typ != websocket.TextMessage {
		return &m, nil // not the hub's: ignored
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("malformed server message: %w", err)
	}
	if m.Type == "error" {
		return nil, &errServer{message: m.Message}
	}
	return &m, nil
}

// pump reports the connection's messages until it fails or ctx ends.
func (c *wsConn) pump(ctx context.Context, st *watchState, emit func(Event) bool) error {
	for {
		m, err := readMessage(c.conn)
		if err != nil {
			return err
		}
		evs, ok := st.event(m)
		if !ok {
			continue
		}
		for _, ev := range evs {
			if !emit(ev) {
				return ctx.Err()
			}
		}
	}
}

// event translates a server message, dropping a status already reported.
func (st *watchState) event(m *wsMessage) ([]Event, bool) {
	switch m.Type {
	case "status":
		ev, ok := st.status(m.TaskID, StatusChange{Status: m.Status, RegionID: m.RegionID, Revision: m.Revision, At: m.At})
		if !ok {
			return nil, false
		}
		return []Event{ev}, true
	case "progress":
		return []Event{{Type: EventProgress, TaskID: m.TaskID, Progress: &task.Progress{Stage: m.Stage, Percentage: m.Percentage, Message: m.Message}}}, true
	case "hardware":
		return []Event{{Type: EventHardware, TaskID: m.TaskID, Hardware: m.Hardware}}, true
	}
	return nil, false // unknown or an acknowledgement: nothing to report
}

// status reports a status change unless its revision was reported.
func (st *watchState) status(id string, sc StatusChange) (Event, bool) {
	if sc.Revision <= st.seen[id] {
		return Event{}, false
	}
	st.seen[id] = sc.Revision
	return Event{Type: EventStatus, TaskID: id, Status: &sc}, true
}

// resync reads the subscribed tasks over REST and returns a status event
// for each whose revision moved past the last reported one, preceded by
// its latest progress, if any.
func (st *watchState) resync(ctx context.Context, first bool) ([]Event, error) {
	var evs []Event
	found := func(t *task.Task, at time.Time) {
		ev, ok := st.status(t.ID, StatusChange{Status: t.Status, RegionID: t.Metadata.RegionID, Revision: t.Revision, At: at, Resync: true})
		if !ok {
			return
		}
		if t.Progress != nil {
			p := *t.Progress
			evs = append(evs, Event{Type: EventProgress, TaskID: t.ID, Progress: &p})
		}
		evs = append(evs, ev)
	}
	notFound := func(id string) error {
		if !first {
			return nil // purged while disconnected: nothing more will come
		}
		return &Error{StatusCode: http.StatusNotFound, Code: CodeNotFound, Message: "task " + id + " not found", Method: http.MethodGet, Path: taskPath(id)}
	}
	if !st.sub.All && len(st.sub.TaskIDs) <= resyncByGet {
		for _, id := range st.sub.TaskIDs {
			t, err := st.c.Get(ctx, id)
			switch {
			case errors.Is(err, ErrNotFound):
				if err := notFound(id); err != nil {
					return nil, err
				}
			case err != nil:
				return nil, fmt.Errorf("watch resync: %w", err)
			default:
				found(t, t.LastActivity())
			}
		}
		return evs, nil
	}
	want := map[string]bool{}
	for _, id := range st.sub.TaskIDs {
		want[id] = true
	}
	for t, err := range st.c.Tasks(ctx, ListOptions{}) {
		if err != nil {
			return nil, fmt.Errorf("watch resync: %w", err)
		}
		if st.sub.All || want[t.ID] {
			delete(want, t.ID)
			found(t, time.Time{})
		}
	}
	for _, id := range st.sub.TaskIDs {
		if want[id] {
			if err := notFound(id); err != nil {
				return nil, err
			}
		}
	}
	return evs, nil
}
