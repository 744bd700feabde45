package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos/task"
)

// A dashboard is one WebSocket client of a control plane, as a browser
// holds it. A firehose dashboard (the task list) subscribes to "*" before
// the first task exists and must receive every status change of every
// task; a watcher (a task's page) is handed tasks as they are created,
// subscribes to each, loads it over REST once the subscription is
// acknowledged, and must receive every status change after what it loaded.
type dashboard struct {
	n        int
	cp       *controlPlane
	conn     *websocket.Conn
	firehose bool
	// send paces what the dashboard sends below the hub's per-client
	// rate limit, as a page subscribing to what it shows would.
	send *rate.Limiter

	watchC    chan string   // watchers: tasks to follow
	unsubC    chan string   // watchers: tasks that ended, to unsubscribe
	readDone  chan struct{} // closed when the reader has ended
	writeDone chan struct{} // closed when the writer has ended

	mu       sync.Mutex
	recv     map[string][]task.Status // statuses received per task, in order
	base     map[string]task.Status   // watchers: status loaded after the ack
	acks     map[string]chan struct{} // subscriptions waiting for their ack
	active   int                      // watchers: subscriptions held
	lat      []time.Duration          // status delivery delays
	messages int
	errs     []string // the hub's error messages
	ended    error    // set if the connection ended before the fleet closed it
	closing  bool
}

// maxWatched keeps a watcher under the hub's 1000 subscriptions a client.
const maxWatched = 900

type wsMsg struct {
	Type   string      `json:"type"`
	TaskID string      `json:"task_id"`
	Status task.Status `json:"status"`
	At     time.Time   `json:"at"`
	Msg    string      `json:"message"`
}

func dialDashboard(ctx context.Context, n int, cp *controlPlane, firehose bool) (*dashboard, error) {
	d := websocket.Dialer{Subprotocols: []string{"lpmos.v1", "bearer." + cp.token}, HandshakeTimeout: 30 * time.Second}
	url := "ws" + strings.TrimPrefix(cp.base, "http") + "/ws"
	conn, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("dashboard %d: %w", n, err)
	}
	resp.Body.Close()
	db := &dashboard{
		n: n, cp: cp, conn: conn, firehose: firehose,
		send:   rate.NewLimiter(15, 50),
		watchC: make(chan string, 4096), unsubC: make(chan string, 4096),
		readDone: make(chan struct{}), writeDone: make(chan struct{}),
		recv: map[string][]task.Status{}, base: map[string]task.Status{}, acks: map[string]chan struct{}{},
	}
	go db.read() // owned: ends when the connection is closed (close)
	if firehose {
		close(db.writeDone)
		if err := db.subscribe(ctx, "*"); err != nil {
			db.close()
			return nil, err
		}
		return db, nil
	}
	go db.write(ctx) // owned: ends when watchC is closed (close)
	return db, nil
}

