package controlplane_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// The dashboard test drives the real dashboard in headless Chromium against
// a real control plane on an embedded etcd, and plays the region itself
// through task.Service: an operator signs in, creates a task through the
// form, watches the machine boot and report its hardware, approves it and
// watches the install progress, all without reloading the page (a marker on
// window must survive every step). It also checks that hostile strings in
// tags and hardware reports stay text, and that the strict CSP of the
// dashboard lets its own script and WebSocket work and nothing else.

const (
	browserChromium   = "/usr/bin/chromium"
	browserAdminToken = "s3cret-admin-token"
	browserViewToken  = "s3cret-viewer-token"
	browserMAC        = "52:54:00:12:34:56"
	browserXSSTag     = "<img src=x onerror=window.__xss=1>"
	browserXSSBoard   = "<img src=x onerror=window.__xss=2>"
	browserStepWait   = 30 * time.Second
)

// browserWatch is injected into every document before its own scripts run
// (DevTools scripts are not subject to the page's CSP). It records CSP
// violations, so the test can tell that the policy allowed everything the
// dashboard does.
const browserWatch = `
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});`

// browserPage drives one Chromium tab and collects what it logs.
type browserPage struct {
	t         *testing.T
	ctx       context.Context // the tab; steps derive timeouts from it
	artifacts string
	shots     int

	mu      sync.Mutex
	console []chromedp.ConsoleMessage
}

func newBrowserPage(t *testing.T, parent context.Context) *browserPage {
	t.Helper()
	if _, err := os.Stat(browserChromium); err != nil {
		t.Fatalf("the dashboard test needs headless Chromium at %s (%v). Run the README test command, "+
			"./scripts/test.sh, which installs the Debian package chromium (or: apt-get install -y chromium)", browserChromium, err)
	}
	artifacts := os.Getenv("LPMOS_ARTIFACTS")
	if artifacts == "" {
		artifacts = filepath.Join(os.TempDir(), "lpmos-artifacts")
	}
	artifacts = filepath.Join(artifacts, t.Name())
	require.NoError(t, os.RemoveAll(artifacts)) // only this test's own screenshots of an earlier run
	require.NoError(t, os.MkdirAll(artifacts, 0o755))
	t.Logf("screenshots go to %s", artifacts)

	// A sandbox-less (CI runs as root), GPU-less headless
	// Chromium with its own profile that phones nowhere.
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browserChromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater"),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(parent, opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	p := &browserPage{t: t, ctx: ctx, artifacts: artifacts}

	// The first action starts the browser; it must run on the tab's own
	// context, without a step timeout, or the timeout would end the browser.
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.console = append(p.console, m)
			p.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		<-done
	})
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: browserWatch})
		return err
	}))
	require.NoError(t, err, "starting Chromium")
	return p
}

// consoleText is everything the page logged, for failure messages.
func (p *browserPage) consoleText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, m := range p.console {
		fmt.Fprintf(&b, "  %s (%s:%d)\n", m, m.URL, m.Line)
	}
	return b.String()
}

// step runs actions with a timeout; on failure it saves a screenshot and
// reports what the page shows and logged.
func (p *browserPage) step(name string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserStepWait+10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.fail(name, err)
	}
}

func (p *browserPage) fail(name string, err error) {
	p.t.Helper()
	p.screenshot("FAILED-" + name)
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
	p.t.Fatalf("%s: %v\n--- page ---\n%s\n--- console ---\n%s", name, err, text, p.consoleText())
}

// waitJS waits until the JavaScript expression is truthy.
func (p *browserPage) waitJS(name, expr string) {
	p.t.Helper()
	p.step(name, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		// An expression that throws (an element not rendered yet, read
		// before the check for it) is "not yet", not a failure: the page
		// renders asynchronously.
		guarded := "(() => { try { return !!(" + expr + "); } catch (e) { return false; } })()"
		_, err := chromedp.Poll[chromedp.Void](guarded, chromedp.WithPollingTimeout(browserStepWait), chromedp.WithPollingInterval(50*time.Millisecond))(ctx, tg)
		if errors.Is(err, chromedp.ErrPollingTimeout) {
			err = fmt.Errorf("still false after %s: %s", browserStepWait, expr)
		}
		return chromedp.Void{}, err
	})
}

func browserEval[T any](p *browserPage, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, browserStepWait)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.fail("evaluate "+expr, err)
	}
	return v
}

// screenshot saves a full-page PNG.
func (p *browserPage) screenshot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
		return
	}
	p.shots++
	file := filepath.Join(p.artifacts, fmt.Sprintf("%02d-%s.png", p.shots, name))
	if err := os.WriteFile(file, png, 0o644); err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// The checks the page must pass after every change.
const (
	browserNoReload = `window.__lpmosMarker === 'still-here'`
	browserInert    = `window.__xss === undefined && document.querySelector('img[src="x"]') === null`
)

