package region_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

type lab struct {
	t       *testing.T
	st      store.Store
	svc     *task.Service // the control plane's side
	reg     *region.Region
	ts      *httptest.Server
	bootDir string
	cancel  context.CancelFunc
	done    chan error
}

type labOption func(*region.Config)

// writeBootDir creates the agent's boot files and a small image entry.
func writeBootDir(t testing.TB) (dir string, image []byte) {
	dir = t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("kernel"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "initramfs.cpio.zst"), []byte("initramfs"), 0o644))
	img := filepath.Join(dir, "images", "ubuntu", "24.04")
	require.NoError(t, os.MkdirAll(img, 0o755))
	image = bytes.Repeat([]byte("LPMOS-IMAGE"), 1000)
	require.NoError(t, os.WriteFile(filepath.Join(img, "image.raw"), image, 0o644))
	sum := sha256.Sum256(image)
	require.NoError(t, os.WriteFile(filepath.Join(img, "SHA256SUMS"), []byte(hex.EncodeToString(sum[:])+"  image.raw\n"), 0o644))
	return dir, image
}

func startRegion(t *testing.T, st store.Store, opts ...labOption) *lab {
	t.Helper()
	return startRegionOn(t, st, nil, opts...)
}

// startRegionOn is startRegion serving on ln (nil: a loopback port).
func startRegionOn(t *testing.T, st store.Store, ln net.Listener, opts ...labOption) *lab {
	t.Helper()
	bootDir, _ := writeBootDir(t)
	// The handler needs the public URL before the server exists: serve
	// through an indirection.
	var handler http.Handler
	var mu sync.RWMutex
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.RLock()
		h := handler
		mu.RUnlock()
		h.ServeHTTP(w, r)
	}))
	if ln != nil {
		ts.Listener.Close()
		ts.Listener = ln
	}
	ts.Start()
	t.Cleanup(ts.Close)
	cfg := region.Config{
		RegionID: "dc1", Store: st, PublicURL: ts.URL, BootDir: bootDir,
		HeartbeatTTL: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond,
		ProgressInterval: 200 * time.Millisecond, ApprovalWait: 10 * time.Second,
		TimeoutCheckInterval: 50 * time.Millisecond,
		Logger:               slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	reg, err := region.New(cfg)
	require.NoError(t, err)
	mu.Lock()
	handler = reg.Handler()
	mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	l := &lab{t: t, st: st, svc: task.NewService(st, task.Config{}), reg: reg, ts: ts, bootDir: bootDir, cancel: cancel, done: make(chan error, 1)}
	go func() { l.done <- reg.Run(ctx) }()
	t.Cleanup(l.stop)
	select { // until then it answers 503 (TestStartingRegionAsksToRetry)
	case <-reg.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the region never synced with its store")
	}
	return l
}

func (l *lab) stop() {
	if l.cancel != nil {
		l.cancel()
		<-l.done
		l.cancel = nil
	}
}

func memStore(t *testing.T) store.Store {
	s := memory.New()
	t.Cleanup(func() { s.Close() })
	return s
}

func (l *lab) create(mac string) *task.Task {
	l.t.Helper()
	tk, err := l.svc.Create(context.Background(), task.CreateRequest{
		RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops",
		Tags: map[string]string{"hostname": "web-1"},
	})
	require.NoError(l.t, err)
	return tk
}

func (l *lab) waitStatus(id string, want task.Status) *task.Task {
	l.t.Helper()
	var got *task.Task
	require.Eventually(l.t, func() bool {
		var err error
		got, err = l.svc.Get(context.Background(), id)
		require.NoError(l.t, err)
		return got.Status == want
	}, 15*time.Second, 10*time.Millisecond, "task %s never reached %s", id, want)
	return got
}

var tokenRe = regexp.MustCompile(`lpmos\.token=([0-9a-f]+)`)

// boot fetches the machine's iPXE script, as iPXE does, and returns the
// script and the agent token in it.
func (l *lab) boot(mac string) (string, string) {
	l.t.Helper()
	// The region learns of a status through its watch, a moment after the
	// store (where waitStatus looks): meanwhile it answers 503, and iPXE
	// retries.
	var body []byte
	var code int
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get(l.ts.URL + "/boot/" + mac + ".ipxe")
		require.NoError(l.t, err)
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if code = resp.StatusCode; code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(l.t, http.StatusOK, code, "%s", body)
	m := tokenRe.FindStringSubmatch(string(body))
	if m == nil {
		return string(body), ""
	}
	return string(body), m[1]
}

