package agenttest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/testimage"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// rawImage is a disk-image-like payload: compressible runs and random
// blocks, a few chunks long.
func rawImage(size int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]byte, 0, size)
	for len(out) < size {
		if r.IntN(2) == 0 {
			out = append(out, bytes.Repeat([]byte{byte(r.IntN(256))}, 4096)...)
		} else {
			b := make([]byte, 4096)
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			out = append(out, b...)
		}
	}
	return out[:size]
}

// bootDir writes the agent boot files and one ubuntu 24.04 image entry.
// sumOverride, if set, is written to SHA256SUMS instead of the real sum.
func bootDir(t *testing.T, format string, raw []byte, sumOverride string) string {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("kernel"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "initramfs.cpio.zst"), []byte("initramfs"), 0o644))
	img := filepath.Join(dir, "images", "ubuntu", "24.04")
	require.NoError(t, os.MkdirAll(img, 0o755))
	name := "image.raw"
	if format != "raw" {
		name += "." + format
	}
	data := testimage.Compress(t, format, raw)
	require.NoError(t, os.WriteFile(filepath.Join(img, name), data, 0o644))
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if sumOverride != "" {
		hexSum = sumOverride
	}
	require.NoError(t, os.WriteFile(filepath.Join(img, "SHA256SUMS"), []byte(hexSum+"  "+name+"\n"), 0o644))
	return dir
}

// lab is a region over a memory store, served on a fixed address so it
// can be stopped and a new region started in its place.
type lab struct {
	t       *testing.T
	st      store.Store
	svc     *task.Service // the operator
	url     string
	addr    string
	bootDir string

	mu     sync.Mutex
	srv    *http.Server
	served chan struct{}
	cancel context.CancelFunc
	done   chan error
}

func newLab(t *testing.T, bootDir string) *lab {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	return newLabOn(t, st, bootDir)
}

// newLabOn is newLab over st.
func newLabOn(t *testing.T, st store.Store, bootDir string) *lab {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := &lab{t: t, st: st, svc: task.NewService(st, task.Config{Logger: quiet}), addr: ln.Addr().String(), bootDir: bootDir}
	l.url = "http://" + l.addr
	l.start(ln, nil)
	t.Cleanup(l.stop)
	return l
}

// start runs a new region and serves it on ln (or the lab's address);
// wrap, if set, wraps its handler.
func (l *lab) start(ln net.Listener, wrap func(http.Handler) http.Handler) {
	l.t.Helper()
	reg, err := region.New(region.Config{
		RegionID: "dc1", Store: l.st, PublicURL: l.url, BootDir: l.bootDir,
		HeartbeatTTL: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond,
		ProgressInterval: 100 * time.Millisecond, ApprovalWait: 5 * time.Second,
		TimeoutCheckInterval: 50 * time.Millisecond, Logger: quiet,
	})
	require.NoError(l.t, err)
	if ln == nil {
		require.Eventually(l.t, func() bool {
			ln, err = net.Listen("tcp", l.addr)
			return err == nil
		}, 10*time.Second, 20*time.Millisecond, "listen again on %s", l.addr)
	}
	h := reg.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &http.Server{Handler: h}
	l.mu.Lock()
	l.srv, l.cancel, l.done, l.served = srv, cancel, make(chan error, 1), make(chan struct{})
	served, done := l.served, l.done
	l.mu.Unlock()
	go func() { done <- reg.Run(ctx) }()
	go func() { defer close(served); _ = srv.Serve(ln) }()
}

func (l *lab) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel == nil {
		return
	}
	_ = l.srv.Close()
	<-l.served
	l.cancel()
	<-l.done
	l.cancel = nil
}

func (l *lab) waitStatus(id string, want task.Status) *task.Task {
	l.t.Helper()
	var got *task.Task
	require.Eventually(l.t, func() bool {
		var err error
		got, err = l.svc.Get(context.Background(), id)
		require.NoError(l.t, err)
		return got.Status == want
	}, 20*time.Second, 10*time.Millisecond, "task %s never reached %s", id, want)
	return got
}

var kernelLine = regexp.MustCompile(`(?m)^kernel (.*)$`)

