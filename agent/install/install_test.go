package install_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/internal/testimage"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func image(size int) []byte {
	r := rand.New(rand.NewPCG(3, 4))
	out := make([]byte, size)
	for i := 0; i < size; i += 8192 {
		if r.IntN(3) > 0 {
			for j := i; j < min(i+8192, size); j++ {
				out[j] = byte(r.Uint32())
			}
		}
	}
	return out
}

func hexSum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// serve serves data with ranges and an ETag, like the region's file
// server. cut, if > 0, breaks the first full download after cut bytes.
func serve(t testing.TB, data []byte, cut int) (*httptest.Server, *atomic.Int32) {
	var full atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		if r.Header.Get("Range") == "" && full.Add(1) == 1 && cut > 0 {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data[:cut])
			panic(http.ErrAbortHandler) // drop the connection mid-body
		}
		http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(ts.Close)
	return ts, &full
}

type recorder struct {
	mu     sync.Mutex
	stages []string
	last   map[string]any
	msg    string
}

func (r *recorder) progress(stage string, pct int, msg string, details map[string]any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.stages) == 0 || r.stages[len(r.stages)-1] != stage {
		r.stages = append(r.stages, stage)
	}
	r.last, r.msg = details, msg
}

func fileTarget(t testing.TB) (string, install.DiskLister) {
	path := filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte{0xee}, 1<<20), 0o644)) // old content
	return path, install.DiskListerFunc(func(context.Context) ([]install.Disk, error) {
		return []install.Disk{{Path: path, SizeBytes: 1 << 40}}, nil
	})
}

func TestImageFormatsAndResume(t *testing.T) {
	big := image(5<<20 + 777)
	for _, format := range []string{"raw", "gzip", "xz", "zstd"} {
		raw := big
		if format == "xz" {
			raw = big[:1<<20+777] // ulikunitz/xz is slow, more so under -race
		}
		data := testimage.Compress(t, format, raw)
		for _, cut := range []int{0, 100 << 10} {
			name := format
			if cut > 0 {
				name += "/resumed"
			}
			t.Run(name, func(t *testing.T) {
				ts, _ := serve(t, data, min(cut, len(data)/2))
				path, lister := fileTarget(t)
				rec := &recorder{}
				im := &install.Image{Disks: lister, ChunkSize: 1 << 20, ResumeFor: 10 * time.Second, Logger: quiet}
				err := im.Install(context.Background(), agent.Plan{Method: "image", ImageURL: ts.URL + "/image", SHA256: hexSum(data), Disk: "auto"}, rec.progress)
				require.NoError(t, err)
				got, err := os.ReadFile(path)
				require.NoError(t, err)
				require.True(t, bytes.Equal(raw, got), "written %d bytes, want %d", len(got), len(raw))
				assert.Equal(t, []string{"partitioning", "downloading", "writing", "configuring", "completed"}, rec.stages)
				assert.Equal(t, hexSum(raw), rec.last["written_sha256"])
				assert.Equal(t, hexSum(data), rec.last["image_sha256"])
				assert.Equal(t, map[bool]string{true: "raw", false: format}[format == "raw"], rec.last["format"])
				assert.Equal(t, map[bool]int{true: 1, false: 0}[cut > 0], rec.last["resumes"])
			})
		}
	}
}

