package main_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/task"
)

const (
	failoverChromium = "/usr/bin/chromium"
	failoverWait     = 30 * time.Second
)

// failoverNetLog is injected into the page before its own scripts: it
// records, in order, the page's WebSocket opens and messages and its REST
// calls, so that the test can tell when the page read a task relative to
// the server's acknowledgement of its subscription. It also records each
// state the connection indicator takes.
const failoverNetLog = `
window.__net = [];
window.__connStates = [];
(() => {
  const WS = window.WebSocket;
  function Logged(url, protocols) {
    const ws = new WS(url, protocols);
    ws.addEventListener('open', () => window.__net.push('ws-open'));
    ws.addEventListener('message', (ev) => {
      try { const m = JSON.parse(ev.data); window.__net.push('ws-' + m.type + ' ' + m.task_id); } catch (e) {}
    });
    return ws;
  }
  Logged.prototype = WS.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Logged[k] = WS[k];
  window.WebSocket = Logged;
  const f = window.fetch;
  window.fetch = function (path, opts) {
    window.__net.push('fetch ' + ((opts && opts.method) || 'GET') + ' ' + path);
    return f.apply(this, arguments);
  };
  document.addEventListener('DOMContentLoaded', () => {
    const conn = document.getElementById('conn');
    new MutationObserver(() => {
      const s = conn.dataset.state;
      if (s && window.__connStates[window.__connStates.length - 1] !== s) window.__connStates.push(s);
    }).observe(conn, { attributes: true, attributeFilter: ['data-state'] });
  });
})();`

