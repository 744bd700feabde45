package region_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/testpki"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/task"
)

// tlsServerConfig is serverConfig with HTTPS on a second loopback port:
// the https URL is the agent's (PublicURL), the plain one iPXE's (BootURL).
func tlsServerConfig(t *testing.T, ca *testpki.CA) (region.ServerConfig, testpki.Leaf) {
	t.Helper()
	cfg := serverConfig(t, memStore(t))
	leaf := ca.Issue(t, "region", "127.0.0.1")
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.TLSListener, cfg.TLSCertFile, cfg.TLSKeyFile = tln, leaf.CertFile, leaf.KeyFile
	cfg.Region.BootURL = cfg.Region.PublicURL
	cfg.Region.PublicURL = "https://" + tln.Addr().String()
	return cfg, leaf
}

// kernelLine is the kernel command line of an agent script (what the
// agent reads from /proc/cmdline).
func kernelLine(t *testing.T, script string) string {
	t.Helper()
	for _, l := range strings.Split(script, "\n") {
		if rest, ok := strings.CutPrefix(l, "kernel "); ok {
			_, args, _ := strings.Cut(rest, " ")
			args, _, _ = strings.Cut(args, " || ")
			return args
		}
	}
	t.Fatalf("no kernel line in the script:\n%s", script)
	return ""
}

// A region with a certificate serves its API over TLS; iPXE still fetches
// its script and the agent's files over plain HTTP, and the script
// carries the https URL and the certificate's pin to the agent, which
// then talks to the region over TLS and accepts only that certificate.
func TestServerServesHTTPSAndAgentsPinIt(t *testing.T) {
	ca := testpki.NewCA(t, "lpmos test CA")
	cfg, leaf := tlsServerConfig(t, ca)
	srv := runServer(t, cfg)
	st := cfg.Region.Store
	httpsURL, bootURL := cfg.Region.PublicURL, cfg.Region.BootURL
	pin := agent.CertSHA256(leaf.Cert.Raw)

	// A real TLS client that trusts the CA: TLS 1.2 or later, HTTP/2.
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}, ForceAttemptHTTP2: true}}
	t.Cleanup(trusting.CloseIdleConnections)
	resp, err := trusting.Get(httpsURL + agent.PathHealth)
	require.NoError(t, err)
	var h agent.Health
	require.NoError(t, decodeJSON(resp, &h))
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.GreaterOrEqual(t, resp.TLS.Version, uint16(tls.VersionTLS12))
	assert.Equal(t, "running", h.Services["https"])
	assert.Equal(t, 2, resp.ProtoMajor)

	// TLS 1.1 is refused, and so is a client that does not trust the CA.
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), MaxVersion: tls.VersionTLS11}}}
	_, err = old.Get(httpsURL + agent.PathHealth) //nolint:bodyclose // it fails
	require.Error(t, err, "TLS 1.1")
	_, err = http.Get(httpsURL + agent.PathHealth) //nolint:bodyclose // it fails
	require.ErrorContains(t, err, "certificate", "system roots do not know the test CA")

	// iPXE (no TLS) fetches the script over plain HTTP.
	ctx := context.Background()
	svc := task.NewService(st, task.Config{})
	mac := "52:54:00:00:0f:01"
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	var script string
	require.Eventually(t, func() bool {
		code, body := getText(t, bootURL+"/boot/"+mac+".ipxe")
		script = body
		return code == http.StatusOK && strings.Contains(body, "lpmos.token=")
	}, 10*time.Second, 20*time.Millisecond, "no agent script")
	line := kernelLine(t, script)
	assert.Contains(t, line, "lpmos.region="+httpsURL+" ")
	assert.Contains(t, line, " lpmos.region_cert_sha256="+pin+" ")
	assert.Contains(t, script, "\nkernel "+bootURL+"/boot/files/vmlinuz ", "the kernel comes over plain HTTP")
	assert.Contains(t, script, "\ninitrd --name initramfs.cpio.zst "+bootURL+"/boot/files/initramfs.cpio.zst ")

	// DHCP hands iPXE the plain script URL.
	m, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	d, err := srv.Region().DHCPPolicy().Boot(ctx, dhcp.Request{MAC: m, IsIPXE: true, IsPXE: true, Firmware: lpmos.FirmwareBIOS})
	require.NoError(t, err)
	assert.Equal(t, bootURL+"/boot/"+mac+".ipxe?platform=${platform}", d.BootFile)

	// The real agent, configured from that kernel line, reports over TLS.
	acfg, err := agent.ParseCmdline(line)
	require.NoError(t, err)
	assert.Equal(t, pin, acfg.RegionCertSHA256)
	acfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	client, err := agent.NewClient(acfg)
	require.NoError(t, err)
	t.Cleanup(client.Close)
	_, err = client.Report(ctx, hardware.Info{CPU: hardware.CPU{Cores: 2}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := svc.Get(ctx, tk.ID)
		return err == nil && got.Status == task.StatusPendingApproval
	}, 10*time.Second, 10*time.Millisecond)

	// The install plan's image comes from the https URL, under the
	// agent's pin.
	_, err = svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	appr, err := client.WaitApproval(ctx)
	require.NoError(t, err)
	require.NotNil(t, appr.Plan)
	assert.True(t, strings.HasPrefix(appr.Plan.ImageURL, httpsURL+"/boot/files/"), appr.Plan.ImageURL)
	assert.True(t, strings.HasPrefix(appr.Plan.PhoneHomeURL, bootURL+"/"), "the installed system knows no pin: %s", appr.Plan.PhoneHomeURL)
	pinned := &http.Client{Transport: &http.Transport{TLSClientConfig: agent.PinnedTLSConfig(pin)}}
	img, err := pinned.Get(appr.Plan.ImageURL)
	require.NoError(t, err)
	img.Body.Close()
	assert.Equal(t, http.StatusOK, img.StatusCode)

	// Another certificate (the same CA, so a trusting client would take
	// it) is refused by the pinned agent.
	other := ca.Issue(t, "impostor", "127.0.0.1")
	impostor := httpsImpostor(t, other)
	acfg.RegionURL = impostor
	client2, err := agent.NewClient(acfg)
	require.NoError(t, err)
	t.Cleanup(client2.Close)
	_, err = client2.Report(ctx, hardware.Info{CPU: hardware.CPU{Cores: 2}})
	require.ErrorIs(t, err, agent.ErrCertificatePin)
}

