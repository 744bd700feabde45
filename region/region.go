// Package region is LPMOS's regional client, one per data center: it
// watches its region's tasks in the store, answers the machines' boot
// requests (DHCP/ProxyDHCP, TFTP, HTTP boot files and per-machine iPXE
// scripts), serves the agent API the booted agents report to, and keeps a
// heartbeat and its capabilities in the store for the control plane. It
// also keeps each machine's boot trace (trace.go): what it saw of the
// machine's DHCP, TFTP, HTTP and agent traffic, and why it answered as it
// did.
//
// It composes the dhcp, pxe and ipxe packages and implements their small
// policy interfaces over its view of its tasks (a task.View). A Region is
// the logic and its HTTP handler; a Server runs one with its HTTP, TFTP and
// DHCP services, which is what a region binary, or a program embedding a
// region, runs. It talks to the control plane only through the store: it
// never calls it, and it does not need a route to it.
package region

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	oteltrace "go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/power"
	"github.com/lpmos/lpmos/region/journal"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// DefaultTimeouts are the status timeouts unless Config.Timeouts says
// otherwise: ready 24h, booting 20m, pending_approval 7 days, approved 30m,
// installing 2h (without progress).
func DefaultTimeouts() map[task.Status]time.Duration {
	return map[task.Status]time.Duration{
		task.StatusReady: 24 * time.Hour, task.StatusBooting: 20 * time.Minute,
		task.StatusPendingApproval: 7 * 24 * time.Hour, task.StatusApproved: 30 * time.Minute,
		task.StatusInstalling: 2 * time.Hour,
	}
}

// Config configures a region. RegionID, Store and PublicURL are required.
type Config struct {
	RegionID string
	Store    store.Store
	// PublicURL is how machines reach this region's HTTP server, e.g.
	// "http://10.0.0.1:8081" (it goes into DHCP answers and iPXE scripts).
	// With TLS it is the https URL the agent uses (lpmos.region=, the
	// image URLs of install plans), and BootURL says where the clients
	// that cannot check the region's certificate go.
	PublicURL string
	// BootURL is where iPXE fetches its script and the agent's kernel and
	// initramfs, distro installers their kernel, initrd and answer file,
	// and installed systems phone home: clients that cannot check the
	// region's certificate (Debian's iPXE has no TLS). Default PublicURL.
	BootURL string
	// FirmwareURL is the base of the boot file URL UEFI HTTP boot
	// firmware is handed in DHCP answers (default BootURL). An https URL
	// here needs firmware that trusts the region's certificate (OVMF:
	// the CA through fw_cfg etc/edk2/https/cacerts).
	FirmwareURL string
	// RegionCertSHA256, if set, is the SHA-256 (hex) of the leaf
	// certificate PublicURL serves: agent scripts carry it beside the
	// token (lpmos.region_cert_sha256=), and the agent accepts no other.
	// It needs an https PublicURL. Server sets it from its TLS certificate.
	RegionCertSHA256 string
	// BootDir holds the agent's kernel and initramfs and the OS catalogue
	// (images/<os_type>/<os_version>/); default ./lpmos-data/boot.
	BootDir string
	// AgentKernel and AgentInitrd name the agent's boot files in BootDir
	// (defaults vmlinuz and initramfs.cpio.zst).
	AgentKernel, AgentInitrd string
	// AgentConsoles are the agent kernel's console= values (nil: tty0 then
	// ttyS0); AgentExtraArgs are added to its command line.
	AgentConsoles, AgentExtraArgs []string
	// MaxImageBytes bounds the download of one image of the image
	// catalogue (default DefaultMaxImageBytes); ImageClient downloads
	// them (default: an http.Client that waits at most 30 s for response
	// headers); ImageRetryInterval paces new attempts at downloads that
	// failed for a reason other than their checksum or size (default
	// 1 min).
	MaxImageBytes      int64
	ImageClient        *http.Client
	ImageRetryInterval time.Duration
	// SkipBootFileCheck lets tasks become ready without the agent's boot
	// files (simulated machines that never PXE-boot).
	SkipBootFileCheck bool

	// Timeouts fail a task that stays in a status (without progress)
	// longer than its limit. They override DefaultTimeouts status by
	// status; a zero or negative limit disables that status's timeout.
	Timeouts             map[task.Status]time.Duration
	TimeoutCheckInterval time.Duration // default 5 s

	// HeartbeatTTL is the lease on the heartbeat (default 30 s), renewed
	// every HeartbeatInterval (default TTL/3).
	HeartbeatTTL, HeartbeatInterval time.Duration
	// ProgressInterval: progress of one task is written to the store at
	// most this often; stage changes always (default 1 s).
	ProgressInterval time.Duration
	// ProgressWriteRate bounds the progress writes (other than stage
	// changes) of all the region's installing tasks together, per second
	// on average (default 50): with many installs at once each task's
	// interval grows (1,000 installs: one write every 20 s each), so that
	// percentages cannot crowd the store. Stage changes, completions and
	// failures are written at once whatever the load.
	ProgressWriteRate float64
	// ApprovalWait bounds one approval long-poll (default 30 s).
	ApprovalWait time.Duration
	// Services is reported in capabilities and /health (e.g. "dhcp":
	// "proxy"); the composing binary fills it.
	Services map[string]string
	// UnknownMachines says what DHCP does with machines without an active
	// task: UnknownIgnore (default), UnknownRecord or UnknownDiscover.
	UnknownMachines string
	// IPXEDir holds the iPXE binaries, served over HTTP for UEFI HTTP boot
	// (default lpmos.DefaultIPXEDir, where Debian's ipxe package puts them).
	IPXEDir string
	// Leases, if set, tells which address the region's DHCP server leased
	// to a machine (full mode): agent tokens are then bound to it. Server
	// sets it to its DHCP server. Without it, or for a machine whose DHCP
	// came through a relay, a token is bound to the address that fetched
	// the script.
	Leases LeaseLookup

	// BMCSealer opens the BMC passwords of machine records (the key the
	// control plane sealed them with); nil: the region drives only BMCs
	// without a password.
	BMCSealer *machine.Sealer
	// OpenBMC opens a machine's BMC (default power.Open); PowerRetry
	// bounds the attempts of one power job (default DefaultPowerRetry).
	OpenBMC    func(ctx context.Context, b power.BMC, opts ...power.Option) (power.Driver, error)
	PowerRetry power.RetryPolicy

	// InstanceID names this process among its region's processes
	// (default: the host name and PublicURL). Processes of one region
	// elect a leader (see leader.go); only it answers machines and writes.
	InstanceID string
	// LeaderTTL is the lease on the leadership (default 10 s): a standby
	// takes over within about this long after the leader died.
	LeaderTTL time.Duration
	// JournalDir, if set, is where the region journals the agent calls it
	// cannot write to the store (see offline.go): a region cut off from
	// the store keeps serving its agents in flight, and applies what they
	// said once the store is back. Empty: no journal, agent calls fail
	// while the store is out of reach (the agents retry).
	JournalDir string
	// JournalLimits bound the journal (defaults journal.DefaultMaxRecords
	// and journal.DefaultMaxBytes); a full journal refuses agent calls
	// with 503.
	JournalLimits journal.Limits
	// StoreTimeout bounds an agent call's store write when the region has
	// a journal (default DefaultStoreTimeout): past it, the call is
	// journaled.
	StoreTimeout time.Duration
	// FetchLimits rate-limit boot script fetches per MAC and per source
	// address; zero fields take DefaultFetchLimits. Raise them only for
	// a benchmark or a lab: they protect the region from anyone on the
	// provisioning network.
	FetchLimits FetchLimits
	// Registerer receives the region's metrics (HTTP boot and agent API
	// requests, tasks by status, watch lag, heartbeat latency); nil
	// registers none. Server sets it to its Registry.
	Registerer prometheus.Registerer

	// TracerProvider traces the region's work on its tasks with
	// OpenTelemetry, in each task's trace (task.Metadata.TraceParent):
	// preparing it, serving its boot script, the agent's calls (whose
	// traceparent header the agent sends from its kernel line) and the
	// task moves they make. Default: no tracing.
	TracerProvider oteltrace.TracerProvider

	Logger *slog.Logger
	Now    func() time.Time
}

