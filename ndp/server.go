package ndp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/ipv6"
	"golang.org/x/time/rate"
)

// Defaults for Config's zero fields.
const (
	// DefaultUnsolicited is how many RAs a Server sends unasked when it
	// starts (RFC 4861's MAX_INITIAL_RTR_ADVERTISEMENTS).
	DefaultUnsolicited = 3
	// DefaultUnsolicitedInterval is the gap between them.
	DefaultUnsolicitedInterval = time.Second
	// DefaultMinInterval is the least time between two RAs: solicitations
	// within it are answered by one RA at its end. iPXE's first retry
	// comes 1/8 s after its first solicitation, so 50 ms answers every
	// machine before it asks again, while a rack of them soliciting at
	// once costs at most 20 RAs a second.
	DefaultMinInterval = 50 * time.Millisecond
)

// ErrInvalidConfig is wrapped by every error New returns for a bad Config.
var ErrInvalidConfig = errors.New("invalid router advertisement configuration")

// Config configures a Server.
type Config struct {
	// Interface is the interface to answer on, e.g. the region's DHCP
	// interface. Required unless Conn is set.
	Interface string
	// Conn, if set, is a socket opened by Listen (e.g. inside another
	// network namespace) that the Server uses instead of opening its own;
	// the Server owns it and closes it.
	Conn *Conn
	// Unsolicited is how many RAs to send unasked at start (default
	// DefaultUnsolicited; negative: none), UnsolicitedInterval the gap
	// between them (default DefaultUnsolicitedInterval).
	Unsolicited         int
	UnsolicitedInterval time.Duration
	// MinInterval is the least time between two RAs (default
	// DefaultMinInterval).
	MinInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Stats counts what a Server saw and did.
type Stats struct {
	// Solicitations is the number of valid router solicitations received.
	Solicitations uint64
	// Ignored is the number of malformed ones dropped (see
	// ParseRouterSolicitation).
	Ignored uint64
	// Advertisements is the number of RAs sent, solicited or not.
	Advertisements uint64
	// SendErrors is the number of RAs the kernel refused to send (e.g.
	// no usable link-local address on the interface yet).
	SendErrors uint64
}

// Server answers router solicitations on one interface. Build it with New,
// run it with Serve.
type Server struct {
	cfg    Config
	log    *slog.Logger
	ready  chan struct{}
	served atomic.Bool

	solicitations, ignored, advertisements, sendErrors atomic.Uint64
	warnSend                                           rate.Sometimes
}

// New checks cfg and fills in its defaults. Nothing is opened until Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Interface == "" && cfg.Conn == nil {
		return nil, fmt.Errorf("%w: an interface is required", ErrInvalidConfig)
	}
	if cfg.Unsolicited == 0 {
		cfg.Unsolicited = DefaultUnsolicited
	}
	if cfg.UnsolicitedInterval <= 0 {
		cfg.UnsolicitedInterval = DefaultUnsolicitedInterval
	}
	if cfg.MinInterval <= 0 {
		cfg.MinInterval = DefaultMinInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "ipv6-ra"),
		ready:    make(chan struct{}),
		warnSend: rate.Sometimes{Interval: time.Minute},
	}, nil
}

// Ready is closed once Serve has its socket open, i.e. when solicitations
// are answered.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Stats returns the counters so far.
func (s *Server) Stats() Stats {
	return Stats{
		Solicitations:  s.solicitations.Load(),
		Ignored:        s.ignored.Load(),
		Advertisements: s.advertisements.Load(),
		SendErrors:     s.sendErrors.Load(),
	}
}

