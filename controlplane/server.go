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
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos/controlplane/web"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// Config configures a control plane. Store and at least one way to sign in
// (Tokens, HashedTokens or JWT) are required; everything else has defaults.
type Config struct {
	Store store.Store

	// Tokens, HashedTokens and JWT are the ways callers authenticate.
	// There is no anonymous access.
	Tokens       []StaticToken
	HashedTokens []HashedToken
	JWT          *JWTConfig

	// Webhooks notify external systems of tasks needing approval,
	// completed and failed.
	Webhooks WebhookConfig

	// Logger for operations (default slog.Default()); AuditLogger receives
	// one record per mutating API call (default Logger with audit=true).
	Logger      *slog.Logger
	AuditLogger *slog.Logger

	// Registry receives the control plane's metrics and is served at
	// /metrics (default: a new registry of its own).
	Registry *prometheus.Registry

	// MaxBodyBytes caps request bodies (default 64 KiB).
	MaxBodyBytes int64
	// RateLimit and RateBurst bound each caller's API requests
	// (default 50/s, burst 100).
	RateLimit rate.Limit
	RateBurst int
	// SignInFailureLimit and SignInFailureBurst bound failed sign-ins per
	// client address, against token guessing (default 2/s, burst 20).
	SignInFailureLimit rate.Limit
	SignInFailureBurst int

	// TaskConfig is passed to the task service (clock, ID generator); its
	// ValidateOS is replaced by a check of the region's capabilities.
	TaskConfig task.Config

	// Hub tunes the WebSocket hub (logger and registry are filled in).
	Hub HubConfig

	// ReplicaID names this control plane among its replicas (default
	// hostname:pid); it marks webhook deliveries it claimed.
	ReplicaID string

	// Retention, if > 0, deletes tasks that ended (completed, failed,
	// rejected, cancelled) longer ago than this, every PurgeInterval
	// (default 1 h) and once at start. Zero keeps every task forever.
	Retention     time.Duration
	PurgeInterval time.Duration
}

// Server is one control-plane replica.
type Server struct {
	cfg      Config
	log      *slog.Logger
	audit    *slog.Logger
	svc      *task.Service
	auth     *authenticator
	cache    *taskCache
	regions  *regionCache
	hub      *Hub
	notifier *notifier
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
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = 50
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = 100
	}
	if cfg.SignInFailureLimit <= 0 {
		cfg.SignInFailureLimit = 2
	}
	if cfg.SignInFailureBurst <= 0 {
		cfg.SignInFailureBurst = 20
	}
	if cfg.ReplicaID == "" {
		host, _ := os.Hostname()
		cfg.ReplicaID = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	auth, err := newAuthenticator(cfg)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, audit: cfg.AuditLogger, auth: auth}
	s.regions = newRegionCache(cfg.Logger)
	tc := cfg.TaskConfig
	tc.ValidateOS = s.regions.validateOS
	if tc.Logger == nil {
		tc.Logger = cfg.Logger
	}
	s.svc = task.NewService(cfg.Store, tc)
	s.cache = newTaskCache(s.svc, cfg.Logger)
	s.metrics = newMetrics(cfg.Registry, s.cache)
	hc := cfg.Hub
	hc.Logger, hc.Registerer = cfg.Logger, cfg.Registry
	s.hub = NewHub(hc)
	s.notifier, err = newNotifier(cfg.Webhooks, cfg.Store, cfg.ReplicaID, cfg.Logger, s.metrics)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	s.cache.subscribe(func(ch task.Change, t *task.Task) {
		if ch.Metadata == nil && t != nil {
			ch.Metadata = &t.Metadata // so the hub can name the region
		}
		s.hub.Publish(ch)
	})
	s.cache.subscribe(s.notifier.handle)
	s.limits = newLimiters()
	s.handler = s.routes()
	return s, nil
}

// Tasks is the task service the server uses.
func (s *Server) Tasks() *task.Service { return s.svc }

// Handler serves the API, /ws, the dashboard, /healthz, /readyz and
// /metrics.
func (s *Server) Handler() http.Handler { return s.handler }

// Run starts the task and region watches, the hub and the notifier, and
// returns when ctx ends and all of them have stopped.
func (s *Server) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.cache.run(ctx) })
	g.Go(func() error { s.regions.run(ctx, s.cfg.Store); return nil })
	g.Go(func() error { return s.hub.Run(ctx) })
	g.Go(func() error { return s.notifier.run(ctx) })
	if s.cfg.Retention > 0 {
		g.Go(func() error { s.purge(ctx); return nil })
	}
	return g.Wait()
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
		purged, err := s.svc.Purge(ctx, time.Now().Add(-s.cfg.Retention), 1000)
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
}

