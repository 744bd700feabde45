package pxe

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pin/tftp/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

func TestNewTFTPServerChecksRoot(t *testing.T) {
	empty := t.TempDir()
	file := filepath.Join(empty, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	linkOnly := t.TempDir()
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(linkOnly, "ipxe.efi")))

	tests := []struct {
		name string
		cfg  TFTPConfig
		want []string // substrings of the error
	}{
		{"missing root", TFTPConfig{Root: filepath.Join(empty, "nope")}, []string{"no such file", "Debian package ipxe"}},
		{"root is a file", TFTPConfig{Root: file}, []string{"not a directory"}},
		{"no binaries", TFTPConfig{Root: empty}, []string{"no iPXE binaries", "undionly.kpxe", "Debian package ipxe", empty}},
		{"only a link out of the root", TFTPConfig{Root: linkOnly}, []string{"no iPXE binaries"}},
		{"empty Files", TFTPConfig{Files: fstest.MapFS{"x": {}}}, []string{"no iPXE binaries", "apt-get install ipxe"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Addr = "127.0.0.1:0"
			tt.cfg.Logger = quietLogger(t)
			_, err := NewTFTPServer(tt.cfg)
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}

	t.Run("busy port", func(t *testing.T) {
		root, _ := testRoot(t)
		s, addr := startTFTP(t, TFTPConfig{Root: root})
		_ = s
		_, err := NewTFTPServer(TFTPConfig{Root: root, Addr: addr, Logger: quietLogger(t)})
		require.ErrorContains(t, err, "address already in use")
	})
	t.Run("close without serve", func(t *testing.T) {
		root, _ := testRoot(t)
		s, err := NewTFTPServer(TFTPConfig{Root: root, Addr: "127.0.0.1:0", Logger: quietLogger(t)})
		require.NoError(t, err)
		require.NoError(t, s.Close())
		require.Error(t, s.Serve(context.Background()))
	})
}

func TestTFTPOptionNegotiation(t *testing.T) {
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root, MaxWindowSize: 16})
	size := strconv.Itoa(sizeExact)

	tests := []struct {
		name     string
		mode     string
		options  []option
		wantOACK []option // nil: no OACK, data at once
	}{
		{"no options", "", nil, nil},
		{"blksize", "", []option{{"blksize", "1024"}}, []option{{"blksize", "1024"}}},
		{"blksize clamped to MaxBlockSize", "", []option{{"blksize", "65464"}}, []option{{"blksize", "1468"}}},
		{"blksize 8 is the minimum", "", []option{{"blksize", "8"}}, []option{{"blksize", "8"}}},
		{"blksize below 8 ignored", "", []option{{"blksize", "7"}}, nil},
		{"tsize", "", []option{{"tsize", "0"}}, []option{{"tsize", size}}},
		{"timeout", "", []option{{"timeout", "3"}}, []option{{"timeout", "3"}}},
		{"timeout out of range ignored", "", []option{{"timeout", "0"}, {"timeout", "256"}}, nil},
		{"windowsize", "", []option{{"windowsize", "8"}}, []option{{"windowsize", "8"}}},
		{"windowsize clamped", "", []option{{"windowsize", "1000"}}, []option{{"windowsize", "16"}}},
		{"windowsize 0 ignored", "", []option{{"windowsize", "0"}}, nil},
		{"unknown option ignored", "", []option{{"multicast", ""}, {"blksize", "1428"}}, []option{{"blksize", "1428"}}},
		{"upper-case names", "OCTET", []option{{"BLKSIZE", "1428"}, {"TSize", "0"}}, []option{{"blksize", "1428"}, {"tsize", size}}},
		{"all, in the client's order", "", []option{{"tsize", "0"}, {"windowsize", "4"}, {"blksize", "1468"}, {"timeout", "2"}},
			[]option{{"tsize", size}, {"windowsize", "4"}, {"blksize", "1468"}, {"timeout", "2"}}},
		{"netascii has no tsize", "netascii", []option{{"tsize", "0"}, {"blksize", "1024"}}, []option{{"blksize", "1024"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tftpGet(addr, "exact.bin", tftpGetOptions{mode: tt.mode, options: tt.options})
			require.NoError(t, err)
			require.Equal(t, -1, res.errCode, res.errMsg)
			assert.Equal(t, tt.wantOACK, res.oack)
			if tt.mode != "netascii" {
				assert.Equal(t, sums["exact.bin"], sha(res.data))
			}
		})
	}
}

