package e2e_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsWatch is a dashboard-like WebSocket client of the control plane,
// subscribed to every task, that keeps every message it receives.
type wsWatch struct {
	mu     sync.Mutex
	msgs   []map[string]any
	err    error
	closed chan struct{}
}

// watch connects to /ws as the admin, subscribes to "*" and returns once
// the subscription is in force: the hub's acknowledgement ("subscribed")
// comes before every change it will deliver.
func (s *server) watch() *wsWatch {
	s.t.Helper()
	d := websocket.Dialer{
		NetDialContext:   s.lab.DialContext,
		Subprotocols:     []string{"lpmos.v1", "bearer." + adminToken},
		HandshakeTimeout: 10 * time.Second,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := d.DialContext(ctx, strings.Replace(controlPlane, "http://", "ws://", 1)+"/ws", http.Header{})
	if err != nil {
		s.t.Fatalf("websocket: %v (%v)", err, resp)
	}
	w := &wsWatch{closed: make(chan struct{})}
	s.t.Cleanup(func() {
		_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = conn.Close()
		<-w.closed
	})
	if err := conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","task_id":"*"}`)); err != nil {
		s.t.Fatalf("websocket: %v", err)
	}
	ready := make(chan struct{})
	go func() { // owned: ends when the connection is closed at cleanup
		defer close(w.closed)
		barrier := false
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				if !barrier {
					close(ready)
				}
				return
			}
			var m map[string]any
			_ = json.Unmarshal(data, &m)
			if !barrier {
				if m["type"] == "subscribed" {
					barrier = true
					close(ready)
				}
				continue
			}
			w.mu.Lock()
			w.msgs = append(w.msgs, m)
			w.mu.Unlock()
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		s.t.Fatal("websocket: no answer to the subscription")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		s.t.Fatalf("websocket: %v", w.err)
	}
	return w
}

// statuses returns the task's status messages received so far, in order.
func (w *wsWatch) statuses(id string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, m := range w.msgs {
		if m["type"] == "status" && m["task_id"] == id {
			st, _ := m["status"].(string)
			out = append(out, st)
		}
	}
	return out
}

// waitStatuses waits until the client has received want for the task (the
// hub sends a status message after the store changed: it may trail the
// REST API by a moment) and fails if it received anything else.
func (w *wsWatch) waitStatuses(t *testing.T, id string, want []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		got = w.statuses(id)
		if len(got) >= len(want) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		w.mu.Lock()
		err := w.err
		w.mu.Unlock()
		t.Errorf("WebSocket status messages for task %s:\n got  %v\n want %v (connection error: %v)", id, got, want, err)
	}
}