// bootAgent creates a task, fetches the machine's iPXE script as iPXE
// does and parses the agent's kernel command line out of it, as the
// agent does with /proc/cmdline.
func (l *lab) bootAgent(mac string) (*task.Task, agent.Config) {
	l.t.Helper()
	tk, err := l.svc.Create(context.Background(), task.CreateRequest{RegionID: "dc1", TargetMAC: mac,
		OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops", Tags: map[string]string{"hostname": "web-1"}})
	require.NoError(l.t, err)
	return tk, l.agentFor(tk.ID, mac)
}

// agentFor waits for the task id to be ready and returns the agent
// configuration its machine's iPXE script boots with.
func (l *lab) agentFor(id, mac string) agent.Config {
	l.t.Helper()
	l.waitStatus(id, task.StatusReady)
	// The region learns of the ready status through its watch, a moment
	// after the store: until then it answers 503 and iPXE retries.
	var script []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(l.url + "/boot/" + mac + ".ipxe")
		require.NoError(l.t, err)
		script, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := kernelLine.FindStringSubmatch(string(script))
	require.NotNil(l.t, m, "%s", script)
	cfg, err := agent.ParseCmdline("vmlinuz " + m[1])
	require.NoError(l.t, err, m[1])
	cfg.Logger = quiet
	cfg.Retry = agent.RetryPolicy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, MaxElapsed: 30 * time.Second, Attempts: 1000}
	cfg.ApprovalWait = 2 * time.Second
	return cfg
}

var fixtureHW = agent.CollectorFunc(func(context.Context) (hardware.Info, error) {
	return hardware.Info{CPU: hardware.CPU{Model: "QEMU", Cores: 2, Threads: 2}, Memory: hardware.Memory{TotalGB: 2},
		Disks: []hardware.Disk{{Device: "/dev/vda", SizeGB: 10, Type: hardware.DiskSSD}}}, nil
})

// fileDisk is a file-backed disk the image installer picks with "auto",
// next to a smaller one and a removable one it must not pick.
func fileDisk(t *testing.T) (string, install.DiskLister) {
	dir := t.TempDir()
	path := filepath.Join(dir, "vda")
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	return path, install.DiskListerFunc(func(context.Context) ([]install.Disk, error) {
		return []install.Disk{
			{Path: filepath.Join(dir, "tiny"), SizeBytes: 1024},
			{Path: path, SizeBytes: 10 << 30},
			{Path: filepath.Join(dir, "usb"), SizeBytes: 8 << 30, Removable: true},
			{Path: filepath.Join(dir, "boot"), SizeBytes: 9 << 30, InUse: true},
			{Path: filepath.Join(dir, "big"), SizeBytes: 100 << 30},
		}, nil
	})
}

// runAgent starts the runner; the returned channel gets its result.
func runAgent(t *testing.T, cfg agent.Config, installers map[string]agent.Installer) (<-chan error, context.CancelFunc) {
	client, err := agent.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(client.Close)
	r, err := agent.NewRunner(agent.RunnerConfig{Client: client, Collector: fixtureHW, Installers: installers,
		ProgressInterval: 50 * time.Millisecond, Logger: quiet})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	res, finished := make(chan error, 1), make(chan struct{})
	go func() { defer close(finished); res <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-finished
		// Every goroutine the agent started is gone once Run returned.
		var stacks string
		assert.Eventually(t, func() bool {
			buf := make([]byte, 1<<20)
			stacks = string(buf[:runtime.Stack(buf, true)])
			return !strings.Contains(stacks, "lpmos/agent.") && !strings.Contains(stacks, "lpmos/agent/install.")
		}, 5*time.Second, 10*time.Millisecond, "agent goroutines left behind:\n%s", stacks)
	})
	return res, cancel
}

func result(t *testing.T, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("the runner did not finish")
		return nil
	}
}

func stagesOf(tk *task.Task) []task.Stage {
	var stages []task.Stage
	for _, e := range tk.Timeline {
		if e.Stage != "" {
			stages = append(stages, e.Stage)
		}
	}
	return stages
}

func imageInstaller(lister install.DiskLister) *install.Image {
	return &install.Image{Disks: lister, ChunkSize: 64 << 10, ProgressInterval: 10 * time.Millisecond, ResumeFor: 30 * time.Second, Logger: quiet}
}

func TestImageInstallEndToEnd(t *testing.T) {
	raw := rawImage(1<<20 + 12345)
	for _, format := range []string{"raw", "gz", "xz", "zst"} {
		t.Run(format, func(t *testing.T) {
			l := newLab(t, bootDir(t, format, raw, ""))
			tk, cfg := l.bootAgent("52:54:00:aa:00:01")
			path, lister := fileDisk(t)
			res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": imageInstaller(lister)})

			l.waitStatus(tk.ID, task.StatusPendingApproval)
			_, err := l.svc.Approve(context.Background(), tk.ID, "ops", "go")
			require.NoError(t, err)
			require.NoError(t, result(t, res))

			got := l.waitStatus(tk.ID, task.StatusCompleted)
			written, err := os.ReadFile(path)
			require.NoError(t, err)
			require.True(t, bytes.Equal(raw, written), "the disk holds the decompressed image (%d vs %d bytes)", len(written), len(raw))
			assert.Equal(t, "QEMU", got.Hardware.CPU.Model)
			assert.Equal(t, []task.Stage{task.StagePartitioning, task.StageDownloading, task.StageWriting,
				task.StageConfiguring}, stagesOf(got))
			assert.Equal(t, task.StageCompleted, got.Progress.Stage)
			sum := sha256.Sum256(raw)
			assert.Contains(t, got.Progress.Message, "written_sha256 "+hex.EncodeToString(sum[:]))
		})
	}
}

