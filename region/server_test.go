package region_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/netns"
	"github.com/lpmos/lpmos/ndp"
	"github.com/lpmos/lpmos/pxe"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// serverConfig is a region server on a loopback port of its own, with
// short timings for tests.
func serverConfig(t *testing.T, st store.Store) region.ServerConfig {
	t.Helper()
	bootDir, _ := writeBootDir(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return region.ServerConfig{
		Region: region.Config{
			RegionID: "dc1", Store: st, PublicURL: "http://" + ln.Addr().String(), BootDir: bootDir,
			HeartbeatTTL: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		},
		HTTPListener: ln,
	}
}

// runServer runs a region server until the test ends, then checks that it
// stopped cleanly.
func runServer(t *testing.T, cfg region.ServerConfig) *region.Server {
	t.Helper()
	srv, err := region.NewServer(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done, "Run returns nil once its context ends")
	})
	select {
	case <-srv.Region().Synced():
	case err := <-done:
		t.Fatalf("the region server stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the region never synced with its store")
	}
	return srv
}

func health(t *testing.T, url string) agent.Health {
	t.Helper()
	var h agent.Health
	require.Eventually(t, func() bool {
		resp, err := http.Get(url + agent.PathHealth)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&h) == nil
	}, 10*time.Second, 20*time.Millisecond)
	return h
}

func TestServerServesAndStops(t *testing.T) {
	cfg := serverConfig(t, memStore(t))
	cfg.Region.Services = map[string]string{"custom": "yes"}
	ready := make(chan net.Addr, 1)
	cfg.Ready = func(a net.Addr) { ready <- a }
	srv := runServer(t, cfg)
	assert.Equal(t, cfg.HTTPListener.Addr().String(), (<-ready).String())

	h := health(t, srv.Region().PublicURL())
	assert.Equal(t, map[string]string{"http": "running", "custom": "yes"}, h.Services)
	assert.Equal(t, map[string]string{"custom": "yes"}, cfg.Region.Services, "the caller's map is not changed")
	assert.ErrorContains(t, srv.Run(context.Background()), "called twice")
}

// Every part's failure comes back from Run, and an optional TFTP server
// that cannot start is left out.
func TestServerStartFailures(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer busy.Close()
	noIPXE := filepath.Join(t.TempDir(), "no-ipxe")

	for _, tc := range []struct {
		name string
		edit func(*region.ServerConfig)
		want string // the error Run returns; empty: it runs
	}{
		{"busy HTTP address", func(c *region.ServerConfig) {
			c.HTTPListener.Close()
			c.HTTPListener, c.HTTPAddr = nil, busy.Addr().String()
		}, busy.Addr().String()},
		{"no iPXE binaries for TFTP", func(c *region.ServerConfig) {
			c.TFTP = &pxe.TFTPConfig{Root: noIPXE, Addr: "127.0.0.1:0"}
		}, "TFTP"},
		{"optional TFTP", func(c *region.ServerConfig) {
			c.TFTP = &pxe.TFTPConfig{Root: noIPXE, Addr: "127.0.0.1:0"}
			c.TFTPOptional = true
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := serverConfig(t, memStore(t))
			tc.edit(&cfg)
			if tc.want == "" {
				srv := runServer(t, cfg)
				assert.NotContains(t, health(t, srv.Region().PublicURL()).Services, "tftp")
				return
			}
			srv, err := region.NewServer(cfg)
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			assert.ErrorContains(t, srv.Run(ctx), tc.want)
		})
	}
}

func TestNewServerNeedsAnAddress(t *testing.T) {
	_, err := region.NewServer(region.ServerConfig{Region: region.Config{RegionID: "dc1", Store: memStore(t), PublicURL: "http://x"}})
	assert.ErrorContains(t, err, "HTTP address")
}

