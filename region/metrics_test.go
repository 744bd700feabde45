package region_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/pin/tftp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/internal/promlint"
	"github.com/lpmos/lpmos/internal/promreg"
	"github.com/lpmos/lpmos/pxe"
)

// The region's /metrics, scraped after real DHCP (ProxyDHCP on loopback
// sockets), TFTP and agent traffic, counts that traffic, needs its token,
// and follows the Prometheus naming conventions.
func TestRegionMetrics(t *testing.T) {
	const token = "metrics-secret"
	st := memStore(t)
	cfg := serverConfig(t, st)
	cfg.MetricsToken = token
	cfg.Registry = promreg.New()
	udp := func() net.PacketConn {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		require.NoError(t, err)
		return c
	}
	dhcpConn, proxyConn := udp(), udp()
	cfg.DHCP = &dhcp.Config{Mode: dhcp.ModeProxy, ServerIP: net.IPv4(127, 0, 0, 1), Conn: dhcpConn, ProxyConn: proxyConn}
	kpxe := bytes.Repeat([]byte("undionly"), 1000)
	tftpConn := udp()
	cfg.TFTP = &pxe.TFTPConfig{Files: fstest.MapFS{"undionly.kpxe": {Data: kpxe}}, Conn: tftpConn}
	srv := runServer(t, cfg)
	url := srv.Region().PublicURL()

	// Agent traffic: a script fetch and a hardware report.
	const mac = "52:54:00:00:00:42"
	bootAgent(t, st, url, mac)

	// DHCP: the machine's iPXE asks the ProxyDHCP on port 4011 and is
	// answered; an unknown machine is ignored; garbage is malformed.
	client := udp()
	defer client.Close()
	packet := func(hw string, mt dhcpv4.MessageType) []byte {
		m, err := net.ParseMAC(hw)
		require.NoError(t, err)
		p, err := dhcpv4.New(dhcpv4.WithHwAddr(m), dhcpv4.WithMessageType(mt),
			dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
			dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")))
		require.NoError(t, err)
		return p.ToBytes()
	}
	_, err := client.WriteTo(packet(mac, dhcpv4.MessageTypeRequest), proxyConn.LocalAddr())
	require.NoError(t, err)
	require.NoError(t, client.SetReadDeadline(time.Now().Add(10*time.Second)))
	buf := make([]byte, 1500)
	n, _, err := client.ReadFrom(buf)
	require.NoError(t, err, "no ProxyDHCP answer")
	ack, err := dhcpv4.FromBytes(buf[:n])
	require.NoError(t, err)
	assert.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	_, err = client.WriteTo(packet("52:54:00:00:00:99", dhcpv4.MessageTypeDiscover), dhcpConn.LocalAddr())
	require.NoError(t, err)
	_, err = client.WriteTo([]byte("not a DHCP packet"), dhcpConn.LocalAddr())
	require.NoError(t, err)

	// TFTP: one whole file and one missing.
	tc, err := tftp.NewClient(tftpConn.LocalAddr().String())
	require.NoError(t, err)
	wt, err := tc.Receive("undionly.kpxe", "octet")
	require.NoError(t, err)
	var got bytes.Buffer
	_, err = wt.WriteTo(&got)
	require.NoError(t, err)
	assert.Equal(t, kpxe, got.Bytes())
	_, err = tc.Receive("missing.efi", "octet")
	assert.Error(t, err)

	scrape := func(tok string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, url+"/metrics", nil)
		require.NoError(t, err)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, _ := scrape("")
	assert.Equal(t, http.StatusUnauthorized, code)
	code, _ = scrape("wrong")
	assert.Equal(t, http.StatusUnauthorized, code)

	// The UDP packets were sent before the scrape but are handled by the
	// servers' workers: wait until all of them are counted.
	var fams map[string]*promlint.Family
	require.Eventually(t, func() bool {
		code, body := scrape(token)
		require.Equal(t, http.StatusOK, code)
		fams, err = promlint.Parse(body)
		require.NoError(t, err)
		// A transfer is counted when the server has the client's last
		// ACK, which may be after the client returned.
		return promlint.Sum(fams, "lpmos_dhcp_packets_total") >= 3 &&
			promlint.Sum(fams, "lpmos_tftp_requests_refused_total", `reason="not_found"`) >= 1 &&
			promlint.Sum(fams, "lpmos_tftp_transfers_total", `result="completed"`) >= 1
	}, 10*time.Second, 20*time.Millisecond, "DHCP and TFTP traffic never counted")

	for _, err := range promlint.Lint(fams, "lpmos_") {
		t.Error(err)
	}
	for _, want := range []struct {
		series string
		min    float64
	}{
		{`go_goroutines`, 1},
		{`process_resident_memory_bytes`, 1},
		{`process_open_fds`, 1},
		{`lpmos_dhcp_packets_total{outcome="answered",region="dc1",type="request"}`, 1},
		{`lpmos_dhcp_packets_total{outcome="policy_ignored",region="dc1",type="discover"}`, 1},
		{`lpmos_dhcp_packets_total{outcome="malformed",region="dc1",type="other"}`, 1},
		{`lpmos_dhcp_replies_total{region="dc1",type="ack"}`, 1},
		{`lpmos_dhcp_decision_duration_seconds_count{region="dc1"}`, 3},
		{`lpmos_tftp_transfers_total{region="dc1",result="completed"}`, 1},
		{`lpmos_tftp_sent_bytes_total{region="dc1"}`, float64(len(kpxe))},
		{`lpmos_region_boot_requests_total{code="200",kind="script",region="dc1"}`, 1},
		{`lpmos_region_boot_sent_bytes_total{kind="script",region="dc1"}`, 100},
		{`lpmos_region_agent_requests_total{code="200",region="dc1",route="POST /api/v1/agent/report"}`, 1},
		{`lpmos_region_tasks{region="dc1",status="pending_approval"}`, 1},
		{`lpmos_region_store_up{region="dc1"}`, 1},
		{`lpmos_region_heartbeat_duration_seconds_count{region="dc1"}`, 1},
	} {
		v, ok := promlint.Value(fams, want.series)
		if assert.True(t, ok, "%s is not exported", want.series) {
			assert.GreaterOrEqual(t, v, want.min, want.series)
		}
	}
	for name := range fams {
		assert.False(t, strings.Contains(name, "pool"), "%s: a proxy-mode server has no pools", name)
	}
	bi := fams["lpmos_build_info"]
	require.NotNil(t, bi)
	assert.Equal(t, 1.0, promlint.Sum(fams, "lpmos_build_info"))
	for series := range bi.Samples {
		assert.Regexp(t, `goversion="go1\.[0-9]+.*",revision=".+",version=".+"`, series)
	}
}