// report posts a minimal hardware report as the agent does and waits for
// the task to await approval.
func (l *lab) report(id, mac, token string) {
	l.t.Helper()
	code, body := l.call("POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, Hardware: hardware.Info{CPU: hardware.CPU{Cores: 1}}})
	require.Equal(l.t, http.StatusOK, code, "%v", body)
	l.waitStatus(id, task.StatusPendingApproval)
}

// call makes an agent API request from the machine's address and decodes
// the answer.
func (l *lab) call(method, path, token string, body any) (int, map[string]any) {
	l.t.Helper()
	return l.callFrom(peer{c: http.DefaultClient, base: l.ts.URL}, method, path, token, body)
}

// dump records every task and agent key with its mod revision. The region
// keys are left out: the heartbeat rewrites them on its own schedule.
func dump(t *testing.T, st store.Store) map[string]int64 {
	out := map[string]int64{}
	for _, prefix := range []string{task.TasksPrefix, task.AgentsPrefix} {
		res, err := st.List(context.Background(), prefix, store.ListOptions{})
		require.NoError(t, err)
		for _, kv := range res.KVs {
			out[kv.Key] = kv.ModRevision
		}
	}
	return out
}

// The whole agent-side flow against a region over the memory store.
func TestAgentFlow(t *testing.T) {
	l := startRegion(t, memStore(t))
	const mac = "52:54:00:12:34:56"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)

	script, token := l.boot(mac)
	require.NotEmpty(t, token, "the agent script carries a token:\n%s", script)
	assert.Contains(t, script, "lpmos.task="+tk.ID)
	assert.Contains(t, script, "lpmos.mac="+mac)
	assert.Contains(t, script, l.ts.URL+"/boot/files/vmlinuz")
	l.waitStatus(tk.ID, task.StatusBooting)

	hw := hardware.Info{CPU: hardware.CPU{Model: "QEMU", Cores: 2, Threads: 2}, Memory: hardware.Memory{TotalGB: 1},
		Disks: []hardware.Disk{{Device: "/dev/vda", SizeGB: 1, Type: hardware.DiskHDD}}}
	code, body := l.call("POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hw})
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, map[string]any{"status": "received", "task_id": tk.ID, "next_action": "wait_for_approval"}, body)
	got := l.waitStatus(tk.ID, task.StatusPendingApproval)
	assert.Equal(t, "QEMU", got.Hardware.CPU.Model)
	assert.Equal(t, mac, got.Hardware.MACAddress)

	// The report also lands in the machine's inventory record.
	rec, err := machine.NewService(l.st, machine.Config{}).Get(context.Background(), got.Metadata.TargetMAC)
	require.NoError(t, err)
	require.NotNil(t, rec.LastReport)
	assert.Equal(t, "QEMU", rec.LastReport.Hardware.CPU.Model)
	assert.Equal(t, tk.ID, rec.LastReport.TaskID)
	assert.Equal(t, "dc1", rec.Region)
	assert.NotEmpty(t, rec.LastReport.Source)
	assert.False(t, rec.Registered)

	// Long-poll: nothing decided yet.
	code, body = l.call("GET", agent.PathApproval+mac+"?wait=0", token, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, false, body["approved"])
	assert.Equal(t, "pending_approval", body["status"])

	// A waiting agent is answered as soon as the operator approves.
	answered := make(chan map[string]any, 1)
	go func() {
		_, body := l.call("GET", agent.PathApproval+mac, token, nil)
		answered <- body
	}()
	time.Sleep(100 * time.Millisecond)
	_, err = l.svc.Approve(context.Background(), tk.ID, "ops", "go")
	require.NoError(t, err)
	select {
	case body = <-answered:
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll not answered after approval")
	}
	assert.Equal(t, true, body["approved"])
	plan := body["plan"].(map[string]any)
	assert.Equal(t, "image", plan["method"])
	assert.Equal(t, l.ts.URL+"/boot/files/images/ubuntu/24.04/image.raw", plan["image_url"])
	assert.Len(t, plan["sha256"], 64)
	assert.Equal(t, "web-1", plan["hostname"])

	// Progress: a burst in one stage is throttled, stage changes always
	// land, the last value wins.
	for i, p := range []agent.ProgressRequest{
		{Stage: "partitioning", Percentage: 5},
		{Stage: "writing", Percentage: 10}, {Stage: "writing", Percentage: 20}, {Stage: "writing", Percentage: 30},
		{Stage: "writing", Percentage: 40}, {Stage: "writing", Percentage: 55},
	} {
		p.MACAddress, p.TaskID = mac, tk.ID
		code, body := l.call("POST", agent.PathProgress, token, p)
		require.Equal(t, http.StatusOK, code, "report %d: %v", i, body)
	}
	// A bad report is refused at once, held back or not, and does not
	// take the place of the good one waiting.
	code, body = l.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "writing", Percentage: 101})
	require.Equal(t, http.StatusBadRequest, code, "%v", body)
	assert.Equal(t, map[string]any{"code": "invalid_request", "message": "invalid request: percentage: 101 is not within 0..100", "field": "percentage"}, body["error"])
	require.Eventually(t, func() bool {
		got, _ := l.svc.Get(context.Background(), tk.ID)
		return got.Progress != nil && got.Progress.Percentage == 55
	}, 10*time.Second, 20*time.Millisecond, "the last held-back progress is flushed")
	got, _ = l.svc.Get(context.Background(), tk.ID)
	assert.Equal(t, task.StatusInstalling, got.Status)
	var stages []task.Stage
	for _, e := range got.Timeline {
		if e.Stage != "" {
			stages = append(stages, e.Stage)
		}
	}
	assert.Equal(t, []task.Stage{task.StagePartitioning, task.StageWriting}, stages)

	code, _ = l.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "completed", Percentage: 100, Message: "done"})
	require.Equal(t, http.StatusOK, code)
	l.waitStatus(tk.ID, task.StatusCompleted)

	// The token died with the task.
	code, body = l.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "writing", Percentage: 1})
	assert.Equal(t, http.StatusUnauthorized, code, "%v", body)

	// ...but for the installed system's first boot, through the plan's
	// phone-home URL (cloud-init's phone_home: a form POST, no headers).
	phone := plan["phone_home_url"].(string)
	require.Equal(t, l.ts.URL+agent.PathPhoneHome+tk.ID+"?token="+token, phone)
	post := func(u string, form url.Values) (int, string) {
		resp, err := http.PostForm(u, form)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		name string
		url  string
		form url.Values
		code int
	}{
		{"wrong token", l.ts.URL + agent.PathPhoneHome + tk.ID + "?token=" + strings.Repeat("0", 64), nil, http.StatusUnauthorized},
		{"no token", l.ts.URL + agent.PathPhoneHome + tk.ID, nil, http.StatusUnauthorized},
		{"bad task ID", l.ts.URL + agent.PathPhoneHome + "nope?token=" + token, nil, http.StatusBadRequest},
		{"unknown task", l.ts.URL + agent.PathPhoneHome + "00000000-0000-4000-8000-000000000000?token=" + token, nil, http.StatusUnauthorized},
	} {
		code, body := post(tc.url, tc.form)
		assert.Equal(t, tc.code, code, "%s: %s", tc.name, body)
	}
	got, _ = l.svc.Get(context.Background(), tk.ID)
	for _, e := range got.Timeline {
		require.NotEqual(t, task.TimelineFirstBoot, e.Event, "a refused phone-home records nothing")
	}
	for range 2 { // the second time (a retry) changes nothing
		code, body := post(phone, url.Values{"instance_id": {"i-0abc"}, "hostname": {"web-1"}})
		require.Equal(t, http.StatusOK, code, body)
	}
	got, _ = l.svc.Get(context.Background(), tk.ID)
	var firstBoots []task.TimelineEntry
	for _, e := range got.Timeline {
		if e.Event == task.TimelineFirstBoot {
			firstBoots = append(firstBoots, e)
		}
	}
	require.Len(t, firstBoots, 1)
	assert.Contains(t, firstBoots[0].Message, `"web-1"`)
	assert.Contains(t, firstBoots[0].Message, `instance ID "i-0abc"`, "another datasource's instance ID is recorded, not refused")
	assert.Equal(t, task.StatusCompleted, got.Status)
}

