// Package embedded runs an etcd member inside the process: LPMOS's
// single-machine default (the all-in-one binary keeps its store here, with
// its data in a directory) and the member the tests start. A Member serves
// clients like any etcd, and Member.Store dials it with package
// store/etcd's client.
//
// The member requires client certificates it generates next to its data
// (EnsurePKI), because the store holds agent token hashes and task state
// that no other local process may read or forge. RestoreSnapshot turns a
// snapshot taken with store/etcd's Store.SaveSnapshot into a data
// directory a member starts from.
//
// This package links etcd's server. Binaries that only dial an external
// cluster import store/etcd alone and stay without it (deps_test.go checks
// that the region, control-plane, agent and lpmosctl binaries do).
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/lpmos/lpmos/store/etcd"
)

// Config configures an etcd member started inside this process.
// The zero value of every field but Dir is a sensible single-node default.
type Config struct {
	// Dir holds the member's data (required). Restarting on the same Dir
	// resumes with all data.
	Dir string
	// Name is the member name (default "lpmos").
	Name string
	// ClientURL is where the member serves clients, e.g. etcdctl
	// (default "https://127.0.0.1:2379"). Clients must present the client
	// certificate of the member's PKI (see PKIDir). An http:// URL on a
	// loopback address is served as https:// (the scheme older command
	// lines used); one on any other address is refused, as the store would
	// then be readable and writable from the network.
	ClientURL string
	// PKIDir holds the CA, server and client certificates the member
	// requires of its clients, generated on first start and reused later
	// (see EnsurePKI). Default: Dir with "-pki" appended, a sibling of the
	// data so etcd never sees foreign files in its own directory.
	PKIDir string
	// Insecure serves clients over plain HTTP without authentication, so
	// every local process can read and write the store. Only for test
	// members in throwaway directories; the client URL must be on loopback.
	Insecure bool
	// PeerURL is where the member talks to its peers
	// (default "http://127.0.0.1:2380"). Peer traffic is not encrypted, so
	// it must stay on a loopback address: the embedded member is meant to
	// run alone (a multi-member cluster on one host is for tests).
	PeerURL string
	// InitialCluster lists all members as "name=peerURL,..."; empty means
	// a single-member cluster of this member.
	InitialCluster string
	// ClusterToken distinguishes clusters sharing a network
	// (default "lpmos").
	ClusterToken string
	// HeartbeatInterval and ElectionTimeout are etcd's raft timings
	// (defaults 100 ms and 1 s). Tests shorten them for fast elections.
	HeartbeatInterval, ElectionTimeout time.Duration
	// CompactionRetention keeps this much history for watches to resume
	// from (default 1 h); older revisions are compacted periodically.
	CompactionRetention time.Duration
	// QuotaBackendBytes is the database size at which the member raises
	// its NOSPACE alarm and refuses every write (default etcd's, 2 GiB).
	// The control plane exports the size and quota (Store.DBSize) so that
	// an alert fires before.
	QuotaBackendBytes int64
	// UnsafeNoFsync skips fsync: only for throwaway test clusters.
	UnsafeNoFsync bool
	// Logger, if set, receives etcd's own logs at warn level and above
	// (info and above with Verbose), with their fields as attributes.
	// Without it they are discarded (unless Verbose), and etcd's errors
	// surface only through this package's.
	Logger *slog.Logger
	// Verbose lets etcd log at info level: to Logger if set, else to
	// stderr in etcd's own format.
	Verbose bool
	// Pprof serves Go's profiler at /debug/pprof/ on the client URL, for
	// benchmarks (as etcd's --enable-pprof).
	Pprof bool
	// StartTimeout bounds the wait for the member to become ready
	// (default 60 s; a member of a new cluster waits for its peers).
	StartTimeout time.Duration
}

// Member is a running in-process etcd member.
type Member struct {
	cfg       Config
	e         *embed.Etcd
	clientURL string
	pki       *etcd.PKI // nil when Insecure
	closeOnce sync.Once
}

// ErrInsecureURL is returned for a client or peer URL that would expose the
// member to the network without TLS.
var ErrInsecureURL = errors.New("embedded etcd: URL not on loopback needs TLS")

