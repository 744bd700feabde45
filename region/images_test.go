package region_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// imageFiles serves payloads by path and counts the requests of each.
type imageFiles struct {
	*httptest.Server
	mu    sync.Mutex
	files map[string][]byte
	gets  map[string]int
}

func serveImages(t *testing.T, files map[string][]byte) *imageFiles {
	f := &imageFiles{files: files, gets: map[string]int{}}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.gets[r.URL.Path]++
		b, ok := f.files[r.URL.Path]
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *imageFiles) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets[path]
}

func sumOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// regionImages waits until the region's capabilities report every one of
// ids settled (ready or failed) and returns them by ID.
func regionImages(t *testing.T, st store.Store, ids ...string) (map[string]task.ImageState, task.Capabilities) {
	t.Helper()
	var caps task.Capabilities
	out := map[string]task.ImageState{}
	require.Eventually(t, func() bool {
		kv, err := st.Get(context.Background(), task.RegionCapabilitiesKey("dc1"))
		if err != nil {
			return false
		}
		caps = task.Capabilities{}
		require.NoError(t, json.Unmarshal(kv.Value, &caps))
		clear(out)
		for _, id := range ids {
			s, ok := caps.Image(id)
			if !ok || s.State == task.ImageDownloading {
				return false
			}
			out[id] = s
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "the region never settled %v", ids)
	return out, caps
}

// The region's leader downloads the catalogue images meant for its
// region, once, and only it: a standby of the region leaves them alone,
// an image of another region is not its business, one larger than the
// bound is refused. A restarted region takes its verified copy as it is.
// The images of its boot directory are offered as before.
func TestCatalogueImagesOnTheLeader(t *testing.T) {
	st := etcdtest.NewStore(t)
	ctx := context.Background()
	good := bytes.Repeat([]byte("catalogue image "), 2048) // 32 KiB
	big := bytes.Repeat([]byte("x"), 100<<10)
	files := serveImages(t, map[string][]byte{"/good.raw": good, "/big.raw": big, "/dc2.raw": good})
	images := osimage.NewService(st, nil)
	for _, img := range []osimage.Image{
		{ID: "ubuntu-26.04", URL: files.URL + "/good.raw", SHA256: sumOf(good), OSType: "ubuntu", OSVersion: "26.04"},
		{ID: "big", URL: files.URL + "/big.raw", SHA256: sumOf(big), OSType: "custom", OSVersion: "1", Region: "dc1"},
		{ID: "elsewhere", URL: files.URL + "/dc2.raw", SHA256: sumOf(good), OSType: "custom", OSVersion: "2", Region: "dc2"},
	} {
		img.Format, img.Arch = "raw", "amd64"
		_, err := images.Create(ctx, img, "ops")
		require.NoError(t, err)
	}

	small := func(c *region.Config) { c.MaxImageBytes = 64 << 10 }
	l := startRegion(t, st, small, func(c *region.Config) { c.InstanceID = "a" })
	l2 := startRegion(t, st, small, func(c *region.Config) { c.InstanceID = "b" })
	leader, standby := l, l2
	if l2.reg.Leading() {
		leader, standby = l2, l
	}
	require.True(t, leader.reg.Leading())

	got, caps := regionImages(t, st, "ubuntu-26.04", "big")
	assert.Equal(t, task.ImageState{ID: "ubuntu-26.04", OSType: "ubuntu", OSVersion: "26.04", State: task.ImageReady, Bytes: int64(len(good))}, got["ubuntu-26.04"])
	assert.Equal(t, task.ImageFailed, got["big"].State)
	assert.Equal(t, "larger than 65536 bytes", got["big"].Reason)
	_, ok := caps.Image("elsewhere")
	assert.False(t, ok, "another region's image is not reported")
	assert.True(t, caps.Supports("ubuntu", "26.04"))
	assert.True(t, caps.Supports("ubuntu", "24.04"), "the boot directory's image is still offered")
	assert.False(t, caps.Supports("custom", "1"))

	e, ok := leader.reg.Catalogue().Lookup("ubuntu", "26.04")
	require.True(t, ok)
	assert.Equal(t, region.Entry{OSType: "ubuntu", OSVersion: "26.04", Kind: region.KindImage,
		ImagePath: "catalog/ubuntu-26.04/image.raw", SHA256: sumOf(good), Size: int64(len(good))}, e)
	onDisk, err := os.ReadFile(filepath.Join(leader.bootDir, region.CatalogDir, "ubuntu-26.04", "image.raw"))
	require.NoError(t, err)
	assert.Equal(t, good, onDisk)
	_, err = os.Stat(filepath.Join(leader.bootDir, region.CatalogDir, "big", "image.raw"))
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = os.Stat(filepath.Join(standby.bootDir, region.CatalogDir))
	assert.ErrorIs(t, err, os.ErrNotExist, "a standby downloads nothing")
	assert.Equal(t, 1, files.count("/good.raw"))
	assert.Equal(t, 0, files.count("/dc2.raw"))

	// Served to the agents from the boot directory.
	resp, err := http.Get(leader.ts.URL + "/boot/files/" + e.ImagePath)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// Restarted, the leader's successor (on the same boot directory)
	// takes the verified copy without downloading it again.
	standby.stop()
	leader.stop()
	l3 := startRegion(t, st, small, func(c *region.Config) { c.BootDir = leader.bootDir })
	require.Eventually(t, func() bool {
		_, ok := l3.reg.Catalogue().Lookup("ubuntu", "26.04")
		return ok
	}, 30*time.Second, 20*time.Millisecond)
	assert.Equal(t, 1, files.count("/good.raw"))
}

// A network installer registered with the checksums of its kernel and
// initrd is downloaded and verified like an image and boots from the
// region's copies, in place of the built-in installer fetched from the
// mirror unverified; one whose initrd is not what was registered is
// refused and the built-in entry stays.
func TestCatalogueInstallers(t *testing.T) {
	st := etcdtest.NewStore(t)
	ctx := context.Background()
	kernel, initrd := []byte("debian netboot kernel"), []byte("debian netboot initrd")
	files := serveImages(t, map[string][]byte{"/linux": kernel, "/initrd.gz": initrd})
	images := osimage.NewService(st, nil)
	for _, img := range []osimage.Image{
		{ID: "debian-12-netboot", OSType: "debian", OSVersion: "12", SHA256: sumOf(kernel), InitrdSHA256: sumOf(initrd)},
		{ID: "rocky-9-netboot", OSType: "rocky", OSVersion: "9", SHA256: sumOf(kernel), InitrdSHA256: sumOf([]byte("another initrd"))},
		{ID: "custom-1", OSType: "custom", OSVersion: "1", SHA256: sumOf(kernel), InitrdSHA256: sumOf(initrd)},
	} {
		img.URL, img.InitrdURL, img.Format, img.Arch = files.URL+"/linux", files.URL+"/initrd.gz", osimage.FormatInstaller, "amd64"
		_, err := images.Create(ctx, img, "ops")
		require.NoError(t, err)
	}
	l := startRegion(t, st)
	got, _ := regionImages(t, st, "debian-12-netboot", "rocky-9-netboot", "custom-1")
	assert.Equal(t, task.ImageReady, got["debian-12-netboot"].State)
	assert.Equal(t, int64(len(kernel)+len(initrd)), got["debian-12-netboot"].Bytes)
	assert.Equal(t, task.ImageFailed, got["rocky-9-netboot"].State)
	assert.Equal(t, region.ReasonChecksumMismatch, got["rocky-9-netboot"].Reason)
	assert.Equal(t, task.ImageFailed, got["custom-1"].State)
	assert.Contains(t, got["custom-1"].Reason, "no installer answer file for OS type custom")

	base := l.ts.URL + "/boot/files/catalog/debian-12-netboot/"
	e, ok := l.reg.Catalogue().Lookup("debian", "12")
	require.True(t, ok)
	assert.Equal(t, region.Entry{OSType: "debian", OSVersion: "12", Kind: region.KindInstaller, Family: "preseed",
		KernelURL: base + "kernel", InitrdURL: base + "initrd", RepoURL: "http://deb.debian.org/debian"}, e)
	for url, want := range map[string][]byte{e.KernelURL: kernel, e.InitrdURL: initrd} {
		code, body := getText(t, url)
		assert.Equal(t, http.StatusOK, code)
		assert.Equal(t, string(want), body)
	}
	e, ok = l.reg.Catalogue().Lookup("rocky", "9")
	require.True(t, ok)
	assert.True(t, strings.HasPrefix(e.KernelURL, "http://dl.rockylinux.org/"), "the built-in installer stays: %s", e.KernelURL)
	_, err := os.Stat(filepath.Join(l.bootDir, region.CatalogDir, "rocky-9-netboot"))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing of a refused installer is kept")

	// An approved debian 12 task boots the verified copies.
	const mac = "52:54:00:00:0c:01"
	tk, err := l.svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: "debian", OSVersion: "12", CreatedBy: "ops"})
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.report(tk.ID, mac, token)
	_, err = l.svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	var script string
	require.Eventually(t, func() bool {
		_, script = getText(t, l.ts.URL+"/boot/"+mac+".ipxe")
		return strings.Contains(script, "preseed.cfg")
	}, 10*time.Second, 20*time.Millisecond, "installer script after approval:\n%s", script)
	assert.Contains(t, script, "\nkernel "+base+"kernel ")
	assert.Contains(t, script, base+"initrd")
	assert.NotContains(t, script, "deb.debian.org/debian/dists")
}