func TestImageFailures(t *testing.T) {
	raw := image(256 << 10)
	data := testimage.Compress(t, "zstd", raw)
	tests := []struct {
		name      string
		url       string
		sum       string
		data      []byte
		disk      string
		wantStage string
		wantCode  string
	}{
		{"checksum mismatch", "/image", hexSum(raw), data, "auto", "writing", install.CodeChecksumMismatch},
		{"no checksum", "/image", "", data, "auto", "partitioning", install.CodeNoChecksum},
		{"not found", "/missing", hexSum(data), data, "auto", "downloading", install.CodeDownloadFailed},
		{"truncated zstd", "/image", hexSum(data[:len(data)/2]), data[:len(data)/2], "auto", "writing", install.CodeBadImage},
		{"relative disk", "/image", hexSum(data), data, "sda", "partitioning", install.CodeNoDisk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/image" {
					http.NotFound(w, r)
					return
				}
				http.ServeContent(w, r, "image", time.Time{}, bytes.NewReader(tt.data))
			}))
			defer ts.Close()
			_, lister := fileTarget(t)
			im := &install.Image{Disks: lister, ResumeFor: time.Second, Logger: quiet}
			err := im.Install(context.Background(), agent.Plan{ImageURL: ts.URL + tt.url, SHA256: tt.sum, Disk: tt.disk}, (&recorder{}).progress)
			var ie *agent.InstallError
			require.ErrorAs(t, err, &ie)
			assert.Equal(t, tt.wantCode, ie.Code, "%v", err)
			assert.Equal(t, tt.wantStage, ie.Stage)
		})
	}
}

func TestSelectDisk(t *testing.T) {
	disks := install.DiskListerFunc(func(context.Context) ([]install.Disk, error) {
		return []install.Disk{
			{Path: "/dev/sdb", SizeBytes: 500 << 30},
			{Path: "/dev/sda", SizeBytes: 240 << 30, InUse: true}, // booted from
			{Path: "/dev/sdc", SizeBytes: 16 << 30, Removable: true},
			{Path: "/dev/nvme0n1", SizeBytes: 480 << 30},
			{Path: "/dev/vda", SizeBytes: 2 << 30},
		}, nil
	})
	tests := []struct {
		want    string
		min     int64
		got     string
		wantErr bool
	}{
		{"auto", 1 << 30, "/dev/vda", false},
		{"", 3 << 30, "/dev/nvme0n1", false},
		{"auto", 490 << 30, "/dev/sdb", false},
		{"auto", 600 << 30, "", true},
		{"/dev/sda", 1 << 30, "/dev/sda", false}, // explicit: the operator knows
		{"sda", 0, "", true},
	}
	for _, tt := range tests {
		d, err := install.SelectDisk(context.Background(), disks, tt.want, tt.min)
		if tt.wantErr {
			assert.ErrorIs(t, err, install.ErrNoDisk, "%+v", tt)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tt.got, d.Path, "%+v", tt)
	}
}

func TestSysfsDisks(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, "sys", rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	write("sda/size", "4194304\n")
	write("sda/removable", "0\n")
	write("sda/sda1/partition", "1\n")
	write("sdb/size", "8388608\n")
	write("sdb/removable", "1\n")
	write("nvme0n1/size", "2097152\n")
	write("loop0/size", "100\n")
	write("sr0/size", "100\n")
	mounts := filepath.Join(root, "mounts")
	require.NoError(t, os.WriteFile(mounts, []byte("/dev/sda1 /boot ext4 rw 0 0\nproc /proc proc rw 0 0\n"), 0o644))
	got, err := install.SysfsDisks{SysBlock: filepath.Join(root, "sys"), Mounts: mounts}.Disks(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []install.Disk{
		{Path: "/dev/nvme0n1", SizeBytes: 1 << 30},
		{Path: "/dev/sda", SizeBytes: 2 << 30, InUse: true},
		{Path: "/dev/sdb", SizeBytes: 4 << 30, Removable: true},
	}, got)
}

func TestDemo(t *testing.T) {
	rec := &recorder{}
	start := time.Now()
	require.NoError(t, install.Demo{Speed: 1000}.Install(context.Background(), agent.Plan{OSType: "ubuntu"}, rec.progress))
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Equal(t, []string{"partitioning", "downloading", "writing", "installing", "configuring", "completed"}, rec.stages)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, install.Demo{}.Install(ctx, agent.Plan{}, rec.progress), context.Canceled)
}
