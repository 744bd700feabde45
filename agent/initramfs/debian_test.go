package initramfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// kernelCacheDir is where the tests keep Debian's kernel between runs: outside
// the repository, keyed by package version by FetchDebianKernel itself.
func kernelCacheDir() string {
	if d := os.Getenv("LPMOS_KERNEL_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "lpmos-kernel-cache")
}

// fetchKernel fetches (or reuses) Debian's kernel; it fails, never skips, when
// that is impossible here, since the initramfs tests need a real kernel.
func fetchKernel(t *testing.T) (vmlinuz, modulesDir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	vmlinuz, modulesDir, err := FetchDebianKernel(ctx, kernelCacheDir())
	require.NoError(t, err, "fetching Debian's kernel needs apt-get, dpkg, an apt index (apt-get update) and the Debian mirrors")
	t.Logf("kernel %s, modules %s (%s)", vmlinuz, modulesDir, time.Since(start).Round(time.Millisecond))
	return vmlinuz, modulesDir
}

func TestFetchDebianKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads Debian's kernel package")
	}
	vmlinuz, modulesDir := fetchKernel(t)
	fi, err := os.Stat(vmlinuz)
	require.NoError(t, err)
	require.Greater(t, fi.Size(), int64(1<<20), "vmlinuz is implausibly small")
	require.DirExists(t, filepath.Join(modulesDir, "kernel"))
	require.FileExists(t, filepath.Join(modulesDir, "modules.builtin"))

	// The second call must come from the cache.
	start := time.Now()
	v2, m2, err := FetchDebianKernel(t.Context(), kernelCacheDir())
	require.NoError(t, err)
	require.Equal(t, vmlinuz, v2)
	require.Equal(t, modulesDir, m2)
	require.Less(t, time.Since(start), 10*time.Second, "a cached kernel should not be downloaded again")

	// FindKernel finds the same in the unpacked package.
	v3, m3, err := FindKernel(filepath.Dir(filepath.Dir(vmlinuz)))
	require.NoError(t, err)
	require.Equal(t, vmlinuz, v3)
	require.Equal(t, modulesDir, m3)
	_, _, err = FindKernel(t.TempDir())
	require.ErrorContains(t, err, "boot/vmlinuz")
}