func TestPhoneHomeNeedsACompletedTask(t *testing.T) {
	l := startRegion(t, memStore(t))
	const mac = "52:54:00:12:34:77"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.waitStatus(tk.ID, task.StatusBooting)
	resp, err := http.PostForm(l.ts.URL+agent.PathPhoneHome+tk.ID+"?token="+token, url.Values{"instance_id": {tk.ID}})
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusConflict, resp.StatusCode, "a task still booting has not installed anything")
}

func TestAgentAPIRefusesBadInputAndWritesNothing(t *testing.T) {
	st := memStore(t)
	l := startRegion(t, st)
	const mac = "52:54:00:12:34:57"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.waitStatus(tk.ID, task.StatusBooting)
	other := l.create("52:54:00:12:34:58")
	l.waitStatus(other.ID, task.StatusReady)
	_, otherToken := l.boot("52:54:00:12:34:58")
	l.waitStatus(other.ID, task.StatusBooting)

	report := agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hardware.Info{CPU: hardware.CPU{Cores: 1}}}
	tests := []struct {
		name   string
		method string
		path   string
		token  string
		body   any
		status int
	}{
		{"no token", "POST", agent.PathReport, "", report, 401},
		{"wrong token", "POST", agent.PathReport, strings.Repeat("ab", 32), report, 401},
		{"another machine's token", "POST", agent.PathReport, otherToken, report, 401},
		{"token for another task", "POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, TaskID: other.ID}, 401},
		{"malformed JSON", "POST", agent.PathReport, token, `{"mac_address":`, 400},
		{"unknown field", "POST", agent.PathReport, token, `{"mac_address":"` + mac + `","hardware":{},"extra":1}`, 400},
		{"bad MAC", "POST", agent.PathReport, token, agent.ReportRequest{MACAddress: "zz:zz"}, 400},
		{"garbage hardware", "POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, Hardware: hardware.Info{CPU: hardware.CPU{Cores: -4}}}, 400},
		{"oversized body", "POST", agent.PathReport, token, `{"mac_address":"` + strings.Repeat("x", agent.MaxBodyBytes) + `"}`, 413},
		{"progress before approval", "POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "writing", Percentage: 5}, 409},
		{"bad status", "POST", agent.PathStatus, token, agent.StatusRequest{MACAddress: mac, TaskID: tk.ID, Status: "exploded"}, 400},
		{"approval with wrong token", "GET", agent.PathApproval + mac, otherToken, nil, 401},
		{"approval for bad MAC", "GET", agent.PathApproval + "nope", token, nil, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := dump(t, st)
			code, body := l.call(tt.method, tt.path, tt.token, tt.body)
			assert.Equal(t, tt.status, code, "%v", body)
			require.NotNil(t, body["error"], "%v", body)
			assert.Equal(t, before, dump(t, st), "nothing written")
		})
	}
}

func TestRejectTellsTheAgentToPowerOff(t *testing.T) {
	l := startRegion(t, memStore(t))
	const mac = "52:54:00:12:34:59"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.report(tk.ID, mac, token)
	answered := make(chan map[string]any, 1)
	go func() {
		_, body := l.call("GET", agent.PathApproval+mac, token, nil)
		answered <- body
	}()
	time.Sleep(100 * time.Millisecond)
	_, err := l.svc.Reject(context.Background(), tk.ID, "ops", "wrong rack")
	require.NoError(t, err)
	select {
	case body := <-answered:
		assert.Equal(t, false, body["approved"])
		assert.Equal(t, "poweroff", body["next_action"])
		assert.Equal(t, "wrong rack", body["reason"])
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll not answered after rejection")
	}

	// An agent whose first poll comes after the decision (it raced the
	// operator) is told too, not refused: its token is still the
	// machine's. Other calls with it are refused: the task is over.
	require.Eventually(t, func() bool {
		script, _ := l.boot(mac) // the stop script: it issues no new token
		return strings.Contains(script, "was rejected")
	}, 10*time.Second, 20*time.Millisecond, "the region has let go of the task")
	code, body := l.call("GET", agent.PathApproval+mac+"?wait=0", token, nil)
	require.Equal(t, http.StatusOK, code, "%v", body)
	assert.Equal(t, "poweroff", body["next_action"])
	assert.Equal(t, "rejected", body["status"])
	assert.Equal(t, "wrong rack", body["reason"])
	code, _ = l.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "writing", Percentage: 1})
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _ = l.call("GET", agent.PathApproval+mac+"?wait=0", strings.Repeat("0", 64), nil)
	assert.Equal(t, http.StatusUnauthorized, code, "a wrong token learns nothing")
}