func TestChecksumMismatchFailsTheTask(t *testing.T) {
	raw := rawImage(1 << 20)
	l := newLab(t, bootDir(t, "zst", raw, strings.Repeat("ab", 32)))
	tk, cfg := l.bootAgent("52:54:00:aa:00:02")
	path, lister := fileDisk(t)
	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": imageInstaller(lister)})
	l.waitStatus(tk.ID, task.StatusPendingApproval)
	_, err := l.svc.Approve(context.Background(), tk.ID, "ops", "")
	require.NoError(t, err)

	err = result(t, res)
	var ie *agent.InstallError
	require.ErrorAs(t, err, &ie)
	assert.Equal(t, install.CodeChecksumMismatch, ie.Code)
	got := l.waitStatus(tk.ID, task.StatusFailed)
	assert.Equal(t, "checksum_mismatch", got.Error.Code)
	assert.Equal(t, "writing", got.Error.Stage)
	assert.Contains(t, got.Error.Message, "already written")
	head, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, make([]byte, 1<<20), head[:1<<20], "the corrupt image's head is wiped")
}

func TestRejectedTaskPowersOff(t *testing.T) {
	l := newLab(t, bootDir(t, "raw", rawImage(4096), ""))
	tk, cfg := l.bootAgent("52:54:00:aa:00:03")
	path, lister := fileDisk(t)
	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": imageInstaller(lister)})
	l.waitStatus(tk.ID, task.StatusPendingApproval)
	_, err := l.svc.Reject(context.Background(), tk.ID, "ops", "wrong rack")
	require.NoError(t, err)
	err = result(t, res)
	require.ErrorIs(t, err, agent.ErrRejected)
	assert.Contains(t, err.Error(), "wrong rack")
	got := l.waitStatus(tk.ID, task.StatusRejected)
	assert.Nil(t, got.Progress, "nothing installed")
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Zero(t, fi.Size())
}

func TestDemoInstallCompletes(t *testing.T) {
	l := newLab(t, bootDir(t, "raw", rawImage(4096), ""))
	tk, cfg := l.bootAgent("52:54:00:aa:00:04")
	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": install.Demo{Speed: 200}})
	l.waitStatus(tk.ID, task.StatusPendingApproval)
	_, err := l.svc.Approve(context.Background(), tk.ID, "ops", "")
	require.NoError(t, err)
	require.NoError(t, result(t, res))
	got := l.waitStatus(tk.ID, task.StatusCompleted)
	assert.Equal(t, []task.Stage{task.StagePartitioning, task.StageDownloading, task.StageWriting,
		task.StageInstalling, task.StageConfiguring}, stagesOf(got))
}

// cutAfter lets the first limit bytes of image downloads through, then
// holds the connection until the server goes away.
type cutAfter struct {
	http.ResponseWriter
	ctx     context.Context
	limit   int
	reached chan struct{}
	once    *sync.Once
}

func (c *cutAfter) Write(p []byte) (int, error) {
	if c.limit <= 0 {
		c.once.Do(func() { close(c.reached) })
		<-c.ctx.Done()
		return 0, c.ctx.Err()
	}
	n := min(len(p), c.limit)
	c.limit -= n
	m, err := c.ResponseWriter.Write(p[:n])
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	if err != nil || n == len(p) {
		return m, err
	}
	return c.Write(p[n:])
}

// The region restarts while the agent downloads: the download resumes
// (Range), progress reporting carries on against the new region, and the
// task completes with the right bytes on the disk.
func TestRegionRestartMidDownload(t *testing.T) {
	raw := rawImage(2 << 20)
	dir := bootDir(t, "zst", raw, "")
	l := newLab(t, dir)
	tk, cfg := l.bootAgent("52:54:00:aa:00:05")

	// Replace the first region with one whose image downloads stall half-way.
	l.stop()
	reached := make(chan struct{})
	var once sync.Once
	var cuts atomic.Int32
	l.start(nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/images/") && r.Header.Get("Range") == "" {
				cuts.Add(1)
				w = &cutAfter{ResponseWriter: w, ctx: r.Context(), limit: 700 << 10, reached: reached, once: &once}
			}
			h.ServeHTTP(w, r)
		})
	})

	path, lister := fileDisk(t)
	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": imageInstaller(lister)})
	l.waitStatus(tk.ID, task.StatusPendingApproval)
	_, err := l.svc.Approve(context.Background(), tk.ID, "ops", "")
	require.NoError(t, err)

	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the download never started")
	}
	l.waitStatus(tk.ID, task.StatusInstalling)
	l.stop()
	time.Sleep(300 * time.Millisecond) // the agent meets a dead region for a while
	var ranges atomic.Int32
	l.start(nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/images/") && strings.HasPrefix(r.Header.Get("Range"), "bytes=") && r.Header.Get("If-Range") != "" {
				ranges.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	})

	require.NoError(t, result(t, res))
	got := l.waitStatus(tk.ID, task.StatusCompleted)
	written, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(raw, written), "the resumed download wrote the whole image")
	assert.Equal(t, int32(1), cuts.Load())
	assert.Equal(t, int32(1), ranges.Load(), "the download resumed with one guarded Range request")
	require.NotNil(t, got.Progress)
	assert.Equal(t, task.StageCompleted, got.Progress.Stage)
}