// Serve opens the socket (unless Config.Conn is set), sends the
// unsolicited RAs and answers solicitations until ctx ends; then it closes
// the socket, waits for its goroutines and returns nil. It returns an
// error if the socket cannot be opened or fails. It may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("ndp: Serve called twice")
	}
	conn := s.cfg.Conn
	if conn == nil {
		var err error
		if conn, err = Listen(ctx, s.cfg.Interface); err != nil {
			return err
		}
	}
	defer conn.Close()
	s.log.Info("answering IPv6 router solicitations (no prefix, not a default router, M=0 O=0)",
		"iface", conn.ifi.Name)
	close(s.ready)

	// One goroutine advertises; this one reads until the socket is closed,
	// which ctx's end does, or fails, which stops the advertiser.
	actx, stopAdvertising := context.WithCancel(ctx)
	defer stopAdvertising()
	want := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { s.advertise(actx, conn, want) })
	stopClosing := context.AfterFunc(ctx, func() { conn.Close() })
	err := s.read(conn, want)
	stopClosing()
	stopAdvertising()
	wg.Wait()
	if ctx.Err() != nil {
		return nil // the socket was closed because ctx ended
	}
	return err
}

// read receives solicitations and signals want (coalescing: one pending
// signal is enough) until the socket fails or is closed.
func (s *Server) read(conn *Conn, want chan<- struct{}) error {
	buf := make([]byte, 1500)
	for {
		n, cm, src, err := conn.pc.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("ndp: reading on %s: %w", conn.ifi.Name, err)
		}
		var srcIP net.IP
		if a, ok := src.(*net.IPAddr); ok {
			srcIP = a.IP
		}
		hop := -1
		if cm != nil {
			hop = cm.HopLimit
			if cm.IfIndex != 0 && cm.IfIndex != conn.ifi.Index {
				s.ignored.Add(1)
				continue
			}
		}
		if _, err := ParseRouterSolicitation(buf[:n], srcIP, hop); err != nil {
			s.ignored.Add(1)
			s.log.Debug("ignoring a packet", "src", src, "err", err)
			continue
		}
		s.solicitations.Add(1)
		select {
		case want <- struct{}{}:
		default: // an RA is already due; it answers this one too
		}
	}
}

// advertise sends the unsolicited RAs, then one RA per signal on want, at
// most one per MinInterval, until ctx ends.
func (s *Server) advertise(ctx context.Context, conn *Conn, want <-chan struct{}) {
	ra := RouterAdvertisement(conn.ifi.HardwareAddr)
	var last time.Time
	left := s.cfg.Unsolicited
	unsolicited := time.NewTimer(0)
	defer unsolicited.Stop()
	if left <= 0 {
		unsolicited.Stop() // since Go 1.23 no value arrives after Stop
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-unsolicited.C:
			s.send(conn, ra, false)
			last = time.Now()
			if left--; left > 0 {
				unsolicited.Reset(s.cfg.UnsolicitedInterval)
			}
		case <-want:
			if wait := time.Until(last.Add(s.cfg.MinInterval)); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				// Whoever solicited meanwhile hears the RA sent now.
				select {
				case <-want:
				default:
				}
			}
			s.send(conn, ra, true)
			last = time.Now()
		}
	}
}

var allNodes = net.ParseIP("ff02::1")

// send multicasts ra to all nodes on the interface with hop limit 255.
func (s *Server) send(conn *Conn, ra []byte, solicited bool) {
	cm := &ipv6.ControlMessage{HopLimit: ndpHopLimit, IfIndex: conn.ifi.Index}
	if _, err := conn.pc.WriteTo(ra, cm, &net.IPAddr{IP: allNodes, Zone: conn.ifi.Name}); err != nil {
		s.sendErrors.Add(1)
		s.warnSend.Do(func() {
			s.log.Warn("cannot send an IPv6 router advertisement: booting machines wait for IPv6 (iPXE ~16 s); does the interface have an IPv6 link-local address?",
				"iface", conn.ifi.Name, "err", err)
		})
		return
	}
	s.advertisements.Add(1)
	s.log.Debug("IPv6 router advertisement sent", "iface", conn.ifi.Name, "solicited", solicited)
}
