package client_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/task"
)

// fastReconnect keeps the tests' reconnections quick.
var fastReconnect = client.WithReconnectBackoff(5*time.Millisecond, 50*time.Millisecond)

// next returns the watcher's next event, failing the test if none comes.
func next(t *testing.T, w *client.Watcher) client.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		require.True(t, ok, "the watcher stopped: %v", w.Err())
		return ev
	case <-time.After(20 * time.Second):
		require.FailNow(t, "no event within 20 s")
		return client.Event{}
	}
}

// until collects events up to and including the first that stop accepts.
func until(t *testing.T, w *client.Watcher, stop func(client.Event) bool) []client.Event {
	t.Helper()
	var evs []client.Event
	for {
		ev := next(t, w)
		evs = append(evs, ev)
		if stop(ev) {
			return evs
		}
	}
}

func statusIs(st task.Status) func(client.Event) bool {
	return func(ev client.Event) bool { return ev.Type == client.EventStatus && ev.Status.Status == st }
}

func isLive(ev client.Event) bool { return ev.Type == client.EventLive }

// statuses returns the statuses reported, in order.
func statuses(evs []client.Event) []task.Status {
	var out []task.Status
	for _, ev := range evs {
		if ev.Type == client.EventStatus {
			out = append(out, ev.Status.Status)
		}
	}
	return out
}

// types returns the event types, in order.
func types(evs []client.Event) []client.EventType {
	out := make([]client.EventType, len(evs))
	for i, ev := range evs {
		out[i] = ev.Type
	}
	return out
}

// clientGoroutines counts the goroutines running code of package client:
// the watchers'. Transport and server goroutines are not the client's.
func clientGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("lpmos/lpmos/client.")) {
			count++
		}
	}
	return count
}

