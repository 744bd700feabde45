//go:build ignore

// Command server runs pxe's TFTP server and HTTP FileServer for run.sh.
// The ignore constraint keeps this benchmark helper out of ./... (and out of
// the dependency table in deps_test.go); run.sh builds it by file name:
//
//	go build -o pxebench ./bench/pxe/server.go
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos/pxe"
)

func main() {
	tftpRoot := flag.String("tftp-root", "", "TFTP root (needs an iPXE binary)")
	tftpAddr := flag.String("tftp-addr", "127.0.0.1:6969", "TFTP listen address")
	maxWindow := flag.Int("max-window", 0, "TFTP MaxWindowSize (0: default)")
	httpRoot := flag.String("http-root", "", "HTTP boot file root")
	httpAddr := flag.String("http-addr", "127.0.0.1:8089", "HTTP listen address")
	flag.Parse()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tftp, err := pxe.NewTFTPServer(pxe.TFTPConfig{Root: *tftpRoot, Addr: *tftpAddr, Logger: logger,
		MaxWindowSize: *maxWindow, MaxTransfers: 256})
	if err != nil {
		log.Fatal(err)
	}
	files, err := pxe.NewFileServer(pxe.FileServerConfig{Root: *httpRoot, Prefix: "/boot/files/", Logger: logger})
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Addr: *httpAddr, Handler: files, ReadHeaderTimeout: 10 * time.Second}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return tftp.Serve(ctx) })
	g.Go(func() error {
		if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shutdown)
	})
	if err := g.Wait(); err != nil {
		log.Fatal(err)
	}
}
