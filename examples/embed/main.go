// Command embed is the shortest useful program built on LPMOS: it starts
// the embedded etcd store (or an in-memory one), creates an install task
// and walks it through its whole life the way a region and an operator
// would, then prints the task's timeline. Read it to see how the packages
// fit together; run it to see the store's key schema with etcdctl.
//
//	go run ./examples/embed                 # data in ./lpmos-data/etcd
//	go run ./examples/embed --store memory
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/etcd/embedded"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

func main() {
	dataDir := flag.String("data-dir", "./lpmos-data", "embedded etcd data directory (under etcd/)")
	clientURL := flag.String("etcd-client-url", "https://127.0.0.1:2379", "where the embedded etcd serves clients (client certificates in <data-dir>/etcd-pki)")
	peerURL := flag.String("etcd-peer-url", "http://127.0.0.1:2380", "where the embedded etcd listens for peers")
	kind := flag.String("store", "etcd", "etcd (embedded) or memory")
	mac := flag.String("mac", "00:1a:2b:3c:4d:5e", "MAC address of the machine to provision")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(ctx, log, *kind, *dataDir, *clientURL, *peerURL, *mac); err != nil {
		log.Error("embed example failed", "err", err)
		os.Exit(1)
	}
}

func openStore(ctx context.Context, kind, dataDir, clientURL, peerURL string) (store.Store, func(), error) {
	switch kind {
	case "memory":
		s := memory.New()
		return s, func() { s.Close() }, nil
	case "etcd":
		m, err := embedded.Start(ctx, embedded.Config{
			Dir: filepath.Join(dataDir, "etcd"), PKIDir: filepath.Join(dataDir, "etcd-pki"),
			ClientURL: clientURL, PeerURL: peerURL,
		})
		if err != nil {
			return nil, nil, err
		}
		s, err := m.Store(ctx)
		if err != nil {
			m.Close()
			return nil, nil, err
		}
		return s, func() { s.Close(); m.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown --store %q (etcd or memory)", kind)
}

func run(ctx context.Context, log *slog.Logger, kind, dataDir, clientURL, peerURL, mac string) error {
	st, closeStore, err := openStore(ctx, kind, dataDir, clientURL, peerURL)
	if err != nil {
		return err
	}
	defer closeStore()
	svc := task.NewService(st, task.Config{Logger: log})

	tk, err := svc.Create(ctx, task.CreateRequest{
		RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04",
		Tags: map[string]string{"purpose": "example"}, CreatedBy: "embed-example",
	})
	var active *task.ActiveTaskError
	if errors.As(err, &active) {
		// A previous run left the machine mid-install: cancel and start over.
		if _, err := svc.Cancel(ctx, active.TaskID, "embed-example", "superseded"); err != nil {
			return err
		}
		return run(ctx, log, kind, dataDir, clientURL, peerURL, mac)
	}
	if err != nil {
		return err
	}
	log.Info("task created", "task_id", tk.ID, "status", tk.Status)

	// What a region and its agent do, then the operator's approval.
	const region = "region:dc1"
	steps := []func() (*task.Task, error){
		func() (*task.Task, error) { return svc.MarkReady(ctx, tk.ID, region) },
		func() (*task.Task, error) { return svc.MarkBooting(ctx, tk.ID, region) },
		func() (*task.Task, error) {
			return svc.ReportHardware(ctx, tk.ID, region, hardware.Info{
				CPU:         hardware.CPU{Model: "Example CPU", Cores: 8, Threads: 16},
				Memory:      hardware.Memory{TotalGB: 32},
				Disks:       []hardware.Disk{{Device: "/dev/nvme0n1", SizeGB: 480, Type: hardware.DiskNVMe}},
				CollectedAt: time.Now().UTC(),
			})
		},
		func() (*task.Task, error) { return svc.Approve(ctx, tk.ID, "operator@example.com", "looks right") },
	}
	for _, stage := range []task.Stage{task.StagePartitioning, task.StageWriting, task.StageConfiguring} {
		steps = append(steps, func() (*task.Task, error) {
			return svc.ReportProgress(ctx, tk.ID, region, task.Progress{Stage: stage, Percentage: 50})
		})
	}
	steps = append(steps, func() (*task.Task, error) {
		return svc.Complete(ctx, tk.ID, region, task.Completion{Message: "installed"})
	})
	for _, step := range steps {
		if tk, err = step(); err != nil {
			return err
		}
		log.Info("task moved", "status", tk.Status)
	}

	fmt.Printf("\ntask %s is %s; timeline:\n", tk.ID, tk.Status)
	for _, e := range tk.Timeline {
		fmt.Printf("  %s  %-18s %-17s %s\n", e.Timestamp.Format(time.RFC3339), e.Event, e.Status, e.Stage)
	}
	if kind == "etcd" {
		pki := filepath.Join(dataDir, "etcd-pki")
		fmt.Printf("\ninspect it while an embedded etcd runs on %s:\n  etcdctl --endpoints %s --cacert %s --cert %s --key %s get --prefix /lpmos/tasks/%s/\n",
			dataDir, clientURL, filepath.Join(pki, "ca.crt"), filepath.Join(pki, "client.crt"), filepath.Join(pki, "client.key"), tk.ID)
	}
	return nil
}
