// Package etcdtest starts real etcd members inside the test process for the
// tests of any package: a single member behind a store.Store, or a
// multi-member cluster for failover tests. Members run with short raft
// timings and without fsync, on loopback ports chosen at random, with their
// data in the test's temporary directory; everything is stopped by
// t.Cleanup.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

// freePort asks the kernel for an unused loopback port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func memberConfig(t testing.TB, name string) embedded.Config {
	return embedded.Config{
		Dir:       t.TempDir(),
		Name:      name,
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		// Plain members keep the many tests that dial ClientURL() simple;
		// store/etcd tests the authenticated default.
		Insecure:          true,
		PeerURL:           fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		HeartbeatInterval: 50 * time.Millisecond,
		ElectionTimeout:   500 * time.Millisecond,
		UnsafeNoFsync:     true,
		StartTimeout:      60 * time.Second,
	}
}

// Option adjusts a test member.
type Option func(*embedded.Config)

// Durable makes the member fsync like a production etcd (tests skip fsync
// by default; benchmarks that report write rates should not).
func Durable() Option { return func(c *embedded.Config) { c.UnsafeNoFsync = false } }

// NewStore starts a single-member etcd and returns a store connected to it.
func NewStore(t testing.TB, opts ...Option) *etcd.Store {
	t.Helper()
	m := StartMember(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := m.Store(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// StartMember starts a single-member etcd.
func StartMember(t testing.TB, opts ...Option) *embedded.Member {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for attempt := 1; ; attempt++ {
		cfg := memberConfig(t, "solo")
		for _, o := range opts {
			o(&cfg)
		}
		m, err := embedded.Start(ctx, cfg)
		if portTaken(err) && attempt < startAttempts {
			continue
		}
		require.NoError(t, err)
		t.Cleanup(m.Close)
		return m
	}
}

// startAttempts bounds the retries of a member whose port was taken.
const startAttempts = 5

// portTaken reports whether a member failed because one of its ports was
// taken between freePort and the member's listen: the ports come from the
// ephemeral range, which the outgoing connections of every test running
// in parallel (other packages' tests run as other processes) draw from
// too. Then the member is started again on fresh ports.
func portTaken(err error) bool {
	return err != nil && (errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use"))
}

// Cluster is a running multi-member etcd cluster.
type Cluster struct {
	Members []*embedded.Member
}

// Endpoints lists the client URLs of all members.
func (c *Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.Members))
	for _, m := range c.Members {
		out = append(out, m.ClientURL())
	}
	return out
}

// Leader returns the index of the current leader, or -1.
func (c *Cluster) Leader() int {
	for i, m := range c.Members {
		if m != nil && m.IsLeader() {
			return i
		}
	}
	return -1
}

// StartCluster starts an n-member cluster in this process.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return startCluster(t, n, 1)
}

func startCluster(t testing.TB, n, attempt int) *Cluster {
	t.Helper()
	cfgs := make([]embedded.Config, n)
	peers := make([]string, n)
	for i := range cfgs {
		cfgs[i] = memberConfig(t, fmt.Sprintf("m%d", i))
		peers[i] = cfgs[i].Name + "=" + cfgs[i].PeerURL
	}
	c := &Cluster{Members: make([]*embedded.Member, n)}
	errs := make(chan error, n)
	token := fmt.Sprintf("test-%d", freePort(t))
	for i := range cfgs {
		cfgs[i].InitialCluster = strings.Join(peers, ",")
		cfgs[i].ClusterToken = token
		go func(i int) {
			// Members of a new cluster wait for each other: start them
			// concurrently.
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			m, err := embedded.Start(ctx, cfgs[i])
			c.Members[i] = m
			errs <- err
		}(i)
	}
	var err error
	for range cfgs {
		if e := <-errs; e != nil && (err == nil || portTaken(e)) {
			err = e
		}
	}
	if err != nil {
		for _, m := range c.Members {
			if m != nil {
				m.Close()
			}
		}
		if portTaken(err) && attempt < startAttempts {
			return startCluster(t, n, attempt+1)
		}
		require.NoError(t, err)
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			if m != nil {
				m.Close()
			}
		}
	})
	return c
}
