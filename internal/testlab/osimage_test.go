package testlab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
)

// phoneHomeRequest is what the test's server received.
type phoneHomeRequest struct {
	Method, Path, Token, ContentType, Body string
}

// The test OS image boots from a disk under SeaBIOS, finds the CIDATA seed
// appended after it, phones home to the URL of its user-data and powers
// off.
func TestBootableImagePhonesHome(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and boots the test OS image under QEMU; skipped with -short")
	}
	for _, tool := range []string{"qemu-system-x86_64", "sfdisk", "mkfs.vfat", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run ./scripts/test.sh, which installs the Debian packages of scripts/test-packages.txt", tool)
		}
	}
	start := time.Now()
	img := BootableImage(t)
	t.Logf("BootableImage took %s", time.Since(start).Round(time.Millisecond))

	// The server the guest phones home to.
	var (
		mu   sync.Mutex
		reqs []phoneHomeRequest
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, phoneHomeRequest{Method: r.Method, Path: r.URL.Path, Token: r.URL.Query().Get("token"),
			ContentType: r.Header.Get("Content-Type"), Body: string(b)})
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	// The disk: the image, then a CIDATA seed as the agent appends it.
	const (
		taskID   = "3f6c2a1e-task"
		hostname = "web-01"
		token    = "s3cret"
	)
	// QEMU's user network: the guest reaches the host's 127.0.0.1 as 10.0.2.2.
	phoneHome := fmt.Sprintf("http://10.0.2.2:%d/api/v1/agent/phone-home/%s?token=%s", port, taskID, token)
	disk := filepath.Join(t.TempDir(), "disk.img")
	copyImage(t, img, disk, 64<<20)
	appendSeed(t, disk, taskID, hostname, phoneHome)

	// Boot it.
	art := ArtifactDir(t)
	serial := filepath.Join(art, "serial.log")
	args := []string{
		"-machine", "q35", "-accel", Accel(), "-cpu", "qemu64,+rdrand",
		"-m", "512", "-smp", "1",
		"-display", "none", "-monitor", "none", "-serial", "file:" + serial, "-no-reboot",
		"-drive", "file=" + disk + ",format=raw,if=none,id=d0,cache=unsafe",
		"-device", "virtio-blk-pci,drive=d0,bootindex=0",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=",
	}
	require.NoError(t, os.WriteFile(filepath.Join(art, "qemu.cmd"), []byte("qemu-system-x86_64 "+shellQuote(args)+"\n"), 0o644))
	const timeout = 5 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	boot := time.Now()
	err = cmd.Run()
	took := time.Since(boot)
	_ = os.WriteFile(filepath.Join(art, "qemu.log"), out.Bytes(), 0o644)
	log, _ := os.ReadFile(serial)
	t.Logf("QEMU ran %s; serial console in %s", took.Round(time.Millisecond), serial)
	if idx := bytes.Index(log, []byte("LPMOS-FIRSTBOOT: phoned home")); idx >= 0 {
		t.Logf("the guest phoned home; its last lines:\n%s", tail(string(log), 8))
	}
	require.NoError(t, ctx.Err(), "QEMU did not power off within %s; serial console:\n%s", timeout, tail(string(log), 40))
	require.NoError(t, err, "QEMU: %s\nserial console:\n%s", out.String(), tail(string(log), 40))

	require.Contains(t, string(log), "LPMOS-FIRSTBOOT: started")
	require.Contains(t, string(log), fmt.Sprintf("LPMOS-FIRSTBOOT: phoned home http://10.0.2.2:%d/api/v1/agent/phone-home/%s -> 200 OK", port, taskID),
		"serial console:\n%s", tail(string(log), 40))
	require.NotContains(t, string(log), token, "the token must not appear on the console")
	mu.Lock()
	defer mu.Unlock()
	require.Equal(t, []phoneHomeRequest{{
		Method: http.MethodPost, Path: "/api/v1/agent/phone-home/" + taskID, Token: token,
		ContentType: "application/x-www-form-urlencoded", Body: "instance_id=" + taskID + "&hostname=" + hostname,
	}}, reqs)
}

// BootableImageZstd is the image, compressed, with the SHA-256 of the
// compressed file; a second call finds both in the cache.
func TestBootableImageZstd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test OS image; skipped with -short")
	}
	img := BootableImage(t)
	zpath, sum := BootableImageZstd(t)
	b, err := os.ReadFile(zpath)
	require.NoError(t, err)
	h := sha256.Sum256(b)
	require.Equal(t, hex.EncodeToString(h[:]), sum)

	zr, err := zstd.NewReader(bytes.NewReader(b))
	require.NoError(t, err)
	defer zr.Close()
	got, err := io.ReadAll(zr)
	require.NoError(t, err)
	want, err := os.ReadFile(img)
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "decompressed image differs from the raw image")
	// An MBR with syslinux's boot code and an active partition 1.
	require.Equal(t, []byte{0x55, 0xAA}, want[510:512])
	require.Equal(t, byte(0x80), want[446], "partition 1 is active")

	zpath2, sum2 := BootableImageZstd(t)
	require.Equal(t, zpath, zpath2)
	require.Equal(t, sum, sum2)
}

// copyImage copies the image to a new sparse file of size bytes.
func copyImage(t *testing.T, src, dst string, size int64) {
	t.Helper()
	in, err := os.Open(src)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.Create(dst)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Truncate(size))
	require.NoError(t, out.Close())
}

// appendSeed adds partition 2 over the rest of the disk, formats it FAT
// labelled CIDATA and puts a NoCloud meta-data and user-data with
// phone_home in it, as the agent does.
func appendSeed(t *testing.T, disk, instanceID, hostname, url string) {
	t.Helper()
	run := func(stdin string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
		return string(out)
	}
	run("type=c\n", "sfdisk", "--append", "--no-reread", "--no-tell-kernel", disk)
	var table struct {
		PartitionTable struct {
			Partitions []struct {
				Start, Size int64
			}
		}
	}
	require.NoError(t, json.Unmarshal([]byte(run("", "sfdisk", "--json", disk)), &table))
	parts := table.PartitionTable.Partitions
	require.Len(t, parts, 2)
	start, size := parts[1].Start, parts[1].Size
	run("", "mkfs.vfat", "-n", "CIDATA", "-h", strconv.FormatInt(start, 10), "--offset", strconv.FormatInt(start, 10),
		disk, strconv.FormatInt(size/2, 10))

	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	dir := t.TempDir()
	meta := filepath.Join(dir, "meta-data")
	user := filepath.Join(dir, "user-data")
	require.NoError(t, os.WriteFile(meta, []byte("instance-id: "+q(instanceID)+"\nlocal-hostname: "+q(hostname)+"\n"), 0o644))
	require.NoError(t, os.WriteFile(user, []byte("#cloud-config\nhostname: "+q(hostname)+"\nphone_home:\n  url: "+q(url)+
		"\n  post: [instance_id, hostname]\n  tries: 10\n"), 0o644))
	img := disk + "@@" + strconv.FormatInt(start*512, 10)
	run("", "mcopy", "-i", img, meta, user, "::")
}