func TestBrowserDashboard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	st := etcdtest.NewStore(t)
	srv, err := controlplane.New(controlplane.Config{
		Store: st,
		Auth: auth.Config{Tokens: []auth.StaticToken{
			{Token: browserAdminToken, Subject: "alice@example.com", Role: auth.RoleAdmin},
			{Token: browserViewToken, Subject: "victor@example.com", Role: auth.RoleViewer},
		}},
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(runCtx) }()
	t.Cleanup(func() {
		stopRun()
		<-ran
	})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	svc := task.NewService(st, task.Config{}) // the region's side

	// Two regions: dc1 online with an OS catalogue, dc2 offline without.
	// Of dc1's catalogue images, one is ready (so among its OSes), one
	// still downloading (so not offered).
	caps, err := json.Marshal(task.Capabilities{OS: []task.OSOffering{
		{Type: "ubuntu", Version: "24.04", Kind: "image"},
		{Type: "debian", Version: "12", Kind: "installer"},
	}, Images: []task.ImageState{
		{ID: "ubuntu-24.04-amd64", OSType: "ubuntu", OSVersion: "24.04", State: task.ImageReady},
		{ID: "ubuntu-26.04-amd64", OSType: "ubuntu", OSVersion: "26.04", State: task.ImageDownloading},
	}})
	require.NoError(t, err)
	for key, value := range map[string]string{
		task.RegionCapabilitiesKey("dc1"): string(caps),
		task.RegionStatusKey("dc1"):       task.RegionOnline,
		task.RegionHeartbeatKey("dc1"):    time.Now().UTC().Format(time.RFC3339),
		task.RegionLeaderKey("dc1"):       "rack7 http://10.0.7.2:8081",
		task.RegionStatusKey("dc2"):       task.RegionOffline,
	} {
		_, err := st.Put(ctx, key, []byte(value))
		require.NoError(t, err)
	}
	// The form reads the regions from the control plane's watch-fed cache;
	// wait until it has them so the page does not race the watch.
	require.Eventually(t, func() bool {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.URL+"/api/v1/regions", nil)
		req.Header.Set("Authorization", "Bearer "+browserAdminToken)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode == http.StatusOK && strings.Contains(string(b), `"24.04"`) && strings.Contains(string(b), `"dc2"`)
	}, browserStepWait, 20*time.Millisecond, "the control plane never listed region dc1")

	p := newBrowserPage(t, ctx)

	// --- Sign in.
	p.step("open the dashboard", chromedp.Navigate(ts.URL+"/"), chromedp.WaitVisible(chromedp.ID("token")))
	p.screenshot("signin")
	p.step("sign in",
		chromedp.SendKeys(chromedp.ID("token"), browserAdminToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("tasks")))
	assert.Equal(t, "token:alice@example.com", browserEval[string](p, `document.getElementById('user-subject').textContent`))
	assert.Equal(t, "admin", browserEval[string](p, `document.getElementById('user-role').textContent`))
	// The WebSocket opens under connect-src 'self'.
	p.waitJS("live updates connect", `document.getElementById('conn').dataset.state === 'live'`)
	browserEval[chromedp.Void](p, `window.__lpmosMarker = 'still-here'`)

	// --- Create a task through the form, with a hostile tag.
	p.step("open the create form",
		chromedp.Click(chromedp.ID("nav-create")),
		chromedp.WaitVisible(chromedp.ID("create-form")))
	p.waitJS("the OS catalogue of dc1 is offered",
		`document.getElementById('f-region') && document.getElementById('f-region').value === 'dc1' &&
		 document.getElementById('f-os') && document.getElementById('f-os').selectedOptions[0].textContent.startsWith('ubuntu 24.04')`)
	assert.Contains(t, browserEval[string](p, `document.getElementById('f-region').textContent`), "dc2 (offline)")
	// Only installable images are offered; one still downloading is named.
	assert.NotContains(t, browserEval[string](p, `document.getElementById('f-os').textContent`), "26.04")
	assert.Contains(t, browserEval[string](p, `document.getElementById('f-os').closest('.field').textContent`),
		"Not installable yet: ubuntu 26.04 (image ubuntu-26.04-amd64: downloading).")
	// A field the API refuses is named and highlighted.
	p.step("submit a bad MAC", chromedp.SendKeys(chromedp.ID("f-mac"), "52:54:00:12:34"), chromedp.Click(chromedp.ID("f-submit")))
	p.waitJS("the bad MAC is highlighted", `document.getElementById('f-mac').classList.contains('invalid') &&
		document.querySelector('#create-form .alert-error') !== null && location.pathname === '/tasks/create'`)
	p.screenshot("create-form-error")
	// The static network's fields show only for "Static"; an address is
	// required for it, and the API's 400 highlights the address field.
	assert.True(t, browserEval[bool](p, `document.getElementById('f-static').hidden`), "static fields hidden for DHCP")
	browserEval[chromedp.Void](p, `(() => { const s = document.getElementById('f-network'); s.value = 'static'; s.dispatchEvent(new Event('change', { bubbles: true })); })()`)
	p.waitJS("the static fields show", `!document.getElementById('f-static').hidden`)
	p.step("submit static without an address", chromedp.SetValue(chromedp.ID("f-mac"), browserMAC), chromedp.Click(chromedp.ID("f-submit")))
	p.waitJS("the missing address is highlighted", `document.getElementById('f-address').classList.contains('invalid') &&
		document.querySelector('#create-form .alert-error').textContent.includes('network.address') && location.pathname === '/tasks/create'`)
	p.step("fill in the form",
		chromedp.SetValue(chromedp.ID("f-address"), "10.0.0.5/24"),
		chromedp.SetValue(chromedp.ID("f-gateway"), "10.0.0.1"),
		chromedp.SetValue(chromedp.ID("f-dns"), "1.1.1.1, 9.9.9.9"),
		chromedp.SetValue(chromedp.ID("f-hostname"), "web-01"),
		chromedp.SetValue(chromedp.ID("f-tags"), "rack=r12\nnote="+browserXSSTag))
	p.screenshot("create-form")
	p.step("submit the form", chromedp.Click(chromedp.ID("f-submit")))
	p.waitJS("the new task's page opens", `/^\/tasks\/[0-9a-f-]{36}$/.test(location.pathname) && document.getElementById('task-status') && !document.getElementById('task-status').hidden`)
	path := browserEval[string](p, `location.pathname`)
	id := strings.TrimPrefix(path, "/tasks/")
	require.Regexp(t, regexp.MustCompile(`^[0-9a-f-]{36}$`), id)
	tk, err := svc.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, "token:alice@example.com", tk.Metadata.CreatedBy)
	assert.Equal(t, browserXSSTag, tk.Metadata.Tags["note"])
	assert.Equal(t, "ubuntu", tk.Metadata.OSType)
	assert.Equal(t, "24.04", tk.Metadata.OSVersion)
	assert.Equal(t, &task.Network{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"1.1.1.1", "9.9.9.9"}}, tk.Metadata.Network)
	assert.Equal(t, "web-01", tk.Metadata.Hostname)

	p.waitJS("the task page shows the task", `document.getElementById('task-status').textContent === 'pending' &&
		[...document.querySelectorAll('.tag')].some(e => e.textContent === 'note=' + `+jsString(browserXSSTag)+`)`)
	p.waitJS("the hostile tag is inert on the task page", browserInert+" && "+browserNoReload)
	p.screenshot("task-created")

	// --- The list, updated live.
	row := `document.querySelector('tr[data-task-id="` + id + `"]')`
	rowStatus := row + `.querySelector('.badge').textContent`
	p.step("go to the list", chromedp.Click(chromedp.CSS(`#mainnav a[href="/tasks"]`)), chromedp.WaitVisible(chromedp.ID("tasks")))
	p.waitJS("the task is listed", row+` !== null && `+rowStatus+` === 'pending' && `+browserInert+` && (() => {
		const text = `+row+`.textContent;
		return ['dc1', '`+browserMAC+`', 'ubuntu 24.04', 'rack=r12', 'note=' + `+jsString(browserXSSTag)+`].every(s => text.includes(s));
	})()`)
	_, err = svc.MarkReady(ctx, id, "region:dc1")
	require.NoError(t, err)
	p.waitJS("the list shows ready", rowStatus+` === 'ready'`)
	_, err = svc.MarkBooting(ctx, id, "region:dc1")
	require.NoError(t, err)
	p.waitJS("the list shows booting", rowStatus+` === 'booting'`)
	// A task created elsewhere appears without a reload.
	other, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:aa:bb:cc", OSType: "debian", OSVersion: "12", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	p.waitJS("a task created elsewhere is listed", `document.querySelector('tr[data-task-id="`+other.ID+`"]') !== null && `+browserNoReload)
	p.screenshot("list")

	// --- The hardware report arrives while the task page is open.
	p.step("open the task", chromedp.Click(chromedp.CSS(`tr[data-task-id="`+id+`"] a[href="/tasks/`+id+`"]`)))
	p.waitJS("the task page waits for hardware", `document.getElementById('task-status').textContent === 'booting' &&
		document.getElementById('hardware').textContent.includes('No hardware reported yet')`)
	_, err = svc.ReportHardware(ctx, id, "agent:"+browserMAC, browserHardware(), task.FromAddress(browserReportSource))
	require.NoError(t, err)
	p.waitJS("the hardware review names the address the report came from", `(() => {
		const src = document.getElementById('hardware-source');
		return src !== null && src.textContent.includes('Reported from `+browserReportSource+`');
	})()`)
	p.waitJS("the hardware review appears without a reload", `(() => {
		const hw = document.getElementById('hardware').textContent;
		return ['Intel(R) Xeon(R) Gold 6338', '64 cores / 128 threads', '256 GB', 'DIMM_A1', 'DIMM_B2', '3200 MHz',
			'/dev/nvme0n1', 'SAMSUNG MZQL2960HCJR', '/dev/sda', 'ST4000NM000A', 'eno1', 'eno2', '25Gbps', 'boot NIC',
			'Dell Inc. 1.10.2', 'PowerEdge R650', `+jsString(browserXSSBoard)+`].every(s => hw.includes(s));
	})()`)
	p.waitJS("the approval panel shows", `document.getElementById('task-status').textContent === 'pending approval' &&
		!document.getElementById('approval').hidden && `+browserNoReload+` && `+browserInert)
	p.screenshot("hardware-review")

	// --- Approve through the approval page (a fresh load: the token is
	// kept for the tab, and the notes field has the focus).
	p.step("open the approval page", chromedp.Navigate(ts.URL+"/tasks/"+id+"/approve"))
	p.waitJS("the approval panel has the focus", `document.activeElement && document.activeElement.id === 'approve-notes' &&
		document.getElementById('approval').classList.contains('focus')`)
	p.waitJS("the approval page shows the report's address next to the hardware", `(() => {
		const src = document.getElementById('hardware-source');
		return src !== null && src.textContent.includes('`+browserReportSource+`') &&
			document.getElementById('hardware').contains(src);
	})()`)
	browserEval[chromedp.Void](p, `window.__lpmosMarker = 'still-here'`)
	p.step("approve",
		chromedp.SendKeys(chromedp.ID("approve-notes"), "Hardware verified by the browser test"),
		chromedp.Click(chromedp.ID("approve-btn")))
	p.waitJS("the task is approved", `document.getElementById('task-status').textContent === 'approved' &&
		document.getElementById('approval').hidden &&
		document.getElementById('approval-info').textContent.includes('Hardware verified by the browser test')`)
	tk, err = svc.Get(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, tk.Approval)
	assert.Equal(t, task.StatusApproved, tk.Status)
	assert.Equal(t, "token:alice@example.com", tk.Approval.ApprovedBy)
	assert.Equal(t, "Hardware verified by the browser test", tk.Approval.Notes)
	p.screenshot("approved")

	// --- Progress moves the bar in place.
	fillWidth := `(() => { const f = document.querySelector('#progress .progress-fill');
		return f.getBoundingClientRect().width / f.parentElement.getBoundingClientRect().width; })()`
	_, err = svc.ReportProgress(ctx, id, "agent:"+browserMAC, task.Progress{Stage: task.StageDownloading, Percentage: 30, Message: "Downloading ubuntu-24.04.img"})
	require.NoError(t, err)
	p.waitJS("progress 30%", `document.getElementById('task-status').textContent === 'installing' &&
		document.querySelector('#progress .progress-text').textContent.includes('downloading · 30% — Downloading ubuntu-24.04.img') &&
		document.querySelector('#progress .progress-fill').style.width === '30%' && Math.abs(`+fillWidth+` - 0.3) < 0.02`)
	p.screenshot("progress-30")
	_, err = svc.ReportProgress(ctx, id, "agent:"+browserMAC, task.Progress{Stage: task.StageDownloading, Percentage: 70, Message: "Downloading ubuntu-24.04.img"})
	require.NoError(t, err)
	p.waitJS("progress 70% without a reload", `document.querySelector('#progress .progress-text').textContent.includes('70%') &&
		Math.abs(`+fillWidth+` - 0.7) < 0.02 && `+browserNoReload)
	p.screenshot("progress-70")

	// --- Completion.
	_, err = svc.Complete(ctx, id, "agent:"+browserMAC, task.Completion{Message: "Installed; rebooting from disk"})
	require.NoError(t, err)
	p.waitJS("the task is completed", `document.getElementById('task-status').textContent === 'completed' &&
		document.querySelector('#progress .progress-text').textContent.includes('100%') &&
		document.getElementById('timeline').textContent.includes('Installed; rebooting from disk') &&
		document.getElementById('cancel-btn').hidden && `+browserNoReload+` && `+browserInert)
	p.screenshot("completed")
	p.step("back to the list", chromedp.Click(chromedp.CSS(`#mainnav a[href="/tasks"]`)))
	p.waitJS("the list shows completed", row+` !== null && `+rowStatus+` === 'completed' && `+browserNoReload)
	p.screenshot("list-completed")

	// --- Rejecting needs a reason.
	_, err = svc.MarkReady(ctx, other.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, other.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.ReportHardware(ctx, other.ID, "agent", hardware.Info{CPU: hardware.CPU{Model: "QEMU Virtual CPU", Cores: 2, Threads: 2}, Memory: hardware.Memory{TotalGB: 4}})
	require.NoError(t, err)
	otherRow := `document.querySelector('tr[data-task-id="` + other.ID + `"]')`
	p.waitJS("the other task waits for approval", otherRow+`.querySelector('.badge').textContent === 'pending approval'`)
	p.step("review it", chromedp.Click(chromedp.CSS(`tr[data-task-id="`+other.ID+`"] a[href$="/approve"]`)))
	p.waitJS("its approval page opens", `location.pathname.endsWith('/approve') && document.activeElement && document.activeElement.id === 'approve-notes'`)
	p.step("reject without a reason", chromedp.Click(chromedp.ID("reject-btn")))
	p.waitJS("a reason is asked for", `document.getElementById('reject-reason').classList.contains('invalid') &&
		document.getElementById('task-status').textContent === 'pending approval'`)
	p.step("reject with a reason",
		chromedp.SendKeys(chromedp.ID("reject-reason"), "Only 4 GB of memory"),
		chromedp.Click(chromedp.ID("reject-btn")))
	p.waitJS("the task is rejected", `document.getElementById('task-status').textContent === 'rejected' &&
		document.getElementById('approval-info').textContent.includes('Only 4 GB of memory') && `+browserNoReload)
	p.screenshot("rejected")
	tk, err = svc.Get(ctx, other.ID)
	require.NoError(t, err)
	assert.Equal(t, task.StatusRejected, tk.Status)

	// --- Many machines at once: select tasks in the list and approve or
	// cancel them in one call; search by MAC; the regions page.
	toApproval := func(mac string) string {
		tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
		require.NoError(t, err)
		_, err = svc.MarkReady(ctx, tk.ID, "region:dc1")
		require.NoError(t, err)
		_, err = svc.MarkBooting(ctx, tk.ID, "region:dc1")
		require.NoError(t, err)
		_, err = svc.ReportHardware(ctx, tk.ID, "agent:"+mac, hardware.Info{CPU: hardware.CPU{Model: "QEMU Virtual CPU", Cores: 2, Threads: 2}, Memory: hardware.Memory{TotalGB: 8}})
		require.NoError(t, err)
		return tk.ID
	}
	a1 := toApproval("52:54:00:00:00:a1")
	a2 := toApproval("52:54:00:00:00:a2")
	a3 := toApproval("52:54:00:00:00:a3")
	c1, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "0c:c4:7a:00:00:01", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	rowOf := func(id string) string { return `document.querySelector('tr[data-task-id="` + id + `"]')` }
	statusOf := func(id string) string { return rowOf(id) + `.querySelector('.badge').textContent` }
	checkOf := func(id string) chromedp.CSS { return chromedp.CSS(`tr[data-task-id="` + id + `"] input.select-task`) }
	bulkResult := `document.getElementById('bulk-result').textContent`
	p.step("back to the list for bulk moves", chromedp.Click(chromedp.CSS(`#mainnav a[href="/tasks"]`)), chromedp.WaitVisible(chromedp.ID("tasks")))
	p.waitJS("the tasks to decide on are listed", rowOf(a1)+` && `+rowOf(a2)+` && `+rowOf(a3)+` && `+rowOf(c1.ID)+` &&
		[`+jsString(a1)+`, `+jsString(a2)+`, `+jsString(a3)+`].every(id => document.querySelector('tr[data-task-id="' + id + '"] .badge').textContent === 'pending approval') &&
		document.getElementById('bulk-bar').hidden && `+browserNoReload)
	assert.True(t, browserEval[bool](p, rowOf(id)+`.querySelector('input.select-task').disabled && `+rowOf(other.ID)+`.querySelector('input.select-task').disabled`),
		"tasks that ended cannot be selected")

	// Two selected, approved together.
	p.step("select two tasks", chromedp.Click(checkOf(a1)), chromedp.Click(checkOf(a2)))
	p.waitJS("the bulk bar counts them", `!document.getElementById('bulk-bar').hidden &&
		document.getElementById('bulk-count').textContent === '2 tasks selected · 2 waiting for approval' &&
		document.getElementById('select-all').indeterminate`)
	p.step("ask to approve them", chromedp.Click(chromedp.ID("bulk-approve")))
	p.waitJS("approving asks for confirmation", `!document.getElementById('bulk-confirm').hidden &&
		document.getElementById('bulk-confirm-title').textContent === 'Approve 2 selected tasks?' && `+statusOf(a1)+` === 'pending approval'`)
	p.screenshot("bulk-approve-confirm")
	p.step("confirm the approval",
		chromedp.SendKeys(chromedp.ID("bulk-text"), "Rack r7 verified in bulk"),
		chromedp.Click(chromedp.ID("bulk-confirm-btn")))
	p.waitJS("both are approved", bulkResult+`.includes('Approved 2 of 2 tasks.') && document.getElementById('bulk-bar').hidden &&
		`+statusOf(a1)+` === 'approved' && `+statusOf(a2)+` === 'approved' && `+statusOf(a3)+` === 'pending approval' &&
		!document.querySelector('input.select-task:checked') && `+browserNoReload)
	p.screenshot("bulk-approved")
	for _, tid := range []string{a1, a2} {
		tk, err := svc.Get(ctx, tid)
		require.NoError(t, err)
		assert.Equal(t, task.StatusApproved, tk.Status, tid)
		require.NotNil(t, tk.Approval, tid)
		assert.Equal(t, "token:alice@example.com", tk.Approval.ApprovedBy, tid)
		assert.Equal(t, "Rack r7 verified in bulk", tk.Approval.Notes, tid)
	}

	// Everything on the page: only the task waiting for approval moves,
	// and the answer says why each other one did not.
	p.step("select the whole page", chromedp.Click(chromedp.ID("select-all")))
	p.waitJS("every task that has not ended is selected", `document.getElementById('bulk-count').textContent === '4 tasks selected · 1 waiting for approval' &&
		document.getElementById('select-all').checked`)
	p.step("reject the page without a reason", chromedp.Click(chromedp.ID("bulk-reject")), chromedp.Click(chromedp.ID("bulk-confirm-btn")))
	p.waitJS("a reason is asked for", `document.getElementById('bulk-text').classList.contains('invalid') &&
		document.querySelector('label[for="bulk-text"]').textContent === 'Reason (required)' && `+statusOf(a3)+` === 'pending approval'`)
	p.step("approve the page", chromedp.Click(chromedp.ID("bulk-approve")))
	p.waitJS("the confirmation warns about the others", `document.getElementById('bulk-confirm-note').textContent.startsWith('3 of them are not waiting for approval')`)
	p.step("confirm", chromedp.Click(chromedp.ID("bulk-confirm-btn")))
	p.waitJS("one moved, three did not, each with its reason", bulkResult+`.includes('Approved 1 of 4 tasks.') &&
		`+bulkResult+`.includes('3 tasks did not move') &&
		document.querySelectorAll('#bulk-result .bulk-failed li').length === 3 &&
		[...document.querySelectorAll('#bulk-result .bulk-failed li')].every(li => li.textContent.includes('invalid_transition')) &&
		[`+jsString(a1)+`, `+jsString(a2)+`, `+jsString(c1.ID)+`].every(id => document.querySelector('#bulk-result li[data-task-id="' + id + '"]')) &&
		`+statusOf(a3)+` === 'approved'`)
	p.screenshot("bulk-approve-partial")
	tk, err = svc.Get(ctx, a3)
	require.NoError(t, err)
	assert.Equal(t, task.StatusApproved, tk.Status)
	tk, err = svc.Get(ctx, c1.ID)
	require.NoError(t, err)
	assert.Equal(t, task.StatusPending, tk.Status, "a task the bulk approve does not apply to is not written")

	// Bulk cancel with a reason.
	p.step("select two tasks to cancel", chromedp.Click(checkOf(a1)), chromedp.Click(checkOf(c1.ID)))
	p.waitJS("the bar counts them", `document.getElementById('bulk-count').textContent === '2 tasks selected · 0 waiting for approval' &&
		document.getElementById('bulk-approve').disabled && !document.getElementById('bulk-cancel').disabled`)
	p.step("ask to cancel them", chromedp.Click(chromedp.ID("bulk-cancel")))
	p.waitJS("cancelling asks for confirmation", `document.getElementById('bulk-confirm-title').textContent === 'Cancel 2 selected tasks?'`)
	p.step("confirm the cancel",
		chromedp.SendKeys(chromedp.ID("bulk-text"), "Rack r7 decommissioned"),
		chromedp.Click(chromedp.ID("bulk-confirm-btn")))
	p.waitJS("both are cancelled", bulkResult+`.includes('Cancelled 2 of 2 tasks.') &&
		`+statusOf(a1)+` === 'cancelled' && `+statusOf(c1.ID)+` === 'cancelled' && `+statusOf(a2)+` === 'approved' &&
		`+rowOf(a1)+`.querySelector('input.select-task').disabled && `+browserNoReload)
	p.screenshot("bulk-cancelled")
	for _, tid := range []string{a1, c1.ID} {
		tk, err := svc.Get(ctx, tid)
		require.NoError(t, err)
		assert.Equal(t, task.StatusCancelled, tk.Status, tid)
		require.NotEmpty(t, tk.Timeline, tid)
		assert.Equal(t, "Rack r7 decommissioned", tk.Timeline[len(tk.Timeline)-1].Message, tid)
	}

	// Search by MAC: a prefix, then one machine in another spelling.
	shown := `[...document.querySelectorAll('#tasks tbody tr[data-task-id]')].map(tr => tr.dataset.taskId).sort().join(',')`
	want := func(ids ...string) string {
		slices.Sort(ids)
		return shown + ` === ` + jsString(strings.Join(ids, ","))
	}
	// (SetValue refuses an empty value.)
	clearMAC := chromedp.Evaluate[chromedp.Void](`document.getElementById('filter-mac').value = ''`)
	p.step("search a MAC prefix", chromedp.SendKeys(chromedp.ID("filter-mac"), "52-54-00-00-00"))
	p.waitJS("the prefix narrows the list", want(a1, a2, a3)+` && new URLSearchParams(location.search).get('mac_prefix') === '52-54-00-00-00' &&
		document.getElementById('task-count').textContent === '3 tasks'`)
	p.screenshot("mac-prefix")
	p.step("search one MAC", clearMAC, chromedp.SendKeys(chromedp.ID("filter-mac"), "5254.0000.00A2\r"))
	p.waitJS("the MAC finds its task", want(a2)+` && new URLSearchParams(location.search).get('mac') === '5254.0000.00A2'`)
	p.step("search something that is no MAC", clearMAC, chromedp.SendKeys(chromedp.ID("filter-mac"), "52:zz\r"))
	p.waitJS("the search says what is wrong", `document.getElementById('filter-mac').classList.contains('invalid') &&
		document.querySelector('.alert-error') !== null && document.querySelector('.alert-error').textContent.includes('MAC')`)
	p.step("clear the search", clearMAC, chromedp.SendKeys(chromedp.ID("filter-mac"), "\r"))
	p.waitJS("the whole list is back", want(id, other.ID, a1, a2, a3, c1.ID)+` && location.search === '' &&
		!document.getElementById('filter-mac').classList.contains('invalid') && `+browserNoReload)

	// --- The regions page: dc1 online with its active tasks by status,
	// updated live, dc2 offline.
	regionRow := func(r string) string { return `document.querySelector('tr[data-region-id="` + r + `"]')` }
	activeOf := func(r, status string) string {
		return `(() => { const c = ` + regionRow(r) + `.querySelector('.count-chip[data-status="` + status + `"] .count'); return c ? c.textContent : ''; })()`
	}
	// The region renews its heartbeat every few seconds; the test renews it
	// once, so that it is recent however long the steps above took.
	_, err = st.Put(ctx, task.RegionHeartbeatKey("dc1"), []byte(time.Now().UTC().Format(time.RFC3339)))
	require.NoError(t, err)
	p.step("open the regions page", chromedp.Click(chromedp.ID("nav-regions")), chromedp.WaitVisible(chromedp.ID("regions")))
	p.waitJS("dc1 is online with its active tasks", regionRow("dc1")+` !== null &&
		`+regionRow("dc1")+`.querySelector('.region-status').textContent === 'online' &&
		/^(just now|\d+ s ago)$/.test(`+regionRow("dc1")+`.querySelector('time').textContent) &&
		`+regionRow("dc1")+`.textContent.includes('ubuntu 24.04 (image)') &&
		`+regionRow("dc1")+`.textContent.includes('debian 12 (installer)') &&
		`+regionRow("dc1")+`.querySelector('.tag-image-waiting').textContent === 'image ubuntu-26.04-amd64: downloading' &&
		`+regionRow("dc1")+`.querySelector('.region-leader').textContent === 'led by rack7 http://10.0.7.2:8081' &&
		`+regionRow("dc2")+`.querySelector('.region-leader') === null &&
		`+activeOf("dc1", "approved")+` === '2' && `+regionRow("dc1")+`.querySelector('.active-total').textContent === '2 active' &&
		`+regionRow("dc2")+` !== null && `+regionRow("dc2")+`.querySelector('.region-status').textContent === 'offline' &&
		`+regionRow("dc2")+`.querySelector('.active-cell').textContent === 'none' &&
		document.getElementById('region-count').textContent === '2 regions · 1 online' && `+browserNoReload)
	p.screenshot("regions")
	_, err = svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "0c:c4:7a:00:00:02", OSType: "debian", OSVersion: "12", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	p.waitJS("a new task is counted without a reload", activeOf("dc1", "pending")+` === '1' &&
		`+regionRow("dc1")+`.querySelector('.active-total').textContent === '3 active' && `+browserNoReload)
	p.step("follow a count to its tasks", chromedp.Click(chromedp.CSS(`tr[data-region-id="dc1"] .count-chip[data-status="approved"]`)))
	p.waitJS("the list shows dc1's approved tasks", want(a2, a3)+` && document.getElementById('filter-region').value === 'dc1' &&
		document.getElementById('filter-status').value === 'approved' && `+browserNoReload)
	p.screenshot("regions-to-list")

	// --- Retry a failed task: the button starts a new attempt and the page
	// follows it.
	goTo := func(path string) {
		browserEval[chromedp.Void](p, `history.pushState(null, '', `+jsString(path)+`); dispatchEvent(new PopStateEvent('popstate'))`)
	}
	failedTask, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "0c:c4:7a:00:00:03", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	_, err = svc.Fail(ctx, failedTask.ID, "region:dc1", task.ErrorInfo{Code: "download_failed", Message: "mirror down"})
	require.NoError(t, err)
	goTo("/tasks/" + failedTask.ID)
	p.waitJS("a failed task offers a retry", `document.getElementById('task-status').textContent === 'failed' &&
		!document.getElementById('retry-btn').hidden && document.getElementById('task-attempt').textContent === '1 of 3' && `+browserNoReload)
	p.step("retry it", chromedp.Click(chromedp.ID("retry-btn")))
	p.waitJS("the new attempt's page opens", `/^\/tasks\/[0-9a-f-]{36}$/.test(location.pathname) && location.pathname !== '/tasks/`+failedTask.ID+`' &&
		document.getElementById('task-status').textContent === 'pending' && document.getElementById('task-attempt').textContent === '2 of 3' &&
		document.getElementById('retry-btn').hidden && `+browserNoReload)
	retryID := strings.TrimPrefix(browserEval[string](p, `location.pathname`), "/tasks/")
	retried, err := svc.Get(ctx, retryID)
	require.NoError(t, err)
	assert.Equal(t, failedTask.ID, retried.Metadata.RetryOf)
	assert.Equal(t, "token:alice@example.com", retried.Metadata.CreatedBy)
	p.screenshot("retried")
	goTo("/tasks/" + failedTask.ID)
	p.waitJS("the old attempt links to its retry and offers no second one", `document.getElementById('task-status').textContent === 'failed' &&
		document.querySelector('a.retried-as') !== null && document.querySelector('a.retried-as').getAttribute('href') === '/tasks/`+retryID+`' &&
		document.getElementById('retry-btn').hidden && `+browserNoReload)

	// --- The dead-letter list: a task failed on its last attempt (with a
	// hostile error message), acknowledged from the page.
	lastOnly := task.NewService(st, task.Config{MaxAttempts: 1})
	deadTask, err := lastOnly.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "0c:c4:7a:00:00:04", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	_, err = svc.Fail(ctx, deadTask.ID, "region:dc1", task.ErrorInfo{Code: "checksum_mismatch", Message: browserXSSTag})
	require.NoError(t, err)
	dlqRow := `document.querySelector('tr[data-kind="tasks"][data-id="` + deadTask.ID + `"]')`
	p.step("open the dead letters", chromedp.Click(chromedp.ID("nav-dlq")), chromedp.WaitVisible(chromedp.ID("dlq")))
	p.waitJS("the dead task is listed, inert", dlqRow+` !== null && `+dlqRow+`.textContent.includes('checksum_mismatch') &&
		`+dlqRow+`.textContent.includes(`+jsString(browserXSSTag)+`) && `+dlqRow+`.textContent.includes('1 of 1') &&
		document.getElementById('dlq-count').textContent === '1 entry' && `+browserInert+` && `+browserNoReload)
	p.screenshot("dead-letters")
	p.step("acknowledge it", chromedp.Click(chromedp.CSS(`tr[data-id="`+deadTask.ID+`"] .dlq-ack`)))
	p.waitJS("it leaves the list", dlqRow+` === null && document.getElementById('dlq-count').textContent === '0 entries' && `+browserNoReload)
	_, err = st.Get(ctx, task.DLQKey(task.DLQTasks, deadTask.ID))
	require.ErrorIs(t, err, store.ErrNotFound)
	p.step("back to the list", chromedp.Click(chromedp.CSS(`#mainnav a[href="/tasks"]`)), chromedp.WaitVisible(chromedp.ID("tasks")))

	// --- Sign out forgets the token.
	p.step("sign out", chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("token")))
	assert.True(t, browserEval[bool](p, `sessionStorage.getItem('lpmos.token') === null && document.getElementById('conn').hidden`))

	// --- A viewer sees the list and the regions but cannot select or move
	// tasks.
	p.step("sign in as a viewer",
		chromedp.SendKeys(chromedp.ID("token"), browserViewToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("tasks")))
	p.waitJS("the viewer's list has no selection", rowOf(a2)+` !== null && document.querySelector('#tasks input[type=checkbox]') === null &&
		document.getElementById('bulk-bar') === null && document.getElementById('nav-create').hidden`)
	p.step("the viewer opens the regions page", chromedp.Click(chromedp.ID("nav-regions")), chromedp.WaitVisible(chromedp.ID("regions")))
	p.waitJS("the viewer sees the regions", activeOf("dc1", "approved")+` === '2'`)
	p.step("the viewer signs out", chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("token")))

	// Nothing was blocked by the CSP, nothing threw, nothing ran.
	assert.Empty(t, browserEval[[]string](p, `window.__cspViolations`), "CSP violations")
	assert.True(t, browserEval[bool](p, browserInert), "window.__xss is set: a hostile string ran")
	p.mu.Lock()
	for _, m := range p.console {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
	p.mu.Unlock()

	// ...and that is because the policy held, not because none was sent:
	// an inline script is refused.
	browserEval[chromedp.Void](p, `(() => { const s = document.createElement('script');
		s.textContent = 'window.__inline = 1'; document.head.appendChild(s); })()`)
	p.waitJS("the CSP refuses inline scripts", `window.__inline === undefined && window.__cspViolations.some(v => v.startsWith('script-src'))`)
}