func TestAgentReportsFailure(t *testing.T) {
	l := startRegion(t, memStore(t))
	const mac = "52:54:00:12:34:5a"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	code, _ := l.call("POST", agent.PathStatus, token, agent.StatusRequest{MACAddress: mac, TaskID: tk.ID, Status: "failed", Stage: "writing", Code: "checksum_mismatch", Message: "sha256 differs"})
	require.Equal(t, http.StatusOK, code)
	got := l.waitStatus(tk.ID, task.StatusFailed)
	assert.Equal(t, "checksum_mismatch", got.Error.Code)
	assert.Equal(t, "writing", got.Error.Stage)
}

func TestTimeoutFailsStuckTask(t *testing.T) {
	l := startRegion(t, memStore(t), func(c *region.Config) {
		c.Timeouts = map[task.Status]time.Duration{task.StatusBooting: 300 * time.Millisecond}
	})
	const mac = "52:54:00:12:34:5b"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	l.boot(mac)
	got := l.waitStatus(tk.ID, task.StatusFailed)
	assert.Equal(t, "timeout", got.Error.Code)
	assert.Equal(t, "booting", got.Error.Stage)
}

func TestMissingBootFilesFailTheTask(t *testing.T) {
	l := startRegion(t, memStore(t))
	require.NoError(t, os.Remove(filepath.Join(l.bootDir, "vmlinuz")))
	tk := l.create("52:54:00:12:34:5c")
	got := l.waitStatus(tk.ID, task.StatusFailed)
	assert.Equal(t, "boot_files_missing", got.Error.Code)
	assert.Contains(t, got.Error.Message, "mkinitramfs")
}