func TestTFTPWindowsize(t *testing.T) {
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root, Timeout: 100 * time.Millisecond})

	tests := []struct {
		name    string
		file    string
		blksize int
		window  int
		drop    func(uint64) bool
	}{
		{"window 1", "exact.bin", 1468, 1, nil},
		{"window 8", "exact.bin", 1468, 8, nil},
		{"window 64 big file", "big.img", 1468, 64, nil},
		{"window 16 blksize 512 big file", "big.img", 512, 16, nil},
		{"loss mid-window", "exact.bin", 1468, 8, func(b uint64) bool { return b%37 == 5 }},
		{"loss of a window's first block", "exact.bin", 1024, 8, func(b uint64) bool { return b%8 == 1 && b < 100 }},
		{"loss of the last block", "exact.bin", 1468, 8, func(b uint64) bool { return b == sizeExact/1468+1 }},
		{"loss without window", "tiny.txt", 512, 1, func(b uint64) bool { return b == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tftpGet(addr, tt.file, tftpGetOptions{options: []option{
				{"blksize", strconv.Itoa(tt.blksize)}, {"windowsize", strconv.Itoa(tt.window)}}, drop: tt.drop})
			require.NoError(t, err)
			require.Equal(t, -1, res.errCode, res.errMsg)
			require.Equal(t, sums[tt.file], sha(res.data))
			blocks := uint64(len(res.data)/tt.blksize + 1)
			assert.Equal(t, blocks, res.blocks)
			if tt.drop != nil {
				assert.NotEmpty(t, res.dropped, "the test dropped nothing")
			} else {
				// One ACK per window plus the OACK's is the point of RFC
				// 7440; a loaded machine may drop a few loopback packets,
				// which costs an ACK each, so allow some.
				assert.LessOrEqual(t, res.acks, 2*(int(blocks)/tt.window)+2)
			}
		})
	}
}

// TestTFTPBlockRollover sends more than 65535 blocks, so block numbers wrap
// to 0, with 8-byte blocks to keep the file small.
func TestTFTPBlockRollover(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 8*70000+3)
	for i := range data {
		data[i] = byte(i * 7)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "undionly.kpxe"), data, 0o644))
	_, addr := startTFTP(t, TFTPConfig{Root: dir, Timeout: 200 * time.Millisecond})

	for _, window := range []int{1, 64} {
		t.Run(fmt.Sprintf("window %d", window), func(t *testing.T) {
			res, err := tftpGet(addr, "undionly.kpxe", tftpGetOptions{options: []option{
				{"blksize", "8"}, {"windowsize", strconv.Itoa(window)}},
				drop: func(b uint64) bool { return b == 65535 || b == 65536 || b == 65537 }})
			require.NoError(t, err)
			require.Equal(t, -1, res.errCode, res.errMsg)
			assert.Equal(t, uint64(70001), res.blocks)
			assert.Equal(t, sha(data), sha(res.data))
		})
	}
	t.Run("curl", func(t *testing.T) {
		curl := needTool(t, "curl", "curl")
		out := filepath.Join(t.TempDir(), "out")
		b, err := exec.Command(curl, "-sS", "--max-time", "120", "--tftp-blksize", "8", "-o", out,
			"tftp://"+addr+"/undionly.kpxe").CombinedOutput()
		require.NoError(t, err, string(b))
		assert.Equal(t, sha(data), shaFile(t, out))
	})
}