// A control-plane replica killed with dashboards connected (issue 14): two
// control-plane processes on one etcd behind a load balancer that sends new
// connections to the first replica that answers. A Go client's Watch and a
// real Chromium page on a task, both through the balancer and so on the
// first replica, lose it to kill -9; while they cannot reconnect (the
// balancer holds new connections) the task moves through three statuses.
// Once let through they reach the surviving replica: the watcher reports
// the status the task reached (as a resync) and then every later change in
// order, none missing and none twice; the page shows each without a reload,
// its indicator goes offline → connecting → live, and it reads the task
// only after the new replica acknowledged its subscription, so that no
// change can fall between the read and the subscription.
func TestReplicaKilledWithDashboardsConnected(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two control-plane processes and Chromium")
	}
	if _, err := os.Stat(failoverChromium); err != nil {
		t.Fatalf("this test needs headless Chromium at %s (%v). Run the README test command, "+
			"./scripts/test.sh, which installs the Debian package chromium (or: apt-get install -y chromium)", failoverChromium, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	member := etcdtest.StartMember(t)
	st, err := member.Store(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	svc := task.NewService(st, task.Config{}) // the region's side
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:0f:a1:01", OSType: "debian", OSVersion: "12", CreatedBy: "test"})
	require.NoError(t, err)

	token := strings.TrimPrefix(adminToken, "LPMOS_ADMIN_TOKEN=")
	var replicas []*cmdtest.Process
	var addrs []string
	for range 2 {
		addr := cmdtest.FreeAddr(t)
		p := cmdtest.Start(t, bin, []string{adminToken}, "--etcd-endpoints", member.ClientURL(), "--listen-addr", addr, "--log-format", "text")
		replicas, addrs = append(replicas, p), append(addrs, addr)
	}
	for i, p := range replicas {
		p.WaitOK("http://" + addrs[i] + "/readyz")
	}
	lb := startBalancer(t, addrs...)
	base := "http://" + lb.Addr()

	// --- The Go watcher.
	cl, err := client.New(base, client.WithToken(token), client.WithReconnectBackoff(50*time.Millisecond, time.Second))
	require.NoError(t, err)
	w, err := cl.Watch(ctx, client.Subscription{TaskIDs: []string{tk.ID}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close() })
	next := func(what string) client.Event {
		t.Helper()
		for {
			select {
			case ev, ok := <-w.Events():
				require.True(t, ok, "the watcher stopped (%v) while waiting for %s", w.Err(), what)
				if ev.Type == client.EventProgress || ev.Type == client.EventHardware {
					continue // levels, not statuses
				}
				return ev
			case <-time.After(failoverWait):
				require.FailNow(t, "the watcher reported nothing", "waiting for %s", what)
			}
		}
	}
	ev := next("the first status")
	require.Equal(t, client.EventStatus, ev.Type)
	assert.Equal(t, task.StatusPending, ev.Status.Status)
	lastRev := ev.Status.Revision
	require.Equal(t, client.EventLive, next("live").Type)

	// --- The dashboard, on the task's page.
	p := newFailoverPage(t, ctx)
	p.do("open the task page", chromedp.Navigate(base+"/tasks/"+tk.ID), chromedp.WaitVisible(chromedp.ID("token")))
	p.do("sign in",
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("signin-submit")))
	p.waitJS("the task page shows the task live", `document.getElementById('task-status') &&
		document.getElementById('task-status').textContent === 'pending' && document.getElementById('conn').dataset.state === 'live'`)
	p.eval(`window.__lpmosMarker = 'still-here'; window.__net.length = 0; window.__connStates.length = 0; true`)
	const noReload = `window.__lpmosMarker === 'still-here'`

	// --- Kill the replica both are connected to; nothing reconnects until
	// the task has moved on.
	lb.Hold()
	replicas[0].Signal(syscall.SIGKILL)
	ev = next("the disconnection")
	require.Equal(t, client.EventDisconnected, ev.Type, "%+v", ev)
	p.waitJS("the page notices", `document.getElementById('conn').dataset.state === 'off'`)
	_, err = svc.MarkReady(ctx, tk.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, tk.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.ReportHardware(ctx, tk.ID, "agent:52:54:00:0f:a1:01", hardware.Info{CPU: hardware.CPU{Cores: 8}})
	require.NoError(t, err)
	lb.Release()

	// The watcher resyncs to where the task is now: the statuses in between
	// were missed while away, and the task's timeline has them.
	ev = next("the resync")
	require.Equal(t, client.EventStatus, ev.Type, "%+v", ev)
	assert.Equal(t, task.StatusPendingApproval, ev.Status.Status)
	assert.True(t, ev.Status.Resync, "reported by the resync")
	assert.Greater(t, ev.Status.Revision, lastRev)
	lastRev = ev.Status.Revision
	require.Equal(t, client.EventLive, next("live again").Type)
	p.waitJS("the page shows the status reached while it was away", `document.getElementById('task-status').textContent === 'pending approval' &&
		document.getElementById('conn').dataset.state === 'live' && `+noReload)

	// Every change from now on, through the surviving replica, is reported
	// once and in order.
	_, err = cl.Approve(ctx, tk.ID, "approved through the surviving replica")
	require.NoError(t, err)
	_, err = svc.ReportProgress(ctx, tk.ID, "agent:52:54:00:0f:a1:01", task.Progress{Stage: task.StageDownloading, Percentage: 10})
	require.NoError(t, err)
	p.waitJS("the page shows installing", `document.getElementById('task-status').textContent === 'installing' && `+noReload)
	_, err = svc.Complete(ctx, tk.ID, "agent:52:54:00:0f:a1:01", task.Completion{Message: "done"})
	require.NoError(t, err)
	for _, want := range []task.Status{task.StatusApproved, task.StatusInstalling, task.StatusCompleted} {
		ev = next(string(want))
		require.Equal(t, client.EventStatus, ev.Type, "%+v", ev)
		assert.Equal(t, want, ev.Status.Status)
		assert.False(t, ev.Status.Resync, "%s arrived live", want)
		assert.Greater(t, ev.Status.Revision, lastRev, "%s after the last revision", want)
		lastRev = ev.Status.Revision
	}
	p.waitJS("the page shows completed", `document.getElementById('task-status').textContent === 'completed' && `+noReload)

	// The timeline has the statuses the watcher missed while away.
	got, err := cl.Get(ctx, tk.ID)
	require.NoError(t, err)
	var timeline []task.Status
	for _, e := range got.Timeline {
		if e.Status != "" && !slices.Contains(timeline, e.Status) {
			timeline = append(timeline, e.Status)
		}
	}
	assert.Equal(t, []task.Status{task.StatusPending, task.StatusReady, task.StatusBooting, task.StatusPendingApproval,
		task.StatusApproved, task.StatusInstalling, task.StatusCompleted}, timeline)

	// The indicator went offline, connecting, live once each.
	assert.Equal(t, []string{"off", "connecting", "live"}, p.eval(`window.__connStates`).strings(t))
	// After the reconnection the page read the task only once the new
	// replica had acknowledged its subscription.
	netlog := p.eval(`window.__net`).strings(t)
	open := slices.Index(netlog, "ws-open")
	require.GreaterOrEqual(t, open, 0, "the page reconnected: %q", netlog)
	acked := slices.Index(netlog, "ws-subscribed "+tk.ID)
	require.Greater(t, acked, open, "the new replica acknowledged the subscription: %q", netlog)
	read := slices.IndexFunc(netlog[open:], func(s string) bool { return s == "fetch GET /api/v1/tasks/"+tk.ID })
	require.GreaterOrEqual(t, read, 0, "the page read the task after reconnecting: %q", netlog)
	assert.Greater(t, open+read, acked, "the page read the task before the subscription took effect: %q", netlog)
}

// failoverPage is one Chromium tab for the failover test.
type failoverPage struct {
	t   *testing.T
	ctx context.Context
}

func newFailoverPage(t *testing.T, parent context.Context) *failoverPage {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(failoverChromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-pings", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent, opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	// The first action starts the browser, on the tab's own context.
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: failoverNetLog})
		return err
	}))
	require.NoError(t, err, "starting Chromium")
	return &failoverPage{t: t, ctx: ctx}
}

