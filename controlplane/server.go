package controlplane

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	oteltrace "go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/controlplane/hub"
	"github.com/lpmos/lpmos/controlplane/web"
	"github.com/lpmos/lpmos/controlplane/webhook"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/internal/httpserve"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// Config configures a control plane. Store and at least one way to sign in
// (Auth) are required; everything else has defaults.
type Config struct {
	Store store.Store

	// Auth says who may sign in: tokens, hashed tokens or JWTs. There is
	// no anonymous access. Its clock defaults to Now.
	Auth auth.Config

	// BMCSealer seals the BMC passwords operators give for machines
	// (machine.LoadKeyFile); nil refuses passwords with a clear error.
	// The regions that drive the BMCs need the same key.
	BMCSealer *machine.Sealer

	// Webhooks notify external systems of tasks needing approval,
	// completed and failed. Its Store, ReplicaID, Logger and Registerer
	// are filled in; its clock defaults to Now.
	Webhooks webhook.Config

	// Logger for operations (default slog.Default()); AuditLogger receives
	// one record per mutating API call (default Logger with audit=true).
	Logger      *slog.Logger
	AuditLogger *slog.Logger

	// Registry receives the control plane's metrics and is served at
	// /metrics (default: a new registry of its own).
	Registry *prometheus.Registry

	// MaxBodyBytes caps request bodies (default 64 KiB).
	MaxBodyBytes int64
	// MaxCreateBodyBytes caps the body of a single create (default 1 MiB),
	// which may carry the per-machine configuration: up to 64 KiB of
	// user_data and task.MaxSSHKeys SSH keys, JSON-escaped.
	MaxCreateBodyBytes int64
	// MaxBatchBodyBytes caps the bodies of batch creates and bulk moves
	// (default 4 MiB: about 4 KiB for each of task.MaxBatch items, ten
	// times a typical create request).
	MaxBatchBodyBytes int64
	// RateLimit and RateBurst bound each caller's API requests
	// (default DefaultRateLimit, DefaultRateBurst).
	RateLimit rate.Limit
	RateBurst int
	// SignInFailureLimit and SignInFailureBurst bound failed sign-ins per
	// client address, against token guessing (default 2/s, burst 20).
	SignInFailureLimit rate.Limit
	SignInFailureBurst int

	// TracerProvider traces tasks with OpenTelemetry (task.Config's
	// TracerProvider, unless TaskConfig sets one): each created task is a
	// trace whose context the task record keeps. A traceparent header on
	// an API request makes the task created by it a child of the caller's
	// span (and links the span of a move to it). Default: no tracing.
	TracerProvider oteltrace.TracerProvider

	// TaskConfig is passed to the task service (clock, ID generator); its
	// ValidateOS is replaced by a check of the region's capabilities.
	TaskConfig task.Config

	// Hub tunes the WebSocket hub (logger and registry are filled in).
	Hub hub.Config

	// ReplicaID names this control plane among its replicas (default
	// hostname:pid); it marks webhook deliveries it claimed.
	ReplicaID string

	// Retention, if > 0, deletes tasks that ended (completed, failed,
	// rejected, cancelled) longer ago than this, every PurgeInterval
	// (default 1 h) and once at start. Zero keeps every task forever.
	Retention     time.Duration
	PurgeInterval time.Duration

	// PendingTimeout fails a task still pending this long after its
	// creation, with code "region_unavailable": no process of its region
	// picked it up (the region is down, or was never deployed). Zero takes
	// DefaultPendingTimeout; negative never times out. Checked every
	// PendingCheckInterval (default 1 min) by every replica; each task is
	// failed once (the move requires its status unchanged).
	PendingTimeout       time.Duration
	PendingCheckInterval time.Duration

	// MaxActiveTasks and MaxActiveTasksPerRegion cap the tasks not yet
	// ended (in all, and in one region), so that creates cannot grow the
	// store until etcd's quota stops every write: a create over a cap is
	// answered 409 with code "capacity". Zero takes the default (100,000
	// and 20,000, about 10 KiB each: 1 GiB of etcd's default 2 GiB quota
	// at most); negative means no cap. The count is this replica's view
	// of the tasks, so with several replicas a cap can be passed by the
	// creates in flight at once on the others.
	MaxActiveTasks          int
	MaxActiveTasksPerRegion int

	// MaxAttempts is the most attempts (the first and its retries, by
	// POST /api/v1/tasks/{id}/retry or automatic) a task created here may
	// make (default task.DefaultMaxAttempts, 3). It is fixed in each
	// task's metadata when its first attempt is created, so that a region
	// failing the last one writes its dead-letter record at once. It is
	// TaskConfig.MaxAttempts unless that is set.
	MaxAttempts int

	// AutoRetry retries failed tasks automatically, each failure once
	// across replicas, after AutoRetryBase (default 30 s) doubled per
	// attempt up to AutoRetryCap (default 10 min), the second half of it
	// jitter; failures with a code in NoAutoRetryCodes (nil: the
	// DefaultNoAutoRetryCodes) are left to the operator, as is a machine
	// given a newer task meanwhile and a retry due over an hour ago.
	// Checked every AutoRetryCheckInterval (default 5 s).
	AutoRetry              bool
	AutoRetryBase          time.Duration
	AutoRetryCap           time.Duration
	AutoRetryCheckInterval time.Duration
	NoAutoRetryCodes       []string

	// Now is the clock the control plane decides on time with (retention,
	// audit records, watch lag; default TaskConfig.Now, else time.Now).
	// The task service, Auth and Webhooks use it unless their own
	// configs set a clock.
	Now func() time.Time
}

