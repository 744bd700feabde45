package cmdutil_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// freeAddr is a loopback address nobody listened on a moment ago.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// served dials addr from src, asks for /health and reports whether an
// answer came; the connection stays open (keep-alive) until the test ends.
func served(t *testing.T, src, addr string) bool {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: region\r\n\r\n"); err != nil {
		return false // refused: closed before the request went out
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false // refused: closed without an answer
	}
	resp.Body.Close()
	return true
}

// A region and a control plane in one process, as allinone runs them. A
// client opening more connections to the region than its caps allow, all
// from one address, gets no more than its share: the rest are closed at
// once. The control plane still answers, and an agent from another
// address still gets its answers from the region.
func TestRegionConnectionFloodLeavesOthersServed(t *testing.T) {
	const maxConns, perSource, flood = 16, 4, 40
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 3)
	started := 0
	run := func(f func() error) {
		started++
		go func() { errs <- f() }()
	}
	t.Cleanup(func() {
		cancel()
		for range started {
			assert.NoError(t, <-errs)
		}
	})
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.DiscardHandler)

	t.Setenv("LPMOS_ADMIN_TOKEN", "0123456789abcdef0123")
	cpCfg := controlplane.Config{Store: st, Logger: log}
	_, err := (&cmdutil.AuthFlags{}).Apply(&cpCfg)
	require.NoError(t, err)
	cp, err := controlplane.New(cpCfg)
	require.NoError(t, err)
	cpAddr := make(chan net.Addr, 1)
	run(func() error { return cp.Run(ctx) })
	run(func() error {
		return cp.ListenAndServe(ctx, controlplane.ServeOptions{Addr: "127.0.0.1:0", Ready: func(a net.Addr) { cpAddr <- a }})
	})

	var rf cmdutil.RegionFlags
	fs := flag.NewFlagSet("region", flag.ContinueOnError)
	rf.Register(fs)
	regionAddr := freeAddr(t)
	require.NoError(t, fs.Parse([]string{"--region-listen", regionAddr, "--region-url", "http://" + regionAddr,
		"--tftp-listen", "", "--boot-dir", t.TempDir()}))
	rcfg, err := rf.ServerConfig(st, log)
	require.NoError(t, err)
	rcfg.Region.SkipBootFileCheck = true
	// Held connections stay open for the whole test.
	rcfg.HTTPLimits = region.HTTPLimits{MaxConns: maxConns, MaxConnsPerSource: perSource,
		ReadHeaderTimeout: time.Minute, IdleTimeout: time.Minute}
	rs, err := region.NewServer(rcfg)
	require.NoError(t, err)
	run(func() error { return rs.Run(ctx) })
	select { // it listens before the region starts, so synced means serving
	case <-rs.Region().Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("the region never synced with its store")
	}
	require.True(t, served(t, "127.0.0.3", regionAddr), "the region serves before the flood")

	// The flood: more connections than both caps, from 127.0.0.2.
	got := 0
	for range flood {
		if served(t, "127.0.0.2", regionAddr) {
			got++
		}
	}
	assert.Equal(t, perSource, got, "the flooding address is served up to its cap")
	assert.False(t, served(t, "127.0.0.2", regionAddr), "and still refused while it holds its connections")

	// The control plane still answers.
	resp, err := http.Get(fmt.Sprintf("http://%s/healthz", <-cpAddr))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// An agent from 127.0.0.1 boots and reports as usual.
	const mac = "52:54:00:00:00:20"
	tk, err := task.NewService(st, task.Config{}).Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac,
		OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	var token string
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + regionAddr + "/boot/" + mac + ".ipxe")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		script, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`lpmos\.token=([0-9a-f]+)`).FindSubmatch(script)
		if m != nil {
			token = string(m[1])
		}
		return m != nil
	}, 10*time.Second, 20*time.Millisecond, "the agent's boot script never came")
	hw, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	client, err := agent.NewClient(agent.Config{RegionURL: "http://" + regionAddr, MAC: hw,
		TaskID: tk.ID, Token: token, Logger: log})
	require.NoError(t, err)
	defer client.Close()
	rep, err := client.Report(ctx, hardware.Info{CPU: hardware.CPU{Cores: 1}})
	require.NoError(t, err)
	assert.Equal(t, agent.ActionWaitForApproval, rep.NextAction)
}