// The heartbeat publishes status and capabilities, the heartbeat key on a
// lease; a clean stop says offline, a dead region's heartbeat expires and
// its status and capabilities stay (the control plane shows it offline).
func TestHeartbeatAndCapabilities(t *testing.T) {
	st := memStore(t)
	l := startRegion(t, st)
	ctx := context.Background()
	require.Eventually(t, func() bool {
		kv, err := st.Get(ctx, task.RegionStatusKey("dc1"))
		return err == nil && string(kv.Value) == "online"
	}, 10*time.Second, 20*time.Millisecond)
	kv, err := st.Get(ctx, task.RegionCapabilitiesKey("dc1"))
	require.NoError(t, err)
	var caps task.Capabilities
	require.NoError(t, json.Unmarshal(kv.Value, &caps))
	assert.True(t, caps.Supports("ubuntu", "24.04"), "the local image")
	assert.True(t, caps.Supports("debian", "12"), "a built-in installer")
	assert.True(t, caps.Supports("rocky", "9"))
	assert.Equal(t, l.ts.URL, caps.RegionURL)
	hb, err := st.Get(ctx, task.RegionHeartbeatKey("dc1"))
	require.NoError(t, err)
	assert.NotEqual(t, store.NoLease, hb.Lease, "the heartbeat lives on a lease")
	assert.Equal(t, store.NoLease, kv.Lease, "the capabilities outlive the region")

	code, body := l.call("GET", "/health", "", nil)
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "healthy", body["status"])
	assert.Equal(t, true, body["etcd_connected"])

	l.stop()
	kv, err = st.Get(ctx, task.RegionStatusKey("dc1"))
	require.NoError(t, err)
	assert.Equal(t, "offline", string(kv.Value))
	_, err = st.Get(ctx, task.RegionHeartbeatKey("dc1"))
	assert.ErrorIs(t, err, store.ErrNotFound)
	_, err = st.Get(ctx, task.RegionCapabilitiesKey("dc1"))
	assert.NoError(t, err, "still listed")
}

