package initramfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/kmodule"
)

// placeholderAgent stands in for the agent while examples/agent does not
// build yet (it is written alongside this package).
const placeholderAgent = "github.com/lpmos/lpmos/agent/initramfs/testdata/agent"

// agentPackage returns the real agent if it builds, else the placeholder.
func agentPackage(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", os.DevNull, DefaultAgent)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("%s does not build yet, using %s as the uinit payload:\n%s", DefaultAgent, placeholderAgent, out)
		return placeholderAgent
	}
	return DefaultAgent
}

// entry is one cpio record; data is kept for regular files.
type entry struct {
	hdr  cpio.Header
	data []byte
}

func (e entry) typ() cpio.FileMode { return e.hdr.Mode &^ cpio.ModePerm &^ 07000 }

func readArchive(t *testing.T, p string) map[string]entry {
	t.Helper()
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	zr, err := zstd.NewReader(f)
	require.NoError(t, err)
	defer zr.Close()
	r := cpio.NewReader(zr)
	files := map[string]entry{}
	for {
		hdr, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		name := strings.TrimPrefix(path.Clean("/"+hdr.Name), "/")
		e := entry{hdr: *hdr}
		if hdr.Mode.IsRegular() {
			e.data, err = io.ReadAll(r)
			require.NoError(t, err)
		}
		require.NotContains(t, files, name, "duplicate archive entry")
		files[name] = e
	}
	return files
}

func TestBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a real initramfs: Go toolchain + Debian's kernel")
	}
	vmlinuz, modulesDir := fetchKernel(t)
	agent := agentPackage(t)
	out := t.TempDir()

	res, err := Build(t.Context(), Options{
		OutDir:           out,
		Agent:            agent,
		Kernel:           vmlinuz,
		KernelModulesDir: modulesDir,
		TempDir:          t.TempDir(),
		Logger:           slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	require.NoError(t, err)
	t.Logf("initramfs %d bytes (cpio %d, bb %d), kernel %d bytes, %d modules, built in %s",
		res.InitramfsSize, res.UncompressedSize, res.AgentSize, res.KernelSize, len(res.Modules), res.Duration.Round(time.Millisecond))

	// The files and the sizes reported.
	assert.Equal(t, path.Join(out, InitramfsName), res.Initramfs)
	assert.Equal(t, path.Join(out, KernelName), res.Kernel)
	for p, size := range map[string]int64{res.Initramfs: res.InitramfsSize, res.Kernel: res.KernelSize} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		assert.Equal(t, size, fi.Size(), p)
	}
	kfi, err := os.Stat(vmlinuz)
	require.NoError(t, err)
	assert.Equal(t, kfi.Size(), res.KernelSize)
	assert.LessOrEqual(t, res.InitramfsSize, int64(SizeBudget), "initramfs over its 20 MB budget")
	assert.Positive(t, res.AgentSize)

	files := readArchive(t, res.Initramfs)
	symlink := func(name, target string) {
		t.Helper()
		e, ok := files[name]
		if assert.True(t, ok, "%s missing", name) {
			assert.Equal(t, cpio.FileMode(cpio.TypeSymlink), e.typ(), "%s is not a symlink", name)
			assert.Equal(t, target, e.hdr.Linkname, name)
		}
	}

	// u-root's init is /init; the agent is the uinit payload u-root's init
	// runs: /bin/uinit. Both are links into the one busybox binary.
	bb, ok := files["bbin/bb"]
	require.True(t, ok, "bbin/bb missing")
	require.True(t, bb.hdr.Mode.IsRegular())
	assert.True(t, bytes.HasPrefix(bb.data, []byte("\x7fELF")), "bbin/bb is not an ELF binary")
	assert.Equal(t, res.AgentSize, int64(len(bb.data)))
	assert.NotZero(t, bb.hdr.Mode&0o111, "bbin/bb is not executable")
	symlink("init", "bbin/init")
	symlink("bbin/init", "bb")
	symlink("bin/uinit", "../bbin/"+path.Base(agent))
	symlink("bbin/"+path.Base(agent), "bb")
	if agent == placeholderAgent {
		assert.Contains(t, string(bb.data), "lpmos placeholder agent", "the agent's code is not in bbin/bb")
	}
	// -defaultsh="": no shell, and no arguments for uinit.
	for _, name := range []string{"bin/sh", "bin/defaultsh", "etc/uinit.flags"} {
		assert.NotContains(t, files, name)
	}
	if assert.Contains(t, files, "dev/console") {
		assert.Equal(t, cpio.FileMode(cpio.TypeChar), files["dev/console"].typ())
	}

	// The modules: the order file lists them, they are all there as ELF
	// .ko files, and each comes after every module it depends on.
	order, ok := files[strings.TrimPrefix(ModulesOrderFile, "/")]
	require.True(t, ok, "%s missing", ModulesOrderFile)
	var listed []string
	for line := range strings.Lines(string(order.data)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			listed = append(listed, line)
		}
	}
	assert.Equal(t, res.Modules, listed)
	loaded := map[string]bool{}
	depsOf := map[string][]string{}
	for _, p := range listed {
		require.True(t, strings.HasPrefix(p, "/lib/modules/"+res.KernelVersion+"/"), p)
		require.True(t, strings.HasSuffix(p, ".ko"), p)
		e, ok := files[strings.TrimPrefix(p, "/")]
		require.True(t, ok, "%s is listed in %s but not in the archive", p, ModulesOrderFile)
		require.True(t, bytes.HasPrefix(e.data, []byte("\x7fELF")), "%s is not an ELF file", p)
		deps, err := modinfoDepends(e.data)
		require.NoError(t, err, p)
		depsOf[moduleName(p)] = deps
		for _, d := range deps {
			assert.True(t, loaded[d], "%s is listed before its dependency %s", p, d)
		}
		loaded[moduleName(p)] = true
	}
	for _, want := range []string{"virtio_net", "virtio_blk", "virtio_pci", "nvme", "ahci", "e1000e", "igb"} {
		ix, err := readModuleIndex(modulesDir)
		require.NoError(t, err)
		if ix.builtin[want] {
			assert.Contains(t, res.BuiltinModules, want)
			continue
		}
		assert.True(t, loaded[want], "%s is not in %s", want, ModulesOrderFile)
	}
	// The modules.dep written for them works with u-root's module loader: a
	// dry run of kmodule.Probe on the archive's tree loads virtio_net after
	// what it needs.
	tree := t.TempDir()
	for name, e := range files {
		if rel, ok := strings.CutPrefix(name, "lib/modules/"+res.KernelVersion+"/"); ok && e.hdr.Mode.IsRegular() {
			p := filepath.Join(tree, "lib/modules", res.KernelVersion, filepath.FromSlash(rel))
			require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
			require.NoError(t, os.WriteFile(p, e.data, 0o644))
		}
	}
	require.FileExists(t, filepath.Join(tree, "lib/modules", res.KernelVersion, "modules.dep"))
	var (
		probedMu sync.Mutex // kmodule loads independent modules in parallel
		probed   []string
	)
	err = kmodule.ProbeOptions("virtio_net", "", kmodule.ProbeOpts{
		RootDir: tree, KVer: res.KernelVersion, IgnoreProcMods: true,
		DryRunCB: func(p string) {
			probedMu.Lock()
			defer probedMu.Unlock()
			probed = append(probed, moduleName(p))
		},
	})
	require.NoError(t, err)
	require.NotEmpty(t, probed)
	assert.Equal(t, "virtio_net", probed[len(probed)-1])
	t.Logf("kmodule.Probe(virtio_net) loads %v", probed)
	for i, name := range probed {
		assert.True(t, loaded[name], "kmodule probed %s, which is not in %s", name, ModulesOrderFile)
		for _, d := range depsOf[name] {
			assert.Contains(t, probed[:i], d, "kmodule must load %s before %s", d, name)
		}
	}

	// Nothing else of the kernel's 3000-odd modules came along.
	var kos int
	for name := range files {
		if strings.HasSuffix(name, ".ko") {
			kos++
		}
	}
	assert.Equal(t, len(listed), kos)
}