func TestTFTPRealClients(t *testing.T) {
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root})
	host, port, _ := net.SplitHostPort(addr)

	// The real iPXE binaries, served from the Debian package's directory.
	_, err := os.Stat(lpmos.DefaultIPXEDir)
	require.NoError(t, err, "apt-get install -y ipxe")
	_, ipxeAddr := startTFTP(t, TFTPConfig{Root: lpmos.DefaultIPXEDir})
	ipxeHost, ipxePort, _ := net.SplitHostPort(ipxeAddr)

	type client struct {
		name, tool, pkg string
		args            func(host, port, file, out string) []string
	}
	clients := []client{
		{"curl", "curl", "curl", func(h, p, f, out string) []string {
			return []string{"-sS", "--max-time", "60", "-o", out, "tftp://" + h + ":" + p + "/" + f}
		}},
		{"curl blksize 1468", "curl", "curl", func(h, p, f, out string) []string {
			return []string{"-sS", "--max-time", "60", "--tftp-blksize", "1468", "-o", out, "tftp://" + h + ":" + p + "/" + f}
		}},
		{"atftp blksize 1428 windowsize 8", "atftp", "atftp", func(h, p, f, out string) []string {
			return []string{"--get", "-r", f, "-l", out, "--option", "blksize 1428", "--option", "windowsize 8", h, p}
		}},
		{"atftp tsize", "atftp", "atftp", func(h, p, f, out string) []string {
			return []string{"--get", "-r", f, "-l", out, "--option", "tsize", h, p}
		}},
		{"tftp-hpa", "tftp", "tftp-hpa", func(h, p, f, out string) []string {
			return []string{"-m", "binary", h, p, "-c", "get", f, out}
		}},
	}
	type file struct {
		name, host, port, sum string
	}
	files := []file{
		{"tiny.txt", host, port, sums["tiny.txt"]},
		{"exact.bin", host, port, sums["exact.bin"]},
		{"big.img", host, port, sums["big.img"]},
		{"/sub/dir/vmlinuz", host, port, sums["sub/dir/vmlinuz"]},
		{"undionly.kpxe", ipxeHost, ipxePort, shaFile(t, filepath.Join(lpmos.DefaultIPXEDir, "undionly.kpxe"))},
		{"snponly.efi", ipxeHost, ipxePort, shaFile(t, filepath.Join(lpmos.DefaultIPXEDir, "snponly.efi"))},
	}
	for _, c := range clients {
		for _, f := range files {
			t.Run(c.name+"/"+f.name, func(t *testing.T) {
				tool := needTool(t, c.tool, c.pkg)
				out := filepath.Join(t.TempDir(), "out")
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()
				b, err := exec.CommandContext(ctx, tool, c.args(f.host, f.port, f.name, out)...).CombinedOutput()
				require.NoError(t, err, string(b))
				assert.Equal(t, f.sum, shaFile(t, out), string(b))
			})
		}
	}

	t.Run("tftp-hpa netascii", func(t *testing.T) {
		tool := needTool(t, "tftp", "tftp-hpa")
		out := filepath.Join(t.TempDir(), "out")
		b, err := exec.Command(tool, "-m", "netascii", host, port, "-c", "get", "text/crlf.txt", out).CombinedOutput()
		require.NoError(t, err, string(b))
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		// The client turns CR LF back into LF and CR NUL into CR.
		assert.Equal(t, "line one\nline two\r\nend\n", string(got))
	})

	t.Run("pin/tftp client", func(t *testing.T) {
		c, err := tftp.NewClient(addr)
		require.NoError(t, err)
		c.SetBlockSize(1468)
		c.RequestTSize(true)
		wt, err := c.Receive("big.img", "octet")
		require.NoError(t, err)
		n, ok := wt.(tftp.IncomingTransfer).Size()
		require.True(t, ok, "tsize not negotiated")
		assert.Equal(t, int64(sizeBig), n)
		out := filepath.Join(t.TempDir(), "out")
		f, err := os.Create(out)
		require.NoError(t, err)
		_, err = wt.WriteTo(f)
		require.NoError(t, err)
		require.NoError(t, f.Close())
		assert.Equal(t, sums["big.img"], shaFile(t, out))
	})
}