// httpsImpostor serves HTTPS with leaf and answers every request 200.
func httpsImpostor(t *testing.T, leaf testpki.Leaf) string {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(leaf.CertFile, leaf.KeyFile)
	require.NoError(t, err)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ReadHeaderTimeout: time.Second,
		ErrorLog: discardLog()}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + ln.Addr().String()
}

// UEFI firmware offers only RSA and DHE key exchange (OVMF: 0x9f 0x9e 0x6b
// 0x67 0x39 0x33 0x9d 0x9c 0x3d 0x3c 0x35 0x2f): the region accepts RSA
// key exchange with AES-GCM as a last resort, while a client that offers
// ECDHE gets ECDHE.
func TestServerTLSServesFirmwareCipherSuites(t *testing.T) {
	ca := testpki.NewRSACA(t, "lpmos test CA")
	cfg, _ := tlsServerConfig(t, ca)
	runServer(t, cfg)
	url := cfg.Region.PublicURL + agent.PathHealth
	for _, tc := range []struct {
		name   string
		offer  []uint16
		chosen uint16
	}{
		{"as OVMF offers", []uint16{0x9f, 0x9e, 0x6b, 0x67, 0x39, 0x33, tls.TLS_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
			0x3d, tls.TLS_RSA_WITH_AES_128_CBC_SHA256, tls.TLS_RSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA}, tls.TLS_RSA_WITH_AES_128_GCM_SHA256},
		{"ECDHE is preferred", []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(),
				MaxVersion: tls.VersionTLS12, CipherSuites: tc.offer}}}
			defer c.CloseIdleConnections()
			resp, err := c.Get(url)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tls.CipherSuiteName(tc.chosen), tls.CipherSuiteName(resp.TLS.CipherSuite))
		})
	}
}

func TestNewServerTLSConfigErrors(t *testing.T) {
	ca := testpki.NewCA(t, "lpmos test CA")
	tests := []struct {
		name    string
		mod     func(*region.ServerConfig)
		wantErr string
	}{
		{"no key", func(c *region.ServerConfig) { c.TLSKeyFile = "" }, "both a certificate and a key"},
		{"no address", func(c *region.ServerConfig) { c.TLSListener.Close(); c.TLSListener = nil }, "HTTPS needs an address"},
		{"http public URL", func(c *region.ServerConfig) { c.Region.PublicURL = c.Region.BootURL }, "must be https://"},
		{"unreadable certificate", func(c *region.ServerConfig) { c.TLSCertFile = c.TLSKeyFile }, "HTTPS certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := tlsServerConfig(t, ca)
			tt.mod(&cfg)
			_, err := region.NewServer(cfg)
			require.ErrorContains(t, err, tt.wantErr)
			cfg.HTTPListener.Close()
		})
	}
}

func decodeJSON(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }
