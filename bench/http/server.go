//go:build ignore

// Command server runs a region for run.sh's small-request benchmark: a
// region.Server over the memory store on a loopback address, with one
// task for one MAC that it makes ready and boots once (the script fetch
// that moves it to booting), so that further fetches of that MAC's
// script from the same address are answered from the region's view and
// its token cache, as a rebooting machine's are. It writes the script it
// was served to OUT/script.ipxe and, with the same bytes, BOOT/script.ipxe
// (a static file of the same size in the region's boot directory), then
// creates OUT/ready. The ignore constraint keeps it out of ./...; run.sh
// builds it by file name:
//
//	go build -o httpbench ./bench/http/server.go
//
// The script fetch limits and the connection cap per source are raised
// here, explicitly: the load generator is one address with many
// connections. The region's defaults are not changed.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:16911", "the region's HTTP address")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof here (empty: no)")
	floorAddr := flag.String("floor", "", "serve the script's bytes with a bare net/http handler here (empty: no)")
	bootDir := flag.String("boot-dir", "", "the region's boot directory (created)")
	out := flag.String("out", "", "where to write script.ipxe and ready")
	mac := flag.String("mac", "52:54:00:be:0c:01", "the benchmark machine's MAC")
	conns := flag.Int("conns-per-source", 1024, "HTTP connections per source address")
	level := flag.String("log-level", "info", "log level (debug, info, warn)")
	flag.Parse()
	if *bootDir == "" || *out == "" {
		log.Fatal("-boot-dir and -out are required")
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		log.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if err := writeBootDir(*bootDir); err != nil {
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	st := memory.New()
	defer st.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	srv, err := region.NewServer(region.ServerConfig{
		Region: region.Config{
			RegionID: "bench", Store: st, PublicURL: base, BootDir: *bootDir, IPXEDir: *bootDir, Logger: logger,
			// One source, one MAC, tens of thousands of fetches a second.
			FetchLimits: region.FetchLimits{MACBurst: 1 << 30, MACEvery: time.Nanosecond, SourceBurst: 1 << 30, SourceRate: 1e9},
		},
		HTTPListener: ln,
		HTTPLimits:   region.HTTPLimits{MaxConnsPerSource: *conns, MaxConns: max(*conns, 1024)},
	})
	if err != nil {
		log.Fatal(err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx) })
	if *pprofAddr != "" {
		ps := &http.Server{Addr: *pprofAddr, Handler: http.DefaultServeMux, ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := ps.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			return ps.Close()
		})
	}
	var script atomic.Pointer[[]byte]
	g.Go(func() error {
		body, err := prepare(gctx, st, srv.Region(), base, *mac, *bootDir, *out)
		if err != nil && gctx.Err() == nil {
			return fmt.Errorf("prepare: %w", err)
		}
		script.Store(&body)
		return nil
	})
	if *floorAddr != "" {
		// The floor: what net/http alone costs per request, the same
		// bytes from memory with no routing, metrics or trace.
		fs := &http.Server{Addr: *floorAddr, ReadHeaderTimeout: 10 * time.Second,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				b := script.Load()
				if b == nil {
					http.Error(w, "not ready", http.StatusServiceUnavailable)
					return
				}
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				_, _ = w.Write(*b)
			})}
		g.Go(func() error {
			if err := fs.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			return fs.Close()
		})
	}
	if err := g.Wait(); err != nil {
		log.Fatal(err)
	}
}

// writeBootDir creates the agent's boot files and an OS image, so that
// the task can become ready.
func writeBootDir(dir string) error {
	img := filepath.Join(dir, "images", "ubuntu", "24.04")
	if err := os.MkdirAll(img, 0o755); err != nil {
		return err
	}
	image := bytes.Repeat([]byte("LPMOS-IMAGE"), 1000)
	sum := sha256.Sum256(image)
	for name, data := range map[string][]byte{
		filepath.Join(dir, "vmlinuz"):            []byte("kernel"),
		filepath.Join(dir, "initramfs.cpio.zst"): []byte("initramfs"),
		filepath.Join(img, "image.raw"):          image,
		filepath.Join(img, "SHA256SUMS"):         []byte(hex.EncodeToString(sum[:]) + "  image.raw\n"),
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// prepare creates the task, waits (bounded) until the region serves its
// agent script, and writes the script where run.sh expects it.
func prepare(ctx context.Context, st *memory.Store, reg *region.Region, base, mac, bootDir, out string) ([]byte, error) {
	select {
	case <-reg.Synced():
	case <-time.After(30 * time.Second):
		return nil, errors.New("the region never synced")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	svc := task.NewService(st, task.Config{})
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "bench", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "bench"})
	if err != nil {
		return nil, err
	}
	url := base + "/boot/" + mac + ".ipxe"
	var body []byte
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, b, err := get(ctx, url)
		if err != nil {
			return nil, err
		}
		if code == http.StatusOK && bytes.Contains(b, []byte("lpmos.token=")) {
			body = b
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("task %s: no agent script within 30 s (last answer %d: %s)", tk.ID, code, b)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	for _, p := range []string{filepath.Join(out, "script.ipxe"), filepath.Join(bootDir, "script.ipxe")} {
		if err := os.WriteFile(p, body, 0o644); err != nil {
			return nil, err
		}
	}
	// The agent's hardware report puts the task in pending_approval, where
	// run.sh polls its approval (GET .../approval/{mac}?wait=0) with the
	// agent's token: an agent API call on the hot path (token check, view
	// read, last-seen), answered at once.
	m := tokenRe.FindSubmatch(body)
	if m == nil {
		return nil, fmt.Errorf("task %s: no token in the agent script", tk.ID)
	}
	token := string(m[1])
	report, err := json.Marshal(agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hardware.Info{CPU: hardware.CPU{Cores: 1}}})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+agent.PathReport, bytes.NewReader(report))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("task %s: hardware report answered %d: %s", tk.ID, resp.StatusCode, answer)
	}
	if err := os.WriteFile(filepath.Join(out, "token"), []byte(token), 0o600); err != nil {
		return nil, err
	}
	return body, os.WriteFile(filepath.Join(out, "ready"), []byte(tk.ID+"\n"), 0o644)
}

var tokenRe = regexp.MustCompile(`lpmos\.token=([0-9A-Za-z._~+/=-]+)`)

func get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}
