package install_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
)

// BenchmarkImageWrite streams a zstd image (LPMOS_BENCH_MB MiB raw,
// default 256) over loopback HTTP onto a file with the image installer,
// fsync included, and reports MB/s of raw bytes written next to
// `dd bs=4M oflag=direct` (or conv=fsync where O_DIRECT is refused) writing
// the same raw bytes from a local file into the same directory: dd is the
// ceiling without download, decompression and hashing.
//
//	go test -run '^$' -bench ImageWrite -benchtime 3x ./agent/install/
func BenchmarkImageWrite(b *testing.B) {
	mb := 256
	if v, err := strconv.Atoi(os.Getenv("LPMOS_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	raw := image(mb << 20)
	data := compress(b, "zstd", raw)
	dir := b.TempDir()
	rawPath := filepath.Join(dir, "image.raw")
	require.NoError(b, os.WriteFile(rawPath, raw, 0o644))
	ts, _ := serve(b, data, 0)
	target := filepath.Join(dir, "disk")
	lister := install.DiskListerFunc(func(context.Context) ([]install.Disk, error) {
		return []install.Disk{{Path: target, SizeBytes: 1 << 40}}, nil
	})
	im := &install.Image{Disks: lister, HTTPClient: &http.Client{}, Logger: quiet}
	plan := agent.Plan{ImageURL: ts.URL + "/image", SHA256: hexSum(data), Disk: "auto"}
	nop := func(string, int, string, map[string]any) {}

	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		_ = os.Remove(target)
		require.NoError(b, im.Install(context.Background(), plan, nop))
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(len(raw))*float64(b.N)/1e6/el.Seconds(), "agent_MB/s")
	b.ReportMetric(float64(len(data))/float64(len(raw)), "zstd_ratio")

	ddOut := filepath.Join(dir, "dd")
	for _, flag := range []string{"oflag=direct", "conv=fsync"} {
		_ = os.Remove(ddOut)
		t0 := time.Now()
		cmd := exec.Command("dd", "if="+rawPath, "of="+ddOut, "bs=4M", flag, "status=none")
		if err := cmd.Run(); err != nil {
			continue
		}
		name := "dd_direct_MB/s"
		if flag == "conv=fsync" {
			name = "dd_fsync_MB/s"
		}
		b.ReportMetric(float64(len(raw))/1e6/time.Since(t0).Seconds(), name)
	}
}
