// Command region runs one region's boot services against an etcd cluster:
// the HTTP server (boot files, per-machine iPXE scripts, the agent API),
// TFTP for the iPXE binaries and, with --dhcp-iface, DHCP or ProxyDHCP and
// answers to IPv6 router solicitations there (--ipv6-ra, see package ndp).
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

	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/internal/promreg"
	"github.com/lpmos/lpmos/region"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "region:", err)
		os.Exit(cmdutil.ExitCode(err))
	}
}

func run() error {
	var (
		storeFlags  cmdutil.StoreFlags
		regionFlags cmdutil.RegionFlags
		bmcKey      cmdutil.BMCKeyFlag
	)
	fs := flag.CommandLine
	logFormat := fs.String("log-format", "json", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	version := fs.Bool("version", false, "print the version and exit")
	pprofAddr := cmdutil.PprofFlag(fs)
	otel := cmdutil.OtelFlag(fs)
	storeFlags.Register(fs, nil)
	regionFlags.Register(fs)
	bmcKey.Register(fs, "")
	cf, err := cmdutil.Configure(fs, os.Args[1:], os.LookupEnv, cmdutil.SectionDHCP)
	if err != nil {
		return cmdutil.Usage(err)
	}
	regionFlags.DHCPFile = cf.DHCP
	if err := cmdutil.NoArgs(fs); err != nil {
		return err
	}
	if *version {
		cmdutil.PrintVersion(os.Stdout, "region")
		return nil
	}

	log, err := cmdutil.Logger(*logFormat, *logLevel)
	if err != nil {
		return cmdutil.Usage(err)
	}
	stopPprof, err := cmdutil.ServePprof(*pprofAddr, log)
	if err != nil {
		return err
	}
	defer stopPprof()
	tp, stopTracing, err := cmdutil.Tracing(context.Background(), *otel, "lpmos-region", os.LookupEnv, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, closeStore, err := storeFlags.Open(ctx, log)
	if err != nil {
		return fmt.Errorf("cannot open the store: %w", err)
	}
	defer closeStore()

	cfg, err := regionFlags.ServerConfig(st, log)
	if err != nil {
		return cmdutil.Usage(err)
	}
	cfg.Registry = promreg.New()
	cfg.Region.TracerProvider = tp
	if cfg.Region.BMCSealer, err = bmcKey.Sealer(""); err != nil {
		return cmdutil.Usage(err)
	}
	srv, err := region.NewServer(cfg)
	if err != nil {
		return fmt.Errorf("cannot start the region: %w", err)
	}
	return cmdutil.Stopped(ctx, srv.Run(ctx))
}