// A restarted region resumes from the store: tasks it had keep going.
func TestRestartResumes(t *testing.T) {
	st := memStore(t)
	l := startRegion(t, st)
	const mac = "52:54:00:12:34:5d"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	l.stop()

	pending := l.create("52:54:00:12:34:5e") // created while the region is down
	l2 := startRegion(t, st)
	l2.waitStatus(pending.ID, task.StatusReady)
	_, token := l2.boot(mac)
	require.NotEmpty(t, token)
	l2.waitStatus(tk.ID, task.StatusBooting)
	code, body := l2.call("POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, Hardware: hardware.Info{CPU: hardware.CPU{Cores: 1}}})
	require.Equal(t, http.StatusOK, code, "%v", body)
}

func TestCatalogue(t *testing.T) {
	dir, _ := writeBootDir(t)
	// A broken entry: an image without its SHA256SUMS line.
	bad := filepath.Join(dir, "images", "debian", "13")
	require.NoError(t, os.MkdirAll(bad, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(bad, "image.raw.zst"), []byte("x"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(bad, "SHA256SUMS"), []byte(strings.Repeat("0", 64)+"  other.raw\n"), 0o644))
	// An installer with local files overrides the built-in one.
	inst := filepath.Join(dir, "images", "debian", "12")
	require.NoError(t, os.MkdirAll(inst, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(inst, "kernel"), []byte("k"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(inst, "initrd"), []byte("i"), 0o644))

	cat, problems := region.ScanCatalogue(dir, "http://10.0.0.1:8081")
	require.Len(t, problems, 1)
	assert.Contains(t, problems[0].Error(), "no line for image.raw.zst")
	var names []string
	for _, e := range cat.Entries() {
		names = append(names, fmt.Sprintf("%s %s %s", e.OSType, e.OSVersion, e.Kind))
	}
	assert.Equal(t, []string{"debian 12 installer", "rocky 9 installer", "ubuntu 22.04 installer", "ubuntu 24.04 image"}, names)
	e, ok := cat.Lookup("debian", "12")
	require.True(t, ok)
	assert.Equal(t, "http://10.0.0.1:8081/boot/files/images/debian/12/kernel", e.KernelURL)
	assert.Equal(t, "preseed", e.Family)
}

func getText(t *testing.T, url string) (int, string) {
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The script follows the task: agent while it is being decided, the
// distribution installer (with an answer file for the task) once an
// installer task is approved, the local disk once completed, power off
// once rejected, and a polite exit for machines it does not know.
func TestScriptsFollowTheTask(t *testing.T) {
	l := startRegion(t, memStore(t))
	ctx := context.Background()

	code, body := getText(t, l.ts.URL+"/boot/52:54:00:00:00:99.ipxe")
	require.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "has no active task in region dc1")
	code, _ = getText(t, l.ts.URL+"/boot/not-a-mac.ipxe")
	assert.Equal(t, http.StatusBadRequest, code)

	// A Debian task uses the built-in netboot installer after approval.
	const mac = "52:54:00:00:00:01"
	tk, err := l.svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "debian", OSVersion: "12", CreatedBy: "ops",
		Tags: map[string]string{"hostname": "db-1"}})
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.report(tk.ID, mac, token)
	_, err = l.svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, body = getText(t, l.ts.URL+"/boot/"+mac+".ipxe")
		return strings.Contains(body, "auto=true priority=critical")
	}, 10*time.Second, 20*time.Millisecond, "installer script after approval:\n%s", body)
	assert.Contains(t, body, "deb.debian.org")
	m := regexp.MustCompile(`url=(\S+/preseed\.cfg)`).FindStringSubmatch(body)
	require.NotNil(t, m, body)
	code, preseed := getText(t, m[1])
	require.Equal(t, http.StatusOK, code, preseed)
	assert.Contains(t, preseed, "db-1")
	assert.Contains(t, preseed, tk.ID)
	bad := regexp.MustCompile(`/boot/templates/([^/]+)/[0-9a-f]+/`).ReplaceAllString(m[1], "/boot/templates/$1/"+strings.Repeat("0", 64)+"/")
	code, _ = getText(t, bad)
	assert.Equal(t, http.StatusUnauthorized, code, "answer files need the task's token")

	// The installer reports completion through the agent API.
	itoken := regexp.MustCompile(`/boot/templates/[^/]+/([0-9a-f]+)/`).FindStringSubmatch(m[1])[1]
	code, resp := l.call("POST", agent.PathProgress, itoken, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "completed", Percentage: 100})
	require.Equal(t, http.StatusOK, code, "%v", resp)
	l.waitStatus(tk.ID, task.StatusCompleted)
	require.Eventually(t, func() bool {
		_, body = getText(t, l.ts.URL+"/boot/"+mac+".ipxe?platform=pcbios")
		return strings.Contains(body, "sanboot")
	}, 10*time.Second, 20*time.Millisecond, "local boot after completion:\n%s", body)
	_, body = getText(t, l.ts.URL+"/boot/"+mac+".ipxe?platform=efi")
	assert.Contains(t, body, "exit")
	assert.NotContains(t, body, "sanboot")

	// A rejected machine is told to power off.
	const mac2 = "52:54:00:00:00:02"
	tk2 := l.create(mac2)
	l.waitStatus(tk2.ID, task.StatusReady)
	_, token2 := l.boot(mac2)
	l.report(tk2.ID, mac2, token2)
	_, err = l.svc.Reject(ctx, tk2.ID, "ops", "no")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, body = getText(t, l.ts.URL+"/boot/"+mac2+".ipxe")
		return strings.Contains(body, "was rejected")
	}, 10*time.Second, 20*time.Millisecond)
	assert.Contains(t, body, "poweroff")

	// The boot trace names each script and why, and the refused answer
	// file without its token.
	require.NoError(t, l.reg.FlushTrace(ctx))
	parsed, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	events, err := trace.Read(ctx, l.st, parsed)
	require.NoError(t, err)
	var scripts []string
	for _, e := range events {
		if e.Kind == trace.KindScript && e.Outcome == trace.OutcomeOK && (len(scripts) == 0 || scripts[len(scripts)-1] != e.Detail["script"]) {
			scripts = append(scripts, e.Detail["script"])
		}
	}
	assert.Equal(t, []string{"agent", "installer", "local-boot"}, scripts)
	i := slices.IndexFunc(events, func(e trace.Event) bool { return e.Kind == trace.KindToken })
	require.GreaterOrEqual(t, i, 0, "%+v", events)
	assert.Equal(t, "answer file preseed → 401", events[i].Message)
	assert.Equal(t, "invalid task token", events[i].Reason)
	for _, e := range events {
		assert.NotContains(t, fmt.Sprint(e), itoken, "a token in the trace")
	}
	parsed2, err := lpmos.ParseMAC(mac2)
	require.NoError(t, err)
	events, err = trace.Read(ctx, l.st, parsed2)
	require.NoError(t, err)
	require.NotEmpty(t, events)
	last := events[len(events)-1]
	assert.Equal(t, "stop", last.Detail["script"])
	assert.Equal(t, "task "+tk2.ID+" is rejected", last.Reason)
}

