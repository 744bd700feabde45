package region_test

import (
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/pxe"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// dhcpPacket builds a PXE client's packet (BIOS arch, PXEClient vendor
// class), with iPXE's user class if ipxe is set.
func dhcpPacket(t *testing.T, mt dhcpv4.MessageType, mac lpmos.MAC, ipxe bool) []byte {
	t.Helper()
	p, err := dhcpv4.New(dhcpv4.WithHwAddr(mac.HardwareAddr()), dhcpv4.WithMessageType(mt))
	require.NoError(t, err)
	p.Options[93] = binary.BigEndian.AppendUint16(nil, uint16(lpmos.ArchBIOS))
	p.Options[60] = []byte("PXEClient:Arch:00000:UNDI:002001")
	if ipxe {
		p.Options[77] = []byte("iPXE")
	}
	return p.ToBytes()
}

// The boot trace of real traffic: DHCP packets over UDP (an unknown
// machine ignored, and why; a machine with a task answered with its
// script's URL), a TFTP transfer, the iPXE scripts served, a boot file
// over HTTP, agent API calls and a refused token, all in the store under
// /lpmos/trace/{mac}/dc1, newest last.
func TestBootTraceOfRealTraffic(t *testing.T) {
	curl, err := exec.LookPath("curl")
	require.NoError(t, err, "curl is needed (Debian package curl) for the TFTP transfer")
	st := memStore(t)
	cfg := serverConfig(t, st)
	ctx := context.Background()

	ipxeDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(ipxeDir, "undionly.kpxe"), []byte("ipxe binary"), 0o644))
	cfg.Region.IPXEDir = ipxeDir
	dhcpConn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	proxyConn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.DHCP = &dhcp.Config{Mode: dhcp.ModeProxy, ServerIP: net.IPv4(127, 0, 0, 1), Conn: dhcpConn, ProxyConn: proxyConn}
	tftpConn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.TFTP = &pxe.TFTPConfig{Conn: tftpConn}
	srv := runServer(t, cfg)
	reg, url := srv.Region(), srv.Region().PublicURL()

	known, _ := lpmos.ParseMAC("52:54:00:aa:00:01")
	stranger, _ := lpmos.ParseMAC("52:54:00:aa:00:02")
	svc := task.NewService(st, task.Config{})
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: known.String(), OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)
	var status task.Status
	require.Eventually(t, func() bool {
		got, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		status = got.Status
		return status == task.StatusReady
	}, 15*time.Second, 10*time.Millisecond, "the task never became ready (it is %s)", status)

	client, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	// The stranger's DISCOVER is ignored; the known machine's iPXE asks
	// the proxy port and gets its script's URL back, unicast.
	_, err = client.WriteTo(dhcpPacket(t, dhcpv4.MessageTypeDiscover, stranger, false), dhcpConn.LocalAddr())
	require.NoError(t, err)
	var reply *dhcpv4.DHCPv4
	require.Eventually(t, func() bool { // iPXE retransmits too; the region may still be taking the task in
		_, err = client.WriteTo(dhcpPacket(t, dhcpv4.MessageTypeRequest, known, true), proxyConn.LocalAddr())
		require.NoError(t, err)
		buf := make([]byte, 1500)
		require.NoError(t, client.SetReadDeadline(time.Now().Add(500*time.Millisecond)))
		n, _, err := client.ReadFrom(buf)
		if err != nil {
			return false
		}
		reply, err = dhcpv4.FromBytes(buf[:n])
		return err == nil
	}, 15*time.Second, 10*time.Millisecond, "iPXE got no answer to its REQUEST")
	assert.Equal(t, dhcpv4.MessageTypeAck, reply.MessageType())

	// TFTP from the machine's address (learnt from its DHCP).
	out, err := exec.Command(curl, "-sS", "--max-time", "10", "-o", os.DevNull,
		"tftp://"+tftpConn.LocalAddr().String()+"/undionly.kpxe").CombinedOutput()
	require.NoError(t, err, "%s", out)

	// Scripts, a boot file, the agent.
	code, _ := getText(t, url+"/boot/"+stranger.String()+".ipxe")
	require.Equal(t, http.StatusOK, code)
	code, body := getText(t, url+"/boot/"+known.String()+".ipxe?platform=pcbios")
	require.Equal(t, http.StatusOK, code, body)
	token := tokenRe.FindStringSubmatch(body)
	require.NotNil(t, token, body)
	code, _ = getText(t, url+"/boot/files/vmlinuz")
	require.Equal(t, http.StatusOK, code)
	l, me := &lab{t: t}, peer{c: http.DefaultClient, base: url}
	code, resp := l.callFrom(me, "POST", agent.PathReport, "0123456789abcdef", agent.ReportRequest{MACAddress: known.String()})
	require.Equal(t, http.StatusUnauthorized, code, "%v", resp)
	code, resp = l.callFrom(me, "POST", agent.PathReport, token[1], agent.ReportRequest{MACAddress: known.String(), Hardware: hardware.Info{CPU: hardware.CPU{Cores: 1}}})
	require.Equal(t, http.StatusOK, code, "%v", resp)

	var got []trace.Event
	kinds := func() []trace.Kind {
		var k []trace.Kind
		for _, e := range got {
			k = append(k, e.Kind)
		}
		return k
	}
	require.Eventually(t, func() bool {
		require.NoError(t, reg.FlushTrace(ctx))
		got, err = trace.Read(ctx, st, known)
		require.NoError(t, err)
		return slices.Contains(kinds(), trace.KindAgent) && slices.Contains(kinds(), trace.KindTFTP)
	}, 15*time.Second, 20*time.Millisecond, "the known machine's trace lacks agent or TFTP events: %+v", &got)
	find := func(k trace.Kind, outcome trace.Outcome) trace.Event {
		t.Helper()
		for _, e := range got {
			if e.Kind == k && e.Outcome == outcome {
				return e
			}
		}
		require.Failf(t, "no such event", "%s %s in %+v", k, outcome, got)
		return trace.Event{}
	}
	d := find(trace.KindDHCP, trace.OutcomeOK)
	assert.Equal(t, "REQUEST (port 4011) → ACK "+url+"/boot/"+known.String()+".ipxe?platform=${platform}", d.Message)
	assert.Equal(t, "iPXE", d.Detail["user_class"])
	assert.Equal(t, "PXEClient:Arch:00000:UNDI:002001", d.Detail["vendor_class"])
	assert.Equal(t, "0", d.Detail["arch"])
	assert.Equal(t, "dc1", d.Region)
	tf := find(trace.KindTFTP, trace.OutcomeOK)
	assert.Equal(t, "undionly.kpxe", tf.Detail["file"])
	assert.Equal(t, "11", tf.Detail["bytes"])
	s := find(trace.KindScript, trace.OutcomeOK)
	assert.Equal(t, "agent", s.Detail["script"])
	assert.Equal(t, tk.ID, s.Detail["task_id"])
	assert.Contains(t, s.Reason, "is ready: boot the agent")
	h := find(trace.KindHTTP, trace.OutcomeOK)
	assert.Equal(t, "/boot/files/vmlinuz", h.Detail["file"])
	assert.Equal(t, "6", h.Detail["bytes"])
	refused := find(trace.KindToken, trace.OutcomeRefused)
	assert.Equal(t, "401", refused.Detail["code"])
	a := find(trace.KindAgent, trace.OutcomeOK)
	assert.Equal(t, "POST "+agent.PathReport, a.Detail["route"])
	assert.Equal(t, "200", a.Detail["code"])
	for i := 1; i < len(got); i++ {
		assert.False(t, got[i].Time.Before(got[i-1].Time), "newest last")
	}

	// The stranger: ignored by DHCP, and why; told it has no task.
	require.Eventually(t, func() bool {
		// Firmware retransmits its DISCOVER.
		_, err = client.WriteTo(dhcpPacket(t, dhcpv4.MessageTypeDiscover, stranger, false), dhcpConn.LocalAddr())
		require.NoError(t, err)
		require.NoError(t, reg.FlushTrace(ctx))
		got, err = trace.Read(ctx, st, stranger)
		require.NoError(t, err)
		return slices.Contains(kinds(), trace.KindDHCP) && slices.Contains(kinds(), trace.KindScript)
	}, 15*time.Second, 20*time.Millisecond, "the stranger's trace lacks DHCP or script events: %+v", &got)
	ig := find(trace.KindDHCP, trace.OutcomeIgnored)
	assert.Equal(t, "DISCOVER ignored", ig.Message)
	assert.Equal(t, "no active task for this machine in region dc1 (unknown machines are ignored)", ig.Reason)
	assert.Equal(t, string(dhcp.OutcomePolicyIgnored), ig.Detail["outcome"])
	un := find(trace.KindScript, trace.OutcomeIgnored)
	assert.Equal(t, "unknown-machine", un.Detail["script"])
	assert.Equal(t, "no active task for this machine in region dc1", un.Reason)
	assert.Zero(t, reg.TraceStats().Dropped)
}