func TestTFTPRefusals(t *testing.T) {
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root})

	tests := []struct {
		name     string
		file     string
		raw      []byte
		wantCode int
	}{
		{"dot-dot", "../etc/passwd", nil, 2},
		{"rooted dot-dot", "/../../etc/passwd", nil, 2},
		{"encoded slash is no escape", "..%2f..%2fetc%2fpasswd", nil, 2},
		{"dot-dot inside", "a/../../x", nil, 2},
		{"dot-dot after a real dir", "sub/../tiny.txt", nil, 2},
		{"absolute", "/etc/passwd", nil, 1},
		{"backslash", "..\\..\\etc\\passwd", nil, 2},
		{"dotfile", ".hidden", nil, 2},
		{"absolute link out", "escape-abs", nil, 2},
		{"relative link out", "escape-rel", nil, 2},
		{"through a linked dir out", "etcdir/passwd", nil, 2},
		{"directory", "sub", nil, 1},
		{"FIFO", "fifo", nil, 1},
		{"missing", "nope.efi", nil, 1},
		{"empty name", "", nil, 2},
		{"NUL inside the name", "", []byte("\x00\x01tiny.txt\x00../../etc/passwd\x00octet\x00"), 4},
		{"control byte", "tiny\x01.txt", nil, 2},
		{"mail mode", "", []byte("\x00\x01tiny.txt\x00mail\x00"), 4},
		{"write request", "", []byte("\x00\x02upload.bin\x00octet\x00"), 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tftpGet(addr, tt.file, tftpGetOptions{raw: tt.raw})
			require.NoError(t, err)
			assert.Equal(t, tt.wantCode, res.errCode, "message %q", res.errMsg)
			assert.Empty(t, res.data)
			// The server keeps serving.
			ok, err := tftpGet(addr, "/tiny.txt", tftpGetOptions{})
			require.NoError(t, err)
			assert.Equal(t, sums["tiny.txt"], sha(ok.data))
		})
	}

	t.Run("links inside the root are followed", func(t *testing.T) {
		for name, want := range map[string]string{"rel-link": sums["tiny.txt"], "abs-link": sums["sub/dir/vmlinuz"]} {
			res, err := tftpGet(addr, name, tftpGetOptions{})
			require.NoError(t, err)
			assert.Equal(t, want, sha(res.data), name)
		}
	})

	t.Run("curl write", func(t *testing.T) {
		curl := needTool(t, "curl", "curl")
		b, err := exec.Command(curl, "-sS", "--max-time", "10", "-T", filepath.Join(root, "tiny.txt"),
			"tftp://"+addr+"/new.txt").CombinedOutput()
		// curl exits 69, CURLE_TFTP_PERM, on a TFTP access violation.
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, string(b))
		assert.Equal(t, 69, ee.ExitCode(), string(b))
		_, err = os.Stat(filepath.Join(root, "new.txt"))
		assert.ErrorIs(t, err, os.ErrNotExist)
	})
}

// TestTFTPBoundedTransfers holds every transfer slot with clients that never
// acknowledge, checks that the next request is refused with an error
// packet when no request may wait, and that a slot frees up once a stalled
// transfer times out.
func TestTFTPBoundedTransfers(t *testing.T) {
	root, sums := testRoot(t)
	const max = 3
	_, addr := startTFTP(t, TFTPConfig{Root: root, MaxTransfers: max, MaxQueued: -1, Timeout: 100 * time.Millisecond, Retries: 2})
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	require.NoError(t, err)

	var stalled []*net.UDPConn
	for range max {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		defer c.Close()
		_, err = c.WriteToUDP([]byte("\x00\x01big.img\x00octet\x00"), raddr)
		require.NoError(t, err)
		buf := make([]byte, 600)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := c.ReadFromUDP(buf)
		require.NoError(t, err)
		require.Equal(t, opDATA, uint16(buf[1]), "%x", buf[:n])
		stalled = append(stalled, c)
	}

	res, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
	require.NoError(t, err)
	assert.Equal(t, 0, res.errCode)
	assert.Contains(t, res.errMsg, "busy")

	// The stalled transfers give up after (1+Retries) timeouts of 100 ms.
	require.Eventually(t, func() bool {
		res, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
		return err == nil && sha(res.data) == sums["tiny.txt"]
	}, 5*time.Second, 100*time.Millisecond)

	// Each stalled client saw its block 1 retransmitted, Retries times.
	for _, c := range stalled {
		n := 0
		buf := make([]byte, 600)
		for {
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if _, _, err := c.ReadFromUDP(buf); err != nil {
				break
			}
			n++
		}
		assert.Equal(t, 2, n, "retransmissions")
	}
}

