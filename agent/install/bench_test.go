package install_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/internal/testimage"
)

// BenchmarkImageWrite compares the image installer with
// `dd bs=4M oflag=direct` (the budget: agent >= 90% of it) on the
// same target: "file" is a regular file in the temp dir, "loop" a loop
// device over a sparse file (root and losetup only), "loop-direct" one
// with direct I/O to its backing file, "loop-NMBps" one throttled by a
// cgroup. Both write the same raw image (LPMOS_BENCH_MB MiB, default
// 256): the installer downloads it over loopback HTTP from a file
// (sendfile, as the region serves it), as is ("raw": the budget's
// like-for-like case) or zstd-compressed ("zstd": decompressed on the
// fly, and both the download and the written bytes hashed), and fsyncs;
// dd copies the raw bytes from a file in the page cache. Each side runs
// b.N times onto the same target. Reported: agent_MBps, dd_direct_MBps,
// ratio (agent/dd_direct), dd_direct_fsync_MBps (oflag=direct
// conv=fsync: dd with the durability the agent has, as plain oflag=direct
// does not fsync), and the CPU time per byte of each (agent_cpu_ns/B: the
// whole test process, so the loopback HTTP server's share too;
// dd_cpu_ns/B: dd's own): on a loaded machine the agent, which needs more
// CPU than dd, loses more of its speed to the other processes.
//
//	go test -run '^$' -bench ImageWrite -benchtime 3x ./agent/install/
func BenchmarkImageWrite(b *testing.B) {
	mb := 256
	if v, err := strconv.Atoi(os.Getenv("LPMOS_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	raw := image(mb << 20)
	dir := b.TempDir()
	rawPath := filepath.Join(dir, "image.raw")
	require.NoError(b, os.WriteFile(rawPath, raw, 0o644)) // stays in the page cache

	run := func(b *testing.B, format, target string, fresh bool) {
		data := testimage.Compress(b, format, raw)
		ts := serveFile(b, filepath.Join(b.TempDir(), "image."+format), data)
		plan := agent.Plan{ImageURL: ts.URL + "/image", SHA256: hexSum(data), Disk: "auto"}
		lister := install.DiskListerFunc(func(context.Context) ([]install.Disk, error) {
			return []install.Disk{{Path: target, SizeBytes: 1 << 40}}, nil
		})
		im := &install.Image{Disks: lister, Logger: quiet}
		var direct any
		progress := func(stage string, _ int, _ string, d map[string]any) {
			if stage == agent.StageCompleted {
				direct = d["direct_io"]
			}
		}
		b.SetBytes(int64(len(raw)))
		var agentTime, agentCPU time.Duration
		for b.Loop() {
			if fresh {
				_ = os.Remove(target)
			}
			t0, c0 := time.Now(), processCPU(b)
			require.NoError(b, im.Install(context.Background(), plan, progress))
			agentTime += time.Since(t0)
			agentCPU += processCPU(b) - c0
		}
		b.StopTimer()
		if direct != true {
			b.Logf("the installer did not use O_DIRECT on %s", target)
		}
		dd := func(flags ...string) (mbps float64, cpu time.Duration) {
			var el time.Duration
			for range b.N {
				if fresh {
					_ = os.Remove(target)
				}
				t0 := time.Now()
				args := append([]string{"if=" + rawPath, "of=" + target, "bs=4M", "status=none"}, flags...)
				cmd := exec.Command("dd", args...)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Logf("dd %v: %v: %s", flags, err, out)
					return 0, 0
				}
				el += time.Since(t0)
				cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			}
			return float64(len(raw)) * float64(b.N) / 1e6 / el.Seconds(), cpu
		}
		nsPerByte := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(len(raw)) / float64(b.N) }
		agentMBps := float64(len(raw)) * float64(b.N) / 1e6 / agentTime.Seconds()
		ddDirect, ddCPU := dd("oflag=direct")
		ddFsync, _ := dd("oflag=direct", "conv=fsync")
		b.ReportMetric(nsPerByte(agentCPU), "agent_cpu_ns/B")
		b.ReportMetric(nsPerByte(ddCPU), "dd_cpu_ns/B")
		b.ReportMetric(agentMBps, "agent_MBps")
		b.ReportMetric(ddDirect, "dd_direct_MBps")
		b.ReportMetric(ddFsync, "dd_direct_fsync_MBps")
		if ddDirect > 0 {
			b.ReportMetric(agentMBps/ddDirect, "ratio")
		}
		b.ReportMetric(float64(len(data))/float64(len(raw)), "size_ratio")
	}

	for _, format := range []string{"raw", "zstd"} {
		b.Run(format+"/file", func(b *testing.B) { run(b, format, filepath.Join(dir, "disk"), true) })
		b.Run(format+"/loop", func(b *testing.B) {
			run(b, format, loopDevice(b, int64(len(raw)), nil), false)
		})
		b.Run(format+"/loop-direct", func(b *testing.B) {
			run(b, format, loopDeviceOpts(b, int64(len(raw)), nil, true), false)
		})
		for _, mbps := range []int64{400, 1000} {
			b.Run(fmt.Sprintf("%s/loop-%dMBps", format, mbps), func(b *testing.B) {
				dev := loopDeviceOpts(b, int64(len(raw)), nil, true)
				throttleWrites(b, dev, mbps*1e6)
				run(b, format, dev, false)
			})
		}
	}
}

// serveFile serves data from a file at path, as the region serves images
// (http.ServeContent of an *os.File: sendfile, ranges, an ETag), so the
// server in this process costs what the region's would.
func serveFile(b *testing.B, path string, data []byte) *httptest.Server {
	require.NoError(b, os.WriteFile(path, data, 0o644))
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "image", time.Time{}, f)
	}))
	b.Cleanup(ts.Close)
	return ts
}