// Start starts an etcd member and waits until it serves clients.
// Close it to stop the member.
func Start(ctx context.Context, cfg Config) (*Member, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded etcd: data directory is required")
	}
	if cfg.Name == "" {
		cfg.Name = "lpmos"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "https://127.0.0.1:2379"
		if cfg.Insecure {
			cfg.ClientURL = "http://127.0.0.1:2379"
		}
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	if cfg.ClusterToken == "" {
		cfg.ClusterToken = "lpmos"
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 100 * time.Millisecond
	}
	if cfg.ElectionTimeout <= 0 {
		cfg.ElectionTimeout = 10 * cfg.HeartbeatInterval
	}
	if cfg.CompactionRetention <= 0 {
		cfg.CompactionRetention = time.Hour
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	curl, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL %q: %w", cfg.ClientURL, err)
	}
	purl, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL %q: %w", cfg.PeerURL, err)
	}
	if purl.Scheme != "http" || !isLoopback(purl.Hostname()) {
		return nil, fmt.Errorf("%w: peer URL %q: the embedded member's peer traffic is plain HTTP and must stay on a loopback address", ErrInsecureURL, cfg.PeerURL)
	}
	var pki *etcd.PKI
	switch {
	case curl.Scheme != "http" && curl.Scheme != "https":
		return nil, fmt.Errorf("embedded etcd: client URL %q: scheme must be https (or http on loopback)", cfg.ClientURL)
	case cfg.Insecure && (curl.Scheme != "http" || !isLoopback(curl.Hostname())):
		return nil, fmt.Errorf("%w: client URL %q: an insecure member serves plain HTTP on loopback only", ErrInsecureURL, cfg.ClientURL)
	case cfg.Insecure:
	case curl.Scheme == "http" && !isLoopback(curl.Hostname()):
		return nil, fmt.Errorf("%w: client URL %q would serve the store in clear text to the network: use https://%s", ErrInsecureURL, cfg.ClientURL, curl.Host)
	default:
		curl.Scheme = "https"
		cfg.ClientURL = curl.String()
		if cfg.PKIDir == "" {
			cfg.PKIDir = filepath.Clean(cfg.Dir) + "-pki"
		}
		p, err := EnsurePKI(cfg.PKIDir, curl.Hostname())
		if err != nil {
			return nil, err
		}
		pki = &p
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	if pki != nil {
		ec.ClientTLSInfo = transport.TLSInfo{
			CertFile:       pki.ServerCertFile,
			KeyFile:        pki.ServerKeyFile,
			TrustedCAFile:  pki.CAFile,
			ClientCertAuth: true,
		}
	}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = cfg.InitialCluster
	ec.InitialClusterToken = cfg.ClusterToken
	ec.EnablePprof = cfg.Pprof
	ec.TickMs = uint(cfg.HeartbeatInterval / time.Millisecond)
	ec.ElectionMs = uint(cfg.ElectionTimeout / time.Millisecond)
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	ec.Logger = "zap"
	switch {
	case cfg.Logger != nil:
		min := slog.LevelWarn
		if cfg.Verbose {
			min = slog.LevelInfo
		}
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcd.SlogLogger(cfg.Logger, min))
	case cfg.Verbose:
		ec.LogLevel = "info"
		ec.LogOutputs = []string{"stderr"}
	default:
		ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}

	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.Dir, err)
	}
	t := time.NewTimer(cfg.StartTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return &Member{cfg: cfg, e: e, clientURL: cfg.ClientURL, pki: pki}, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, err)
	case <-t.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after %v", cfg.Dir, cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.Dir, ctx.Err())
	}
}

// Config returns the configuration the member runs with (defaults filled
// in): start it again on the same Dir to restart the member.
func (m *Member) Config() Config { return m.cfg }

// ClientURL is where the member serves clients.
func (m *Member) ClientURL() string { return m.clientURL }

// IsLeader reports whether this member is the raft leader.
func (m *Member) IsLeader() bool { return m.e.Server.Leader() == m.e.Server.MemberID() }

// Err delivers a fatal error of the running member.
func (m *Member) Err() <-chan error { return m.e.Err() }

// PKI returns the certificate files clients of the member need, and false
// for an Insecure member.
func (m *Member) PKI() (etcd.PKI, bool) {
	if m.pki == nil {
		return etcd.PKI{}, false
	}
	return *m.pki, true
}

// Store connects a client to this member, with the member's client
// certificate, and returns a Store that owns it.
func (m *Member) Store(ctx context.Context) (*etcd.Store, error) {
	cfg := etcd.Config{Endpoints: []string{m.clientURL}}
	if m.pki != nil {
		var err error
		if cfg.TLS, err = m.pki.ClientTLS(); err != nil {
			return nil, err
		}
	}
	return etcd.Dial(ctx, cfg)
}

// isLoopback reports whether host (a URL's host name) only ever reaches
// this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Close stops the member, waiting for it to shut down.
// It is safe to call more than once.
func (m *Member) Close() { m.closeOnce.Do(m.e.Close) }