// LeaseLookup tells which address a DHCP server bound to a machine;
// *dhcp.Server implements it.
type LeaseLookup interface {
	LeasedAddr(mac lpmos.MAC) (net.IP, bool)
}

// Region is a running regional client.
type Region struct {
	cfg Config
	log *slog.Logger
	svc *task.Service
	// tracer starts the region's spans (otel.go).
	tracer oteltrace.Tracer
	// machines writes the inventory: the hardware each machine reported.
	machines  *machine.Service
	powerJobs *powerQueue
	// rules are the auto-approval rules, applied at hardware reports.
	rules   *rule.View
	actor   string
	tasks   *task.View // the region's active tasks
	tokens  *tokens
	catalog *Catalogue
	// images keeps the copies of the image catalogue's images.
	images *images

	endedTasks *endedTasks
	// toPrepare queues new tasks for the preparers (see prepareLoop), so
	// that the watch that finds them never waits on the store.
	toPrepare chan *task.Task
	// preparing holds the IDs of tasks queued or being prepared, so a
	// task is queued once however many paths find it pending.
	prepMu    sync.Mutex
	preparing map[string]struct{}
	// storeAttempts bounds retry's attempts (storeAttempts; tests lower
	// it), staleAfter is stalePending (tests shorten it).
	storeAttempts int
	staleAfter    time.Duration
	// peers are the URLs of the region's other processes (announce).
	peers atomic.Pointer[[]string]

	progressMu sync.Mutex
	progress   map[string]*progressState

	lastSeenMu   sync.Mutex
	lastSeen     map[lpmos.MAC]time.Time
	discoveredAt map[lpmos.MAC]time.Time

	// trace keeps the machines' boot traces (trace.go); addrs maps
	// client addresses back to machines for it.
	trace *trace.Recorder
	addrs addrBook

	fetches *fetchLimits
	// agentScripts caches rendered agent scripts (scriptcache.go).
	agentScripts agentScripts
	inventory    *inventory
	refusals     refusals
	relays       relays

	handler http.Handler
	metrics *metrics

	lead *leadership
	// reloadLeases, set by Server before Run, reads the DHCP leases its
	// predecessor saved when this process starts leading.
	reloadLeases func(context.Context) error
	// leasesLoaded says the current term's leader has read its
	// predecessor's DHCP leases (reloadLeases returned): DHCP answers
	// only then (DHCPActive).
	leasesLoaded atomic.Bool
	// off is the journal of agent calls the store did not take.
	off *offline
	// becameLeader wakes leaderLoop, and hbWake the heartbeat, when this
	// process starts a term; hbStopped is closed once the heartbeat said
	// goodbye, which the election waits for before it resigns.
	becameLeader, hbWake, hbStopped chan struct{}
	// synced is closed once the view is synced and the first campaign
	// is over (Synced).
	synced chan struct{}

	hbMu          sync.RWMutex
	lastHeartbeat time.Time
	storeOK       bool
}