// ListenAndServe serves Handler on opts.Addr until ctx ends, then shuts
// down gracefully (with a fresh deadline: ctx is already done by then).
func (s *Server) ListenAndServe(ctx context.Context, opts ServeOptions) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	tlsOn := opts.CertFile != "" && opts.KeyFile != ""
	if (opts.CertFile != "") != (opts.KeyFile != "") {
		return errors.New("--tls-cert and --tls-key must be given together")
	}
	if tlsOn {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS13}
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", opts.Addr, err)
	}
	if opts.Ready != nil {
		opts.Ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() {
		if tlsOn {
			errc <- srv.ServeTLS(ln, opts.CertFile, opts.KeyFile)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	<-errc
	return err
}

// routes wires every endpoint with its role and audit action.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	api := func(pattern string, role Role, action string, h func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, s.guard(role, action, func(w http.ResponseWriter, r *http.Request) {
			if err := h(w, r); err != nil {
				ae := toAPIError(err)
				if ae.Status >= 500 {
					s.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				}
				writeError(w, ae)
			}
		}))
	}
	api("POST /api/v1/tasks", RoleOperator, "task.create", s.createTask)
	api("GET /api/v1/tasks", RoleViewer, "", s.listTasks)
	api("GET /api/v1/tasks/{id}", RoleViewer, "", s.getTask)
	api("PUT /api/v1/tasks/{id}/approve", RoleOperator, "task.approve", s.approveTask)
	api("PUT /api/v1/tasks/{id}/reject", RoleOperator, "task.reject", s.rejectTask)
	api("DELETE /api/v1/tasks/{id}", RoleOperator, "task.cancel", s.cancelTask)
	api("GET /api/v1/regions", RoleViewer, "", s.listRegions)
	api("GET /api/v1/whoami", RoleViewer, "", s.whoami)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, newAPIError(http.StatusNotFound, "not_found", "no such API endpoint: %s %s", r.Method, r.URL.Path))
	})
	mux.Handle("GET /ws", s.guard(RoleViewer, "", s.hub.ServeHTTP))
	mux.Handle("GET /metrics", s.guard(RoleViewer, "", s.metrics.handler(s.cfg.Registry).ServeHTTP))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("/", web.Handler())
	return s.metrics.instrument(mux)
}

// guard authenticates, authorises, rate-limits and audits one endpoint.
func (s *Server) guard(role Role, action string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		ip := clientIP(r)
		p, err := s.auth.authenticate(r)
		if err != nil {
			// Failed sign-ins are throttled per address against guessing.
			if !s.limits.allow("ip:"+ip, s.cfg.SignInFailureLimit, s.cfg.SignInFailureBurst) {
				writeError(w, newAPIError(http.StatusTooManyRequests, "rate_limited", "too many failed sign-ins"))
				return
			}
			writeError(w, newAPIError(http.StatusUnauthorized, "unauthorized", "%v", errUnauthenticated))
			return
		}
		if p.Role < role {
			s.auditLog(r, p, action, http.StatusForbidden)
			writeError(w, newAPIError(http.StatusForbidden, "forbidden", "%s may not do this (needs %s)", p.Role, role))
			return
		}
		if !s.limits.allow("sub:"+p.Subject, s.cfg.RateLimit, s.cfg.RateBurst) {
			w.Header().Set("Retry-After", "1")
			writeError(w, newAPIError(http.StatusTooManyRequests, "rate_limited", "too many requests"))
			return
		}
		r = r.WithContext(WithPrincipal(r.Context(), p))
		if action == "" {
			h(w, r)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r)
		s.auditLog(r, p, action, rec.status)
	})
}

func (s *Server) auditLog(r *http.Request, p Principal, action string, status int) {
	if action == "" {
		action = r.Method + " " + r.URL.Path
	}
	s.audit.LogAttrs(r.Context(), slog.LevelInfo, "audit",
		slog.String("actor", p.Subject),
		slog.String("role", p.Role.String()),
		slog.String("action", action),
		slog.String("task_id", r.PathValue("id")),
		slog.Int("status", status),
		slog.String("remote", clientIP(r)),
		slog.Time("at", time.Now().UTC()))
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	_, err := s.cfg.Store.Get(ctx, task.ConfigGlobal)
	switch {
	case err != nil && !errors.Is(err, store.ErrNotFound):
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "store unreachable", "error": err.Error()})
	case !s.cache.isSynced():
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "task cache not synced yet"})
	default:
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
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
	var rev int64
	if _, err := fmt.Sscan(v, &rev); err != nil || rev <= 0 {
		return nil, newAPIError(http.StatusBadRequest, "invalid_request", "If-Match must be a task revision")
	}
	return []task.MoveOption{task.ExpectRevision(rev)}, nil
}
