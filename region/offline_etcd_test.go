package region_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/region/journal"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/etcd/embedded"
	"github.com/lpmos/lpmos/task"
)

// etcdChildEnv, set in the environment of this test binary, makes it an
// etcd member instead of running tests: "dir client-url peer-url".
const etcdChildEnv = "LPMOS_TEST_ETCD_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(etcdChildEnv); spec != "" {
		os.Exit(runEtcdChild(spec))
	}
	os.Exit(m.Run())
}

// runEtcdChild serves an etcd member until SIGTERM; it prints "ready"
// once the member serves clients.
func runEtcdChild(spec string) int {
	f := strings.Fields(spec)
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "etcd child: want dir, client URL, peer URL:", spec)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	m, err := embedded.Start(sctx, embedded.Config{
		Dir: f[0], Name: "solo", ClientURL: f[1], PeerURL: f[2], Insecure: true,
		HeartbeatInterval: 50 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		StartTimeout: time.Minute,
	})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd child:", err)
		return 1
	}
	fmt.Println("ready")
	select {
	case <-ctx.Done():
	case err := <-m.Err():
		fmt.Fprintln(os.Stderr, "etcd child:", err)
	}
	m.Close()
	return 0
}

// etcdProcess is an etcd member in a process of its own, so that a test
// can stop it (SIGSTOP) as a network cut would: connections stay open
// and nothing answers.
type etcdProcess struct {
	cmd *exec.Cmd
	url string
}

func loopbackURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return "http://" + l.Addr().String()
}

func startEtcdProcess(t *testing.T) *etcdProcess {
	t.Helper()
	p := &etcdProcess{url: loopbackURL(t)}
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(os.Environ(), etcdChildEnv+"="+filepath.Join(t.TempDir(), "etcd")+" "+p.url+" "+loopbackURL(t))
	p.cmd.Stderr = os.Stderr
	out, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ready <- sc.Scan() && sc.Text() == "ready"
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case ok := <-ready:
		require.True(t, ok, "the etcd process did not start")
	case <-time.After(90 * time.Second):
		t.Fatal("the etcd process did not start in 90 s")
	}
	return p
}

func (p *etcdProcess) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
}

// stop stops the process (SIGSTOP) and waits until every thread of it
// is stopped: kill(2) returns before a loaded machine has stopped them
// all, and a request sent meanwhile could still be answered.
func (p *etcdProcess) stop(t *testing.T) {
	t.Helper()
	p.signal(t, syscall.SIGSTOP)
	dir := fmt.Sprintf("/proc/%d/task", p.cmd.Process.Pid)
	require.Eventually(t, func() bool {
		threads, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, th := range threads {
			stat, err := os.ReadFile(filepath.Join(dir, th.Name(), "stat"))
			if err != nil {
				continue // the thread exited
			}
			// "pid (comm) S ...": the state follows the last ')'.
			i := strings.LastIndexByte(string(stat), ')')
			if i < 0 || i+2 >= len(stat) || stat[i+2] != 'T' {
				return false
			}
		}
		return true
	}, 10*time.Second, 5*time.Millisecond, "the etcd process never stopped")
}

// A region cut off from etcd during an install keeps its machine going:
// etcd runs in another process and is stopped (SIGSTOP) while the real
// agent client reports its stages and its completion (twice, as an agent
// retrying after a lost answer does); the region answers every call from
// its journal, says it is degraded and cut off, and fails nothing on the
// installing timeout, which passes during the cut. Once etcd is continued
// the region leads again, replays the journal in order, and the task is
// completed with every stage in its timeline exactly once, at the times
// the region accepted them.
func TestCutOffRegionCompletesInstallFromJournal(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd in another process and cuts it for seconds")
	}
	const ttl = 2 * time.Second // cutOffLab's
	l, ep, tk, c, _ := cutOffLab(t, "52:54:00:00:cf:01", func(c *region.Config) {
		// Shorter than the cut: a timeout that counted the time the
		// region could not reach etcd would fail the task.
		c.Timeouts = map[task.Status]time.Duration{task.StatusInstalling: 2 * time.Second}
	})
	ctx := context.Background()

	rep, err := c.Report(ctx, hardware.Info{CPU: hardware.CPU{Cores: 4}, Memory: hardware.Memory{TotalGB: 8}})
	require.NoError(t, err)
	assert.Equal(t, agent.ActionWaitForApproval, rep.NextAction)
	l.waitStatus(tk.ID, task.StatusPendingApproval)
	_, err = l.svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusApproved)
	require.Eventually(t, func() bool { // the region's view sees the approval
		a, err := c.Approval(ctx, 0)
		return err == nil && a.Approved
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, c.Progress(ctx, agent.StagePartitioning, 5, "partitioning", nil))
	l.waitStatus(tk.ID, task.StatusInstalling)

	// The cut.
	ep.stop(t)
	cutAt := time.Now()
	require.NoError(t, c.Progress(ctx, agent.StageDownloading, 20, "downloading", nil))
	assert.Equal(t, 1, l.reg.JournalDepth(), "the call the store did not take is journaled")

	var h agent.Health
	require.Eventually(t, func() bool {
		h, err = c.Health(ctx)
		return err == nil && h.CutOff
	}, 10*ttl, 50*time.Millisecond, "the region never saw itself cut off")
	assert.Equal(t, "degraded", h.Status)
	assert.False(t, h.EtcdConnected)
	assert.Equal(t, 1, h.Journal)
	assert.False(t, l.reg.Leading(), "a cut-off region does not count as leading")

	for _, s := range []struct {
		stage string
		pct   int
	}{{agent.StageWriting, 50}, {agent.StageConfiguring, 90}, {agent.StageCompleted, 100}, {agent.StageCompleted, 100}} {
		require.NoError(t, c.Progress(ctx, s.stage, s.pct, s.stage, nil), "stage %s answered while cut off", s.stage)
	}
	assert.Equal(t, 5, l.reg.JournalDepth())
	require.Eventually(t, func() bool { return time.Since(cutAt) > 3*time.Second }, 10*time.Second, 50*time.Millisecond,
		"the cut outlasts the installing timeout")
	resumed := time.Now()
	ep.signal(t, syscall.SIGCONT)

	done := l.waitStatus(tk.ID, task.StatusCompleted)
	require.Eventually(t, func() bool {
		h, err = c.Health(ctx)
		return err == nil && h.Status == "healthy"
	}, 20*time.Second, 50*time.Millisecond, "the region never became healthy again")
	assert.Zero(t, h.Journal)
	assert.False(t, h.CutOff)
	assert.Equal(t, "leader", h.Role)
	assert.Zero(t, l.reg.JournalDepth())

	assert.Nil(t, done.Error, "nothing failed the task")
	events := map[string]int{}
	stages := map[task.Stage]int{}
	var completedAt time.Time
	for _, e := range done.Timeline {
		events[e.Event]++
		if e.Event == task.TimelineStageChanged {
			stages[e.Stage]++
		}
		if e.Event == string(task.EventCompleted) {
			completedAt = e.Timestamp
		}
	}
	for _, ev := range []task.Event{task.EventHardwareReported, task.EventApproved, task.EventInstallStarted, task.EventCompleted} {
		assert.Equal(t, 1, events[string(ev)], "%s in the timeline once: %+v", ev, done.Timeline)
	}
	assert.Zero(t, events[string(task.EventFailed)])
	assert.Equal(t, map[task.Stage]int{task.StagePartitioning: 1, task.StageDownloading: 1, task.StageWriting: 1, task.StageConfiguring: 1},
		stages, "every stage once: %+v", done.Timeline)
	assert.True(t, completedAt.Before(resumed), "the completion carries the time the region accepted it (%s), not the replay's (after %s)", completedAt, resumed)
	require.NotNil(t, done.Progress)
	assert.Equal(t, 100, done.Progress.Percentage)
}

