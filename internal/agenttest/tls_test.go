package agenttest_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/sim"
	"github.com/lpmos/lpmos/internal/testpki"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// tlsRegion runs a region server with HTTPS (a certificate of a test CA)
// beside plain HTTP, and returns its boot (http) and public (https) URLs.
func tlsRegion(t *testing.T, bootDir string) (svc *task.Service, bootURL, httpsURL string) {
	t.Helper()
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	leaf := testpki.NewCA(t, "lpmos test CA").Issue(t, "region", "127.0.0.1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	bootURL, httpsURL = "http://"+ln.Addr().String(), "https://"+tln.Addr().String()
	srv, err := region.NewServer(region.ServerConfig{
		Region: region.Config{RegionID: "dc1", Store: st, PublicURL: httpsURL, BootURL: bootURL, BootDir: bootDir,
			HeartbeatTTL: 2 * time.Second, HeartbeatInterval: 200 * time.Millisecond,
			ProgressInterval: 100 * time.Millisecond, ApprovalWait: 5 * time.Second, Logger: quiet},
		HTTPListener: ln, TLSListener: tln, TLSCertFile: leaf.CertFile, TLSKeyFile: leaf.KeyFile,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	select {
	case <-srv.Region().Synced():
	case err := <-done:
		t.Fatalf("the region stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the region never synced")
	}
	return task.NewService(st, task.Config{Logger: quiet}), bootURL, httpsURL
}

func waitFor(t *testing.T, svc *task.Service, id string, want task.Status) *task.Task {
	t.Helper()
	var got *task.Task
	require.Eventually(t, func() bool {
		var err error
		got, err = svc.Get(context.Background(), id)
		require.NoError(t, err)
		return got.Status == want
	}, 20*time.Second, 10*time.Millisecond, "task %s never reached %s", id, want)
	return got
}

// The real agent against a region serving HTTPS: the script comes over
// plain HTTP (as Debian's iPXE fetches it), the agent reports, waits and
// downloads the image over TLS through the pin its kernel line carries,
// and the disk holds the image.
func TestImageInstallOverHTTPS(t *testing.T) {
	raw := rawImage(256<<10 + 7)
	svc, bootURL, httpsURL := tlsRegion(t, bootDir(t, "zst", raw, ""))
	mac := "52:54:00:aa:0f:01"
	tk, err := svc.Create(context.Background(), task.CreateRequest{RegionID: "dc1", TargetMAC: mac,
		OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	var script string
	require.Eventually(t, func() bool {
		resp, err := http.Get(bootURL + "/boot/" + mac + ".ipxe")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		script = string(b)
		return resp.StatusCode == http.StatusOK && strings.Contains(script, "lpmos.token=")
	}, 10*time.Second, 20*time.Millisecond)
	m := kernelLine.FindStringSubmatch(script)
	require.NotNil(t, m, script)
	cfg, err := agent.ParseCmdline("vmlinuz " + m[1])
	require.NoError(t, err)
	require.Equal(t, httpsURL, cfg.RegionURL)
	require.NotEmpty(t, cfg.RegionCertSHA256)
	cfg.Logger, cfg.ApprovalWait = quiet, 2*time.Second

	path, lister := fileDisk(t)
	im := imageInstaller(lister)
	im.HTTPClient = agent.NewHTTPClient(cfg.RegionCertSHA256) // what examples/agent hands its installer
	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": im})
	waitFor(t, svc, tk.ID, task.StatusPendingApproval)
	_, err = svc.Approve(context.Background(), tk.ID, "ops", "")
	require.NoError(t, err)
	require.NoError(t, result(t, res))
	waitFor(t, svc, tk.ID, task.StatusCompleted)
	written, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(raw, written), "the disk holds the image")
}

// A simulated machine (allinone --simulate, load tests) boots like a real
// one against an HTTPS region: script over plain HTTP, then its agent over
// TLS through the script's pin, to a completed install.
func TestSimulatedMachineOverHTTPS(t *testing.T) {
	svc, bootURL, _ := tlsRegion(t, bootDir(t, "raw", rawImage(4096), ""))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mac, err := lpmos.ParseMAC("52:54:00:aa:0f:02")
	require.NoError(t, err)
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac.String(), OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	m := &sim.Machine{MAC: mac, RegionURL: bootURL, Speed: 200, PollInterval: 20 * time.Millisecond, Logger: quiet}
	done := make(chan error, 1)
	go func() { done <- m.RunOnce(ctx) }()
	waitFor(t, svc, tk.ID, task.StatusPendingApproval)
	_, err = svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	require.NoError(t, <-done)
	waitFor(t, svc, tk.ID, task.StatusCompleted)
}