// Server is one control-plane replica.
type Server struct {
	cfg      Config
	log      *slog.Logger
	audit    *slog.Logger
	svc      *task.Service
	auth     *auth.Authenticator
	view     *task.View
	machines *machine.Service
	mview    *machine.View
	rules    *rule.Service
	images   *osimage.Service
	regions  *regionCache
	dlq      *dlqCache
	hub      *hub.Hub
	notifier *webhook.Notifier
	metrics  *metrics
	limits   *limiters
	handler  http.Handler
}

// New builds a control plane; call Run to start its watches and serve
// Handler.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("controlplane: a store is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.AuditLogger == nil {
		cfg.AuditLogger = cfg.Logger.With("audit", true)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.MaxBatchBodyBytes <= 0 {
		cfg.MaxBatchBodyBytes = 4 << 20
	}
	if cfg.MaxCreateBodyBytes <= 0 {
		cfg.MaxCreateBodyBytes = 1 << 20
	}
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = DefaultRateBurst
	}
	if cfg.SignInFailureLimit <= 0 {
		cfg.SignInFailureLimit = 2
	}
	if cfg.SignInFailureBurst <= 0 {
		cfg.SignInFailureBurst = 20
	}
	if cfg.PendingTimeout == 0 {
		cfg.PendingTimeout = DefaultPendingTimeout
	}
	if cfg.MaxActiveTasks == 0 {
		cfg.MaxActiveTasks = DefaultMaxActiveTasks
	}
	if cfg.MaxActiveTasksPerRegion == 0 {
		cfg.MaxActiveTasksPerRegion = DefaultMaxActiveTasksPerRegion
	}
	if cfg.AutoRetryBase <= 0 {
		cfg.AutoRetryBase = DefaultAutoRetryBase
	}
	if cfg.AutoRetryCap <= 0 {
		cfg.AutoRetryCap = DefaultAutoRetryCap
	}
	if cfg.NoAutoRetryCodes == nil {
		cfg.NoAutoRetryCodes = DefaultNoAutoRetryCodes()
	}
	if cfg.MaxAttempts < 0 || cfg.MaxAttempts > task.MaxMaxAttempts {
		return nil, fmt.Errorf("controlplane: max attempts %d is not within 1..%d", cfg.MaxAttempts, task.MaxMaxAttempts)
	}
	if cfg.Now == nil {
		cfg.Now = cfg.TaskConfig.Now
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ac := cfg.Auth
	if ac.Now == nil {
		ac.Now = cfg.Now
	}
	if ac.Logger == nil {
		ac.Logger = cfg.Logger
	}
	if _, err := openAPIJSON(); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	authn, err := auth.New(ac)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, audit: cfg.AuditLogger, auth: authn}
	s.regions = newRegionCache(cfg.Logger)
	s.dlq = newDLQCache(cfg.Logger)
	tc := cfg.TaskConfig
	if tc.MaxAttempts == 0 {
		tc.MaxAttempts = cfg.MaxAttempts
	}
	tc.ValidateOS = s.regions.validateOS
	if tc.Logger == nil {
		tc.Logger = cfg.Logger
	}
	if tc.Now == nil {
		tc.Now = cfg.Now
	}
	if tc.TracerProvider == nil {
		tc.TracerProvider = cfg.TracerProvider
	}
	s.svc = task.NewService(cfg.Store, tc)
	s.machines = machine.NewService(cfg.Store, machine.Config{Sealer: cfg.BMCSealer, Now: cfg.Now, Logger: cfg.Logger})
	s.mview = machine.NewView(cfg.Store, machine.ViewConfig{Logger: cfg.Logger})
	s.rules = rule.NewService(cfg.Store, cfg.Now)
	s.images = osimage.NewService(cfg.Store, cfg.Now)
	// One view of every task serves the lists; its watch also feeds the
	// hub and the notifier, so a replica costs the store one watch,
	// whatever its traffic.
	s.view = task.NewView(s.svc, task.ViewConfig{Logger: cfg.Logger, OnChange: s.taskChanged})
	s.metrics = newMetrics(cfg.Registry, s.view, s.regions, cfg.Store, cfg.Logger)
	s.metrics.registerCaches(cfg.Registry, s.regions, s.dlq)
	hc := cfg.Hub
	hc.Logger, hc.Registerer = cfg.Logger, cfg.Registry
	s.hub = hub.New(hc)
	wc := cfg.Webhooks
	wc.Store, wc.ReplicaID, wc.Logger, wc.Registerer = cfg.Store, cfg.ReplicaID, cfg.Logger, cfg.Registry
	if wc.Now == nil {
		wc.Now = cfg.Now
	}
	s.notifier, err = webhook.New(wc)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s.limits = newLimiters()
	s.handler = s.routes()
	return s, nil
}