// bootAgent creates a task for mac, fetches the machine's boot script as
// iPXE does, and returns an agent with the script's token once its
// hardware report has the task await approval.
func bootAgent(t *testing.T, st store.Store, regionURL, mac string) (*agent.Client, *task.Task) {
	t.Helper()
	ctx := context.Background()
	svc := task.NewService(st, task.Config{})
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	var token string
	require.Eventually(t, func() bool {
		resp, err := http.Get(regionURL + "/boot/" + mac + ".ipxe")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if m := tokenRe.FindStringSubmatch(string(body)); resp.StatusCode == http.StatusOK && m != nil {
			token = m[1]
			return true
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "no boot script with a token")
	m, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	client, err := agent.NewClient(agent.Config{RegionURL: regionURL, MAC: m, TaskID: tk.ID, Token: token,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(client.Close)
	_, err = client.Report(ctx, hardware.Info{CPU: hardware.CPU{Cores: 1}})
	require.NoError(t, err)
	return client, tk
}

// The body timeout does not cut the approval long-poll short: the agent
// waits well past it and still gets the operator's decision.
func TestApprovalLongPollOutlastsBodyTimeout(t *testing.T) {
	const bodyTimeout = 100 * time.Millisecond
	st := memStore(t)
	cfg := serverConfig(t, st)
	cfg.HTTPLimits = region.HTTPLimits{BodyReadTimeout: bodyTimeout}
	cfg.Region.ApprovalWait = time.Minute
	srv := runServer(t, cfg)
	client, tk := bootAgent(t, st, srv.Region().PublicURL(), "52:54:00:00:00:10")

	approved := make(chan error, 1)
	go func() {
		time.Sleep(5 * bodyTimeout)
		_, err := task.NewService(st, task.Config{}).Approve(context.Background(), tk.ID, "ops", "")
		approved <- err
	}()
	resp, err := client.Approval(context.Background(), 30*time.Second)
	require.NoError(t, err)
	assert.True(t, resp.Approved, "%+v", resp)
	require.NoError(t, <-approved)
}

// A body trickled a byte at a time to the agent API is cut off: the
// connection does not stay held for as long as the client likes.
func TestTrickledAgentStatusIsCutOff(t *testing.T) {
	cfg := serverConfig(t, memStore(t))
	cfg.HTTPLimits = region.HTTPLimits{BodyReadTimeout: 300 * time.Millisecond}
	runServer(t, cfg)

	c, err := net.Dial("tcp", cfg.HTTPListener.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	_, err = fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: region\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{", agent.PathStatus)
	require.NoError(t, err)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var answer bytes.Buffer
	_, err = io.Copy(&answer, c)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the region held the connection")
	// The region closed it: after its answer (408, the body being too
	// slow), or with a reset, as the client's bytes kept coming.
	if answer.Len() > 0 {
		assert.Regexp(t, `^HTTP/1.1 408`, answer.String())
	}
}

// The IPv6 RA responder is best effort: on an interface where it cannot
// run, the region warns and serves without it; a bad configuration is
// refused up front.
func TestServerRAIsBestEffort(t *testing.T) {
	cfg := serverConfig(t, memStore(t))
	cfg.RA = &ndp.Config{Interface: "nosuch0"}
	srv := runServer(t, cfg)
	h := health(t, srv.Region().PublicURL())
	assert.NotContains(t, h.Services, "ipv6_ra")
	assert.Equal(t, "running", h.Services["http"])

	cfg = serverConfig(t, memStore(t))
	cfg.RA = &ndp.Config{}
	_, err := region.NewServer(cfg)
	require.ErrorIs(t, err, ndp.ErrInvalidConfig)
}

// On an interface with IPv6 the region runs the responder, reports it as
// a service, and a machine on the link gets its advertisement.
func TestServerRunsRA(t *testing.T) {
	if testing.Short() {
		t.Skip("network namespaces (root); not in -short mode")
	}
	netns.Require(t)
	srvNS, cli := netns.New(t), netns.New(t)
	for _, ns := range []*netns.NS{srvNS, cli} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	srvIf, cliIf := netns.Veth(t, srvNS, "", cli, "")
	for _, ns := range []*netns.NS{srvNS, cli} {
		require.True(t, netns.WaitFor(10*time.Second, func() bool {
			out, _ := ns.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "scope", "link")
			return strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative")
		}), "no usable link-local address in %s", ns)
	}
	var conn *ndp.Conn
	require.NoError(t, srvNS.Do(func() (err error) {
		conn, err = ndp.Listen(context.Background(), srvIf)
		return err
	}))
	cfg := serverConfig(t, memStore(t))
	cfg.RA = &ndp.Config{Conn: conn}
	srv := runServer(t, cfg)
	assert.Equal(t, "running", health(t, srv.Region().PublicURL()).Services["ipv6_ra"])

	if _, err := exec.LookPath("rdisc6"); err != nil {
		t.Fatal("rdisc6 is not installed: run ./scripts/test.sh (see README.md), which installs Debian package ndisc6")
	}
	out, err := cli.Run(context.Background(), "rdisc6", "-1", "-r", "3", "-w", "1000", cliIf)
	require.NoError(t, err, out)
	assert.Contains(t, out, "Router lifetime")
}