// New checks the configuration and builds a region; Run starts it.
func New(cfg Config) (*Region, error) {
	if err := lpmos.ValidateRegionID(cfg.RegionID); err != nil {
		return nil, fmt.Errorf("region: %w", err)
	}
	if cfg.Store == nil {
		return nil, errors.New("region: a store is required")
	}
	if cfg.PublicURL == "" {
		return nil, errors.New("region: the public URL machines use to reach it is required")
	}
	cfg.BootURL = cmp.Or(cfg.BootURL, cfg.PublicURL)
	cfg.FirmwareURL = cmp.Or(cfg.FirmwareURL, cfg.BootURL)
	if cfg.RegionCertSHA256 != "" && !strings.HasPrefix(cfg.PublicURL, "https://") {
		return nil, fmt.Errorf("region: public URL %q: a certificate pin needs an https URL", cfg.PublicURL)
	}
	if cfg.BootDir == "" {
		cfg.BootDir = filepath.Join("lpmos-data", "boot")
	}
	if cfg.AgentKernel == "" {
		cfg.AgentKernel = "vmlinuz"
	}
	if cfg.AgentInitrd == "" {
		cfg.AgentInitrd = "initramfs.cpio.zst"
	}
	timeouts := DefaultTimeouts()
	for st, d := range cfg.Timeouts {
		timeouts[st] = d
	}
	cfg.Timeouts = timeouts
	if cfg.TimeoutCheckInterval <= 0 {
		cfg.TimeoutCheckInterval = 5 * time.Second
	}
	if cfg.HeartbeatTTL <= 0 {
		cfg.HeartbeatTTL = 30 * time.Second
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = cfg.HeartbeatTTL / 3
	}
	if cfg.ProgressInterval <= 0 {
		cfg.ProgressInterval = time.Second
	}
	if cfg.ProgressWriteRate <= 0 {
		cfg.ProgressWriteRate = 50
	}
	if cfg.ApprovalWait <= 0 {
		cfg.ApprovalWait = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch cfg.UnknownMachines {
	case "":
		cfg.UnknownMachines = UnknownIgnore
	case UnknownIgnore, UnknownRecord, UnknownDiscover:
	default:
		return nil, fmt.Errorf("region: unknown machines: %q is not %q, %q or %q", cfg.UnknownMachines, UnknownIgnore, UnknownRecord, UnknownDiscover)
	}
	if cfg.IPXEDir == "" {
		cfg.IPXEDir = lpmos.DefaultIPXEDir
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = noop.NewTracerProvider()
	}
	if cfg.OpenBMC == nil {
		cfg.OpenBMC = power.Open
	}
	if cfg.PowerRetry.Attempts == 0 {
		cfg.PowerRetry = DefaultPowerRetry
	}
	if cfg.LeaderTTL <= 0 {
		cfg.LeaderTTL = 10 * time.Second
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = DefaultStoreTimeout
	}
	cfg.FetchLimits = cfg.FetchLimits.or(DefaultFetchLimits())
	if cfg.MaxImageBytes <= 0 {
		cfg.MaxImageBytes = DefaultMaxImageBytes
	}
	if cfg.ImageClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = 30 * time.Second
		cfg.ImageClient = &http.Client{Transport: tr}
	}
	if cfg.ImageRetryInterval <= 0 {
		cfg.ImageRetryInterval = time.Minute
	}
	if cfg.InstanceID == "" {
		host, _ := os.Hostname()
		cfg.InstanceID = host + " " + cfg.PublicURL
	}
	log := cfg.Logger.With("region", cfg.RegionID)
	cat, problems := ScanCatalogue(cfg.BootDir, cfg.BootURL)
	for _, p := range problems {
		log.Warn("OS catalogue entry skipped", "err", p)
	}
	r := &Region{
		cfg: cfg, log: log, actor: "region:" + cfg.RegionID,
		catalog: cat, progress: map[string]*progressState{}, endedTasks: newEndedTasks(),
		lastSeen: map[lpmos.MAC]time.Time{}, discoveredAt: map[lpmos.MAC]time.Time{},
		fetches: newFetchLimits(cfg.FetchLimits), inventory: newInventory(), toPrepare: make(chan *task.Task, prepareQueue), preparing: map[string]struct{}{},
		storeAttempts: storeAttempts, staleAfter: stalePending,
	}
	r.becameLeader, r.hbWake, r.hbStopped = make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{})
	r.synced = make(chan struct{})
	r.lead = newLeadership(cfg.Store, cfg.RegionID, cfg.InstanceID, cfg.LeaderTTL, r.leadershipChanged)
	r.lead.beforeResign = func() {
		select {
		case <-r.hbStopped:
		case <-time.After(5 * time.Second):
		}
	}
	r.images = &images{st: cfg.Store, region: cfg.RegionID, bootDir: cfg.BootDir, bootURL: cfg.BootURL, maxBytes: cfg.MaxImageBytes,
		client: cfg.ImageClient, retry: cfg.ImageRetryInterval, log: log, leading: r.lead.leading, catalog: cat,
		publish: r.wakeHeartbeat, wake: make(chan struct{}, 1),
		have: map[string]osimage.Image{}, states: map[string]task.ImageState{}, final: map[string]bool{}}
	r.tracer = cfg.TracerProvider.Tracer(TracerName)
	r.svc = task.NewService(cfg.Store, task.Config{Logger: log, Now: cfg.Now, Fence: r.lead, TracerProvider: cfg.TracerProvider})
	r.machines = machine.NewService(cfg.Store, machine.Config{Sealer: cfg.BMCSealer, Now: cfg.Now, Fence: r.lead, Logger: log})
	r.powerJobs = newPowerQueue()
	r.rules = rule.NewView(cfg.Store, log)
	r.tasks = task.NewView(r.svc, task.ViewConfig{
		Region: cfg.RegionID, ActiveOnly: true, Logger: log,
		OnFill: r.tasksListed, OnChange: r.taskChanged,
	})
	r.tokens = &tokens{st: cfg.Store, now: cfg.Now, fence: r.lead.Compares}
	r.tokens.offline = r.journaling
	r.trace = trace.New(trace.Config{Store: cfg.Store, Region: cfg.RegionID, Leading: r.lead.leading,
		Fence: r.lead.Compares, Logger: log, Now: cfg.Now})
	mux := http.NewServeMux()
	r.agentRoutes(mux)
	if err := r.bootRoutes(mux); err != nil {
		return nil, fmt.Errorf("region: %w", err)
	}
	off, err := openJournal(cfg.JournalDir, cfg.JournalLimits)
	if err != nil {
		return nil, fmt.Errorf("region: %w", err)
	}
	r.off = off
	if off.j != nil {
		r.tokens.readTimeout = cfg.StoreTimeout
	}
	r.metrics = newMetrics(r, cfg.Registerer)
	r.handler = r.metrics.instrument(mux)
	return r, nil
}