// taskChanged is the view's change hook: it runs in the view's watch loop
// and must not block.
func (s *Server) taskChanged(_ context.Context, ch task.Change, t *task.Task) {
	if at := ch.At(); !at.IsZero() {
		s.metrics.watchLag.Set(s.cfg.Now().Sub(at).Seconds())
	}
	if ch.Status.Terminal() && !ch.Deleted {
		s.metrics.ended.WithLabelValues(string(ch.Status)).Inc()
	}
	pub := ch
	if pub.Metadata == nil && t != nil {
		pub.Metadata = &t.Metadata // so the hub can name the region
	}
	s.hub.Publish(pub)
	s.notifier.Handle(ch, t)
}

// tasksSynced reports whether the task view has been filled.
func (s *Server) tasksSynced() bool {
	select {
	case <-s.view.Synced():
		return true
	default:
		return false
	}
}

// Tasks is the task service the server uses.
func (s *Server) Tasks() *task.Service { return s.svc }

// Handler serves the API (and its OpenAPI description at OpenAPIPath),
// /ws, the dashboard, /healthz, /readyz and /metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// Run starts the task, region and dead-letter watches, the hub, the
// notifier, the refresh of the JWKS and, if configured, the purge, the
// pending timeout and the automatic retry, and returns when ctx ends and all of them have
// stopped.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.auth.Run(ctx) })
	g.Go(func() error { return s.view.Run(ctx) })
	g.Go(func() error { return s.mview.Run(ctx) })
	g.Go(func() error { s.regions.run(ctx, s.cfg.Store); return nil })
	g.Go(func() error { s.dlq.run(ctx, s.cfg.Store); return nil })
	g.Go(func() error { return s.hub.Run(ctx) })
	g.Go(func() error { return s.notifier.Run(ctx) })
	if s.cfg.Retention > 0 {
		g.Go(func() error { s.purge(ctx); return nil })
	}
	if s.cfg.PendingTimeout > 0 {
		g.Go(func() error { s.failUnclaimed(ctx); return nil })
	}
	if s.cfg.AutoRetry {
		g.Go(func() error { s.autoRetry(ctx); return nil })
	}
	return g.Wait()
}

// DefaultPendingTimeout is Config.PendingTimeout's default: a region
// prepares its new tasks within a second, so an hour is far past a
// restart or a failover.
const DefaultPendingTimeout = time.Hour