func (p *failoverPage) do(name string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, failoverWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.fail(name, err)
	}
}

// waitJS waits until the JavaScript expression is truthy.
func (p *failoverPage) waitJS(name, expr string) {
	p.t.Helper()
	p.do(name, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		// An expression that throws (an element not rendered yet, read
		// before the check for it) is "not yet", not a failure: the page
		// renders asynchronously.
		guarded := "(() => { try { return !!(" + expr + "); } catch (e) { return false; } })()"
		_, err := chromedp.Poll[chromedp.Void](guarded, chromedp.WithPollingTimeout(failoverWait-5*time.Second), chromedp.WithPollingInterval(50*time.Millisecond))(ctx, tg)
		if errors.Is(err, chromedp.ErrPollingTimeout) {
			err = fmt.Errorf("still false: %s", expr)
		}
		return chromedp.Void{}, err
	})
}

// jsValue is what an evaluation returned.
type jsValue []any

func (v jsValue) strings(t *testing.T) []string {
	t.Helper()
	out := make([]string, 0, len(v))
	for _, x := range v {
		s, ok := x.(string)
		require.True(t, ok, "%v is not a string", x)
		out = append(out, s)
	}
	return out
}

// eval evaluates expr, an array or a boolean.
func (p *failoverPage) eval(expr string) jsValue {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, failoverWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[any](expr))
	if err != nil {
		p.fail("evaluate "+expr, err)
	}
	if a, ok := v.([]any); ok {
		return a
	}
	return nil
}

// fail saves a screenshot and reports what the page shows.
func (p *failoverPage) fail(name string, err error) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if png, serr := chromedp.Run(ctx, chromedp.FullScreenshot(100)); serr == nil {
		dir := os.Getenv("LPMOS_ARTIFACTS")
		if dir == "" {
			dir = filepath.Join(os.TempDir(), "lpmos-artifacts")
		}
		file := filepath.Join(dir, p.t.Name(), "FAILED.png")
		if os.MkdirAll(filepath.Dir(file), 0o755) == nil && os.WriteFile(file, png, 0o644) == nil {
			p.t.Logf("screenshot: %s", file)
		}
	}
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText + "\nnet: " + JSON.stringify(window.__net) + "\nconn: " + JSON.stringify(window.__connStates)`))
	p.t.Fatalf("%s: %v\n--- page ---\n%s", name, err, text)
}