// PublicURL is how machines reach the region.
func (r *Region) PublicURL() string { return r.cfg.PublicURL }

// BootURL is where iPXE fetches its script (PublicURL unless the region
// serves TLS).
func (r *Region) BootURL() string { return r.cfg.BootURL }

// Catalogue is what the region can install.
func (r *Region) Catalogue() *Catalogue { return r.catalog }

// Synced is closed once the region knows its tasks (its first read of the
// store after Run started). Before that, boot scripts and the agent API
// answer 503 with Retry-After, so that a machine talking to a region that
// is just (re)starting retries instead of being told it has no task.
//
// Synced also waits for this process's first campaign for its region's
// leadership: a process that is to lead (the only one of its region)
// answers machines from the moment it is Synced.
func (r *Region) Synced() <-chan struct{} { return r.synced }

// starting answers 503 while the region is not Synced, or while this
// process is not its region's leader (a standby), and reports whether it
// did: machines retry, and reach the leader once it answers at this
// address or the standby took over.
func (r *Region) starting(w http.ResponseWriter) bool {
	select {
	case <-r.synced:
	default:
		w.Header().Set("Retry-After", "1")
		httpjson.WriteError(w, httpjson.Errorf(http.StatusServiceUnavailable, "starting", "the region is starting; retry"))
		return true
	}
	if !r.lead.leading() {
		w.Header().Set("Retry-After", "1")
		httpjson.WriteError(w, httpjson.Errorf(http.StatusServiceUnavailable, agent.CodeStandby, "this region process is a standby; retry"))
		return true
	}
	return false
}

// Leading reports whether this process is its region's leader now: only
// then does it answer machines (DHCP, scripts, agent API) and write.
func (r *Region) Leading() bool { return r.lead.leading() }

// Role is RoleLeader or RoleStandby.
func (r *Region) Role() string {
	if r.Leading() {
		return RoleLeader
	}
	return RoleStandby
}

// InstanceID names this process among its region's processes.
func (r *Region) InstanceID() string { return r.cfg.InstanceID }