// subscribe sends a subscription and waits for its acknowledgement. Only
// the writer (or dialDashboard, before it starts) calls it.
func (d *dashboard) subscribe(ctx context.Context, id string) error {
	ack := make(chan struct{})
	d.mu.Lock()
	d.acks[id] = ack
	d.mu.Unlock()
	if err := d.sendMsg(ctx, "subscribe", id); err != nil {
		return err
	}
	select {
	case <-ack:
		return nil
	case <-d.readDone:
		return fmt.Errorf("dashboard %d: connection ended before the ack of %s", d.n, id)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("dashboard %d: no ack of %s within 30 s", d.n, id)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *dashboard) sendMsg(ctx context.Context, typ, id string) error {
	if err := d.send.Wait(ctx); err != nil {
		return err
	}
	_ = d.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return d.conn.WriteJSON(map[string]string{"type": typ, "task_id": id})
}

// offer hands a new task to a watcher; false if it follows enough already.
func (d *dashboard) offer(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.active >= maxWatched || d.closing {
		return false
	}
	select {
	case d.watchC <- id:
		d.active++
		return true
	default:
		return false
	}
}

func (d *dashboard) write(ctx context.Context) {
	defer close(d.writeDone)
	for {
		select {
		case id, ok := <-d.watchC:
			if !ok {
				return
			}
			if err := d.follow(ctx, id); err != nil {
				d.fail(err)
			}
		case id := <-d.unsubC:
			if err := d.sendMsg(ctx, "unsubscribe", id); err != nil {
				d.fail(err)
			}
			d.mu.Lock()
			d.active--
			d.mu.Unlock()
		}
	}
}

// follow subscribes to a task and loads it once the subscription holds.
func (d *dashboard) follow(ctx context.Context, id string) error {
	if err := d.subscribe(ctx, id); err != nil {
		return err
	}
	var t *task.Task
	err := d.cp.timed(opGet, func() (err error) {
		t, err = d.cp.c.Get(ctx, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("dashboard %d: load %s: %w", d.n, id, err)
	}
	d.mu.Lock()
	d.base[id] = t.Status
	d.mu.Unlock()
	if t.Status.Terminal() {
		d.unsubC <- id
	}
	return nil
}

func (d *dashboard) fail(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended == nil && !d.closing {
		d.ended = err
	}
}

func (d *dashboard) read() {
	defer close(d.readDone)
	for {
		_, data, err := d.conn.ReadMessage()
		if err != nil {
			d.mu.Lock()
			if !d.closing && d.ended == nil {
				d.ended = fmt.Errorf("dashboard %d: connection ended: %w", d.n, err)
			}
			d.mu.Unlock()
			return
		}
		now := time.Now()
		var m wsMsg
		if json.Unmarshal(data, &m) != nil {
			continue
		}
		d.mu.Lock()
		d.messages++
		switch m.Type {
		case "subscribed":
			if ack := d.acks[m.TaskID]; ack != nil {
				close(ack)
				delete(d.acks, m.TaskID)
			}
		case "status":
			d.recv[m.TaskID] = append(d.recv[m.TaskID], m.Status)
			if !m.At.IsZero() {
				d.lat = append(d.lat, now.Sub(m.At))
			}
			if !d.firehose && m.Status.Terminal() {
				if _, watched := d.base[m.TaskID]; watched {
					select {
					case d.unsubC <- m.TaskID:
					default: // the writer is far behind; the subscription stays
					}
				}
			}
		case "error":
			d.errs = append(d.errs, m.Msg)
		}
		d.mu.Unlock()
	}
}

// close ends the dashboard: its writer, then its connection.
func (d *dashboard) close() {
	d.mu.Lock()
	already := d.closing
	d.closing = true
	d.mu.Unlock()
	if already {
		return
	}
	if !d.firehose {
		close(d.watchC)
	}
	<-d.writeDone
	_ = d.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	select {
	case <-d.readDone:
	case <-time.After(2 * time.Second):
	}
	d.conn.Close()
	<-d.readDone
}

// lifecycle is the statuses of a task that succeeds, in order.
var lifecycle = []task.Status{
	task.StatusPending, task.StatusReady, task.StatusBooting, task.StatusPendingApproval,
	task.StatusApproved, task.StatusInstalling, task.StatusCompleted,
}

// wsCheck is what the dashboards received, against the tasks' timelines.
type wsCheck struct {
	Messages  int             // every message received
	Statuses  int             // status messages received
	Expected  int             // status changes the dashboards had to receive
	Lost      int             // of those, not received
	Misorder  int             // tasks whose statuses came in another order or twice
	Watched   int             // task subscriptions of watchers
	Delays    []time.Duration // status delivery delays
	Ended     []string        // dashboards whose connection ended early
	HubErrors []string
}

// checkDashboards compares what each dashboard received with the statuses
// each task went through (from its timeline).
func checkDashboards(dbs []*dashboard, went map[string][]task.Status) wsCheck {
	var c wsCheck
	for _, d := range dbs {
		d.mu.Lock()
		c.Messages += d.messages
		c.Delays = append(c.Delays, d.lat...)
		if d.ended != nil {
			c.Ended = append(c.Ended, d.ended.Error())
		}
		for _, e := range d.errs {
			c.HubErrors = append(c.HubErrors, fmt.Sprintf("dashboard %d: %s", d.n, e))
		}
		for _, got := range d.recv {
			c.Statuses += len(got)
		}
		check := func(id string, want []task.Status) {
			got := d.recv[id]
			c.Expected += len(want)
			for _, st := range want {
				if indexStatus(got, st) < 0 {
					c.Lost++
				}
			}
		}
		if d.firehose {
			for id, want := range went {
				check(id, want)
				if !equalStatuses(d.recv[id], want) {
					c.Misorder++
				}
			}
		} else {
			c.Watched += len(d.base)
			for id, base := range d.base {
				want := went[id]
				if i := indexStatus(want, base); i >= 0 {
					want = want[i+1:]
				}
				check(id, want)
			}
		}
		d.mu.Unlock()
	}
	return c
}

func indexStatus(s []task.Status, st task.Status) int {
	for i, x := range s {
		if x == st {
			return i
		}
	}
	return -1
}

func equalStatuses(a, b []task.Status) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var errDashboardsBehind = errors.New("dashboards still missing final statuses")

// waitDashboards waits until every dashboard has received the final
// status of every task it follows, or the timeout passes (what is missing
// then is counted as lost).
func waitDashboards(ctx context.Context, dbs []*dashboard, went map[string][]task.Status, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		missing := 0
		for _, d := range dbs {
			d.mu.Lock()
			if d.firehose {
				for id, want := range went {
					if len(want) == 0 {
						continue
					}
					if got := d.recv[id]; len(got) == 0 || got[len(got)-1] != want[len(want)-1] {
						missing++
					}
				}
			} else {
				for id, base := range d.base {
					want := went[id]
					got := d.recv[id]
					if !base.Terminal() && len(want) > 0 && (len(got) == 0 || got[len(got)-1] != want[len(want)-1]) {
						missing++
					}
				}
			}
			d.mu.Unlock()
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d after %v", errDashboardsBehind, missing, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
