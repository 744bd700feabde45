package testlab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lpmos/lpmos/agent/initramfs"
)

var (
	artifactsMu   sync.Mutex
	artifactsSeen = map[string]bool{}

	binMu   sync.Mutex
	binDir  string
	binOnce = map[string]string{} // package -> built binary
)

// Main runs the tests of a package that uses the lab and removes what was
// built for the run (see [Binary]) afterwards:
//
//	func TestMain(m *testing.M) { os.Exit(testlab.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	binMu.Lock()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	binMu.Unlock()
	return code
}

// CacheDir is where the lab keeps what is expensive to make between runs
// (the agent's kernel and initramfs): $LPMOS_E2E_CACHE, default
// os.TempDir()/lpmos-e2e-cache, outside the repository.
func CacheDir() string {
	if d := os.Getenv("LPMOS_E2E_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "lpmos-e2e-cache")
}

// ModuleRoot is the directory of the repository's go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		t.Fatalf("testlab: cannot find the module root (go env GOMOD: %q, %v)", gomod, err)
	}
	return filepath.Dir(gomod)
}

// Binary builds a command of this module (e.g. "./examples/allinone") once
// per test process and returns the binary's path. Call [Main] from TestMain
// to remove it at the end of the run.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if bin, ok := binOnce[pkg]; ok {
		return bin
	}
	if binDir == "" {
		d, err := os.MkdirTemp("", "lpmos-e2e-bin-")
		if err != nil {
			t.Fatalf("testlab: %v", err)
		}
		binDir = d
	}
	bin := filepath.Join(binDir, sanitize(strings.Trim(pkg, "./")))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = ModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testlab: go build %s: %v\n%s", pkg, err, out)
	}
	binOnce[pkg] = bin
	return bin
}

// Kernel makes the agent's boot files for agentPkg (a Go command, such as
// initramfs.DefaultAgent or the stand-in agent of agent/initramfs's
// testdata): Debian's current kernel (downloaded once, see
// initramfs.FetchDebianKernel) and a u-root initramfs with the agent and the
// kernel's NIC and disk modules. It returns the directory holding
// initramfs.KernelName and initramfs.InitramfsName; it is in the cache,
// keyed by the agent binary's content, the kernel and go.sum, so an
// unchanged agent costs one `go build` (a few seconds) instead of a
// u-root build (~30 s). Do not write into it: copy or link from it.
func Kernel(t testing.TB, agentPkg string) string {
	t.Helper()
	return cachedBuild(t, "the agent's boot files", "boot", agentPkg, "agent="+agentPkg+"\n",
		func(ctx context.Context, b buildInputs) (string, error) {
			res, err := initramfs.Build(ctx, initramfs.Options{
				OutDir: b.out, Agent: agentPkg, GoModuleDir: b.root,
				Kernel: b.vmlinuz, KernelModulesDir: b.modulesDir, TempDir: b.tmp,
			})
			if err != nil {
				return "", fmt.Errorf("building the agent's initramfs: %w", err)
			}
			return fmt.Sprintf("initramfs %d bytes, %d modules", res.InitramfsSize, len(res.Modules)), nil
		})
}

// buildInputs is what a cachedBuild build function works with.
type buildInputs struct {
	root                string // the module root (GoModuleDir)
	vmlinuz, modulesDir string // Debian's kernel and its module tree
	bin                 string // the built Go command the entry is keyed by
	tmp                 string // scratch space, removed afterwards
	out                 string // the entry's files go here (created)
}