// leadershipChanged is the election's hook.
func (r *Region) leadershipChanged(leading bool) {
	if leading {
		r.log.Info("leading the region", "instance", r.cfg.InstanceID)
		if r.reloadLeases != nil {
			// Before the first packet a new leader answers: DHCP answers
			// once this returned (DHCPActive); a client asking meanwhile
			// retransmits.
			if err := r.reloadLeases(context.Background()); err != nil {
				r.log.Warn("read the DHCP leases of the previous leader; serving from this process's table", "err", err)
			}
		}
		r.leasesLoaded.Store(true)
		for _, c := range []chan struct{}{r.becameLeader, r.hbWake, r.images.wake} {
			select {
			case c <- struct{}{}:
			default:
			}
		}
		return
	}
	r.leasesLoaded.Store(false)
	r.log.Warn("no longer leading the region", "instance", r.cfg.InstanceID)
}

// DHCPActive reports whether this process's DHCP server may answer and
// save leases: it leads, and (full mode) it has read the leases its
// predecessor left in the store, so it never answers from a stale table.
func (r *Region) DHCPActive() bool { return r.Leading() && r.leasesLoaded.Load() }

// leaderLoop takes over, at the start of each term, what a standby left
// alone: tasks still pending are prepared.
func (r *Region) leaderLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.becameLeader:
		}
		select {
		case <-r.tasks.Synced():
		case <-ctx.Done():
			return nil
		}
		for _, t := range r.tasks.Tasks() {
			if t.Status == task.StatusPending {
				r.queuePrepare(ctx, t)
			}
		}
		r.powerOnLeading(ctx)
	}
}

// Run watches the region's tasks, heartbeats and enforces timeouts until
// ctx ends; the caller serves Handler (and DHCP/TFTP) alongside, as Server
// does.
func (r *Region) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return r.tasks.Run(ctx) })
	g.Go(func() error { return r.lead.run(ctx) })
	g.Go(func() error { return r.leaderLoop(ctx) })
	g.Go(func() error {
		machine.FollowPowerRequests(ctx, r.cfg.Store, r.cfg.RegionID, r.log, r.powerRequested)
		return nil
	})
	g.Go(func() error { return r.rules.Run(ctx) })
	g.Go(func() error { return r.trace.Run(ctx) })
	for range powerWorkers {
		g.Go(func() error { r.powerLoop(ctx); return nil })
	}
	g.Go(func() error {
		for _, c := range []<-chan struct{}{r.tasks.Synced(), r.rules.Synced(), r.lead.campaigned} {
			select {
			case <-c:
			case <-ctx.Done():
				return nil
			}
		}
		close(r.synced)
		return nil
	})
	g.Go(func() error { return r.heartbeat(ctx) })
	g.Go(func() error { return r.announce(ctx) })
	g.Go(func() error { return r.images.run(ctx) })
	g.Go(func() error { return r.enforceTimeouts(ctx) })
	g.Go(func() error { return r.flushProgressLoop(ctx) })
	g.Go(func() error { return r.replayLoop(ctx) })
	for range preparers {
		g.Go(func() error { r.prepareLoop(ctx); return nil })
	}
	return g.Wait()
}

func (r *Region) checkBootFiles(t *task.Task) error {
	if r.cfg.SkipBootFileCheck {
		return nil
	}
	for _, name := range []string{r.cfg.AgentKernel, r.cfg.AgentInitrd} {
		p := filepath.Join(r.cfg.BootDir, name)
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("agent boot file %s is missing: build it with `go run ./examples/mkinitramfs --out %s`", p, r.cfg.BootDir)
		}
	}
	if _, ok := r.catalog.Lookup(t.Metadata.OSType, t.Metadata.OSVersion); !ok {
		return fmt.Errorf("region %s cannot install %s %s", r.cfg.RegionID, t.Metadata.OSType, t.Metadata.OSVersion)
	}
	return nil
}

