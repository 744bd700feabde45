// Package httpserve runs the HTTP servers of the region and the control
// plane so that no client can hold more of the process than its share:
// every server gets header, body and idle timeouts, a header size limit,
// and a listener that caps concurrent connections in total and per source
// address. Region, control plane and an embedded etcd may share one process
// and one file-descriptor limit; a flood of idle connections to one of them
// must not starve the others.
//
// It knows nothing of what the servers serve, and it does not time out
// handlers: long-polls and WebSockets run as long as they like once their
// request has been read.
package httpserve

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Limits bound what clients can hold of one server. A zero field takes
// its default (see Defaults); a negative one disables that bound.
type Limits struct {
	// ReadHeaderTimeout bounds reading a request's headers, from the
	// moment the connection is accepted or the request begins.
	ReadHeaderTimeout time.Duration
	// BodyReadTimeout bounds reading a request's body, from the moment its
	// handler starts. It is a read deadline set for requests that carry a
	// body and lifted once the body has been read, so that a request
	// without one (a long-poll, a WebSocket upgrade) is never cut short: in
	// net/http an expiring read deadline cancels the request's context
	// even after the body was read.
	BodyReadTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no next
	// request.
	IdleTimeout time.Duration
	// MaxHeaderBytes caps the size of a request's headers (disabled:
	// net/http's own 1 MiB).
	MaxHeaderBytes int
	// MaxConns caps the connections the listener holds open at once.
	// Connections over it are accepted and closed at once, so the
	// kernel's backlog never fills.
	MaxConns int
	// MaxConnsPerSource caps the open connections from one source IP
	// address, so that one client cannot take all of MaxConns.
	MaxConnsPerSource int
}

// Defaults are the limits a zero field takes: 10 s for headers, 30 s for
// a body, 2 min idle, 64 KiB of headers, 1024 connections and no cap per
// source (behind a load balancer every client has the same source; the
// region sets its own).
func Defaults() Limits {
	return Limits{
		ReadHeaderTimeout: 10 * time.Second,
		BodyReadTimeout:   30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		MaxConns:          1024,
		MaxConnsPerSource: -1,
	}
}

// Or returns l with its zero fields taken from def.
func (l Limits) Or(def Limits) Limits {
	pick := func(v, d time.Duration) time.Duration {
		if v == 0 {
			return d
		}
		return v
	}
	pickInt := func(v, d int) int {
		if v == 0 {
			return d
		}
		return v
	}
	return Limits{
		ReadHeaderTimeout: pick(l.ReadHeaderTimeout, def.ReadHeaderTimeout),
		BodyReadTimeout:   pick(l.BodyReadTimeout, def.BodyReadTimeout),
		IdleTimeout:       pick(l.IdleTimeout, def.IdleTimeout),
		MaxHeaderBytes:    pickInt(l.MaxHeaderBytes, def.MaxHeaderBytes),
		MaxConns:          pickInt(l.MaxConns, def.MaxConns),
		MaxConnsPerSource: pickInt(l.MaxConnsPerSource, def.MaxConnsPerSource),
	}
}

// Config says how Serve runs a server.
type Config struct {
	// Limits not set take Defaults.
	Limits Limits
	// TLS, if set, or CertFile and KeyFile serve HTTPS (and HTTP/2). The
	// certificate comes from the files if they are set, else from TLS.
	TLS               *tls.Config
	CertFile, KeyFile string
	// ShutdownTimeout bounds the graceful shutdown once ctx ends
	// (default 10 s); requests still running after it are cut off.
	ShutdownTimeout time.Duration
	// Logger receives server errors and refused connections; default
	// slog.Default().
	Logger *slog.Logger
}

// Serve serves h on ln, wrapped with the connection caps, until ctx ends,
// then shuts down gracefully with a fresh deadline (ctx is done by then)
// and returns nil. It returns an error if serving fails. Serve closes ln.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, cfg Config) error {
	lim := cfg.Limits.Or(Defaults())
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	// A disabled bound is a zero in net/http (ReadTimeout, which the zero
	// timeouts would fall back to, is never set: see BodyReadTimeout).
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: positive(lim.ReadHeaderTimeout),
		IdleTimeout:       positive(lim.IdleTimeout),
		MaxHeaderBytes:    max(lim.MaxHeaderBytes, 0),
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:         cfg.TLS,
	}
	if d := lim.BodyReadTimeout; d > 0 {
		srv.Handler = bodyDeadline(h, d)
	}
	ln = NewListener(ln, lim.MaxConns, lim.MaxConnsPerSource, log)
	defer ln.Close() // ServeTLS leaves it open when the certificate cannot be loaded
	errc := make(chan error, 1)
	go func() {
		if cfg.TLS != nil || cfg.CertFile != "" {
			errc <- srv.ServeTLS(ln, cfg.CertFile, cfg.KeyFile)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
		return fmt.Errorf("serve on %s: %w", ln.Addr(), e)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		log.Warn("HTTP shutdown timed out: requests still running were cut off", "addr", ln.Addr().String(), "timeout", cfg.ShutdownTimeout)
		_ = srv.Close()
		return nil
	}
	return err
}

func positive(d time.Duration) time.Duration { return max(d, 0) }
