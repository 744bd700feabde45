package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent/sim"
	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/task"
)

// Config is one fleet run.
type Config struct {
	Machines      int     // simulated machines, one task each
	Regions       int     // region processes, one region each
	ControlPlanes int     // control-plane processes
	Dashboards    int     // WebSocket clients, spread over the control planes
	Firehose      int     // of the dashboards, those subscribed to "*"
	EtcdMembers   int     // etcd member processes (1, or 3 for a cluster)
	Speed         float64 // speed-up of the simulated installs (1: about 20 s)
	// BootRetry is how often a machine fetches its script again while its
	// region has not prepared its task yet (a PXE retry loop).
	BootRetry time.Duration
	// CreateWorkers create tasks concurrently, one REST call per task.
	CreateWorkers int
	// ApproveEvery is the period of the operator's bulk approvals (one
	// call per region), ListEvery that of its list calls.
	ApproveEvery, ListEvery time.Duration
	// Timeout bounds the load: tasks not completed by then are stuck.
	Timeout time.Duration
	// KillEtcdLeaderAt, between 0 and 1 (0: never), kills (SIGKILL) the
	// etcd member leading the cluster once that fraction of the machines
	// has completed: with 3 members the cluster keeps its quorum, and
	// every client must fail over and every watch resume.
	KillEtcdLeaderAt float64
	// WorkDir keeps the processes' data and logs; empty: a temporary
	// directory removed after the run.
	WorkDir string
	// ProfileDir, if set, receives CPU profiles (pprof) of the first etcd
	// member, the first region and the first control plane, taken over
	// ProfileFor starting ProfileAfter into the load (defaults 15 s, 5 s).
	ProfileDir               string
	ProfileFor, ProfileAfter time.Duration
	Log                      *slog.Logger
}