func TestBuildWithoutModules(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a real initramfs")
	}
	res, err := Build(t.Context(), Options{OutDir: t.TempDir(), Agent: placeholderAgent, TempDir: t.TempDir()})
	require.NoError(t, err)
	files := readArchive(t, res.Initramfs)
	order, ok := files[strings.TrimPrefix(ModulesOrderFile, "/")]
	require.True(t, ok, "%s must exist even without modules", ModulesOrderFile)
	for line := range strings.Lines(string(order.data)) {
		assert.True(t, strings.HasPrefix(line, "#"), "unexpected line %q", line)
	}
	assert.Empty(t, res.Kernel)
	assert.False(t, slices.ContainsFunc(mapsKeys(files), func(n string) bool { return strings.HasSuffix(n, ".ko") }))
}

func mapsKeys(m map[string]entry) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

func TestBuildRequiresOutDir(t *testing.T) {
	_, err := Build(t.Context(), Options{})
	require.ErrorContains(t, err, "OutDir")
}

func TestBuildRejectsBadAgent(t *testing.T) {
	for pkg, want := range map[string]string{
		"github.com/lpmos/lpmos/no/such/agent":   "agent package github.com/lpmos/lpmos/no/such/agent",
		"github.com/lpmos/lpmos/agent/initramfs": "not a command",
	} {
		_, err := Build(t.Context(), Options{OutDir: t.TempDir(), Agent: pkg})
		require.ErrorContains(t, err, want)
	}
}

// TestBootQEMU boots the kernel and an initramfs with the placeholder agent in
// a QEMU VM with a virtio NIC and disk: u-root's init must run the uinit
// payload, which loads every module /etc/lpmos/modules lists, in order, and
// sees the NIC and the disk their drivers found.
func TestBootQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an initramfs and boots it in QEMU")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	require.NoError(t, err, "the boot test needs QEMU (Debian package qemu-system-x86)")
	vmlinuz, modulesDir := fetchKernel(t)
	dir := t.TempDir()
	res, err := Build(t.Context(), Options{
		OutDir: dir, Agent: placeholderAgent, Kernel: vmlinuz, KernelModulesDir: modulesDir, TempDir: t.TempDir(),
	})
	require.NoError(t, err)
	disk := path.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(disk, nil, 0o644))
	require.NoError(t, os.Truncate(disk, 8<<20))

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-machine", "q35", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "512",
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-kernel", res.Kernel, "-initrd", res.Initramfs,
		"-append", "console=ttyS0 panic=-1 quiet",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
		"-drive", "file="+disk+",format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0")
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	console := string(out)
	require.NoError(t, err, "QEMU did not power off cleanly:\n%s", console)
	t.Logf("booted and powered off in %s", time.Since(start).Round(time.Millisecond))
	assert.Contains(t, console, "Welcome to u-root")
	assert.Contains(t, console, "lpmos placeholder agent", "u-root's init did not run the uinit payload")
	assert.Contains(t, console, fmt.Sprintf("LPMOS-PLACEHOLDER modules loaded=%d failed=0", len(res.Modules)))
	assert.Regexp(t, `LPMOS-PLACEHOLDER nics=\S*eth0\S* disks=\S*vda`, console)
	if t.Failed() {
		t.Logf("console:\n%s", console)
	}
}