// capabilities is what the region publishes.
func (r *Region) capabilities() task.Capabilities {
	return task.Capabilities{
		OS: r.catalog.Offerings(), Images: r.images.snapshot(), Services: r.cfg.Services, RegionURL: r.cfg.PublicURL,
		UpdatedAt: r.cfg.Now().UTC(),
	}
}

// wakeHeartbeat has the heartbeat write the capabilities now.
func (r *Region) wakeHeartbeat() {
	select {
	case r.hbWake <- struct{}{}:
	default:
	}
}

// heartbeat writes the region's client keys: the heartbeat (a timestamp)
// on a lease, so that it vanishes 30 s after the region does and the
// control plane sees it offline; status and capabilities (stamped with the
// heartbeat's time) stay, so that a dead region is still listed. On a
// clean stop it says "offline" at once.
func (r *Region) heartbeat(ctx context.Context) error {
	st := r.cfg.Store
	var lease store.LeaseID
	write := func() error {
		if !r.lead.leading() {
			// A standby writes nothing: it only checks that it
			// reaches the store, for /health.
			if lease != store.NoLease { // a term of ours ended
				_ = st.Revoke(ctx, lease)
				lease = store.NoLease
			}
			_, err := st.Get(ctx, task.RegionLeaderKey(r.cfg.RegionID))
			if errors.Is(err, store.ErrNotFound) {
				err = nil
			}
			if err == nil {
				r.hbMu.Lock()
				r.storeOK = true
				r.hbMu.Unlock()
			}
			return err
		}
		if lease == store.NoLease {
			id, err := st.Grant(ctx, r.cfg.HeartbeatTTL)
			if err != nil {
				return err
			}
			lease = id
		} else if err := st.KeepAliveOnce(ctx, lease); err != nil {
			if errors.Is(err, store.ErrLeaseNotFound) {
				lease = store.NoLease // expired while we were cut off: start over
			}
			return err
		}
		caps, _ := json.Marshal(r.capabilities())
		now := r.cfg.Now().UTC()
		res, err := st.Txn(ctx, store.Txn{If: r.lead.Compares(), Then: []store.Op{
			store.OpPut(task.RegionHeartbeatKey(r.cfg.RegionID), []byte(now.Format(time.RFC3339Nano)), store.WithLease(lease)),
			// Only the heartbeat is on the lease: a region that dies
			// stays listed, offline, with what it last said it can do
			// (capabilities carry the time of the last heartbeat).
			store.OpPut(task.RegionStatusKey(r.cfg.RegionID), []byte(task.RegionOnline)),
			store.OpPut(task.RegionCapabilitiesKey(r.cfg.RegionID), caps),
		}})
		if err == nil && !res.Succeeded {
			return nil // deposed since: the election notices
		}
		if err == nil {
			r.hbMu.Lock()
			r.lastHeartbeat, r.storeOK = now, true
			r.hbMu.Unlock()
		}
		return err
	}
	tick := time.NewTicker(r.cfg.HeartbeatInterval)
	defer tick.Stop()
	for {
		start := time.Now()
		err := write()
		r.metrics.observeHeartbeat(time.Since(start))
		if err != nil && ctx.Err() == nil {
			r.hbMu.Lock()
			r.storeOK = false
			r.hbMu.Unlock()
			r.log.Warn("heartbeat failed", "err", err)
		}
		select {
		case <-tick.C:
		case <-r.hbWake:
		case <-ctx.Done():
			// Say goodbye with a fresh deadline: ctx is already done.
			// Only a leader does, before it resigns (see Run); a
			// standby that takes over says online again.
			defer close(r.hbStopped)
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			defer cancel()
			if lease != store.NoLease {
				_ = st.Revoke(sctx, lease)
			}
			if r.lead.leading() {
				_, _ = st.Txn(sctx, store.Txn{If: r.lead.Compares(), Then: []store.Op{
					store.OpPut(task.RegionStatusKey(r.cfg.RegionID), []byte(task.RegionOffline))}})
			}
			return nil
		}
	}
}

// Handler serves the agent API, /health, the iPXE scripts and the boot
// files.
func (r *Region) Handler() http.Handler { return r.handler }