func (c *Config) defaults() {
	c.Machines = max(c.Machines, 1)
	c.Regions = max(c.Regions, 1)
	c.ControlPlanes = max(c.ControlPlanes, 1)
	c.EtcdMembers = max(c.EtcdMembers, 1)
	c.Firehose = min(max(c.Firehose, 0), c.Dashboards)
	if c.Speed <= 0 {
		c.Speed = 10
	}
	if c.BootRetry <= 0 {
		c.BootRetry = time.Second
	}
	c.CreateWorkers = max(c.CreateWorkers, 1)
	if c.ApproveEvery <= 0 {
		c.ApproveEvery = 250 * time.Millisecond
	}
	if c.ListEvery <= 0 {
		c.ListEvery = 100 * time.Millisecond
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.ProfileFor <= 0 {
		c.ProfileFor = 15 * time.Second
	}
	if c.ProfileAfter <= 0 {
		c.ProfileAfter = 5 * time.Second
	}
}

// Result is what a run measured.
type Result struct {
	Config Config
	// Completed counts tasks that ended completed; Elapsed runs from the
	// first create to the last completion.
	Completed, Created int
	Elapsed            time.Duration
	LifecyclesPerSec   float64
	// CreateToCompleted are the tasks' creation → completion times.
	CreateToCompleted []time.Duration
	// Dwell is how long completed tasks stayed in each status of the
	// lifecycle (from their timelines): where the time goes.
	Dwell  map[task.Status][]time.Duration
	REST   map[string]restFigure
	Store  etcdMetrics // deltas over the load, on the first member
	WS     wsCheck
	WSWait error // the dashboards' final statuses did not all arrive
	Procs  []procFigure
	// DBAfterRun and DBAfterRetention are the first member's database
	// size; Purged counts the tasks the retention deleted.
	DBAfterRun, DBInUseAfterRun, DBAfterRetention int64
	Purged                                        int
	// Lost: tasks created that are not in the store at the end.
	// Duplicated: a machine with more than one task, or a task that went
	// through a status twice. Stuck: not completed by the timeout.
	// TimelineBad: a timeline missing a status, out of order or going back
	// in time. Problems names the first few.
	Lost, Duplicated, Stuck, TimelineBad int
	Problems                             []string
	// Killed names the etcd member killed as leader, and how many machines
	// had completed then.
	Killed          string
	KilledAfterDone int
	// Unavailable counts answers 503 "store unavailable" (an etcd leader
	// election) that the operator retried: creates repeated with their
	// idempotency key, approvals left to the next bulk call.
	Unavailable int64
}

type restFigure struct {
	N, Errors int
	P50, P99  time.Duration
}

type procFigure struct {
	Name string
	procUsage
}

// fleet is a run in progress.
type fleet struct {
	cfg     Config
	log     *slog.Logger
	dir     string
	token   string   // the operator's (admin)
	viewers []string // one token per dashboard (viewer)
	lat     *latencies
	etcds   []*proc
	etcdURL []string
	done    atomic.Int64 // machines whose install completed
	// unavailable counts 503s the operator retried (Result.Unavailable).
	unavailable atomic.Int64
	killed      string // the etcd member killed, if any
	regions     []*proc
	regURL      []string
	cps         []*proc
	cpAPI       []*controlPlane
	pprof       map[string]string // process → profiler base URL
	dbs         []*dashboard

	mu       sync.Mutex
	taskOf   []string // machine → task ID
	outcomes []error  // machine → RunOnce's result
	problems []string
}

// Run starts the processes, drives the load, checks the outcome and stops
// everything it started.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	if cfg.Machines > 62_500 {
		return nil, errors.New("at most 62,500 machines (one loopback address each)")
	}
	f := &fleet{cfg: cfg, log: cfg.Log, lat: newLatencies(), pprof: map[string]string{},
		taskOf: make([]string, cfg.Machines), outcomes: make([]error, cfg.Machines)}
	f.dir = cfg.WorkDir
	if f.dir == "" {
		d, err := os.MkdirTemp("", "lpmos-fleet-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		f.dir = d
	} else if err := os.MkdirAll(f.dir, 0o755); err != nil {
		return nil, err
	}
	f.token = newToken()
	for range cfg.Dashboards {
		f.viewers = append(f.viewers, newToken())
	}
	defer f.stopAll()
	if err := f.start(ctx); err != nil {
		return nil, err
	}
	return f.load(ctx)
}

func newToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeTokens writes the control planes' token file: the operator as
// admin, each dashboard a viewer of its own (a person at a browser).
func (f *fleet) writeTokens() (string, error) {
	var b strings.Builder
	line := func(tok, role, subject string) {
		sum := sha256.Sum256([]byte(tok))
		fmt.Fprintf(&b, "%x %s %s\n", sum, role, subject)
	}
	line(f.token, "admin", "fleet-operator")
	for i, tok := range f.viewers {
		line(tok, "viewer", fmt.Sprintf("dashboard-%d", i))
	}
	path := filepath.Join(f.dir, "tokens")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// start builds the binaries and starts etcd, the regions and the control
// planes, each a process of its own on free loopback ports.
func (f *fleet) start(ctx context.Context) error {
	cfg := f.cfg
	f.log.Info("building the region and control-plane binaries")
	regionBin, cpBin, err := buildBinaries(ctx, f.dir)
	if err != nil {
		return err
	}
	ports, err := freePorts(2*cfg.EtcdMembers + 2*cfg.Regions + 2*cfg.ControlPlanes)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var cluster []string
	for i := range cfg.EtcdMembers {
		cluster = append(cluster, fmt.Sprintf("etcd-%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	for i := range cfg.EtcdMembers {
		url := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		mc, _ := json.Marshal(memberConfig{
			Dir: filepath.Join(f.dir, fmt.Sprintf("etcd-%d", i)), Name: fmt.Sprintf("etcd-%d", i),
			ClientURL: url, PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			InitialCluster: strings.Join(cluster, ","), Quota: 8 << 30, Pprof: i == 0 && cfg.ProfileDir != "",
		})
		p, err := startProc(fmt.Sprintf("etcd-%d", i), self, filepath.Join(f.dir, fmt.Sprintf("etcd-%d.log", i)),
			[]string{roleEnv + "=" + string(mc)})
		if err != nil {
			return err
		}
		f.etcds, f.etcdURL = append(f.etcds, p), append(f.etcdURL, url)
		if i == 0 && cfg.ProfileDir != "" {
			f.pprof[p.name] = url
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for i, p := range f.etcds {
		if err := waitHTTP(wctx, p, f.etcdURL[i]+"/health"); err != nil {
			return err
		}
	}
	endpoints := strings.Join(f.etcdURL, ",")
	ports = ports[2*cfg.EtcdMembers:]
	var g errgroup.Group
	for i := range cfg.Regions {
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		name := regionName(i)
		var extra []string
		if i == 0 && cfg.ProfileDir != "" {
			pp := fmt.Sprintf("127.0.0.1:%d", ports[cfg.Regions+i])
			extra = append(extra, "--pprof-listen", pp)
			f.pprof[name] = "http://" + pp
		}
		boot := filepath.Join(f.dir, name, "boot")
		// The agent's boot files must exist for tasks to become ready; the
		// simulated machines never download them.
		if err := os.MkdirAll(boot, 0o755); err != nil {
			return err
		}
		for _, file := range []string{"vmlinuz", "initramfs.cpio.zst"} {
			if err := os.WriteFile(filepath.Join(boot, file), []byte("simulated\n"), 0o644); err != nil {
				return err
			}
		}
		p, err := startProc(name, regionBin, filepath.Join(f.dir, name+".log"), nil, append(extra,
			"--region", name, "--region-listen", addr, "--region-url", "http://"+addr,
			"--tftp-listen", "", "--boot-dir", boot, "--ipxe-dir", boot,
			"--dhcp-lease-file", filepath.Join(f.dir, name, "leases.json"),
			"--etcd-endpoints", endpoints, "--log-level", "warn",
			// Each simulated machine has its own address; a region takes
			// all of its machines' connections at once.
			"--http-max-conns", fmt.Sprint(max(1024, 4*cfg.Machines/cfg.Regions)))...)
		if err != nil {
			return err
		}
		f.regions, f.regURL = append(f.regions, p), append(f.regURL, "http://"+addr)
		g.Go(func() error { return waitHTTP(wctx, p, "http://"+addr+"/health") })
	}
	ports = ports[2*cfg.Regions:]
	tokens, err := f.writeTokens()
	if err != nil {
		return err
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}}
	for i := range cfg.ControlPlanes {
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		name := fmt.Sprintf("control-plane-%d", i)
		var extra []string
		if i == 0 && cfg.ProfileDir != "" {
			pp := fmt.Sprintf("127.0.0.1:%d", ports[cfg.ControlPlanes+i])
			extra = append(extra, "--pprof-listen", pp)
			f.pprof[name] = "http://" + pp
		}
		p, err := startProc(name, cpBin, filepath.Join(f.dir, name+".log"), nil, append(extra,
			"--listen-addr", addr, "--etcd-endpoints", endpoints, "--log-level", "warn", "--token-file", tokens,
			// The operator is automation creating and approving thousands
			// of tasks: far above a person's request rate.
			"--api-rate", "100000", "--api-burst", "100000")...)
		if err != nil {
			return err
		}
		f.cps = append(f.cps, p)
		cp, err := newControlPlane("http://"+addr, f.token, hc, f.lat)
		if err != nil {
			return err
		}
		f.cpAPI = append(f.cpAPI, cp)
		g.Go(func() error { return waitHTTP(wctx, p, "http://"+addr+"/readyz") })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	// Every region online in the control planes' view.
	for _, cp := range f.cpAPI {
		for {
			online := 0
			if regs, err := cp.c.Regions(wctx); err == nil {
				for _, r := range regs {
					if r.Status == "online" {
						online++
					}
				}
			}
			if online >= cfg.Regions {
				break
			}
			select {
			case <-wctx.Done():
				return fmt.Errorf("regions online at %s: %d of %d: %w", cp.base, online, cfg.Regions, wctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	f.log.Info("processes ready", "etcd", cfg.EtcdMembers, "regions", cfg.Regions, "control_planes", cfg.ControlPlanes)
	return nil
}

func regionName(i int) string { return fmt.Sprintf("dc%d", i+1) }

// stopAll stops every process still running, control planes and regions
// before etcd.
func (f *fleet) stopAll() {
	for _, d := range f.dbs {
		d.close()
	}
	for _, group := range [][]*proc{f.cps, f.regions, f.etcds} {
		for _, p := range group {
			if !p.exited() {
				_ = p.stop(30 * time.Second)
			}
		}
	}
}

// machineClient gives machine i an HTTP client that connects from its own
// loopback address, 127.1.x.y: to its region it is a host of its own (the
// region binds tokens to addresses and caps connections per address).
func machineClient(i int) *http.Client {
	ip := net.IPv4(127, 1, byte(i/250), byte(1+i%250))
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}}
}

func (f *fleet) problem(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.problems) < 20 {
		f.problems = append(f.problems, fmt.Sprintf(format, args...))
	}
}

// load connects the dashboards, creates a task per machine and boots it,
// approves and lists while the machines install, then checks everything.
func (f *fleet) load(ctx context.Context) (*Result, error) {
	cfg := f.cfg
	res := &Result{Config: cfg, REST: map[string]restFigure{}, Dwell: map[task.Status][]time.Duration{}}
	if err := f.connectDashboards(ctx); err != nil {
		return nil, err
	}
	var before []etcdMetrics
	for _, u := range f.etcdURL {
		m, err := scrapeEtcd(ctx, u)
		if err != nil {
			return nil, err
		}
		before = append(before, m)
	}
	st, err := etcd.Dial(ctx, etcd.Config{Endpoints: f.etcdURL})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	lctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	bg, bgctx := errgroup.WithContext(lctx)
	stopBG := make(chan struct{})
	for r := range cfg.Regions {
		bg.Go(func() error { f.approveLoop(bgctx, stopBG, r); return nil })
	}
	bg.Go(func() error { f.listLoop(bgctx, stopBG); return nil })
	bg.Go(func() error { f.sampleLoop(bgctx, stopBG); return nil })
	if cfg.ProfileDir != "" {
		bg.Go(func() error { f.profile(bgctx); return nil })
	}
	if cfg.KillEtcdLeaderAt > 0 {
		bg.Go(func() error { f.killLeader(bgctx, stopBG, st, res); return nil })
	}

	f.log.Info("creating tasks and booting machines", "machines", cfg.Machines)
	var machines sync.WaitGroup
	next := make(chan int)
	var creators errgroup.Group
	for range cfg.CreateWorkers {
		creators.Go(func() error {
			for i := range next {
				id, err := f.create(lctx, i)
				if err != nil {
					f.problem("machine %d: create: %v", i, err)
					continue
				}
				f.mu.Lock()
				f.taskOf[i] = id
				f.mu.Unlock()
				f.watch(i, id)
				machines.Add(1)
				go func() { // owned: RunOnce returns when lctx ends at the latest
					defer machines.Done()
					f.boot(lctx, i)
				}()
			}
			return nil
		})
	}
	for i := range cfg.Machines {
		select {
		case next <- i:
		case <-lctx.Done():
		}
		if lctx.Err() != nil {
			break
		}
	}
	close(next)
	_ = creators.Wait()
	machines.Wait()
	close(stopBG)
	_ = bg.Wait()
	f.log.Info("load done; checking")

	// What the store holds, from the store itself.
	live := f.liveEtcd()
	tasks, err := readTasks(ctx, task.NewService(st, task.Config{}))
	if err != nil {
		return nil, err
	}
	went := f.check(res, tasks)
	res.WSWait = waitDashboards(ctx, f.dbs, went, 30*time.Second)
	res.WS = checkDashboards(f.dbs, went)
	for _, d := range f.dbs {
		d.close()
	}
	for _, op := range []string{opCreate, opApprove, opList, opGet} {
		ds, errs := f.lat.get(op)
		res.REST[op] = restFigure{N: len(ds), Errors: errs, P50: quantile(ds, 0.5), P99: quantile(ds, 0.99)}
	}
	after, err := scrapeEtcd(ctx, f.etcdURL[live])
	if err != nil {
		return nil, err
	}
	res.Store = after.sub(before[live])
	if res.DBAfterRun, res.DBInUseAfterRun, err = dbSize(ctx, st, f.etcdURL[live]); err != nil {
		return nil, err
	}

	// Every control plane lists every task (the control plane's memory
	// with the whole fleet listed), then the processes are measured and
	// stopped.
	for _, cp := range f.cpAPI {
		if err := listAll(ctx, cp, cfg.Machines); err != nil {
			f.problem("list all tasks at %s: %v", cp.base, err)
		}
	}
	for _, group := range [][]*proc{f.etcds, f.regions, f.cps} {
		for _, p := range group {
			res.Procs = append(res.Procs, procFigure{Name: p.name, procUsage: p.sample()})
		}
	}
	res.Procs = append(res.Procs, procFigure{Name: "fleet (machines, operator, dashboards)", procUsage: selfUsage()})
	for _, group := range [][]*proc{f.cps, f.regions} {
		for _, p := range group {
			if err := p.stop(30 * time.Second); err != nil {
				f.problem("%v", err)
			}
		}
	}

	// Retention: what the control plane's --retention does to ended
	// tasks, then compaction and defragmentation give the space back.
	purged, err := task.NewService(st, task.Config{}).Purge(ctx, time.Now().Add(time.Hour), 0)
	if err != nil {
		return nil, fmt.Errorf("purge: %w", err)
	}
	res.Purged = len(purged)
	var alive []string
	for i, u := range f.etcdURL {
		if !f.etcds[i].exited() {
			alive = append(alive, u)
		}
	}
	if err := compactAndDefrag(ctx, st, alive); err != nil {
		return nil, err
	}
	if res.DBAfterRetention, _, err = dbSize(ctx, st, f.etcdURL[live]); err != nil {
		return nil, err
	}
	f.mu.Lock()
	res.Problems = append(res.Problems, f.problems...)
	res.Unavailable = f.unavailable.Load()
	f.mu.Unlock()
	return res, nil
}

// create creates machine i's task through a control plane, retrying what
// a loaded control plane may answer (503 while loading or while etcd
// elects a leader, 409 capacity) with the same idempotency key.
func (f *fleet) create(ctx context.Context, i int) (string, error) {
	cp := f.cpAPI[i%len(f.cpAPI)]
	req := task.CreateRequest{
		RegionID: regionName(i % f.cfg.Regions), TargetMAC: macOf(i).String(),
		OSType: "ubuntu", OSVersion: "24.04", Tags: map[string]string{"fleet": "bench"},
	}
	var err error
	for attempt := range 5 {
		var out *client.Created
		// The key makes a repeat safe when the answer was lost or was a
		// 503 from an etcd election after the write was applied.
		key := client.IdempotencyKey("fleet/"+req.TargetMAC, 1)
		if err = cp.timed(opCreate, func() (err error) { out, err = cp.c.Create(ctx, req, key); return err }); err == nil {
			return out.TaskID, nil
		}
		if !errors.Is(err, client.ErrUnavailable) && !errors.Is(err, client.ErrCapacity) {
			return "", err
		}
		if errors.Is(err, client.ErrUnavailable) {
			f.unavailable.Add(1)
		}
		select {
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	return "", err
}

func macOf(i int) lpmos.MAC { return sim.MAC(i) }

// watch hands a new task to a watcher dashboard (round robin, skipping
// those that follow enough already).
func (f *fleet) watch(i int, id string) {
	watchers := f.dbs[f.cfg.Firehose:]
	for k := range watchers {
		if watchers[(i+k)%len(watchers)].offer(id) {
			return
		}
	}
}

// boot runs machine i's one install.
func (f *fleet) boot(ctx context.Context, i int) {
	hc := machineClient(i)
	defer hc.CloseIdleConnections()
	m := &sim.Machine{
		MAC: macOf(i), RegionURL: f.regURL[i%f.cfg.Regions], Speed: f.cfg.Speed,
		PollInterval: f.cfg.BootRetry, Client: hc, Logger: slog.New(slog.DiscardHandler),
	}
	err := m.RunOnce(ctx)
	f.mu.Lock()
	f.outcomes[i] = err
	f.mu.Unlock()
	if err == nil {
		f.done.Add(1)
	}
	if err != nil && ctx.Err() == nil {
		f.problem("machine %s: %v", m.MAC, err)
	}
}

// connectDashboards dials every dashboard, spread over the control planes;
// the firehose ones are subscribed when this returns.
func (f *fleet) connectDashboards(ctx context.Context) error {
	f.dbs = make([]*dashboard, f.cfg.Dashboards)
	var g errgroup.Group
	g.SetLimit(32)
	for n := range f.dbs {
		g.Go(func() error {
			cp := *f.cpAPI[n%len(f.cpAPI)]
			cp.token = f.viewers[n]
			d, err := dialDashboard(ctx, n, &cp, n < f.cfg.Firehose)
			f.dbs[n] = d
			return err
		})
	}
	err := g.Wait()
	if err != nil {
		f.dbs = slices.DeleteFunc(f.dbs, func(d *dashboard) bool { return d == nil })
	}
	return err
}

// approveLoop approves, in bulk, region r's tasks waiting for approval
// (an operator, or the automation, of each data center).
func (f *fleet) approveLoop(ctx context.Context, stop <-chan struct{}, r int) {
	every(ctx, stop, f.cfg.ApproveEvery, func(n int) {
		cp := f.cpAPI[(n+r)%len(f.cpAPI)]
		var out *client.BulkResult
		err := cp.timed(opApprove, func() (err error) {
			out, err = cp.c.BulkApprove(ctx, client.ByFilter(client.BulkFilter{
				RegionID: regionName(r), Statuses: []task.Status{task.StatusPendingApproval},
			}), "fleet bench")
			return err
		})
		if expected(opApprove, err) {
			return // nothing waiting for approval in this region
		}
		if errors.Is(err, client.ErrUnavailable) {
			f.unavailable.Add(1)
			return // the next call approves them
		}
		if err != nil {
			if ctx.Err() == nil {
				f.problem("bulk approve %s: %v", regionName(r), err)
			}
			return
		}
		for _, fail := range out.Failed {
			// A filter selects from the replica's view, which may
			// trail the other replica's approval of the same task. An
			// unavailable store (etcd electing a leader) leaves the task
			// to the next call.
			if errors.Is(fail.Err, client.ErrUnavailable) {
				f.unavailable.Add(1)
				continue
			}
			if !errors.Is(fail.Err, client.ErrInvalidTransition) {
				f.problem("bulk approve %s: %s not moved: %v", regionName(r), fail.TaskID, fail.Err)
			}
		}
	})
}

// every calls do(n), n counting from 0, every d until stop is closed or
// ctx ends.
func every(ctx context.Context, stop <-chan struct{}, d time.Duration, do func(n int)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-t.C:
		case <-stop:
			return
		case <-ctx.Done():
			return
		}
		do(n)
	}
}

// listLoop lists a page of one region's tasks at a time, as dashboards
// and scripts do.
func (f *fleet) listLoop(ctx context.Context, stop <-chan struct{}) {
	every(ctx, stop, f.cfg.ListEvery, func(n int) {
		cp := f.cpAPI[n%len(f.cpAPI)]
		err := cp.timed(opList, func() error {
			_, err := cp.c.List(ctx, client.ListOptions{RegionID: regionName(n % f.cfg.Regions), Limit: 50})
			return err
		})
		if err != nil && ctx.Err() == nil {
			f.problem("list: %v", err)
		}
	})
}

// sampleLoop reads the processes' memory and CPU while they run.
func (f *fleet) sampleLoop(ctx context.Context, stop <-chan struct{}) {
	every(ctx, stop, time.Second, func(int) {
		for _, group := range [][]*proc{f.etcds, f.regions, f.cps} {
			for _, p := range group {
				p.sample()
			}
		}
	})
}

// listAll pages through every task at one control plane.
func listAll(ctx context.Context, cp *controlPlane, want int) error {
	all, err := cp.c.ListAll(ctx, client.ListOptions{Limit: task.MaxLimit})
	if err != nil {
		return err
	}
	if len(all) < want {
		return fmt.Errorf("listed %d tasks, want %d", len(all), want)
	}
	return nil
}

// readTasks reads every task from the store.
func readTasks(ctx context.Context, svc *task.Service) ([]*task.Task, error) {
	var all []*task.Task
	for offset := 0; ; offset += task.MaxLimit {
		page, err := svc.List(ctx, task.Filter{Limit: task.MaxLimit, Offset: offset, Sort: task.SortOldest})
		if err != nil {
			return nil, err
		}
		all = append(all, page.Tasks...)
		if len(page.Tasks) == 0 || offset+len(page.Tasks) >= page.Total {
			return all, nil
		}
	}
}

// check compares the store with what the operator created and returns the
// statuses each task went through, from its timeline.
func (f *fleet) check(res *Result, tasks []*task.Task) map[string][]task.Status {
	byID := map[string]*task.Task{}
	perMAC := map[lpmos.MAC]int{}
	for _, t := range tasks {
		byID[t.ID] = t
		perMAC[t.Metadata.TargetMAC]++
	}
	went := map[string][]task.Status{}
	var first, last time.Time
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, id := range f.taskOf {
		if id == "" {
			continue // never created: a problem already recorded
		}
		res.Created++
		t := byID[id]
		if t == nil {
			res.Lost++
			f.addProblem("task %s of machine %d is not in the store", id, i)
			continue
		}
		if n := perMAC[t.Metadata.TargetMAC]; n > 1 {
			res.Duplicated++
			f.addProblem("machine %s has %d tasks", t.Metadata.TargetMAC, n)
		}
		statuses, twice, backwards := timelineStatuses(t)
		went[id] = statuses
		if twice {
			res.Duplicated++
			f.addProblem("task %s went through a status twice: %v", id, statuses)
		}
		if t.Status != task.StatusCompleted {
			res.Stuck++
			f.addProblem("task %s is %s, not completed (machine: %v)", id, t.Status, f.outcomes[i])
			continue
		}
		if !equalStatuses(statuses, lifecycle) || backwards {
			res.TimelineBad++
			f.addProblem("task %s: timeline statuses %v (time going back: %v)", id, statuses, backwards)
		}
		created, done := t.Metadata.CreatedAt, t.Timeline[len(t.Timeline)-1].Timestamp
		for _, e := range t.Timeline {
			if e.Status == task.StatusCompleted {
				done = e.Timestamp
			}
		}
		res.Completed++
		for st, d := range dwell(t) {
			res.Dwell[st] = append(res.Dwell[st], d)
		}
		res.CreateToCompleted = append(res.CreateToCompleted, done.Sub(created))
		if first.IsZero() || created.Before(first) {
			first = created
		}
		if done.After(last) {
			last = done
		}
	}
	res.Elapsed = last.Sub(first)
	if res.Elapsed > 0 {
		res.LifecyclesPerSec = float64(res.Completed) / res.Elapsed.Seconds()
	}
	return went
}

func (f *fleet) addProblem(format string, args ...any) {
	if len(f.problems) < 20 {
		f.problems = append(f.problems, fmt.Sprintf(format, args...))
	}
}

// timelineStatuses returns the statuses a task went through, from its
// timeline, and whether one came twice or a timestamp went back.
func timelineStatuses(t *task.Task) (statuses []task.Status, twice, backwards bool) {
	var prev time.Time
	for _, e := range t.Timeline {
		if e.Timestamp.Before(prev) {
			backwards = true
		}
		prev = e.Timestamp
		if e.Status == "" || (len(statuses) > 0 && statuses[len(statuses)-1] == e.Status) {
			continue // not a status change (a stage within installing, say)
		}
		if slices.Contains(statuses, e.Status) {
			twice = true
		}
		statuses = append(statuses, e.Status)
	}
	return statuses, twice, backwards
}

// profile takes a CPU profile of each process that serves the profiler,
// all over the same window of the load.
func (f *fleet) profile(ctx context.Context) {
	select {
	case <-time.After(f.cfg.ProfileAfter):
	case <-ctx.Done():
		return
	}
	if err := os.MkdirAll(f.cfg.ProfileDir, 0o755); err != nil {
		f.problem("profile: %v", err)
		return
	}
	var wg sync.WaitGroup
	for name, base := range f.pprof {
		wg.Go(func() {
			url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, int(f.cfg.ProfileFor.Seconds()))
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				f.problem("profile %s: %v", name, err)
				return
			}
			defer resp.Body.Close()
			out, err := os.Create(filepath.Join(f.cfg.ProfileDir, name+".cpu.pprof"))
			if err != nil {
				f.problem("profile %s: %v", name, err)
				return
			}
			defer out.Close()
			if _, err := io.Copy(out, resp.Body); err != nil {
				f.problem("profile %s: %v", name, err)
			}
		})
	}
	wg.Wait()
}

// dwell returns how long the task stayed in each status it left.
func dwell(t *task.Task) map[task.Status]time.Duration {
	out := map[task.Status]time.Duration{}
	var cur task.Status
	var since time.Time
	for _, e := range t.Timeline {
		if e.Status == "" || e.Status == cur {
			continue
		}
		if cur != "" {
			out[cur] += e.Timestamp.Sub(since)
		}
		cur, since = e.Status, e.Timestamp
	}
	return out
}

// liveEtcd is the index of the first etcd member still running.
func (f *fleet) liveEtcd() int {
	for i, p := range f.etcds {
		if !p.exited() {
			return i
		}
	}
	return 0
}

// killLeader kills the etcd leader once the configured share of machines
// has completed.
func (f *fleet) killLeader(ctx context.Context, stop <-chan struct{}, st *etcd.Store, res *Result) {
	want := int64(f.cfg.KillEtcdLeaderAt * float64(f.cfg.Machines))
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for f.done.Load() < want {
		select {
		case <-t.C:
		case <-stop:
			return
		case <-ctx.Done():
			return
		}
	}
	for i, u := range f.etcdURL {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := st.Client().Status(sctx, u)
		cancel()
		if err != nil || s.Header.MemberId != s.Leader {
			continue
		}
		p := f.etcds[i]
		p.sample()
		done := int(f.done.Load())
		_ = p.cmd.Process.Kill()
		<-p.done
		f.mu.Lock()
		res.Killed, res.KilledAfterDone = p.name, done
		f.mu.Unlock()
		f.log.Info("killed the etcd leader", "member", p.name, "completed", res.KilledAfterDone)
		return
	}
	f.problem("no etcd leader found to kill")
}