// failUnclaimed fails, every PendingCheckInterval, the tasks still pending
// longer than PendingTimeout after their creation.
func (s *Server) failUnclaimed(ctx context.Context) {
	every := s.cfg.PendingCheckInterval
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.cfg.Now()
		for _, tk := range s.view.Tasks() {
			if tk.Status != task.StatusPending || now.Sub(tk.Metadata.CreatedAt) < s.cfg.PendingTimeout {
				continue
			}
			_, err := s.svc.Fail(ctx, tk.ID, "control-plane", task.ErrorInfo{
				Code: "region_unavailable", Stage: string(task.StatusPending),
				Message: fmt.Sprintf("region %s did not pick the task up within %v", tk.Metadata.RegionID, s.cfg.PendingTimeout),
			}, task.ExpectRevision(tk.Revision))
			switch {
			case err == nil:
				s.log.Warn("task failed: its region never picked it up", "task_id", tk.ID, "region", tk.Metadata.RegionID, "after", s.cfg.PendingTimeout)
			case errors.Is(err, task.ErrConflict), errors.Is(err, task.ErrInvalidTransition), errors.Is(err, task.ErrNotFound):
				// moved or failed meanwhile (another replica, or the region at last)
			case ctx.Err() == nil:
				s.log.Warn("failing an unclaimed task", "task_id", tk.ID, "err", err)
			}
		}
	}
}