// cutOffLab starts etcd in another process and a region on it with a
// journal, and boots a machine for a new task: it returns the lab, the
// etcd process, the task and an agent client that makes one attempt per
// call.
func cutOffLab(t *testing.T, mac string, opts ...labOption) (*lab, *etcdProcess, *task.Task, *agent.Client, string) {
	t.Helper()
	ep := startEtcdProcess(t)
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	st, err := etcd.Dial(dctx, etcd.Config{Endpoints: []string{ep.url}})
	cancel()
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	journalDir := t.TempDir()
	l := startRegion(t, st, append([]labOption{func(c *region.Config) {
		c.JournalDir, c.StoreTimeout, c.LeaderTTL = journalDir, time.Second, 2*time.Second
	}}, opts...)...)
	require.Eventually(t, l.reg.Leading, 10*time.Second, 20*time.Millisecond)
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	require.NotEmpty(t, token)
	m, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	c, err := agent.NewClient(agent.Config{RegionURL: l.ts.URL, MAC: m, TaskID: tk.ID, Token: token,
		RequestTimeout: 20 * time.Second, Retry: agent.RetryPolicy{Attempts: 1}})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return l, ep, tk, c, token
}

// A hardware report made while the region is cut off is answered
// wait_for_approval and applied once etcd is back; a repeat of it (an
// agent restarted) is journaled too and dropped at replay, since the task
// moved on. A full journal refuses the next call with 503 and
// Retry-After, and the agent retries: nothing it was told was received is
// lost.
func TestCutOffRegionJournalsReportsAndRefusesWhenFull(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd in another process and cuts it for seconds")
	}
	const mac = "52:54:00:00:cf:02"
	l, ep, tk, c, token := cutOffLab(t, mac, func(c *region.Config) {
		c.JournalLimits = journal.Limits{MaxRecords: 2}
	})
	ctx := context.Background()
	hw := hardware.Info{CPU: hardware.CPU{Cores: 8}, Memory: hardware.Memory{TotalGB: 32}}

	ep.stop(t)
	for i := range 2 {
		rep, err := c.Report(ctx, hw)
		require.NoError(t, err, "report %d answered while cut off", i+1)
		assert.Equal(t, agent.ActionWaitForApproval, rep.NextAction)
		assert.Equal(t, i+1, l.reg.JournalDepth())
	}
	body, err := json.Marshal(agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hw})
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, l.ts.URL+agent.PathReport, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "the journal is full")
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))
	assert.Equal(t, 2, l.reg.JournalDepth(), "the refused call is not journaled")

	ep.signal(t, syscall.SIGCONT)
	got := l.waitStatus(tk.ID, task.StatusPendingApproval)
	require.Eventually(t, func() bool { return l.reg.JournalDepth() == 0 }, 20*time.Second, 20*time.Millisecond)
	require.NotNil(t, got.Hardware)
	assert.Equal(t, 8, got.Hardware.CPU.Cores)
	n := 0
	for _, e := range got.Timeline {
		if e.Event == string(task.EventHardwareReported) {
			n++
			assert.NotEmpty(t, e.Source, "the report keeps the address the agent called from")
		}
	}
	assert.Equal(t, 1, n, "the report in the timeline once: %+v", got.Timeline)
}
