// Command control-plane runs one stateless control-plane replica against an
// etcd cluster; run as many as you like behind a load
// balancer.
//
//	control-plane --etcd-endpoints=etcd1:2379,etcd2:2379 --listen-addr=:8080 \
//	    --tls-cert=server.crt --tls-key=server.key --token-file=tokens
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/internal/promreg"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "control-plane:", err)
		os.Exit(cmdutil.ExitCode(err))
	}
}

func run() error {
	var (
		storeFlags   cmdutil.StoreFlags
		authFlags    cmdutil.AuthFlags
		webhookFlags cmdutil.WebhookFlags
		capFlags     cmdutil.CapacityFlags
		bmcKey       cmdutil.BMCKeyFlag
	)
	fs := flag.CommandLine
	listen := fs.String("listen-addr", ":8080", "REST /api/v1, /ws, dashboard /, /metrics, /healthz")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS/WSS (TLS 1.3) with this certificate (PEM)")
	tlsKey := fs.String("tls-key", "", "key of --tls-cert (PEM)")
	logFormat := fs.String("log-format", "json", "text or json")
	logLevel := fs.String("log-level", "info", "debug, info, warn, error")
	retention := fs.Duration("retention", 0, "delete tasks that ended longer ago than this, e.g. 720h (0 keeps them forever)")
	version := fs.Bool("version", false, "print the version and exit")
	pprofAddr := cmdutil.PprofFlag(fs)
	otel := cmdutil.OtelFlag(fs)
	storeFlags.Register(fs, nil)
	authFlags.Register(fs)
	webhookFlags.Register(fs)
	capFlags.Register(fs)
	bmcKey.Register(fs, "")
	if _, err := cmdutil.Configure(fs, os.Args[1:], os.LookupEnv); err != nil {
		return cmdutil.Usage(err)
	}
	if err := cmdutil.NoArgs(fs); err != nil {
		return err
	}
	if *version {
		cmdutil.PrintVersion(os.Stdout, "control-plane")
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
	tp, stopTracing, err := cmdutil.Tracing(context.Background(), *otel, "lpmos-control-plane", os.LookupEnv, log)
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

	cfg := controlplane.Config{Store: st, Logger: log, Retention: *retention, Registry: promreg.New(), TracerProvider: tp}
	capFlags.Apply(&cfg)
	if cfg.BMCSealer, err = bmcKey.Sealer(""); err != nil {
		return cmdutil.Usage(err)
	}
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
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cp.Run(gctx) })
	g.Go(func() error {
		return cp.ListenAndServe(gctx, controlplane.ServeOptions{
			Addr: *listen, CertFile: *tlsCert, KeyFile: *tlsKey,
			Ready: func(addr net.Addr) {
				log.Info("control plane listening", "addr", addr.String())
				if generated != "" {
					fmt.Printf("admin token (generated; set LPMOS_ADMIN_TOKEN to choose one): %s\n", generated)
				}
			},
		})
	})
	return cmdutil.Stopped(ctx, g.Wait())
}