// purge deletes ended tasks past Config.Retention until ctx ends, a
// thousand per round (the oldest first) so that one round stays small.
// Replicas may purge at once: each task is deleted once.
func (s *Server) purge(ctx context.Context) {
	every := s.cfg.PurgeInterval
	if every <= 0 {
		every = time.Hour
	}
	for {
		purged, err := s.svc.Purge(ctx, s.cfg.Now().Add(-s.cfg.Retention), 1000)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("purging ended tasks", "purged", len(purged), "err", err)
		case len(purged) > 0:
			s.log.Info("purged ended tasks", "count", len(purged), "retention", s.cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// ServeOptions configure ListenAndServe.
type ServeOptions struct {
	Addr              string
	CertFile, KeyFile string // both set: HTTPS (and WSS) with TLS 1.3
	// Ready, if set, receives the bound address once listening.
	Ready func(addr net.Addr)
	// Limits protect the server from clients holding connections; zero
	// fields take DefaultHTTPLimits.
	Limits HTTPLimits
	// ShutdownTimeout bounds the graceful shutdown once ctx ends
	// (default 10 s).
	ShutdownTimeout time.Duration
}

// HTTPLimits bound what clients can hold of the control plane's HTTP
// server: header, body and idle timeouts, the header size, and the
// connections open at once in total and per source address. A zero field
// takes its value from DefaultHTTPLimits; a negative one disables that
// bound. The body timeout does not apply to WebSockets, which send no
// body.
type HTTPLimits = httpserve.Limits

// DefaultHTTPLimits are the control plane's HTTP limits: 10 s to send
// headers, 30 s to send a body, 2 min idle, 64 KiB of headers and 1024
// connections, with no cap per source address (behind a load balancer
// every client comes from the same one).
func DefaultHTTPLimits() HTTPLimits { return httpserve.Defaults() }

// ListenAndServe serves Handler on opts.Addr until ctx ends, then shuts
// down gracefully (with a fresh deadline: ctx is already done by then).
func (s *Server) ListenAndServe(ctx context.Context, opts ServeOptions) error {
	tlsOn := opts.CertFile != "" && opts.KeyFile != ""
	if (opts.CertFile != "") != (opts.KeyFile != "") {
		return errors.New("--tls-cert and --tls-key must be given together")
	}
	cfg := httpserve.Config{
		Limits:          opts.Limits.Or(DefaultHTTPLimits()),
		ShutdownTimeout: opts.ShutdownTimeout,
		Logger:          s.log,
	}
	if tlsOn {
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS13}
		cfg.CertFile, cfg.KeyFile = opts.CertFile, opts.KeyFile
		if err := s.metrics.tlsServed(opts.CertFile, opts.KeyFile); err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Addr, err)
	}
	if opts.Ready != nil {
		opts.Ready(ln.Addr())
	}
	return httpserve.Serve(ctx, ln, s.handler, cfg)
}

// endpoint is one route of the REST API: the role it needs and the audit
// action of a mutation ("" for reads). The endpoints table is the API's
// list of routes; openapi.yaml documents the same ones (a test holds the
// two together).
type endpoint struct {
	pattern string // method and path, as http.ServeMux takes them
	role    auth.Role
	action  string
	handle  func(*Server, http.ResponseWriter, *http.Request) error
}

var endpoints = []endpoint{
	{"POST /api/v1/tasks", auth.RoleOperator, "task.create", (*Server).createTask},
	{"POST /api/v1/tasks/batch", auth.RoleOperator, "task.batch_create", (*Server).createTasks},
	{"POST /api/v1/tasks/approve", auth.RoleOperator, "task.bulk_approve", (*Server).bulkApprove},
	{"POST /api/v1/tasks/reject", auth.RoleOperator, "task.bulk_reject", (*Server).bulkReject},
	{"POST /api/v1/tasks/cancel", auth.RoleOperator, "task.bulk_cancel", (*Server).bulkCancel},
	{"GET /api/v1/tasks", auth.RoleViewer, "", (*Server).listTasks},
	{"GET /api/v1/tasks/{id}", auth.RoleViewer, "", (*Server).getTask},
	{"PUT /api/v1/tasks/{id}/approve", auth.RoleOperator, "task.approve", (*Server).approveTask},
	{"PUT /api/v1/tasks/{id}/reject", auth.RoleOperator, "task.reject", (*Server).rejectTask},
	{"DELETE /api/v1/tasks/{id}", auth.RoleOperator, "task.cancel", (*Server).cancelTask},
	{"POST /api/v1/tasks/{id}/retry", auth.RoleOperator, "task.retry", (*Server).retryTask},
	{"GET /api/v1/dlq", auth.RoleViewer, "", (*Server).listDLQ},
	{"DELETE /api/v1/dlq/{kind}/{id}", auth.RoleOperator, "dlq.acknowledge", (*Server).ackDLQ},
	{"GET /api/v1/regions", auth.RoleViewer, "", (*Server).listRegions},
	{"DELETE /api/v1/regions/{id}", auth.RoleAdmin, "region.delete", (*Server).deleteRegion},
	{"GET /api/v1/machines", auth.RoleViewer, "", (*Server).listMachines},
	{"POST /api/v1/machines", auth.RoleOperator, "machine.create", (*Server).createMachine},
	{"GET /api/v1/machines/{mac}", auth.RoleViewer, "", (*Server).getMachine},
	{"PATCH /api/v1/machines/{mac}", auth.RoleOperator, "machine.update", (*Server).patchMachine},
	{"DELETE /api/v1/machines/{mac}", auth.RoleOperator, "machine.delete", (*Server).deleteMachine},
	{"POST /api/v1/machines/{mac}/power", auth.RoleOperator, "machine.power", (*Server).powerMachine},
	{"POST /api/v1/machines/{mac}/tasks", auth.RoleOperator, "machine.create_task", (*Server).createMachineTask},
	{"GET /api/v1/machines/{mac}/trace", auth.RoleViewer, "", (*Server).getMachineTrace},
	{"GET /api/v1/rules", auth.RoleViewer, "", (*Server).listRules},
	{"GET /api/v1/rules/{name}", auth.RoleViewer, "", (*Server).getRule},
	// A rule approves machines without a person: admins set them.
	{"PUT /api/v1/rules/{name}", auth.RoleAdmin, "rule.put", (*Server).putRule},
	{"DELETE /api/v1/rules/{name}", auth.RoleAdmin, "rule.delete", (*Server).deleteRule},
	{"GET /api/v1/images", auth.RoleViewer, "", (*Server).listImages},
	{"POST /api/v1/images", auth.RoleAdmin, "image.create", (*Server).createImage},
	{"GET /api/v1/images/{id}", auth.RoleViewer, "", (*Server).getImage},
	{"DELETE /api/v1/images/{id}", auth.RoleAdmin, "image.delete", (*Server).deleteImage},
	{"GET /api/v1/whoami", auth.RoleViewer, "", (*Server).whoami},
}

// endpointPaths routes a request by its path alone to the most specific
// path of the endpoints table (whatever the method), and lists the
// methods each path has: it tells a known path asked with the wrong
// method (405 and Allow) from an unknown path (404), also where a
// wildcard would take the path for another method (GET /tasks/batch is
// not the task "batch").
func endpointPaths() (*http.ServeMux, map[string][]string) {
	paths, allow := http.NewServeMux(), map[string][]string{}
	for _, ep := range endpoints {
		method, path, _ := strings.Cut(ep.pattern, " ")
		if allow[path] == nil {
			paths.Handle(path, http.NotFoundHandler())
		}
		allow[path] = append(allow[path], method)
	}
	return paths, allow
}

// methodNotAllowed answers 405 if the request's path is an endpoint's
// for other methods only, and says whether it did.
func methodNotAllowed(paths *http.ServeMux, allow map[string][]string, w http.ResponseWriter, r *http.Request, matched string) bool {
	_, path := paths.Handler(r)
	if path == "" || path == matched {
		return false
	}
	methods := allow[path]
	if slices.Contains(methods, r.Method) {
		return false
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	httpjson.WriteError(w, httpjson.Errorf(http.StatusMethodNotAllowed, httpjson.CodeMethodNotAllowed,
		"%s %s: this endpoint takes %s", r.Method, r.URL.Path, strings.Join(methods, ", ")))
	return true
}

// routes wires every endpoint with its role and audit action.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	paths, allow := endpointPaths()
	for _, ep := range endpoints {
		_, path, _ := strings.Cut(ep.pattern, " ")
		mux.Handle(ep.pattern, s.guard(ep.role, ep.action, func(w http.ResponseWriter, r *http.Request) {
			if methodNotAllowed(paths, allow, w, r, path) {
				return
			}
			if err := ep.handle(s, w, r); err != nil {
				if e := httpjson.WriteError(w, err); e.Status >= 500 {
					s.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				}
			}
		}))
	}
	// The API's description is public: it says what the API is, never
	// what it holds, and tools read it before they have a token.
	mux.HandleFunc("GET "+OpenAPIPath, serveOpenAPI)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		if methodNotAllowed(paths, allow, w, r, "") {
			return
		}
		httpjson.WriteError(w, httpjson.Errorf(http.StatusNotFound, httpjson.CodeNotFound, "no such API endpoint: %s %s", r.Method, r.URL.Path))
	})
	mux.Handle("GET /ws", s.guard(auth.RoleViewer, "", s.hub.ServeHTTP))
	mux.Handle("GET /metrics", s.guard(auth.RoleViewer, "", s.metrics.handler(s.cfg.Registry).ServeHTTP))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("/", web.Handler())
	return hsts(s.metrics.instrument(traceContext(mux)))
}

