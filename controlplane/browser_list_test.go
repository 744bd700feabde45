package controlplane_test

import (
	"context"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/task"
)

// browserHoldListRead replaces fetch so that the first task-list read sent
// from now on is held once its answer arrived (the server has read the list)
// until window.__releaseList() is called; the answer then carries a total of
// 99, so the test can tell when the page rendered it. At that moment a
// MutationObserver records the status the page shows for the task.
const browserHoldListRead = `(() => {
  const real = window.fetch;
  let held = false;
  window.__heldList = null;
  window.fetch = function (path, opts) {
    const r = real.apply(this, arguments);
    if (held || !String(path).startsWith('/api/v1/tasks?')) return r;
    held = true;
    return r.then(async (res) => {
      const body = await res.json();
      body.total = 99;
      return new Promise((resolve) => {
        window.__heldList = body;
        window.__releaseList = () => resolve(new Response(JSON.stringify(body), { status: res.status, headers: res.headers }));
      });
    });
  };
  const count = document.getElementById('task-count');
  new MutationObserver(() => {
    if (count.textContent === '99 tasks' && window.__statusAtStale === undefined) {
      window.__statusAtStale = document.querySelector('tr[data-task-id="' + window.__watched + '"] .badge').textContent;
    }
  }).observe(count, { childList: true, characterData: true, subtree: true });
})()`

// A list read sent before a status change but answered after the change's
// WebSocket message was shown must not put the older status back: the task
// list keeps the status of the newest revision it has seen. (A view reads
// again when its subscription is acknowledged, so such a read is common:
// the dashboard test caught it showing "pending" after "ready".)
func TestBrowserListKeepsNewerStatus(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	st := etcdtest.NewStore(t)
	ts, _ := browserCP(ctx, t, st, nil)
	svc := task.NewService(st, task.Config{}) // the region's side
	a, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:00:0a:01", OSType: "debian", OSVersion: "12", CreatedBy: "test"})
	require.NoError(t, err)

	p := newBrowserPage(t, ctx)
	p.step("open the task list", chromedp.Navigate(ts.URL+"/tasks"), chromedp.WaitVisible(chromedp.ID("token")))
	p.step("sign in",
		chromedp.SendKeys(chromedp.ID("token"), browserAdminToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("tasks")))
	badge := `document.querySelector('tr[data-task-id="` + a.ID + `"] .badge')`
	p.waitJS("the task is listed live", badge+` !== null && `+badge+`.textContent === 'pending' &&
		document.getElementById('conn').dataset.state === 'live'`)
	browserEval[chromedp.Void](p, `window.__lpmosMarker = 'still-here'; window.__watched = `+jsString(a.ID))
	browserEval[chromedp.Void](p, browserHoldListRead)

	// A task created elsewhere makes the list read again; that read is
	// answered (a pending) and held.
	b, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:00:0a:02", OSType: "debian", OSVersion: "12", CreatedBy: "test"})
	require.NoError(t, err)
	p.waitJS("a list read is answered and held", `window.__heldList !== null`)
	held := browserEval[string](p, `JSON.stringify(window.__heldList.tasks.find(t => t.task_id === `+jsString(a.ID)+`).status)`)
	require.Equal(t, `"pending"`, held, "the held read has the old status")

	// The change's message arrives, then the older read.
	_, err = svc.MarkReady(ctx, a.ID, "region:dc1")
	require.NoError(t, err)
	p.waitJS("the list shows ready", badge+`.textContent === 'ready'`)
	browserEval[chromedp.Void](p, `window.__releaseList()`)
	p.waitJS("the held read is rendered", `window.__statusAtStale !== undefined && `+browserNoReload)
	assert.Equal(t, "ready", browserEval[string](p, `window.__statusAtStale`), "the older read put the older status back")
	p.waitJS("the task created elsewhere is listed", `document.querySelector('tr[data-task-id="`+b.ID+`"]') !== null`)
	assert.Equal(t, "ready", browserEval[string](p, badge+`.textContent`))
}