// stallTransfer starts a transfer of big.img that never acknowledges, so
// that it holds a slot until it times out, and returns once block 1 came.
func stallTransfer(t *testing.T, addr string) {
	t.Helper()
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	require.NoError(t, err)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = c.WriteToUDP([]byte("\x00\x01big.img\x00octet\x00"), raddr)
	require.NoError(t, err)
	buf := make([]byte, 600)
	require.NoError(t, c.SetReadDeadline(time.Now().Add(5*time.Second)))
	n, _, err := c.ReadFromUDP(buf)
	require.NoError(t, err)
	require.Equal(t, opDATA, uint16(buf[1]), "%x", buf[:n])
}

// TestTFTPQueuedRequests checks that a request beyond MaxTransfers waits
// for a slot and is then served (a PXE ROM gives up at an error packet),
// and that it is refused with "busy" when the queue is full or the wait
// ran out.
func TestTFTPQueuedRequests(t *testing.T) {
	root, sums := testRoot(t)
	t.Run("waits for a slot", func(t *testing.T) {
		// The stalled transfer gives up after (1+Retries) timeouts of 100 ms.
		srv, addr := startTFTP(t, TFTPConfig{Root: root, MaxTransfers: 1, QueueWait: 30 * time.Second,
			Timeout: 100 * time.Millisecond, Retries: 2})
		stallTransfer(t, addr)
		res, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
		require.NoError(t, err)
		assert.Equal(t, -1, res.errCode, res.errMsg)
		assert.Equal(t, sums["tiny.txt"], sha(res.data))
		assert.Zero(t, srv.Stats().Busy)
	})
	t.Run("queue full", func(t *testing.T) {
		srv, addr := startTFTP(t, TFTPConfig{Root: root, MaxTransfers: 1, MaxQueued: 1, QueueWait: 30 * time.Second,
			Timeout: 30 * time.Second})
		stallTransfer(t, addr)
		// The one place in the queue: a request that waits.
		raddr, err := net.ResolveUDPAddr("udp4", addr)
		require.NoError(t, err)
		waiting, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		defer waiting.Close()
		_, err = waiting.WriteToUDP([]byte("\x00\x01tiny.txt\x00octet\x00"), raddr)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			res, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
			return err == nil && res.errCode == 0 && strings.Contains(res.errMsg, "busy")
		}, 10*time.Second, 20*time.Millisecond)
		assert.NotZero(t, srv.Stats().Busy)
	})
	t.Run("wait runs out", func(t *testing.T) {
		srv, addr := startTFTP(t, TFTPConfig{Root: root, MaxTransfers: 1, QueueWait: 200 * time.Millisecond,
			Timeout: 30 * time.Second})
		stallTransfer(t, addr)
		res, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
		require.NoError(t, err)
		assert.Equal(t, 0, res.errCode)
		assert.Contains(t, res.errMsg, "busy")
		assert.Equal(t, uint64(1), srv.Stats().Busy)
	})
}

