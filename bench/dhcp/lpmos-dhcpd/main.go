//go:build ignore

// Command lpmos-dhcpd runs dhcp.Server in full mode for bench/dhcp/run.sh.
// It is a benchmark fixture, not a product binary (examples/region is), so it
// is built by file name (`go build -o X bench/dhcp/lpmos-dhcpd/main.go`) and
// kept out of `go build ./...` and the dependency table by its build tag.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lpmos/lpmos/dhcp"
)

func main() {
	iface := flag.String("iface", "", "interface to serve")
	ipRange := flag.String("range", "", "FIRST-LAST addresses to lease")
	mask := flag.Int("mask", 16, "prefix length of the pool's subnet")
	router := flag.String("router", "", "default gateway to hand out")
	leaseFile := flag.String("lease-file", "", "lease file")
	leaseTime := flag.Duration("lease-time", time.Hour, "lease time")
	workers := flag.Int("workers", 0, "worker goroutines (0: 2×GOMAXPROCS)")
	queue := flag.Int("queue", 0, "queue size (0: default)")
	flag.Parse()

	first, last, ok := strings.Cut(*ipRange, "-")
	if *iface == "" || !ok {
		fmt.Fprintln(os.Stderr, "usage: lpmos-dhcpd -iface IF -range FIRST-LAST [-mask N] [-lease-file F]")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := dhcp.New(dhcp.Config{
		Interface: *iface,
		Mode:      dhcp.ModeFull,
		Pool: dhcp.Pool{Start: net.ParseIP(first), End: net.ParseIP(last), Netmask: net.CIDRMask(*mask, 32),
			Router: net.ParseIP(*router), LeaseTime: *leaseTime},
		LeaseFile: *leaseFile,
		Workers:   *workers,
		QueueSize: *queue,
		Logger:    log,
	})
	if err != nil {
		log.Error("configuring", "err", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = srv.Serve(ctx)
	log.Info("stats", "stats", fmt.Sprintf("%+v", srv.Stats()))
	if err != nil {
		log.Error("serving", "err", err)
		os.Exit(1)
	}
}
