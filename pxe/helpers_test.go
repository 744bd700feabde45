package pxe

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/syncbuf"
)

// Sizes of the files in the test root. big is above 8192 blocks of 1468
// bytes (the size at which pin/tftp's anticipate mode stalls) and of 512.
const (
	sizeTiny  = 5
	sizeExact = 1468 * 512 // a multiple of both 512 and 1468
	sizeBig   = 20 << 20
)

// testRoot builds a boot directory with the files the tests fetch, links
// inside and outside of it, a dotfile, a directory and a FIFO. It returns the
// directory and the sha256 of each regular file by name.
func testRoot(t testing.TB) (string, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	sums := map[string]string{}
	write := func(name string, data []byte) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
		sums[name] = sha(data)
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	write("undionly.kpxe", random(74213))
	write("snponly.efi", random(173792))
	write("tiny.txt", []byte("hello"))
	write("exact.bin", random(sizeExact))
	write("big.img", random(sizeBig))
	write("sub/dir/vmlinuz", random(100_000))
	write("text/crlf.txt", []byte("line one\nline two\r\nend\n"))
	write(".hidden", []byte("secret"))
	require.NoError(t, os.Symlink("tiny.txt", filepath.Join(dir, "rel-link")))
	require.NoError(t, os.Symlink(filepath.Join(dir, "sub/dir/vmlinuz"), filepath.Join(dir, "abs-link")))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(dir, "escape-abs")))
	require.NoError(t, os.Symlink("../../../../../../../etc/passwd", filepath.Join(dir, "escape-rel")))
	require.NoError(t, os.Symlink("/etc", filepath.Join(dir, "etcdir")))
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	return dir, sums
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func shaFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return sha(b)
}

// quietLogger discards logs unless -v is given.
func quietLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startTFTP runs a server on a random loopback port until the test ends,
// and checks that Serve returned and left no goroutine behind.
func startTFTP(t *testing.T, cfg TFTPConfig) (*TFTPServer, string) {
	t.Helper()
	if cfg.Conn == nil && cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger(t)
	}
	s, err := NewTFTPServer(cfg)
	require.NoError(t, err)
	// Cleanups run last-in first-out: the first server of a test registers
	// the leak check, so it runs after every server of the test stopped.
	leakCheckOnce.Lock()
	if !leakChecked[t] {
		leakChecked[t] = true
		t.Cleanup(func() { requireNoServerGoroutines(t) })
	}
	leakCheckOnce.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after its context ended")
		}
	})
	return s, s.Addr().String()
}

var (
	leakCheckOnce sync.Mutex
	leakChecked   = map[*testing.T]bool{}
)

// requireNoServerGoroutines fails if a goroutine of this package's servers
// is still running (a cheap leak check in the spirit of etcd's tests).
func requireNoServerGoroutines(t testing.TB) {
	t.Helper()
	var stacks string
	for range 50 {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "pxe.(*TFTPServer)") && !strings.Contains(stacks, "pxe.(*sender)") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("server goroutines still running:\n%s", stacks)
}

// needTool fails (rather than skips: scripts/test.sh installs what tests
// need) when a client program is missing.
func needTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err, "%s is needed for this test: apt-get install -y %s", name, pkg)
	return p
}

// tftpGetOptions shape a request of the test client.
type tftpGetOptions struct {
	mode    string   // "octet" if empty
	options []option // sent in the RRQ, in order
	// drop, if set, makes the client discard the first arrival of the
	// absolute blocks it returns true for, as if the network lost them.
	drop func(block uint64) bool
	// raw, if set, is sent instead of a well-formed RRQ.
	raw []byte
}

// tftpGetResult is what the test client saw.
type tftpGetResult struct {
	data    []byte
	oack    []option // nil if the server sent none
	errCode int      // -1 unless the server sent an ERROR
	errMsg  string
	acks    int    // ACKs the client sent
	blocks  uint64 // data blocks received in order
	server  *net.UDPAddr
	dropped []uint64 // blocks dropped on purpose
}

// tftpGet is a small TFTP client for tests that need to see the wire: it
// speaks RFC 1350 with blksize and windowsize, acknowledges at the end of a
// window or at the first gap (RFC 7440), and can drop blocks.
func tftpGet(addr, file string, o tftpGetOptions) (tftpGetResult, error) {
	res := tftpGetResult{errCode: -1}
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return res, err
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return res, err
	}
	defer conn.Close()

	rrq := o.raw
	if rrq == nil {
		mode := o.mode
		if mode == "" {
			mode = "octet"
		}
		rrq = binary.BigEndian.AppendUint16(nil, opRRQ)
		rrq = append(append(rrq, file...), 0)
		rrq = append(append(rrq, mode...), 0)
		for _, op := range o.options {
			rrq = append(append(rrq, op.name...), 0)
			rrq = append(append(rrq, op.value...), 0)
		}
	}
	if _, err := conn.WriteToUDP(rrq, raddr); err != nil {
		return res, err
	}

	blksize, window := 512, 1
	var (
		last     uint64 // last block received in order
		inWindow int
		gapAcked bool
		dropped  = map[uint64]bool{}
		buf      = make([]byte, 70000)
		idle     int
	)
	ack := func(n uint64) {
		res.acks++
		conn.WriteToUDP(ackPacket(wireBlock(n)), res.server)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return res, err
			}
			if idle++; idle > 20 {
				return res, fmt.Errorf("no answer from the server after block %d", last)
			}
			if res.server == nil {
				conn.WriteToUDP(rrq, raddr)
			} else {
				ack(last)
			}
			continue
		}
		idle = 0
		if res.server == nil {
			res.server = from
		} else if from.String() != res.server.String() {
			continue
		}
		p := buf[:n]
		if len(p) < 4 {
			return res, fmt.Errorf("short packet %x", p)
		}
		switch binary.BigEndian.Uint16(p) {
		case opERROR:
			res.errCode = int(binary.BigEndian.Uint16(p[2:]))
			res.errMsg, _, _ = strings.Cut(string(p[4:]), "\x00")
			return res, nil
		case opOACK:
			if res.oack != nil || last > 0 {
				continue // a retransmitted OACK
			}
			res.oack = []option{}
			f := bytes.Split(p[2:], []byte{0})
			for i := 0; i+1 < len(f); i += 2 {
				op := option{string(f[i]), string(f[i+1])}
				res.oack = append(res.oack, op)
				v, _ := strconv.Atoi(op.value)
				switch op.name {
				case "blksize":
					blksize = v
				case "windowsize":
					window = v
				}
			}
			ack(0)
		case opDATA:
			num := binary.BigEndian.Uint16(p[2:])
			if num != wireBlock(last+1) {
				if !gapAcked && num != wireBlock(last) {
					gapAcked = true
					inWindow = 0
					ack(last)
				}
				continue
			}
			if o.drop != nil && !dropped[last+1] && o.drop(last+1) {
				dropped[last+1] = true
				res.dropped = append(res.dropped, last+1)
				continue
			}
			last++
			gapAcked = false
			res.data = append(res.data, p[4:]...)
			inWindow++
			if len(p)-4 < blksize {
				ack(last)
				res.blocks = last
				return res, nil
			}
			if inWindow >= window {
				inWindow = 0
				ack(last)
			}
		}
	}
	return res, errors.New("transfer took too long")
}

// logBuffer collects a server's log lines for tests that check what is
// logged.
type logBuffer struct{ syncbuf.Buffer }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