// traceContext puts the W3C trace context of a request's traceparent
// header, if it has a valid one, into its context: the spans the request
// starts are then part of the caller's trace.
func traceContext(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if v := r.Header.Get("traceparent"); v != "" {
			if sc := task.ParseTraceParent(v); sc.IsValid() {
				r = r.WithContext(oteltrace.ContextWithRemoteSpanContext(r.Context(), sc))
			}
		}
		h.ServeHTTP(w, r)
	})
}

// guard authenticates, authorises, rate-limits and audits one endpoint.
func (s *Server) guard(role auth.Role, action string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		ip := clientIP(r)
		p, err := s.auth.Authenticate(r.Context(), bearer(r))
		if err != nil {
			// Failed sign-ins are throttled per address against guessing.
			if !s.limits.allow("ip:"+ip, s.cfg.SignInFailureLimit, s.cfg.SignInFailureBurst) {
				httpjson.WriteError(w, httpjson.Errorf(http.StatusTooManyRequests, httpjson.CodeRateLimited, "too many failed sign-ins"))
				return
			}
			httpjson.WriteError(w, errUnauthorized)
			return
		}
		if p.Role < role {
			s.auditLog(r, p, action, r.PathValue("id"), http.StatusForbidden)
			httpjson.WriteError(w, httpjson.Errorf(http.StatusForbidden, httpjson.CodeForbidden, "%s may not do this (needs %s)", p.Role, role))
			return
		}
		if !s.limits.allow("sub:"+p.Subject, s.cfg.RateLimit, s.cfg.RateBurst) {
			w.Header().Set("Retry-After", "1")
			httpjson.WriteError(w, httpjson.Errorf(http.StatusTooManyRequests, httpjson.CodeRateLimited, "too many requests"))
			return
		}
		r = r.WithContext(auth.WithPrincipal(r.Context(), p))
		if action == "" {
			h(w, r)
			return
		}
		note := &auditNote{taskID: r.PathValue("id")}
		r = r.WithContext(context.WithValue(r.Context(), auditNoteKey{}, note))
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r)
		s.auditLog(r, p, action, note.taskID, rec.status)
	})
}