// TestTFTPDuplicateRequest checks that a repeated RRQ from the same client
// port does not start a second transfer.
func TestTFTPDuplicateRequest(t *testing.T) {
	root, _ := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root, MaxTransfers: 1, Timeout: 5 * time.Second})
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	require.NoError(t, err)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	rrq := []byte("\x00\x01big.img\x00octet\x00blksize\x001024\x00")
	for range 3 {
		_, err = c.WriteToUDP(rrq, raddr)
		require.NoError(t, err)
	}
	var from []string
	buf := make([]byte, 2000)
	for {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, a, err := c.ReadFromUDP(buf)
		if err != nil {
			break
		}
		from = append(from, fmt.Sprintf("%s %x", a, buf[:2]))
		_ = n
	}
	// One OACK, from one transfer port; no "busy" error although the limit
	// is one transfer.
	require.Len(t, from, 1, from)
	assert.Contains(t, from[0], " 0006")
}

// TestTFTPProbeThenRequest plays EDK2: a tsize probe aborted with error 8
// and, at once and from the same port, the real request. The second request
// must be answered without the client having to repeat it, however the
// error and the request race inside the server.
func TestTFTPProbeThenRequest(t *testing.T) {
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root})
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	require.NoError(t, err)
	for i := range 20 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		defer c.Close()
		rrq := []byte("\x00\x01snponly.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00")
		_, err = c.WriteToUDP(rrq, raddr)
		require.NoError(t, err)
		buf := make([]byte, 2000)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDP(buf)
		require.NoError(t, err)
		require.Equal(t, opOACK, uint16(buf[1]), "%q", buf[:n])
		_, err = c.WriteToUDP(errorPacket(errOptionsRefused, "User aborted the transfer"), from)
		require.NoError(t, err)
		_, err = c.WriteToUDP(rrq, raddr)
		require.NoError(t, err)
		// The client does not retransmit: the answer must come within the
		// server's timeout.
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from2, err := c.ReadFromUDP(buf)
		require.NoError(t, err, "round %d: no answer to the request after the probe", i)
		require.Equal(t, "\x00\x06tsize\x00173792\x00blksize\x001468\x00", string(buf[:n]), "round %d", i)
		require.NotEqual(t, from.String(), from2.String(), "a new transfer has a new port")
		// Fetch the file to the end.
		var data []byte
		_, err = c.WriteToUDP(ackPacket(0), from2)
		require.NoError(t, err)
		for {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, _, err := c.ReadFromUDP(buf)
			require.NoError(t, err)
			data = append(data, buf[4:n]...)
			require.Equal(t, opDATA, uint16(buf[1]))
			_, err = c.WriteToUDP(ackPacket(uint16(buf[2])<<8|uint16(buf[3])), from2)
			require.NoError(t, err)
			if n-4 < 1468 {
				break
			}
		}
		require.Equal(t, sums["snponly.efi"], sha(data), "round %d", i)
	}
}

// TestTFTPShutdown ends Serve while transfers are in flight.
func TestTFTPShutdown(t *testing.T) {
	root, _ := testRoot(t)
	s, err := NewTFTPServer(TFTPConfig{Root: root, Addr: "127.0.0.1:0", Logger: quietLogger(t)})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()

	raddr := s.Addr().(*net.UDPAddr)
	for range 5 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		require.NoError(t, err)
		defer c.Close()
		_, err = c.WriteToUDP([]byte("\x00\x01big.img\x00octet\x00"), raddr)
		require.NoError(t, err)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err = c.ReadFromUDP(make([]byte, 600))
		require.NoError(t, err)
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	requireNoServerGoroutines(t)
	// The socket is closed: the port can be bound again.
	c, err := net.ListenPacket("udp4", raddr.String())
	require.NoError(t, err)
	c.Close()
}

// TestTFTPConnSeamAndOverlay serves an Overlay through a socket the test
// opened.
func TestTFTPConnSeamAndOverlay(t *testing.T) {
	root, sums := testRoot(t)
	upper := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(upper, "ipxe.efi"), []byte("copied ipxe.efi"), 0o644))
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	_, addr := startTFTP(t, TFTPConfig{Conn: conn, Files: Overlay(Dir(upper), Dir(root))})
	require.Equal(t, conn.LocalAddr().String(), addr)

	for name, want := range map[string]string{"ipxe.efi": sha([]byte("copied ipxe.efi")), "undionly.kpxe": sums["undionly.kpxe"]} {
		res, err := tftpGet(addr, name, tftpGetOptions{})
		require.NoError(t, err)
		assert.Equal(t, want, sha(res.data), name)
	}
	res, err := tftpGet(addr, "escape-abs", tftpGetOptions{})
	require.NoError(t, err)
	assert.Equal(t, 2, res.errCode)
}

