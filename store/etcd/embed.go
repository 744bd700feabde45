package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

func nopLogger() *zap.Logger { return zap.NewNop() }

// EmbeddedConfig configures an etcd member started inside this process.
// The zero value of every field but Dir is a sensible single-node default.
type EmbeddedConfig struct {
	// Dir holds the member's data (required). Restarting on the same Dir
	// resumes with all data.
	Dir string
	// Name is the member name (default "lpmos").
	Name string
	// ClientURL is where the member serves clients, e.g. etcdctl
	// (default "http://127.0.0.1:2379").
	ClientURL string
	// PeerURL is where the member talks to its peers
	// (default "http://127.0.0.1:2380").
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
	// UnsafeNoFsync skips fsync: only for throwaway test clusters.
	UnsafeNoFsync bool
	// Verbose lets etcd log at info level to stderr; by default etcd's own
	// logs are discarded (its errors still surface through this package).
	Verbose bool
	// StartTimeout bounds the wait for the member to become ready
	// (default 60 s; a member of a new cluster waits for its peers).
	StartTimeout time.Duration
}

// Embedded is a running in-process etcd member.
type Embedded struct {
	cfg       EmbeddedConfig
	e         *embed.Etcd
	clientURL string
	closeOnce sync.Once
}

// StartEmbedded starts an etcd member and waits until it serves clients.
// Close it to stop the member.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded etcd: data directory is required")
	}
	if cfg.Name == "" {
		cfg.Name = "lpmos"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:2379"
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

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = cfg.InitialCluster
	ec.InitialClusterToken = cfg.ClusterToken
	ec.TickMs = uint(cfg.HeartbeatInterval / time.Millisecond)
	ec.ElectionMs = uint(cfg.ElectionTimeout / time.Millisecond)
	ec.AutoCompactionMode = "periodic"
	ec.AutoCompactionRetention = cfg.CompactionRetention.String()
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	ec.Logger = "zap"
	if cfg.Verbose {
		ec.LogLevel = "info"
		ec.LogOutputs = []string{"stderr"}
	} else {
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
		return &Embedded{cfg: cfg, e: e, clientURL: cfg.ClientURL}, nil
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
func (m *Embedded) Config() EmbeddedConfig { return m.cfg }

// ClientURL is where the member serves clients.
func (m *Embedded) ClientURL() string { return m.clientURL }

// IsLeader reports whether this member is the raft leader.
func (m *Embedded) IsLeader() bool { return m.e.Server.Leader() == m.e.Server.MemberID() }

// Err delivers a fatal error of the running member.
func (m *Embedded) Err() <-chan error { return m.e.Err() }

// Store connects a client to this member and returns a Store that owns it.
func (m *Embedded) Store(ctx context.Context) (*Store, error) {
	return Dial(ctx, Config{Endpoints: []string{m.clientURL}})
}

// Close stops the member, waiting for it to shut down.
// It is safe to call more than once.
func (m *Embedded) Close() { m.closeOnce.Do(m.e.Close) }