// TestWatchSurvivesARestart follows one task through its life while the
// control plane is restarted under the watcher, and checks that the change
// made while it was down is reported once the watcher is back.
func TestWatchSurvivesARestart(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	op := cp.client(operatorToken, fastReconnect)
	created, err := op.Create(ctx, createReq("52:54:00:aa:10:01"))
	require.NoError(t, err)
	other, err := op.Create(ctx, createReq("52:54:00:aa:10:02"))
	require.NoError(t, err)

	w, err := op.Watch(ctx, client.Subscription{TaskIDs: []string{created.TaskID}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	var all []client.Event

	// The current status first, read over REST, then the watch is live.
	evs := until(t, w, isLive)
	all = append(all, evs...)
	require.Equal(t, []client.EventType{client.EventStatus, client.EventLive}, types(evs))
	assert.Equal(t, client.StatusChange{Status: task.StatusPending, RegionID: "dc1", Revision: created.Revision, At: evs[0].Status.At, Resync: true}, *evs[0].Status)
	assert.False(t, evs[0].Status.At.IsZero())

	// Changes arrive in order; another task's do not arrive at all.
	require.NoError(t, op.Cancel(ctx, other.TaskID, ""))
	cp.toPendingApproval(created.TaskID)
	evs = until(t, w, statusIs(task.StatusPendingApproval))
	all = append(all, evs...)
	assert.Equal(t, []task.Status{task.StatusReady, task.StatusBooting, task.StatusPendingApproval}, statuses(evs))
	assert.Equal(t, client.EventHardware, evs[len(evs)-2].Type, "the hardware precedes the status it led to")
	assert.Equal(t, 28, evs[len(evs)-2].Hardware.CPU.Cores)
	for _, ev := range evs {
		assert.False(t, ev.Status != nil && ev.Status.Resync, "pushed, not read")
		assert.False(t, ev.Status != nil && ev.Status.At.IsZero(), "the change's time")
	}

	dec, err := op.Approve(ctx, created.TaskID, "")
	require.NoError(t, err)
	evs = until(t, w, statusIs(task.StatusApproved))
	all = append(all, evs...)
	assert.Equal(t, dec.Revision, evs[len(evs)-1].Status.Revision)
	_, err = cp.svc.ReportProgress(ctx, created.TaskID, "region:dc1", task.Progress{Stage: task.StageWriting, Percentage: 40, Message: "writing"})
	require.NoError(t, err)
	evs = until(t, w, statusIs(task.StatusInstalling))
	all = append(all, evs...)
	require.Equal(t, []client.EventType{client.EventProgress, client.EventStatus}, types(evs), "the progress is flushed before its status")
	assert.Equal(t, task.Progress{Stage: task.StageWriting, Percentage: 40, Message: "writing"}, *evs[0].Progress)

	// The control plane goes away; the install completes meanwhile.
	cp.shutdown()
	evs = until(t, w, func(ev client.Event) bool { return ev.Type == client.EventDisconnected })
	all = append(all, evs...)
	require.Len(t, evs, 1)
	assert.Error(t, evs[0].Err)
	done, err := cp.svc.Complete(ctx, created.TaskID, "region:dc1", task.Completion{Message: "installed"})
	require.NoError(t, err)

	// Back: the watcher reconnects, resyncs and reports the final state
	// with its latest progress, then is live again.
	cp.start()
	evs = until(t, w, isLive)
	all = append(all, evs...)
	require.Equal(t, []client.EventType{client.EventProgress, client.EventStatus, client.EventLive}, types(evs))
	assert.Equal(t, task.StageCompleted, evs[0].Progress.Stage)
	assert.Equal(t, client.StatusChange{Status: task.StatusCompleted, RegionID: "dc1", Revision: done.Revision, At: done.LastActivity(), Resync: true}, *evs[1].Status)

	// Each revision once, in order, and only the subscribed task's.
	var last int64
	for _, ev := range all {
		if ev.TaskID != "" {
			assert.Equal(t, created.TaskID, ev.TaskID)
		}
		if ev.Type == client.EventStatus {
			assert.Greater(t, ev.Status.Revision, last, "%v", ev.Status)
			last = ev.Status.Revision
		}
	}

	require.NoError(t, w.Close())
	_, open := <-w.Events()
	assert.False(t, open, "Events is closed once the watcher stopped")
	assert.ErrorIs(t, w.Err(), context.Canceled)
	require.Eventually(t, func() bool { return clientGoroutines() == 0 }, 10*time.Second, 10*time.Millisecond, "the watcher's goroutines stop")
}

// TestWatchAll follows every task, deduplicates by revision across a
// reconnection, and honours Seen.
func TestWatchAll(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	op := cp.client(operatorToken, fastReconnect)
	a, err := op.Create(ctx, createReq("52:54:00:aa:20:01"))
	require.NoError(t, err)
	b, err := op.Create(ctx, createReq("52:54:00:aa:20:02"))
	require.NoError(t, err)

	// a is known at its revision: only b is reported as it is.
	w, err := op.Watch(ctx, client.Subscription{All: true, Seen: map[string]int64{a.TaskID: a.Revision}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	evs := until(t, w, isLive)
	require.Equal(t, []client.EventType{client.EventStatus, client.EventLive}, types(evs))
	assert.Equal(t, b.TaskID, evs[0].TaskID)
	assert.True(t, evs[0].Status.Resync)
	assert.True(t, evs[0].Status.At.IsZero(), "a list does not say when")

	// A new task is reported as it is created.
	c, err := op.Create(ctx, createReq("52:54:00:aa:20:03"))
	require.NoError(t, err)
	ev := next(t, w)
	assert.Equal(t, c.TaskID, ev.TaskID)
	assert.Equal(t, client.StatusChange{Status: task.StatusPending, RegionID: "dc1", Revision: c.Revision, At: ev.Status.At}, *ev.Status)

	// Down and back: only what moved meanwhile is reported.
	cp.shutdown()
	assert.Equal(t, client.EventDisconnected, next(t, w).Type)
	require.NoError(t, op.Cancel(ctx, a.TaskID, "while the control plane was down"))
	cp.start()
	evs = until(t, w, isLive)
	require.Equal(t, []client.EventType{client.EventStatus, client.EventLive}, types(evs))
	assert.Equal(t, a.TaskID, evs[0].TaskID)
	assert.Equal(t, task.StatusCancelled, evs[0].Status.Status)
	assert.True(t, evs[0].Status.Resync)
}

// TestWatchManyTasks follows more tasks than a resync reads one by one.
func TestWatchManyTasks(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	op := cp.client(operatorToken)
	var reqs []task.CreateRequest
	for i := range 20 {
		reqs = append(reqs, createReq(fmt.Sprintf("52:54:00:aa:30:%02x", i)))
	}
	res, err := op.CreateBatch(ctx, reqs)
	require.NoError(t, err)
	require.Equal(t, 20, res.Created, "%+v", res.Items)
	var ids []string
	seen := map[string]int64{}
	for _, it := range res.Items[:17] {
		ids = append(ids, it.Task.TaskID)
		seen[it.Task.TaskID] = it.Task.Revision
	}
	delete(seen, ids[16])

	w, err := op.Watch(ctx, client.Subscription{TaskIDs: ids, Seen: seen})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	evs := until(t, w, isLive)
	require.Equal(t, []client.EventType{client.EventStatus, client.EventLive}, types(evs))
	assert.Equal(t, ids[16], evs[0].TaskID)

	// Changes of the unsubscribed tasks do not arrive.
	require.NoError(t, op.Cancel(ctx, res.Items[18].Task.TaskID, ""))
	require.NoError(t, op.Cancel(ctx, ids[3], ""))
	ev := next(t, w)
	assert.Equal(t, ids[3], ev.TaskID)
	assert.Equal(t, task.StatusCancelled, ev.Status.Status)
}

func TestWatchRefused(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	op := cp.client(operatorToken)
	c, err := op.Create(ctx, createReq("52:54:00:aa:40:01"))
	require.NoError(t, err)
	unknown := "00000000-0000-4000-8000-000000000001"
	many := make([]string, 17)
	for i := range many {
		many[i] = c.TaskID
	}
	many[16] = unknown
	tests := []struct {
		name   string
		c      *client.Client
		sub    client.Subscription
		target error
		msg    string
	}{
		{"unknown token", cp.client("nobody-0123456789"), client.Subscription{All: true}, client.ErrUnauthorized, ""},
		{"unknown task", op, client.Subscription{TaskIDs: []string{c.TaskID, unknown}}, client.ErrNotFound, ""},
		{"unknown task among many", op, client.Subscription{TaskIDs: append(many[:15:15], "00000000-0000-4000-8000-000000000002", "00000000-0000-4000-8000-000000000003", unknown)}, client.ErrNotFound, ""},
		{"nothing to follow", op, client.Subscription{}, nil, "give TaskIDs or All"},
		{"both", op, client.Subscription{All: true, TaskIDs: []string{c.TaskID}}, nil, "not both"},
		{"malformed ID", op, client.Subscription{TaskIDs: []string{"nope"}}, nil, "invalid task ID"},
		{"too many", op, client.Subscription{TaskIDs: make([]string, client.MaxWatchTasks+1)}, nil, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := tt.c.Watch(ctx, tt.sub)
			require.Error(t, err)
			assert.Nil(t, w)
			if tt.target != nil {
				assert.ErrorIs(t, err, tt.target)
			}
			assert.ErrorContains(t, err, tt.msg)
		})
	}
	require.Eventually(t, func() bool { return clientGoroutines() == 0 }, 10*time.Second, 10*time.Millisecond)
}

// TestWatchStopsWithItsContext: ending the context stops the watcher,
// connected or waiting to reconnect, and leaves no goroutine behind.
func TestWatchStopsWithItsContext(t *testing.T) {
	cp := startCP(t, nil)
	hc := &http.Client{Transport: &http.Transport{}}
	op := cp.client(viewerToken, client.WithHTTPClient(hc), client.WithReconnectBackoff(time.Hour, time.Hour))
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	w, err := op.Watch(ctx, client.Subscription{All: true})
	require.NoError(t, err)
	assert.Equal(t, client.EventLive, next(t, w).Type)
	cancel()
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		require.FailNow(t, "the watcher did not stop with its context")
	}
	assert.ErrorIs(t, w.Err(), context.Canceled)
	assert.NoError(t, w.Close(), "stopped by its context: nothing went wrong")
	hc.CloseIdleConnections()
	// Polled here rather than with require.Eventually, which runs its
	// condition on a goroutine of its own.
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			require.FailNow(t, "goroutines left behind", "%d before, %d now\n%s", before, runtime.NumGoroutine(), allStacks())
		}
	}

	// Waiting an hour to reconnect: ending the context ends the wait.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	w, err = op.Watch(ctx, client.Subscription{All: true})
	require.NoError(t, err)
	assert.Equal(t, client.EventLive, next(t, w).Type)
	cp.shutdown()
	assert.Equal(t, client.EventDisconnected, next(t, w).Type)
	cancel()
	<-w.Done()
	assert.ErrorIs(t, w.Err(), context.Canceled)
	require.Eventually(t, func() bool { return clientGoroutines() == 0 }, 10*time.Second, 10*time.Millisecond)
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// TestOverTLS: REST and the WebSocket over HTTPS, with the TLS
// configuration of the HTTP client given.
func TestOverTLS(t *testing.T) {
	cp := startCPServer(t, nil, httptest.NewTLSServer)
	ctx := context.Background()
	require.True(t, strings.HasPrefix(cp.ts.URL, "https://"))

	_, err := cp.client(operatorToken).WhoAmI(ctx)
	require.Error(t, err, "the test server's certificate is not trusted by default")

	op := cp.client(operatorToken, client.WithHTTPClient(cp.ts.Client()))
	c, err := op.Create(ctx, createReq("52:54:00:aa:50:01"))
	require.NoError(t, err)
	w, err := op.Watch(ctx, client.Subscription{TaskIDs: []string{c.TaskID}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	require.NoError(t, op.Cancel(ctx, c.TaskID, ""))
	evs := until(t, w, statusIs(task.StatusCancelled))
	assert.Equal(t, []task.Status{task.StatusPending, task.StatusCancelled}, statuses(evs))
}

// TestConcurrentUse shares one client between goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	op := cp.client(operatorToken)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			c, err := op.Create(ctx, createReq(fmt.Sprintf("52:54:00:aa:60:%02x", i)))
			if err == nil {
				_, err = op.Get(ctx, c.TaskID)
			}
			if err == nil {
				_, err = op.List(ctx, client.ListOptions{})
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		assert.NoError(t, err)
	}
	page, err := op.List(ctx, client.ListOptions{})
	require.NoError(t, err)
	assert.Equal(t, 8, page.Total)
}