// browserReportSource is the address the hardware report came from.
const browserReportSource = "10.20.30.40"

// browserHardware is a two-socket server as an agent reports it, with one
// hostile string an attacker at the machine could plant in its DMI data.
func browserHardware() hardware.Info {
	const gb = 1 << 30
	return hardware.Info{
		MACAddress: browserMAC,
		CPU:        hardware.CPU{Model: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", Vendor: "GenuineIntel", Cores: 64, Threads: 128, Sockets: 2},
		Memory: hardware.Memory{TotalGB: 256, TotalBytes: 256 * gb, DIMMs: []hardware.DIMM{
			{Slot: "DIMM_A1", SizeGB: 64, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Samsung", Serial: "S1A2B3C4"},
			{Slot: "DIMM_A2", SizeGB: 64, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Samsung", Serial: "S1A2B3C5"},
			{Slot: "DIMM_B1", SizeGB: 64, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Samsung", Serial: "S1A2B3C6"},
			{Slot: "DIMM_B2", SizeGB: 64, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Samsung", Serial: "S1A2B3C7"},
		}},
		Disks: []hardware.Disk{
			{Device: "/dev/nvme0n1", SizeGB: 960, SizeBytes: 960197124096, Type: hardware.DiskNVMe, Model: "SAMSUNG MZQL2960HCJR", Serial: "S64FNE0R123456"},
			{Device: "/dev/sda", SizeGB: 4000, SizeBytes: 4000787030016, Type: hardware.DiskHDD, Model: "ST4000NM000A", Serial: "ZC1234AB"},
		},
		Network: []hardware.NIC{
			{Interface: "eno1", MAC: browserMAC, Speed: "25Gbps", Driver: "mlx5_core"},
			{Interface: "eno2", MAC: "52:54:00:12:34:57", Speed: "25Gbps", Driver: "mlx5_core"},
		},
		BIOS:        hardware.BIOS{Vendor: "Dell Inc.", Version: "1.10.2", Date: "03/14/2024", Serial: "7XK2Q93"},
		System:      hardware.System{Vendor: "Dell Inc.", Product: "PowerEdge R650", Serial: "7XK2Q93", UUID: "4c4c4544-0058-4b10-8032-b7c04f513933"},
		Board:       hardware.Board{Vendor: "Dell Inc.", Product: browserXSSBoard, Serial: "/7XK2Q93/CNFCP0012300AB/"},
		CollectedAt: time.Now().UTC(),
	}
}

// The machines test drives the Machines page and a machine's page: a
// registered machine with an IPMI BMC (whose password must never reach the
// browser) and a discovered one known from its hardware report, plus
// enough others to need a second page. It searches and filters, opens both
// machines, and asks for power actions: refused for the machine without a
// BMC, recorded as a pending request for the other (no region runs here to
// carry it out).
func TestBrowserMachines(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	const (
		registered  = "52:54:00:aa:00:01"
		discovered  = "0c:c4:7a:00:00:09"
		bmcPassword = "Bmc-Pa55-unique-77"
	)
	st := etcdtest.NewStore(t)
	sealer, err := machine.NewSealer(bytes.Repeat([]byte("k"), machine.KeySize))
	require.NoError(t, err)
	ts, call := browserCP(ctx, t, st, sealer)

	// The registered machine, through the API as an operator would.
	code, body := call(http.MethodPost, "/api/v1/machines", map[string]any{
		"mac": registered, "region": "dc1", "tags": map[string]string{"rack": "r7", "note": browserXSSTag},
		"bmc": map[string]any{"driver": "ipmi", "address": "10.1.0.7:623", "username": "admin", "password": bmcPassword},
	})
	require.Equal(t, http.StatusCreated, code, "%v", body)
	// The discovered one, as a region records an agent's report; and 26
	// small ones after both in MAC order, so that the list has two pages.
	msvc := machine.NewService(st, machine.Config{})
	hw := browserHardware()
	require.NoError(t, msvc.Observe(ctx, mustMAC(t, discovered), machine.Report{Hardware: &hw, Region: "dc1", Source: browserReportSource}))
	small := hardware.Info{CPU: hardware.CPU{Model: "QEMU Virtual CPU", Cores: 2, Threads: 2}, Memory: hardware.Memory{TotalGB: 4}}
	for i := range 26 {
		require.NoError(t, msvc.Observe(ctx, mustMAC(t, fmt.Sprintf("de:ad:be:ef:00:%02x", i)), machine.Report{Hardware: &small, Region: "dc2"}))
	}
	svc := task.NewService(st, task.Config{})
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: registered, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	// Boot traces, as a region records them: the registered machine's
	// (with markup in a message, which must stay text), and one of a
	// machine DHCP ignored, which has no record.
	const stranger = "52:54:00:aa:00:77"
	traces := trace.New(trace.Config{Store: st, Region: "dc1", FlushInterval: time.Hour})
	traceCtx, stopTraces := context.WithCancel(ctx)
	tracesDone := make(chan error, 1)
	go func() { tracesDone <- traces.Run(traceCtx) }()
	t.Cleanup(func() { stopTraces(); <-tracesDone })
	traces.Record(mustMAC(t, registered), trace.Event{Kind: trace.KindDHCP, Outcome: trace.OutcomeOK,
		Message: "DISCOVER → OFFER undionly.kpxe", Detail: map[string]string{"arch": "0", "vendor_class": browserXSSTag}})
	traces.Record(mustMAC(t, stranger), trace.Event{Kind: trace.KindDHCP, Outcome: trace.OutcomeIgnored, Message: "DISCOVER ignored",
		Reason: "no active task for this machine in region dc1 (unknown machines are ignored)"})
	require.NoError(t, traces.Flush(ctx))
	// The list is served from a watch-fed cache: wait until it has them all.
	require.Eventually(t, func() bool {
		code, body := call(http.MethodGet, "/api/v1/machines?limit=1", nil)
		return code == http.StatusOK && body["total"] == float64(28)
	}, browserStepWait, 20*time.Millisecond, "the control plane never listed the 28 machines")

	p := newBrowserPage(t, ctx)
	p.step("open the machines page", chromedp.Navigate(ts.URL+"/machines"), chromedp.WaitVisible(chromedp.ID("token")))
	p.step("sign in",
		chromedp.SendKeys(chromedp.ID("token"), browserAdminToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("machines")))
	browserEval[chromedp.Void](p, `window.__lpmosMarker = 'still-here'`)

	rowOf := func(mac string) string { return `document.querySelector('tr[data-mac="` + mac + `"]')` }
	shownMACs := `[...document.querySelectorAll('#machines tbody tr[data-mac]')].map(tr => tr.dataset.mac)`
	p.waitJS("the first page lists both machines", rowOf(registered)+` !== null && `+rowOf(discovered)+` !== null &&
		document.getElementById('machine-count').textContent === '28 machines' && `+shownMACs+`.length === 25 &&
		document.querySelector('#mainnav a[href="/machines"]').classList.contains('active')`)
	p.waitJS("the rows show what the machines are", `(() => {
		const r = `+rowOf(registered)+`.textContent, d = `+rowOf(discovered)+`.textContent;
		return ['dc1', 'rack=r7', 'ipmi 10.1.0.7:623', 'unknown'].every(s => r.includes(s)) &&
			['discovered', 'Dell Inc. PowerEdge R650', '64', '256 GB', '4 TB', 'none'].every(s => d.includes(s));
	})() && `+browserInert)
	p.screenshot("machines")

	// Pages follow the API's cursor.
	p.step("next page", chromedp.Click(chromedp.ID("machines-next")))
	p.waitJS("the second page shows the last three", shownMACs+`.join(',') === 'de:ad:be:ef:00:17,de:ad:be:ef:00:18,de:ad:be:ef:00:19' &&
		document.querySelector('#machines').closest('.panel').textContent.includes('26–28 of 28') &&
		document.getElementById('machines-next').disabled && !document.getElementById('machines-prev').disabled`)
	p.step("previous page", chromedp.Click(chromedp.ID("machines-prev")))
	p.waitJS("the first page again", shownMACs+`[0] === '`+discovered+`' && `+shownMACs+`.length === 25 && document.getElementById('machines-prev').disabled`)

	// Filters narrow the list through the API's query parameters.
	clear := func(id string) chromedp.Action[chromedp.Void] {
		return chromedp.Evaluate[chromedp.Void](`document.getElementById('` + id + `').value = ''`)
	}
	p.step("filter by MAC prefix", chromedp.SendKeys(chromedp.ID("mf-mac-prefix"), "52-54-00\r"))
	p.waitJS("only the registered machine is left", shownMACs+`.join(',') === '`+registered+`' &&
		document.getElementById('machine-count').textContent === '1 machine' &&
		new URLSearchParams(location.search).get('mac_prefix') === '52-54-00'`)
	p.step("filter by cores instead", clear("mf-mac-prefix"), chromedp.SendKeys(chromedp.ID("mf-min-cores"), "32\r"))
	p.waitJS("only the big discovered machine is left", shownMACs+`.join(',') === '`+discovered+`' &&
		new URLSearchParams(location.search).get('min_cores') === '32' && !new URLSearchParams(location.search).has('mac_prefix')`)
	p.step("a filter the API refuses", clear("mf-min-cores"), chromedp.SendKeys(chromedp.ID("mf-min-cores"), "lots\r"))
	p.waitJS("the filter is marked and the reason shown", `document.getElementById('mf-min-cores').classList.contains('invalid') &&
		document.getElementById('machines-alerts').textContent.includes('min_cores')`)
	p.step("filter by tag and region", clear("mf-min-cores"), chromedp.SendKeys(chromedp.ID("mf-region"), "dc1"),
		chromedp.SendKeys(chromedp.ID("mf-tag"), "rack=r7\r"))
	p.waitJS("the tag and region find the registered machine", shownMACs+`.join(',') === '`+registered+`' &&
		!document.getElementById('mf-min-cores').classList.contains('invalid') &&
		new URLSearchParams(location.search).getAll('tag').join() === 'rack=r7'`)
	p.screenshot("machines-filtered")
	p.step("clear the filters", clear("mf-region"), clear("mf-tag"), chromedp.SendKeys(chromedp.ID("mf-vendor"), "\r"))
	p.waitJS("everything is back", `document.getElementById('machine-count').textContent === '28 machines' && location.search === '' && `+browserNoReload)

	// The discovered machine: its hardware, no BMC, and a power request the
	// API refuses.
	p.step("open the discovered machine", chromedp.Click(chromedp.CSS(`tr[data-mac="`+discovered+`"] td:nth-child(3)`)))
	p.waitJS("its page shows the hardware", `location.pathname === '/machines/`+discovered+`' &&
		document.getElementById('machine-kind').textContent === 'discovered' && (() => {
		const hw = document.getElementById('machine-hardware').textContent;
		return ['Intel(R) Xeon(R) Gold 6338', '64 cores / 128 threads', '256 GB', '/dev/nvme0n1', 'SAMSUNG MZQL2960HCJR',
			'/dev/sda', 'eno1', 'eno2', '25Gbps', 'Dell Inc. PowerEdge R650', '7XK2Q93', `+jsString(browserXSSBoard)+`].every(s => hw.includes(s));
	})() && document.getElementById('machine-overview').textContent.includes('`+browserReportSource+`') &&
		document.getElementById('bmc-none') !== null && `+browserInert+` && `+browserNoReload)
	p.screenshot("machine-discovered")
	p.step("power on without a BMC", chromedp.Click(chromedp.ID("power-on")))
	p.waitJS("the refusal is shown", `document.querySelector('#machine-alerts .alert-error') !== null &&
		document.getElementById('machine-alerts').textContent.includes('This machine has no BMC') &&
		document.getElementById('machine-alerts').textContent.includes('409 no_bmc')`)
	p.screenshot("machine-no-bmc")

	// The registered machine: its BMC without the password, its task, and
	// a power request.
	p.step("back to the list", chromedp.Click(chromedp.CSS(`#mainnav a[href="/machines"]`)), chromedp.WaitVisible(chromedp.ID("machines")))
	p.waitJS("the list is back", rowOf(registered)+` !== null`)
	p.step("open the registered machine", chromedp.Click(chromedp.CSS(`tr[data-mac="`+registered+`"] a`)))
	p.waitJS("its page shows the BMC and the task", `location.pathname === '/machines/`+registered+`' &&
		document.getElementById('machine-kind').textContent === 'registered' && (() => {
		const bmc = document.getElementById('machine-bmc').textContent;
		return ['ipmi', '10.1.0.7:623', 'admin'].every(s => bmc.includes(s)) &&
			document.getElementById('bmc-password').textContent.startsWith('set');
	})() && document.querySelector('#machine-tasks a[href="/tasks/`+tk.ID+`"]') !== null &&
		document.getElementById('machine-hardware').textContent.includes('No hardware report yet') &&
		document.getElementById('power-pending').textContent === 'none' && `+browserInert)
	assert.False(t, browserEval[bool](p, `document.documentElement.outerHTML.includes(`+jsString(bmcPassword)+`)`), "the BMC password is in the page")

	// Its boot trace, refreshed while the page is open.
	p.waitJS("the boot trace shows the DHCP offer", `(() => {
		const tr = document.querySelector('#boot-trace tr[data-kind="dhcp"][data-outcome="ok"]');
		return tr !== null && tr.textContent.includes('DISCOVER → OFFER undionly.kpxe') && tr.textContent.includes('vendor_class=');
	})() && `+browserInert)
	traces.Record(mustMAC(t, registered), trace.Event{Kind: trace.KindScript, Outcome: trace.OutcomeOK, Message: "iPXE script: agent",
		Reason: "task " + tk.ID + " is ready: boot the agent"})
	require.NoError(t, traces.Flush(ctx))
	p.waitJS("a new event shows without a reload", `(() => {
		const first = document.querySelector('#boot-trace tbody tr');
		return first !== null && first.dataset.kind === 'script' && first.textContent.includes('boot the agent');
	})() && `+browserNoReload)
	p.screenshot("machine-boot-trace")

	// Off asks first; going back sends nothing.
	p.step("ask to power off", chromedp.Click(chromedp.ID("power-off")))
	p.waitJS("power off asks for confirmation", `!document.getElementById('power-confirm').hidden &&
		document.getElementById('power-confirm-title').textContent === 'Power off this machine?'`)
	p.step("go back", chromedp.Click(chromedp.CSS(`#power-confirm .btn-secondary`)))
	p.waitJS("nothing was asked", `document.getElementById('power-confirm').hidden && document.getElementById('power-pending').textContent === 'none'`)

	p.step("power on", chromedp.Click(chromedp.ID("power-on")))
	p.waitJS("the request is accepted and shown as pending", `document.getElementById('machine-alerts').textContent.includes('Power on requested (202 Accepted)') &&
		document.getElementById('power-pending').textContent.startsWith('on requested by token:alice@example.com') && `+browserNoReload)
	p.screenshot("machine-power-on")
	code, body = call(http.MethodGet, "/api/v1/machines/"+registered, nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	pending, _ := body["pending_power"].(map[string]any)
	require.NotNil(t, pending, "%v", body)
	assert.Equal(t, "on", pending["action"])
	assert.Equal(t, "token:alice@example.com", pending["requested_by"])

	// The machine's task links to the task page.
	p.step("follow the task", chromedp.Click(chromedp.CSS(`#machine-tasks a[href="/tasks/`+tk.ID+`"]`)))
	p.waitJS("the task page opens", `location.pathname === '/tasks/`+tk.ID+`' && document.getElementById('task-status').textContent === 'pending' && `+browserNoReload)
	p.waitJS("the task page shows its machine's boot trace", `document.getElementById('boot-trace-panel') !== null &&
		document.getElementById('boot-trace-panel').dataset.mac === '`+registered+`' &&
		document.querySelector('#boot-trace tr[data-kind="script"]') !== null`)

	// A machine DHCP ignored has no record, but its trace says why.
	browserEval[chromedp.Void](p, `history.pushState(null, '', '/machines/`+stranger+`'); dispatchEvent(new PopStateEvent('popstate'))`)
	p.waitJS("the unknown machine's trace says why it was ignored", `document.querySelector('#app h1').textContent === 'Machine not found' && (() => {
		const tr = document.querySelector('#boot-trace tr[data-outcome="ignored"]');
		return tr !== null && tr.textContent.includes('no active task for this machine in region dc1');
	})() && `+browserNoReload)
	p.screenshot("machine-unknown-trace")

	// Register a machine through the form: a bad BMC address is named,
	// the password field is emptied, and the password never shows.
	const secondPassword = "Other-Bmc-Pw-88"
	const second = "52:54:00:aa:00:02"
	goTo := func(path string) {
		browserEval[chromedp.Void](p, `history.pushState(null, '', `+jsString(path)+`); dispatchEvent(new PopStateEvent('popstate'))`)
	}
	goTo("/machines")
	p.step("open the register form", chromedp.WaitVisible(chromedp.ID("register-open")), chromedp.Click(chromedp.ID("register-open")),
		chromedp.WaitVisible(chromedp.ID("register-form")))
	assert.True(t, browserEval[bool](p, `document.getElementById('r-bmc').hidden`), "BMC fields hidden without a driver")
	browserEval[chromedp.Void](p, `(() => { const s = document.getElementById('r-driver'); s.value = 'ipmi'; s.dispatchEvent(new Event('change', { bubbles: true })); })()`)
	p.step("fill in the form with a bad address",
		chromedp.WaitVisible(chromedp.ID("r-address")),
		chromedp.SendKeys(chromedp.ID("r-mac"), second),
		chromedp.SendKeys(chromedp.ID("r-region"), "dc1"),
		chromedp.SendKeys(chromedp.ID("r-tags"), "rack=r8"),
		chromedp.SendKeys(chromedp.ID("r-address"), "http://10.1.0.8/"),
		chromedp.SendKeys(chromedp.ID("r-username"), "root"),
		chromedp.SendKeys(chromedp.ID("r-password"), secondPassword),
		chromedp.Click(chromedp.ID("r-submit")))
	p.waitJS("the bad address is named", `document.getElementById('r-address').classList.contains('invalid') &&
		document.getElementById('register-alerts').textContent.includes('bmc.address') &&
		document.getElementById('register-alerts').textContent.includes('Type the BMC password again') &&
		document.getElementById('r-password').value === '' && location.pathname === '/machines'`)
	p.screenshot("register-error")
	p.step("fix it and register",
		chromedp.SetValue(chromedp.ID("r-address"), "10.1.0.8"),
		chromedp.SendKeys(chromedp.ID("r-password"), secondPassword),
		chromedp.Click(chromedp.ID("r-submit")))
	p.waitJS("the new machine's page opens", `location.pathname === '/machines/`+second+`' &&
		document.getElementById('machine-kind') !== null && document.getElementById('machine-kind').textContent === 'registered' &&
		document.getElementById('machine-bmc').textContent.includes('10.1.0.8') &&
		document.getElementById('bmc-password').textContent.startsWith('set') &&
		document.getElementById('machine-overview').textContent.includes('rack=r8') && `+browserNoReload)
	assert.False(t, browserEval[bool](p, `document.documentElement.outerHTML.includes(`+jsString(secondPassword)+`)`), "the BMC password is in the page")
	code, body = call(http.MethodGet, "/api/v1/machines/"+second, nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	bmc, _ := body["bmc"].(map[string]any)
	require.NotNil(t, bmc, "%v", body)
	assert.Equal(t, true, bmc["has_password"])
	assert.Equal(t, "root", bmc["username"])
	assert.Equal(t, "dc1", body["region"])

	// A viewer sees the machine but has no power buttons.
	p.step("sign out", chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("token")))
	p.step("sign in as a viewer",
		chromedp.SendKeys(chromedp.ID("token"), browserViewToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("machine-kind")))
	goTo("/machines/" + registered)
	p.waitJS("the viewer sees the machine without power buttons", `document.getElementById('machine-kind') !== null &&
		document.getElementById('machine-kind').textContent === 'registered' && document.getElementById('power-on') === null &&
		document.getElementById('power-pending').textContent.startsWith('on requested')`)
	goTo("/machines")
	p.waitJS("the viewer cannot register machines", `document.querySelector('#machines tr[data-mac]') !== null && document.getElementById('register-open') === null`)

	assert.Empty(t, browserEval[[]string](p, `window.__cspViolations`), "CSP violations")
	assert.True(t, browserEval[bool](p, browserInert), "window.__xss is set: a hostile string ran")
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.console {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
}

// The rules test drives the Rules page and the task page's account of the
// rules: an admin creates a rule through the form, is told which field of
// a bad rule the API refused (and nothing is written), edits a rule and
// deletes one after confirming; a task waiting for approval shows why each
// rule did not approve it, and one approved by a rule says so; a viewer
// sees the rules but no form or buttons.
func TestBrowserRules(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	st := etcdtest.NewStore(t)
	ts, call := browserCP(ctx, t, st, nil)
	// A rule that exists before the page opens, with a hostile note.
	code, body := call(http.MethodPut, "/api/v1/rules/small-vms", map[string]any{"max_cores": 4, "notes": browserXSSTag})
	require.Equal(t, http.StatusOK, code, "%v", body)

	p := newBrowserPage(t, ctx)
	goTo := func(path string) {
		browserEval[chromedp.Void](p, `history.pushState(null, '', `+jsString(path)+`); dispatchEvent(new PopStateEvent('popstate'))`)
	}
	p.step("open the rules page", chromedp.Navigate(ts.URL+"/rules"), chromedp.WaitVisible(chromedp.ID("token")))
	p.step("sign in",
		chromedp.SendKeys(chromedp.ID("token"), browserAdminToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("rules")))
	browserEval[chromedp.Void](p, `window.__lpmosMarker = 'still-here'`)

	rowOf := func(name string) string { return `document.querySelector('#rules tr[data-rule="` + name + `"]')` }
	p.waitJS("the existing rule is listed", rowOf("small-vms")+` !== null && (() => {
		const r = `+rowOf("small-vms")+`.textContent;
		return ['all regions', '≤ 4 cores', 'token:alice@example.com', `+jsString(browserXSSTag)+`].every(s => r.includes(s));
	})() && document.getElementById('rule-count').textContent === '1 rule' &&
		document.querySelector('#mainnav a[href="/rules"]').classList.contains('active') && `+browserInert)
	assert.True(t, browserEval[bool](p, `document.getElementById('rule-form').hidden`), "the form shows before it is asked for")

	// A bad rule: its maximum below its minimum. The field is marked and
	// nothing is written.
	setDiskType := func(v string) {
		browserEval[chromedp.Void](p, `(() => { const s = document.getElementById('rule-disk-type'); s.value = `+jsString(v)+`;
			s.dispatchEvent(new Event('change', { bubbles: true })); })()`)
	}
	p.step("open the form", chromedp.Click(chromedp.ID("rule-new")), chromedp.WaitVisible(chromedp.ID("rule-form")))
	p.step("fill in a bad rule",
		chromedp.SendKeys(chromedp.ID("rule-name"), "bad-cores"),
		chromedp.SendKeys(chromedp.ID("rule-min-cores"), "16"),
		chromedp.SendKeys(chromedp.ID("rule-max-cores"), "8"),
		chromedp.Click(chromedp.ID("rule-submit")))
	p.waitJS("the refused field is marked", `document.getElementById('rule-max-cores').classList.contains('invalid') &&
		document.getElementById('rule-form-alerts').textContent.includes('max_cores') &&
		document.getElementById('rule-form-alerts').textContent.includes('below min_cores') &&
		!document.getElementById('rule-form').hidden`)
	p.screenshot("rule-error")
	code, body = call(http.MethodGet, "/api/v1/rules/bad-cores", nil)
	assert.Equal(t, http.StatusNotFound, code, "the bad rule was written: %v", body)

	// The good rule, through the same form.
	p.step("fill in a good rule",
		chromedp.SetValue(chromedp.ID("rule-name"), "big-dell"),
		// chromedp.SetValue cannot set "".
		chromedp.Evaluate[chromedp.Void](`document.getElementById('rule-max-cores').value = ''`),
		chromedp.SendKeys(chromedp.ID("rule-min-memory-gb"), "64"),
		chromedp.SendKeys(chromedp.ID("rule-min-disk-gb"), "400"),
		chromedp.SendKeys(chromedp.ID("rule-vendor"), "Dell*"),
		chromedp.SendKeys(chromedp.ID("rule-notes"), "R650s from the 2026 order"))
	setDiskType("SSD")
	p.step("save it", chromedp.Click(chromedp.ID("rule-submit")))
	p.waitJS("the new rule is listed in words", rowOf("big-dell")+` !== null && (() => {
		const r = `+rowOf("big-dell")+`.textContent;
		return ['all regions', '≥ 16 cores, ≥ 64 GB RAM, SSD ≥ 400 GB, vendor Dell*', 'R650s from the 2026 order'].every(s => r.includes(s));
	})() && document.getElementById('rule-form').hidden && document.getElementById('rule-count').textContent === '2 rules' && `+browserNoReload)
	p.screenshot("rules")
	code, body = call(http.MethodGet, "/api/v1/rules/big-dell", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, float64(16), body["min_cores"])
	assert.Nil(t, body["max_cores"])
	assert.Equal(t, "SSD", body["disk_type"])
	assert.Equal(t, "Dell*", body["vendor"])
	assert.Equal(t, "token:alice@example.com", body["updated_by"])

	// A new rule may not take an existing rule's name.
	p.step("a new rule named like an existing one", chromedp.Click(chromedp.ID("rule-new")), chromedp.WaitVisible(chromedp.ID("rule-form")),
		chromedp.SendKeys(chromedp.ID("rule-name"), "small-vms"), chromedp.SendKeys(chromedp.ID("rule-min-disks"), "9"),
		chromedp.Click(chromedp.ID("rule-submit")))
	p.waitJS("the name is refused", `document.getElementById('rule-name').classList.contains('invalid') &&
		document.getElementById('rule-form-alerts').textContent.includes('exists already')`)
	code, body = call(http.MethodGet, "/api/v1/rules/small-vms", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Nil(t, body["min_disks"], "the existing rule was replaced")

	// Edit: the form opens with the rule, its name fixed.
	p.step("edit big-dell", chromedp.Click(chromedp.CSS(`#rules tr[data-rule="big-dell"] .rule-edit`)))
	p.waitJS("the form holds the rule", `document.getElementById('rule-name').value === 'big-dell' && document.getElementById('rule-name').disabled &&
		document.getElementById('rule-min-cores').value === '16' && document.getElementById('rule-disk-type').value === 'SSD' &&
		document.getElementById('rule-form-title').textContent === 'Edit rule big-dell'`)
	p.step("change it",
		chromedp.SetValue(chromedp.ID("rule-min-cores"), "128"),
		chromedp.SetValue(chromedp.ID("rule-region"), "dc1"),
		chromedp.Click(chromedp.ID("rule-match-expected")),
		chromedp.Click(chromedp.ID("rule-submit")))
	p.waitJS("the edited rule is listed", `(() => {
		const r = `+rowOf("big-dell")+`;
		return r !== null && r.textContent.includes('region dc1') && r.textContent.includes('≥ 128 cores, ≥ 64 GB RAM') &&
			r.textContent.includes('vendor Dell*, matches the expected hardware of its machine record');
	})() && document.getElementById('rule-form').hidden`)
	code, body = call(http.MethodGet, "/api/v1/rules/big-dell", nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, float64(128), body["min_cores"])
	assert.Equal(t, "dc1", body["region"])
	assert.Equal(t, "Dell*", body["vendor"], "the edit lost a field")
	assert.Equal(t, true, body["match_expected"])

	// A task whose report matched none of the rules: its page says why,
	// beside the approval buttons. The reasons are what the region writes
	// (region.applyRules) for this report under these rules.
	svc := task.NewService(st, task.Config{})
	waiting, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: browserMAC, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	_, err = svc.MarkReady(ctx, waiting.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, waiting.ID, "region:dc1")
	require.NoError(t, err)
	hw := browserHardware()
	_, err = svc.ReportHardware(ctx, waiting.ID, "agent:"+browserMAC, hw, task.FromAddress(browserReportSource))
	require.NoError(t, err)
	rules, err := rule.NewService(st, nil).List(ctx)
	require.NoError(t, err)
	d := rule.Evaluate(rules, "dc1", nil, &hw, nil)
	require.Empty(t, d.Approver)
	require.Len(t, d.Reasons, 2, "%v", d.Reasons)
	_, err = svc.RecordRules(ctx, waiting.ID, "region:dc1", "no approval rule matched: "+strings.Join(d.Reasons, " | "))
	require.NoError(t, err)

	goTo("/tasks/" + waiting.ID)
	p.waitJS("the task page says why no rule approved it", `document.getElementById('task-status') !== null &&
		document.getElementById('task-status').textContent === 'pending approval' && !document.getElementById('approval').hidden && (() => {
		const box = document.getElementById('approval-rules');
		const lines = [...box.querySelectorAll('li')].map(li => li.textContent);
		return box.textContent.includes('No auto-approval rule matched') && lines.length === 2 &&
			lines[0].startsWith('big-dell: ') && lines[0].includes('64 cores < 128') && lines[0].includes('no SSD disk of at least 400 GB') &&
			lines[0].includes('states no expected hardware') &&
			lines[1] === 'small-vms: 64 cores > 4' &&
			box.previousElementSibling === document.getElementById('approval');
	})() && `+browserNoReload)
	p.screenshot("task-rules-reasons")

	// Approving by hand: the reasons go, the decision is a person's.
	p.step("approve it by hand", chromedp.Click(chromedp.ID("approve-btn")))
	p.waitJS("the reasons go once the task is approved", `document.getElementById('task-status').textContent === 'approved' &&
		document.getElementById('approval-rules').childElementCount === 0 && document.getElementById('approved-by-rule') === null &&
		document.getElementById('approval-info').textContent.includes('token:alice@example.com')`)

	// A task approved by a rule says so.
	auto, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:12:34:99", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bob@example.com"})
	require.NoError(t, err)
	_, err = svc.MarkReady(ctx, auto.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, auto.ID, "region:dc1")
	require.NoError(t, err)
	hw.MACAddress = "52:54:00:12:34:99"
	_, err = svc.ReportHardware(ctx, auto.ID, "agent:"+hw.MACAddress, hw)
	require.NoError(t, err)
	_, err = svc.Approve(ctx, auto.ID, rule.ActorPrefix+"big-dell", "approved automatically: the hardware meets rule:big-dell")
	require.NoError(t, err)
	goTo("/tasks/" + auto.ID)
	p.waitJS("the decision names the rule", `document.getElementById('approved-by-rule') !== null &&
		document.getElementById('approved-by-rule').textContent === 'Approved automatically by rule big-dell.' &&
		document.querySelector('#approved-by-rule a[href="/rules"]') !== null && document.getElementById('approval-rules').childElementCount === 0`)
	p.screenshot("task-approved-by-rule")

	// Delete asks first; keeping it deletes nothing.
	goTo("/rules")
	p.waitJS("the rules are back", rowOf("small-vms")+` !== null`)
	p.step("ask to delete small-vms", chromedp.Click(chromedp.CSS(`#rules tr[data-rule="small-vms"] .rule-delete`)))
	p.waitJS("delete asks for confirmation", `!document.getElementById('rule-delete').hidden &&
		document.getElementById('rule-delete-title').textContent === 'Delete rule small-vms?'`)
	p.step("keep it", chromedp.Click(chromedp.ID("rule-delete-keep")))
	p.waitJS("nothing was deleted", `document.getElementById('rule-delete').hidden && `+rowOf("small-vms")+` !== null`)
	code, _ = call(http.MethodGet, "/api/v1/rules/small-vms", nil)
	require.Equal(t, http.StatusOK, code)
	p.step("delete it", chromedp.Click(chromedp.CSS(`#rules tr[data-rule="small-vms"] .rule-delete`)),
		chromedp.WaitVisible(chromedp.ID("rule-delete")), chromedp.Click(chromedp.ID("rule-delete-confirm")))
	p.waitJS("the rule is gone", rowOf("small-vms")+` === null && `+rowOf("big-dell")+` !== null &&
		document.getElementById('rules-alerts').textContent.includes('Rule small-vms deleted') &&
		document.getElementById('rule-count').textContent === '1 rule' && `+browserNoReload)
	code, body = call(http.MethodGet, "/api/v1/rules/small-vms", nil)
	assert.Equal(t, http.StatusNotFound, code, "%v", body)

	// A viewer sees the rules, and why a task waits, but cannot change a rule.
	p.step("sign out", chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("token")))
	p.step("sign in as a viewer",
		chromedp.SendKeys(chromedp.ID("token"), browserViewToken),
		chromedp.Click(chromedp.ID("signin-submit")),
		chromedp.WaitVisible(chromedp.ID("rules")))
	p.waitJS("the viewer sees the rules without the form", rowOf("big-dell")+` !== null &&
		document.getElementById('rule-new') === null && document.getElementById('rule-form').hidden &&
		document.querySelector('#rules .rule-edit, #rules .rule-delete') === null && document.getElementById('rules-readonly') !== null`)
	p.screenshot("rules-viewer")

	assert.Empty(t, browserEval[[]string](p, `window.__cspViolations`), "CSP violations")
	assert.True(t, browserEval[bool](p, browserInert), "window.__xss is set: a hostile string ran")
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.console {
		if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			t.Errorf("console: %s (%s:%d)", m, m.URL, m.Line)
		}
	}
}

// browserCP runs a control plane on st for a browser test, with an admin
// (browserAdminToken) and a viewer (browserViewToken), and returns its
// server and a JSON API call as the admin.
func browserCP(ctx context.Context, t *testing.T, st store.Store, sealer *machine.Sealer) (*httptest.Server, func(method, path string, body any) (int, map[string]any)) {
	t.Helper()
	srv, err := controlplane.New(controlplane.Config{
		Store: st,
		Auth: auth.Config{Tokens: []auth.StaticToken{
			{Token: browserAdminToken, Subject: "alice@example.com", Role: auth.RoleAdmin},
			{Token: browserViewToken, Subject: "victor@example.com", Role: auth.RoleViewer},
		}},
		BMCSealer: sealer,
		Logger:    slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	runCtx, stopRun := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- srv.Run(runCtx) }()
	t.Cleanup(func() {
		stopRun()
		<-ran
	})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	call := func(method, path string, body any) (int, map[string]any) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, err := json.Marshal(body)
			require.NoError(t, err)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(ctx, method, ts.URL+path, rd)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+browserAdminToken)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(res.Body).Decode(&out)
		return res.StatusCode, out
	}
	return ts, call
}
