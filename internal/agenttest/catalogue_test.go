package agenttest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/internal/testimage"
	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// startControlPlane runs a control plane on st over loopback HTTP and
// returns an admin's client of it.
func startControlPlane(t *testing.T, st store.Store) *client.Client {
	t.Helper()
	cp, err := controlplane.New(controlplane.Config{Store: st, Logger: quiet,
		Auth: auth.Config{Tokens: []auth.StaticToken{{Token: "admin-token-0123456789", Subject: "ada", Role: auth.RoleAdmin}}}})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	ts := httptest.NewServer(cp.Handler())
	t.Cleanup(func() {
		ts.Close()
		cancel()
		<-done
	})
	c, err := client.New(ts.URL, client.WithToken("admin-token-0123456789"))
	require.NoError(t, err)
	return c
}

// imageState waits until region dc1 reports image id in a state other
// than pending or downloading, and returns it.
func imageState(t *testing.T, c *client.Client, id string) client.ImageRegion {
	t.Helper()
	var got client.ImageRegion
	require.Eventually(t, func() bool {
		img, err := c.Image(context.Background(), id)
		require.NoError(t, err)
		for _, r := range img.Regions {
			if r.Region == "dc1" {
				got = r
			}
		}
		return got.State != "" && got.State != controlplane.ImagePending && got.State != task.ImageDownloading
	}, 30*time.Second, 20*time.Millisecond, "image %s never settled in dc1", id)
	return got
}

// The image catalogue end to end, over a real etcd, control plane and
// region and the real agent: an image registered through the API is
// downloaded once by the region, verified and offered; a task installs
// it; an image whose bytes have another SHA-256 is refused, removed, and
// no task may ask for it; a deleted image is withdrawn and its file
// removed. Nothing restarts.
func TestImageCatalogueEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs an embedded etcd, a control plane, a region and an agent")
	}
	ctx := context.Background()
	raw := rawImage(512<<10 + 99)
	good := testimage.Compress(t, "zst", raw)
	goodSum := sha256.Sum256(good)
	var fetches atomic.Int32
	images := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		switch r.URL.Path {
		case "/good.raw.zst":
			_, _ = w.Write(good)
		case "/tampered.raw":
			_, _ = w.Write(bytes.Repeat([]byte("not what was registered"), 100))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(images.Close)

	st := etcdtest.NewStore(t)
	c := startControlPlane(t, st)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("kernel"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "initramfs.cpio.zst"), []byte("initramfs"), 0o644))
	l := newLabOn(t, st, dir)

	// Before the region has the image, no task may ask for it.
	create := func(mac, os string) (*client.Created, error) {
		osType, version, _ := strings.Cut(os, " ")
		return c.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: mac, OSType: osType, OSVersion: version,
			Tags: map[string]string{"hostname": "cat-1"}})
	}
	require.Eventually(t, func() bool {
		_, err := create("52:54:00:ca:00:09", "ubuntu 26.04")
		return err != nil && strings.Contains(err.Error(), "cannot install ubuntu 26.04")
	}, 20*time.Second, 20*time.Millisecond, "the region's capabilities are read")

	img, err := c.RegisterImage(ctx, osimage.Image{ID: "ubuntu-26.04-amd64", Region: "dc1", URL: images.URL + "/good.raw.zst",
		SHA256: hex.EncodeToString(goodSum[:]), Format: "raw.zst", OSType: "ubuntu", OSVersion: "26.04", Arch: "amd64"})
	require.NoError(t, err)
	assert.Equal(t, "token:ada", img.CreatedBy)

	st1 := imageState(t, c, "ubuntu-26.04-amd64")
	require.Equal(t, task.ImageReady, st1.State, "%+v", st1)
	assert.Equal(t, int64(len(good)), st1.Bytes)
	file := filepath.Join(dir, region.CatalogDir, "ubuntu-26.04-amd64", "image.raw.zst")
	onDisk, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, good, onDisk)
	assert.Equal(t, int32(1), fetches.Load(), "downloaded once")

	// A task for it is accepted, and the real agent installs it from the
	// region's boot directory.
	var created *client.Created
	require.Eventually(t, func() bool {
		created, err = create("52:54:00:ca:00:01", "ubuntu 26.04")
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "the control plane sees the region offer ubuntu 26.04: %v", err)
	cfg := l.agentFor(created.TaskID, "52:54:00:ca:00:01")
	path, lister := fileDisk(t)
	res, _ := runAgent(t, cfg, map[string]agent.Installer{"image": imageInstaller(lister)})
	l.waitStatus(created.TaskID, task.StatusPendingApproval)
	_, err = c.Approve(ctx, created.TaskID, "go")
	require.NoError(t, err)
	require.NoError(t, result(t, res))
	got := l.waitStatus(created.TaskID, task.StatusCompleted)
	written, err := os.ReadFile(path)
	require.NoError(t, err)
	require.True(t, bytes.Equal(raw, written), "the disk holds the catalogue image")
	rawSum := sha256.Sum256(raw)
	assert.Contains(t, got.Progress.Message, "written_sha256 "+hex.EncodeToString(rawSum[:]))

	// An image whose bytes are not what was registered ends failed and
	// is not installable.
	_, err = c.RegisterImage(ctx, osimage.Image{ID: "tampered", URL: images.URL + "/tampered.raw",
		SHA256: strings.Repeat("ab", 32), Format: "raw", OSType: "debian", OSVersion: "13", Arch: "amd64"})
	require.NoError(t, err)
	st2 := imageState(t, c, "tampered")
	assert.Equal(t, task.ImageFailed, st2.State)
	assert.Equal(t, region.ReasonChecksumMismatch, st2.Reason)
	_, err = os.Stat(filepath.Join(dir, region.CatalogDir, "tampered", "image.raw"))
	assert.ErrorIs(t, err, os.ErrNotExist, "a refused image is not served")
	_, err = create("52:54:00:ca:00:02", "debian 13")
	var ce *client.Error
	require.True(t, errors.As(err, &ce), "%v", err)
	assert.Equal(t, http.StatusBadRequest, ce.StatusCode)
	assert.Equal(t, "os_version", ce.Field)
	assert.Contains(t, ce.Message, "image tampered is failed (checksum mismatch)")

	// Deleted: withdrawn from the region, its file removed.
	require.NoError(t, c.DeleteImage(ctx, "ubuntu-26.04-amd64"))
	require.Eventually(t, func() bool {
		_, err := os.Stat(file)
		return errors.Is(err, os.ErrNotExist)
	}, 20*time.Second, 20*time.Millisecond, "the region removes a deleted image's file")
	require.Eventually(t, func() bool {
		_, err := create("52:54:00:ca:00:03", "ubuntu 26.04")
		return err != nil && strings.Contains(err.Error(), "cannot install ubuntu 26.04")
	}, 20*time.Second, 20*time.Millisecond, "a deleted image is no longer installable")
	_, err = c.Image(ctx, "ubuntu-26.04-amd64")
	assert.ErrorIs(t, err, client.ErrNotFound)
}