// cachedBuild returns the cache entry of a build (see cacheEntry), making
// it first if needed: build writes into in.out, which is renamed into place
// when it returns, and says what it made for the log. One builder at a time
// (test binaries of several packages run in parallel): the others then
// find its result. The Debian kernel is downloaded once, into the same
// cache as agent/initramfs's tests.
func cachedBuild(t testing.TB, what, prefix, pkg, extra string, build func(ctx context.Context, in buildInputs) (string, error)) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cache := CacheDir()
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	unlock := lockFile(t, filepath.Join(cache, ".lock"))
	defer unlock()

	in := buildInputs{root: ModuleRoot(t)}
	var err error
	in.vmlinuz, in.modulesDir, err = initramfs.FetchDebianKernel(ctx, filepath.Join(os.TempDir(), "lpmos-kernel-cache"))
	if err != nil {
		t.Fatalf("testlab: fetching the Debian kernel for %s (needs apt-get update and network; ./scripts/test.sh does both): %v", what, err)
	}
	dir, bin, hit := cacheEntry(t, ctx, prefix, pkg, extra+"kernel="+in.vmlinuz+"\n")
	if hit {
		t.Logf("testlab: %s from the cache: %s", what, dir)
		return dir
	}
	start := time.Now()
	if in.tmp, err = os.MkdirTemp(cache, ".build-"); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	defer os.RemoveAll(in.tmp)
	in.bin, in.out = bin, filepath.Join(in.tmp, "out")
	if err := os.Mkdir(in.out, 0o755); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	made, err := build(ctx, in)
	if err != nil {
		t.Fatalf("testlab: %s: %v", what, err)
	}
	if err := os.Rename(in.out, dir); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	t.Logf("testlab: built %s in %s (%s): %s", what, time.Since(start).Round(time.Second), made, dir)
	return dir
}

// cacheEntry names the cache entry of a build around the Go command pkg:
// <CacheDir>/<prefix>-<key>, the key hashing extra (the build's other
// inputs), the Go version, go.sum and pkg's binary, which stands for all
// of its sources (Go builds are reproducible, and the go command caches
// this build). It returns the entry, the binary (static, linux/amd64, in
// the test's temporary directory) and whether the entry is already built;
// a hit is touched, so pruning keeps it, and a miss prunes entries of
// prefix nobody used for 3 days (each change of pkg makes a new one).
// Hold the cache lock.
func cacheEntry(t testing.TB, ctx context.Context, prefix, pkg, extra string) (dir, bin string, hit bool) {
	t.Helper()
	root := ModuleRoot(t)
	key := sha256.New()
	fmt.Fprintf(key, "%sgo=%s\n", extra, runtime.Version())
	if err := hashFile(key, filepath.Join(root, "go.sum")); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	bin = filepath.Join(t.TempDir(), path.Base(pkg))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testlab: %s does not build: %v\n%s", pkg, err, out)
	}
	if err := hashFile(key, bin); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	cache := CacheDir()
	dir = filepath.Join(cache, prefix+"-"+hex.EncodeToString(key.Sum(nil))[:16])
	if _, err := os.Stat(dir); err == nil {
		now := time.Now()
		_ = os.Chtimes(dir, now, now)
		return dir, bin, true
	}
	old, _ := filepath.Glob(filepath.Join(cache, prefix+"-*"))
	for _, d := range old {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > 72*time.Hour {
			_ = os.RemoveAll(d)
		}
	}
	return dir, bin, false
}

func hashFile(w io.Writer, name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// lockFile takes an exclusive flock on name and returns its release.
func lockFile(t testing.TB, name string) func() {
	t.Helper()
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("testlab: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("testlab: locking %s: %v", name, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}
}

// BootDir makes a fresh directory for a region's --boot-dir with the agent's
// boot files from Kernel's directory (hard links, or copies across file
// systems), so the test may add images to it.
func BootDir(t testing.TB, kernelDir string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{initramfs.KernelName, initramfs.InitramfsName} {
		src, dst := filepath.Join(kernelDir, name), filepath.Join(dir, name)
		if err := os.Link(src, dst); err == nil {
			continue
		}
		in, err := os.Open(src)
		if err != nil {
			t.Fatalf("testlab: %v", err)
		}
		out, err := os.Create(dst)
		if err == nil {
			_, err = io.Copy(out, in)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
		}
		in.Close()
		if err != nil {
			t.Fatalf("testlab: copying %s: %v", name, err)
		}
	}
	return dir
}