// TestTFTPWildcardAnswersFromRequestAddress listens on 0.0.0.0 and checks
// that the transfer answers from the address the request went to.
func TestTFTPWildcardAnswersFromRequestAddress(t *testing.T) {
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root, Addr: "0.0.0.0:0"})
	_, port, _ := net.SplitHostPort(addr)
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		res, err := tftpGet(ip+":"+port, "tiny.txt", tftpGetOptions{})
		require.NoError(t, err)
		assert.Equal(t, sums["tiny.txt"], sha(res.data))
		assert.Equal(t, ip, res.server.IP.String())
	}
}

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name string
		pkt  string
		want request
		err  bool
	}{
		{"plain", "\x00\x01f\x00octet\x00", request{op: opRRQ, filename: "f", mode: "octet"}, false},
		{"options", "\x00\x01f\x00OCTET\x00BlkSize\x001024\x00tsize\x000\x00",
			request{op: opRRQ, filename: "f", mode: "octet", options: []option{{"blksize", "1024"}, {"tsize", "0"}}}, false},
		{"unpaired option dropped", "\x00\x01f\x00octet\x00blksize\x00", request{op: opRRQ, filename: "f", mode: "octet"}, false},
		{"write", "\x00\x02f\x00octet\x00", request{op: opWRQ, filename: "f", mode: "octet"}, false},
		{"not terminated", "\x00\x01f\x00octet", request{}, true},
		{"no mode", "\x00\x01f\x00", request{}, true},
		{"data packet", "\x00\x03\x00\x01abc", request{}, true},
		{"too short", "\x00", request{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRequest([]byte(tt.pkt))
			if tt.err {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestAckedBlock(t *testing.T) {
	tests := []struct {
		name     string
		base     uint64
		inflight int
		ack      uint16
		want     uint64
		ok       bool
	}{
		{"OACK ack", 1, 1, 0, 0, true},
		{"first block", 1, 1, 1, 1, true},
		{"end of window", 1, 8, 8, 8, true},
		{"mid window", 1, 8, 3, 3, true},
		{"beyond window", 1, 8, 9, 0, false},
		{"old duplicate", 100, 8, 50, 0, false},
		{"repeat of previous", 100, 8, 99, 99, true},
		{"window across the wrap, before", 65530, 16, 65535, 65535, true},
		{"window across the wrap, at 0", 65530, 16, 0, 65536, true},
		{"window across the wrap, after", 65530, 16, 9, 65545, true},
		{"window across the wrap, beyond", 65530, 16, 10, 0, false},
		{"second wrap", 2*65536 + 5, 4, 7, 2*65536 + 7, true},
		{"previous at a wrap", 65537, 4, 0, 65536, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ackedBlock(tt.base, tt.inflight, tt.ack)
			assert.Equal(t, tt.ok, ok)
			if tt.ok {
				assert.Equal(t, tt.want, got)
			}
		})
	}
	assert.Equal(t, uint16(65535), wireBlock(65535))
	assert.Equal(t, uint16(0), wireBlock(65536))
	assert.Equal(t, uint16(1), wireBlock(65537))
}

func TestNetascii(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"abc", "abc"},
		{"a\nb", "a\r\nb"},
		{"a\rb", "a\r\x00b"},
		{"a\r\nb\n", "a\r\x00\r\nb\r\n"},
		{"\n\n\n", "\r\n\r\n\r\n"},
	}
	for _, tt := range tests {
		// Read one byte at a time too, so a CR's second byte crosses reads.
		for _, chunk := range []int{1, 2, 512} {
			r := newNetasciiReader(strings.NewReader(tt.in))
			var got []byte
			buf := make([]byte, chunk)
			for {
				n, err := r.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
			}
			assert.Equal(t, tt.want, string(got), "%q in chunks of %d", tt.in, chunk)
		}
	}
}

// TestTFTPLogs checks that refusals are logged as warnings with the client
// and the name it asked for, and that EDK2's tsize probe (OACK answered with
// error 8) is only a debug line and frees its slot.
func TestTFTPLogs(t *testing.T) {
	root, sums := testRoot(t)
	var logs logBuffer
	_, addr := startTFTP(t, TFTPConfig{Root: root, Logger: logs.logger(), MaxTransfers: 1})

	res, err := tftpGet(addr, "../etc/passwd", tftpGetOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, res.errCode)
	res, err = tftpGet(addr, "escape-abs", tftpGetOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, res.errCode)

	// The probe: RRQ with tsize, OACK, then ERROR 8 from the client.
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	require.NoError(t, err)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	var (
		n    int
		from *net.UDPAddr
		buf  = make([]byte, 600)
	)
	// The one slot frees up just after the refused transfer answered.
	for range 50 {
		_, err = c.WriteToUDP([]byte("\x00\x01snponly.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00"), raddr)
		require.NoError(t, err)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err = c.ReadFromUDP(buf)
		require.NoError(t, err)
		if !strings.Contains(string(buf[:n]), "busy") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, "\x00\x06tsize\x00173792\x00blksize\x001468\x00", string(buf[:n]))
	_, err = c.WriteToUDP(errorPacket(errOptionsRefused, "User aborted the transfer"), from)
	require.NoError(t, err)

	// With one slot, this works only once the probe's transfer has ended.
	require.Eventually(t, func() bool {
		res, err := tftpGet(addr, "tiny.txt", tftpGetOptions{})
		return err == nil && sha(res.data) == sums["tiny.txt"]
	}, 5*time.Second, 50*time.Millisecond)

	complete := regexp.MustCompile(`level=INFO msg="tftp transfer complete" component=tftp client=127.0.0.1:\d+ file=tiny.txt bytes=5 blksize=512 windowsize=1`)
	require.Eventually(t, func() bool { return complete.MatchString(logs.String()) }, 5*time.Second, 10*time.Millisecond)
	out := logs.String()
	assert.Regexp(t, `level=WARN msg="tftp request refused" component=tftp client=127.0.0.1:\d+ file=../etc/passwd err=".*invalid path`, out)
	assert.Regexp(t, `level=WARN msg="tftp request refused" component=tftp client=127.0.0.1:\d+ file=escape-abs err=".*outside the root`, out)
	assert.Regexp(t, `level=DEBUG msg="tftp client ended the transfer after the option negotiation \(a tsize probe\)".* file=snponly.efi`, out)
	assert.NotContains(t, out, "transfer failed")
}

// TestTFTPAtftpWindowsize checks with atftp's trace that windowsize is
// negotiated and used: one ACK per window.
func TestTFTPAtftpWindowsize(t *testing.T) {
	atftp := needTool(t, "atftp", "atftp")
	root, sums := testRoot(t)
	_, addr := startTFTP(t, TFTPConfig{Root: root})
	host, port, _ := net.SplitHostPort(addr)
	out := filepath.Join(t.TempDir(), "out")
	b, err := exec.Command(atftp, "--trace", "--get", "-r", "exact.bin", "-l", out,
		"--option", "blksize 1468", "--option", "windowsize 8", "--option", "tsize", host, port).CombinedOutput()
	require.NoError(t, err, string(b))
	require.Equal(t, sums["exact.bin"], shaFile(t, out))
	trace := string(b)
	assert.Contains(t, trace, "received OACK <")
	assert.Contains(t, trace, "windowsize: 8")
	assert.Contains(t, trace, "blksize: 1468")
	assert.Contains(t, trace, "tsize: "+strconv.Itoa(sizeExact))
	blocks := sizeExact/1468 + 1
	acks := strings.Count(trace, "sent ACK")
	assert.LessOrEqual(t, acks, 2*(blocks/8)+2, "about one ACK per window of 8")
}
