//go:build linux

package dhcp

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestListenPacketReceiveBuffer checks that the DHCP socket gets the large
// receive buffer: all of ReceiveBuffer as root (SO_RCVBUFFORCE), else as
// much as net.core.rmem_max allows (SO_RCVBUF). The kernel reports twice
// the granted size.
func TestListenPacketReceiveBuffer(t *testing.T) {
	conn, err := ListenPacket(context.Background(), "", 0)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	var got int
	var gerr error
	require.NoError(t, raw.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
	}))
	require.NoError(t, gerr)

	want := ReceiveBuffer
	if os.Geteuid() != 0 {
		b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
		require.NoError(t, err)
		rmemMax, err := strconv.Atoi(strings.TrimSpace(string(b)))
		require.NoError(t, err)
		want = min(want, rmemMax)
	}
	assert.Equal(t, 2*want, got, "SO_RCVBUF as getsockopt reports it (twice the granted size)")

	// Linux's default, for contrast: what the socket had before.
	def, err := os.ReadFile("/proc/sys/net/core/rmem_default")
	require.NoError(t, err)
	d, err := strconv.Atoi(strings.TrimSpace(string(def)))
	require.NoError(t, err)
	assert.Greater(t, got, 2*d, "larger than the default receive buffer")
}
