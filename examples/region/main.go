// Command region runs one region's boot services against an etcd cluster:
// the HTTP server (boot files, per-machine iPXE scripts, the agent API),
// TFTP for the iPXE binaries and, with --dhcp-iface, DHCP or ProxyDHCP.
//
//	region --region dc1 --etcd-endpoints http://etcd:2379 \
//	    --dhcp-iface eth1 --dhcp-mode proxy --boot-dir /srv/lpmos/boot
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos/internal/cmdutil"
)

func main() {
	var (
		storeFlags  cmdutil.StoreFlags
		regionFlags cmdutil.RegionFlags
	)
	fs := flag.CommandLine
	logFormat := fs.String("log-format", "json", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	storeFlags.Register(fs, false)
	regionFlags.Register(fs)
	flag.Parse()

	log, err := cmdutil.Logger(*logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, closeStore, err := storeFlags.Open(ctx, log)
	if err != nil {
		log.Error("cannot open the store", "err", err)
		os.Exit(1)
	}
	defer closeStore()

	g, ctx := errgroup.WithContext(ctx)
	if _, err := regionFlags.StartRegion(ctx, g, st, log, cmdutil.RegionOptions{}); err != nil {
		log.Error("cannot start the region", "err", err)
		os.Exit(1)
	}
	if err := g.Wait(); err != nil && ctx.Err() == nil {
		log.Error("region stopped", "err", err)
		os.Exit(1)
	}
}