func TestDHCPPolicy(t *testing.T) {
	l := startRegion(t, memStore(t))
	ctx := context.Background()
	policy := l.reg.DHCPPolicy()
	active, _ := lpmos.ParseMAC("52:54:00:00:01:01")
	stranger, _ := lpmos.ParseMAC("52:54:00:00:01:02")
	tk := l.create(active.String())
	l.waitStatus(tk.ID, task.StatusReady)

	tests := []struct {
		name string
		req  dhcp.Request
		want dhcp.Decision
	}{
		{"unknown machine is ignored", dhcp.Request{MAC: stranger, IsPXE: true, HasArch: true, Firmware: lpmos.FirmwareBIOS}, dhcp.Decision{Ignore: true, Reason: "no active task for this machine in region dc1 (unknown machines are ignored)"}},
		{"BIOS firmware gets undionly", dhcp.Request{MAC: active, IsPXE: true, HasArch: true, Firmware: lpmos.FirmwareBIOS}, dhcp.Decision{BootFile: "undionly.kpxe"}},
		{"UEFI firmware gets snponly", dhcp.Request{MAC: active, IsPXE: true, HasArch: true, Arch: lpmos.ArchEFIx64, Firmware: lpmos.FirmwareUEFI}, dhcp.Decision{BootFile: "snponly.efi"}},
		{"UEFI HTTP gets a URL", dhcp.Request{MAC: active, IsHTTPClient: true, HasArch: true, Arch: lpmos.ArchEFIx64HTTP, Firmware: lpmos.FirmwareUEFIHTTP}, dhcp.Decision{BootFile: l.ts.URL + "/boot/ipxe/snponly.efi"}},
		{"iPXE gets its script", dhcp.Request{MAC: active, IsIPXE: true, IsPXE: true, Firmware: lpmos.FirmwareBIOS}, dhcp.Decision{BootFile: l.ts.URL + "/boot/" + active.String() + ".ipxe?platform=${platform}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := policy.Boot(ctx, tt.req)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
	// UEFI HTTP boot fetches the iPXE binary from the region.
	code, body := getText(t, l.ts.URL+"/boot/ipxe/snponly.efi")
	require.Equal(t, http.StatusOK, code)
	assert.NotEmpty(t, body)
}

// TestDHCPPolicyURLsFromPublicURL: the URLs DHCP hands out come from the
// region's public URL alone, and dhcp.New refuses a public URL it could not
// hand out instead of guessing one.
func TestDHCPPolicyURLsFromPublicURL(t *testing.T) {
	bootDir, _ := writeBootDir(t)
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	for _, tc := range []struct {
		publicURL string
		wantErr   bool
	}{
		{"http://10.0.0.1:9000", false},
		{"https://region.example", false},
		{"10.0.0.1:9000", true},
		{"region.example", true},
	} {
		t.Run(tc.publicURL, func(t *testing.T) {
			reg, err := region.New(region.Config{RegionID: "dc1", Store: memStore(t), PublicURL: tc.publicURL, BootDir: bootDir,
				Logger: slog.New(slog.DiscardHandler)})
			require.NoError(t, err)
			_, err = dhcp.New(dhcp.Config{ServerIP: net.IPv4(10, 0, 0, 1), Mode: dhcp.ModeProxy, Conn: conn, ProxyConn: conn,
				Policy: reg.DHCPPolicy()})
			if !tc.wantErr {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, dhcp.ErrInvalidConfig)
			assert.ErrorContains(t, err, "region public URL "+strconv.Quote(tc.publicURL))
		})
	}
}

// TestStartingRegionAsksToRetry: until the region has read its tasks, a
// machine cannot be told what to do: scripts and the agent API answer 503
// with Retry-After (the agent and iPXE retry), never "no task".
func TestStartingRegionAsksToRetry(t *testing.T) {
	bootDir, _ := writeBootDir(t)
	reg, err := region.New(region.Config{RegionID: "dc1", Store: memStore(t), PublicURL: "http://region.test", BootDir: bootDir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	ts := httptest.NewServer(reg.Handler())
	t.Cleanup(ts.Close)
	const mac = "52:54:00:12:34:99"
	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/boot/" + mac + ".ipxe", ""},
		{"POST", agent.PathReport, `{"mac_address":"` + mac + `"}`},
		{"GET", agent.PathApproval + mac, ""},
		{"POST", agent.PathPhoneHome + "00000000-0000-4000-8000-000000000000", ""},
	} {
		req, err := http.NewRequest(tc.method, ts.URL+tc.path, strings.NewReader(tc.body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s %s: %s", tc.method, tc.path, body)
		assert.Equal(t, "1", resp.Header.Get("Retry-After"), tc.path)
		assert.Contains(t, string(body), `"starting"`, tc.path)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-reg.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the region never synced")
	}
	resp, err := http.Get(ts.URL + "/boot/" + mac + ".ipxe")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Contains(t, string(body), "has no active task", "once synced, an unknown machine gets the unknown script")
}

// An agent whose report of its task's end was applied but whose answer was
// lost (a cut connection, a 503 while etcd elected a leader) repeats the
// report: it is answered as the first was, whether or not the region has
// seen the end yet, and nothing is written twice. Another end stays
// refused.
func TestRepeatedEndIsAnsweredAsTheFirst(t *testing.T) {
	l := startRegion(t, memStore(t))
	ctx := context.Background()
	const mac = "52:54:00:12:34:7a"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.report(tk.ID, mac, token)
	_, err := l.svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusApproved)

	done := agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: string(task.StageCompleted), Percentage: 100, Message: "installed"}
	for i := range 3 {
		code, body := l.call("POST", agent.PathProgress, token, done)
		require.Equal(t, http.StatusOK, code, "attempt %d: %v", i, body)
		assert.Equal(t, "completed", body["status"])
		assert.Equal(t, tk.ID, body["task_id"])
		if i == 1 {
			// From here on the region has surely seen the end.
			l.waitStatus(tk.ID, task.StatusCompleted)
			require.Eventually(t, func() bool {
				_, body := getText(t, l.ts.URL+"/boot/"+mac+".ipxe?platform=pcbios")
				return strings.Contains(body, "sanboot") // local boot: the view has the end
			}, 10*time.Second, 20*time.Millisecond)
		}
	}
	code, _ := l.call("POST", agent.PathStatus, token, agent.StatusRequest{MACAddress: mac, TaskID: tk.ID, Status: "completed"})
	assert.Equal(t, http.StatusOK, code, "the same end by the status endpoint")
	code, _ = l.call("POST", agent.PathStatus, token, agent.StatusRequest{MACAddress: mac, TaskID: tk.ID, Status: "failed", Code: "late"})
	assert.Equal(t, http.StatusUnauthorized, code, "another end is refused")

	got, err := l.svc.Get(ctx, tk.ID)
	require.NoError(t, err)
	assert.Equal(t, task.StatusCompleted, got.Status)
	ends := 0
	for _, e := range got.Timeline {
		if e.Status == task.StatusCompleted {
			ends++
		}
	}
	assert.Equal(t, 1, ends, "completed once: %+v", got.Timeline)
}
