package install_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/internal/testimage"
)

// TestImageDirectIO checks the O_DIRECT path writes exactly the image's
// bytes when its size is not a multiple of 4 KiB (the tail goes through
// the buffered descriptor) and when it is smaller than 4 KiB, onto a
// regular file (truncated to the image) and a loop device (bytes after
// the image keep their old content).
func TestImageDirectIO(t *testing.T) {
	big := image(4<<20 + 123)
	sizes := []int{1, 123, 4095, 4096, 4097, 64<<10 + 5, 1<<20 + 4096, 4<<20 + 123}
	const devSize = 8 << 20
	old := bytes.Repeat([]byte{0xee}, devSize)
	for _, target := range []string{"file", "loop"} {
		t.Run(target, func(t *testing.T) {
			var path string
			if target == "file" {
				path = filepath.Join(t.TempDir(), "disk")
			} else {
				path = loopDevice(t, devSize, old)
			}
			wantDirect := target == "loop" || directSupported(filepath.Dir(path))
			for _, size := range sizes {
				for _, chunk := range []int{0, 1 << 20} {
					t.Run(fmt.Sprintf("%d/chunk%d", size, chunk), func(t *testing.T) {
						raw := big[:size]
						data := testimage.Compress(t, "zstd", raw)
						ts, _ := serve(t, data, 0)
						if target == "file" {
							require.NoError(t, os.WriteFile(path, old, 0o644))
						} else {
							writeAt(t, path, old)
						}
						lister := install.DiskListerFunc(func(context.Context) ([]install.Disk, error) {
							return []install.Disk{{Path: path, SizeBytes: devSize}}, nil
						})
						rec := &recorder{}
						im := &install.Image{Disks: lister, ChunkSize: chunk, ResumeFor: 5 * time.Second, Logger: quiet}
						require.NoError(t, im.Install(context.Background(), agent.Plan{ImageURL: ts.URL + "/image", SHA256: hexSum(data), Disk: "auto"}, rec.progress))
						got := readBack(t, path)
						if target == "file" {
							require.Len(t, got, size)
						} else {
							require.Len(t, got, devSize)
							require.True(t, bytes.Equal(old[size:], got[size:]), "bytes after the image changed")
							got = got[:size]
						}
						require.True(t, bytes.Equal(raw, got), "written bytes differ from the image")
						assert.Equal(t, hexSum(raw), rec.last["written_sha256"])
						assert.Equal(t, int64(size), rec.last["bytes_written"])
						if size >= 4096 {
							assert.Equal(t, wantDirect, rec.last["direct_io"])
						} else {
							assert.Equal(t, false, rec.last["direct_io"], "a < 4 KiB image is all tail")
						}
					})
				}
			}
		})
	}
}

// readBack reads path through the page cache: the installer wrote partly
// around it (O_DIRECT) and partly through it (the tail), and what a reader
// sees must be the image.
func readBack(t *testing.T, path string) []byte {
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	return got
}

func writeAt(t *testing.T, path string, b []byte) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, 0)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}
