// Command allinone runs LPMOS in one process: an embedded etcd (or an
// external cluster, or memory), the control plane with its REST API,
// WebSocket hub and dashboard, and one region with its boot services
// (HTTP, TFTP, and DHCP plus IPv6 router-advertisement answers when
// --dhcp-iface is given). It is the README's
// main command:
//
//	go run ./examples/allinone
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos/agent/sim"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/internal/cmdutil/embedetcd"
	"github.com/lpmos/lpmos/internal/promreg"
	"github.com/lpmos/lpmos/region"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "allinone:", err)
		os.Exit(cmdutil.ExitCode(err))
	}
}

func run() error {
	var (
		storeFlags   cmdutil.StoreFlags
		authFlags    cmdutil.AuthFlags
		webhookFlags cmdutil.WebhookFlags
		capFlags     cmdutil.CapacityFlags
		regionFlags  cmdutil.RegionFlags
		bmcKey       cmdutil.BMCKeyFlag
	)
	fs := flag.CommandLine
	listen := fs.String("listen-addr", ":8080", "control plane: REST /api/v1, /ws, dashboard /, /metrics, /healthz")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS/WSS (TLS 1.3) with this certificate (PEM)")
	tlsKey := fs.String("tls-key", "", "key of --tls-cert (PEM)")
	logFormat := fs.String("log-format", "text", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	retention := fs.Duration("retention", 0, "delete tasks that ended longer ago than this, e.g. 720h (0 keeps them forever)")
	simulate := fs.Int("simulate", 0, "run N simulated machines that boot through the real region with the demo installer")
	simSpeed := fs.Float64("simulate-speed", 1, "speed-up of the simulated installs (1: about 20 s each)")
	version := fs.Bool("version", false, "print the version and exit")
	pprofAddr := cmdutil.PprofFlag(fs)
	otel := cmdutil.OtelFlag(fs)
	storeFlags.Register(fs, embedetcd.Open)
	authFlags.Register(fs)
	webhookFlags.Register(fs)
	capFlags.Register(fs)
	regionFlags.Register(fs)
	bmcKey.Register(fs, "<data-dir>/bmc.key")
	cf, err := cmdutil.Configure(fs, os.Args[1:], os.LookupEnv, cmdutil.SectionDHCP)
	if err != nil {
		return cmdutil.Usage(err)
	}
	regionFlags.DHCPFile = cf.DHCP
	if err := cmdutil.NoArgs(fs); err != nil {
		return err
	}
	if *version {
		cmdutil.PrintVersion(os.Stdout, "allinone")
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
	tp, stopTracing, err := cmdutil.Tracing(context.Background(), *otel, "lpmos-allinone", os.LookupEnv, log)
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

	// One registry for the process: the control plane's /metrics shows
	// the region's series too, and the region's (with a token) the
	// control plane's.
	sealer, err := bmcKey.Sealer(filepath.Join(storeFlags.DataDir, "bmc.key"))
	if err != nil {
		return cmdutil.Usage(err)
	}
	metrics := promreg.New()
	cfg := controlplane.Config{Store: st, Logger: log, Retention: *retention, Registry: metrics, BMCSealer: sealer, TracerProvider: tp}
	capFlags.Apply(&cfg)
	generated, err := authFlags.Apply(&cfg)
	if err == nil {
		err = webhookFlags.Apply(&cfg)
	}
	var cp *controlplane.Server
	if err == nil {
		cp, err = controlplane.New(cfg)
	}
	if err != nil {
		return cmdutil.Usage(fmt.Errorf("bad configuration: %w", err))
	}
	rcfg, err := regionFlags.ServerConfig(st, log)
	if err != nil {
		return cmdutil.Usage(err)
	}
	rcfg.Registry = metrics
	rcfg.Region.TracerProvider = tp
	rcfg.Region.BMCSealer = sealer
	rcfg.TFTPOptional = true // the demo runs without port 69 or iPXE binaries
	if *simulate > 0 {
		rcfg.Region.SkipBootFileCheck = true
		// The simulated machines all connect from this host.
		rcfg.HTTPLimits.MaxConnsPerSource = -1
		rcfg.HTTPLimits.MaxConns = max(rcfg.HTTPLimits.MaxConns, 8*(*simulate))
	}
	reg, err := region.NewServer(rcfg)
	if err != nil {
		return fmt.Errorf("cannot start the region: %w", err)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cp.Run(gctx) })
	g.Go(func() error { return reg.Run(gctx) })
	for _, mac := range sim.MACs(*simulate) {
		m := &sim.Machine{MAC: mac, RegionURL: reg.Region().BootURL(), Logger: log, Speed: *simSpeed}
		g.Go(func() error { return m.Run(gctx) })
		fmt.Printf("simulated machine: %s (create a task for it in region %s)\n", mac, regionFlags.Region)
	}
	g.Go(func() error {
		err := cp.ListenAndServe(gctx, controlplane.ServeOptions{
			Addr: *listen, CertFile: *tlsCert, KeyFile: *tlsKey,
			Ready: func(addr net.Addr) { announce(addr, *tlsCert != "", generated) },
		})
		if err != nil {
			return fmt.Errorf("control plane: %w", err)
		}
		return nil
	})
	return cmdutil.Stopped(ctx, g.Wait())
}

// announce prints where the dashboard is and, once, a generated admin token.
func announce(addr net.Addr, tls bool, token string) {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	host := addr.String()
	if strings.HasPrefix(host, "[::]:") || strings.HasPrefix(host, "0.0.0.0:") {
		host = "localhost:" + host[strings.LastIndex(host, ":")+1:]
	}
	fmt.Printf("LPMOS dashboard: %s://%s/\n", scheme, host)
	if token != "" {
		fmt.Printf("admin token (generated; set LPMOS_ADMIN_TOKEN to choose one): %s\n", token)
	}
}