// auditNote is what a handler tells guard's audit record that the request
// did not say: the ID of the task a create made.
type auditNote struct{ taskID string }

type auditNoteKey struct{}

// auditTaskID names the task the request's audit record is about.
func auditTaskID(r *http.Request, id string) {
	if n, ok := r.Context().Value(auditNoteKey{}).(*auditNote); ok {
		n.taskID = id
	}
}

// hsts tells browsers that reached the control plane over TLS to use
// nothing else for a year, so a later plain-HTTP link or a downgrade on
// the network cannot expose a token. It is sent only over TLS, as RFC
// 6797 requires; subdomains are left alone, they are not ours.
func hsts(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			w.Header().Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// errUnauthorized answers every failed sign-in alike.
var errUnauthorized = &httpjson.Error{Status: http.StatusUnauthorized, Code: httpjson.CodeUnauthorized,
	Message: auth.ErrUnauthenticated.Error(), Challenge: `Bearer realm="lpmos"`}

// bearer is the caller's token: from the Authorization header or, for a
// WebSocket handshake without one, from the hub's bearer subprotocol.
func bearer(r *http.Request) string {
	if r.Header.Get("Authorization") != "" {
		return httpjson.BearerToken(r)
	}
	return hub.Token(r)
}

// auditLog writes one audit record: of a request (by guard), or of one
// task a batch or bulk call created or moved (extra then names the call).
func (s *Server) auditLog(r *http.Request, p auth.Principal, action, taskID string, status int, extra ...slog.Attr) {
	if action == "" {
		action = r.Method + " " + r.URL.Path
	}
	attrs := append([]slog.Attr{
		slog.String("actor", p.Subject),
		slog.String("role", p.Role.String()),
		slog.String("action", action),
		slog.String("task_id", taskID),
		slog.Int("status", status),
		slog.String("remote", clientIP(r)),
		slog.Time("at", s.cfg.Now().UTC()),
	}, extra...)
	s.audit.LogAttrs(r.Context(), slog.LevelInfo, "audit", attrs...)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	_, err := s.cfg.Store.Get(ctx, task.ConfigGlobal)
	switch {
	case err != nil && !errors.Is(err, store.ErrNotFound):
		httpjson.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "store unreachable", "error": err.Error()})
	case !s.tasksSynced():
		httpjson.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "task cache not synced yet"})
	default:
		httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}
}

// statusRecorder remembers the status code written, for audit and metrics.
type statusRecorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wroteHeader {
		r.status, r.wroteHeader = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wroteHeader = true
	return r.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Hijack lets the WebSocket upgrade take the connection (gorilla asserts
// http.Hijacker directly); a hijacked request counts as 101.
func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("response writer cannot be hijacked")
	}
	r.status, r.wroteHeader = http.StatusSwitchingProtocols, true
	return h.Hijack()
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// limiters are token buckets per key, pruned when they grow too many.
type limiters struct {
	mu sync.Mutex
	m  map[string]*rate.Limiter
}

const maxLimiters = 10000

func newLimiters() *limiters {
	return &limiters{m: map[string]*rate.Limiter{}}
}

func (l *limiters) allow(key string, limit rate.Limit, burst int) bool {
	l.mu.Lock()
	lim, ok := l.m[key]
	if !ok {
		if len(l.m) >= maxLimiters {
			// Forgetting every bucket is crude but bounded; full buckets
			// are the default for a new caller anyway.
			l.m = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(limit, burst)
		l.m[key] = lim
	}
	l.mu.Unlock()
	return lim.Allow()
}

// ifMatch reads an If-Match revision, if any.
func ifMatch(r *http.Request) ([]task.MoveOption, error) {
	v := strings.Trim(strings.TrimSpace(r.Header.Get("If-Match")), `"`)
	if v == "" {
		return nil, nil
	}
	// Digits only: Sscan read "25abc" as 25, ParseInt takes "+25".
	rev, err := strconv.ParseInt(v, 10, 64)
	if err != nil || rev <= 0 || strings.TrimLeft(v, "0123456789") != "" {
		return nil, httpjson.Errorf(http.StatusBadRequest, httpjson.CodeInvalidRequest, "If-Match must be a task revision")
	}
	return []task.MoveOption{task.ExpectRevision(rev)}, nil
}
