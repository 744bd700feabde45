package dhcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos"
)

// Server is a DHCPv4 server for one interface. Build it with New, run it
// with Serve.
type Server struct {
	cfg    Config
	log    *slog.Logger
	pools  []*pool
	leases *leaseTable // nil in proxy mode
	stats  counters
	ready  chan struct{}
	served atomic.Bool
	clock  func() time.Time // nil: time.Now; set by tests

	warnExhausted rate.Sometimes
}

// New checks cfg, fills in its defaults and, in full mode, loads the lease
// file. Errors about the configuration wrap ErrInvalidConfig.
func New(cfg Config) (*Server, error) {
	pools, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:           cfg,
		log:           cfg.Logger,
		pools:         pools,
		ready:         make(chan struct{}),
		warnExhausted: rate.Sometimes{Interval: 10 * time.Second},
	}
	if cfg.Mode == ModeProxy && (cfg.Pool.Start != nil || len(cfg.RelayPools) > 0 || len(cfg.Reservations) > 0 || cfg.LeaseFile != "") {
		s.log.Warn("dhcp: proxy mode leases no addresses; Pool, RelayPools, Reservations and LeaseFile are ignored")
	}
	if cfg.Mode == ModeFull {
		s.leases = newLeaseTable(pools, cfg.Reservations, cfg.OfferTime, cfg.DeclineTime)
		var skipped []Lease
		loaded := false
		if cfg.LeaseStore != nil {
			ctx, cancel := context.WithTimeout(context.Background(), leaseStoreTimeout)
			leases, err := cfg.LeaseStore.LoadLeases(ctx)
			cancel()
			if err == nil {
				skipped, loaded = s.leases.replace(leases), true
			} else {
				s.log.Warn("dhcp: cannot read the leases from the lease store; starting from the lease file", "err", err)
			}
		}
		if !loaded && cfg.LeaseFile != "" {
			var err error
			if skipped, err = s.leases.load(cfg.LeaseFile); err != nil {
				return nil, err
			}
		}
		s.logSkipped(skipped)
	}
	return s, nil
}

// leaseStoreTimeout bounds one load or save of the lease store.
const leaseStoreTimeout = 5 * time.Second

func (s *Server) logSkipped(skipped []Lease) {
	for _, l := range skipped {
		s.log.Warn("dhcp: dropping a stored lease that no longer fits the configuration",
			"mac", l.MAC.String(), "ip", l.IP, "state", l.State)
	}
}

// ReloadLeases replaces the lease table with the lease store's: a standby
// calls it when it starts leading, so that it knows what its predecessor
// handed out. A no-op without a lease store or in proxy mode.
func (s *Server) ReloadLeases(ctx context.Context) error {
	if s.leases == nil || s.cfg.LeaseStore == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, leaseStoreTimeout)
	defer cancel()
	leases, err := s.cfg.LeaseStore.LoadLeases(ctx)
	if err != nil {
		return fmt.Errorf("dhcp: reload leases: %w", err)
	}
	s.logSkipped(s.leases.replace(leases))
	return nil
}

// saveLeases writes changed leases to the lease store (while this server
// is active) and to the lease file.
func (s *Server) saveLeases(ctx context.Context) error {
	leases, changed := s.leases.persisted()
	if !changed {
		return nil
	}
	var errs []error
	if st := s.cfg.LeaseStore; st != nil && (s.cfg.Active == nil || s.cfg.Active()) {
		sctx, cancel := context.WithTimeout(ctx, leaseStoreTimeout)
		if err := st.SaveLeases(sctx, leases); err != nil {
			errs = append(errs, fmt.Errorf("lease store: %w", err))
		}
		cancel()
	}
	if s.cfg.LeaseFile != "" {
		b, err := EncodeLeases(leases)
		if err == nil {
			err = writeFileAtomic(s.cfg.LeaseFile, b)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		s.leases.failed() // try again at the next flush
		return err
	}
	return nil
}

// Ready is closed once Serve has its sockets open, i.e. when clients can
// be answered.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Leases returns a snapshot of the lease table (nil in proxy mode), sorted
// by address.
func (s *Server) Leases() []Lease {
	if s.leases == nil {
		return nil
	}
	return s.leases.snapshot()
}

// LeasedAddr returns the address this server has bound to mac: a lease
// in state bound that has not expired. It reports false in proxy mode and
// for machines without such a lease. The region binds a machine's agent
// token to this address in full mode.
func (s *Server) LeasedAddr(mac lpmos.MAC) (net.IP, bool) {
	if s.leases == nil {
		return nil, false
	}
	return s.leases.boundAddr(mac, s.now())
}

// inbound is a received packet waiting for a worker.
type inbound struct {
	data        []byte
	src         *net.UDPAddr
	conn        net.PacketConn
	onProxyPort bool
}

// Serve answers DHCP on the configured interface until ctx ends, then stops
// its goroutines, writes the lease file and returns nil. It returns an
// error if the sockets cannot be opened or a socket fails. Serve may be
// called once.
//
// One goroutine per socket reads packets into a bounded queue; Workers
// goroutines take them from it. When the queue is full, packets are
// dropped (Stats.QueueFull) rather than queued without bound: under a DHCP
// storm clients retry, and the server stays responsive.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("dhcp: Serve called twice")
	}
	type socket struct {
		conn  net.PacketConn
		proxy bool
	}
	var socks []socket
	closeAll := func() {
		for _, so := range socks {
			so.conn.Close()
		}
	}
	open := func(given net.PacketConn, port int, proxy bool) error {
		conn := given
		if conn == nil {
			var err error
			if conn, err = ListenPacket(ctx, s.cfg.Interface, port); err != nil {
				return err
			}
		}
		socks = append(socks, socket{conn, proxy})
		return nil
	}
	if err := open(s.cfg.Conn, ServerPort, false); err != nil {
		return err
	}
	if s.cfg.Mode == ModeProxy {
		if err := open(s.cfg.ProxyConn, ProxyPort, true); err != nil {
			closeAll()
			return err
		}
	} else if s.cfg.ProxyConn != nil {
		s.cfg.ProxyConn.Close() // owned, but unused in full mode
	}
	s.log.Info("dhcp: serving", "interface", s.cfg.Interface, "mode", string(s.cfg.Mode),
		"server_ip", s.cfg.ServerIP, "workers", s.cfg.Workers)
	close(s.ready)

	queue := make(chan inbound, s.cfg.QueueSize)
	stopping := make(chan struct{})
	errc := make(chan error, len(socks))
	var readers, workers sync.WaitGroup
	for _, so := range socks {
		readers.Go(func() {
			if err := s.read(so.conn, so.proxy, queue, stopping); err != nil {
				errc <- err
			}
		})
	}
	for range s.cfg.Workers {
		workers.Go(func() {
			for in := range queue {
				s.process(ctx, in)
			}
		})
	}
	flushDone := make(chan struct{})
	if s.leases != nil && (s.cfg.LeaseFile != "" || s.cfg.LeaseStore != nil) {
		go func() {
			defer close(flushDone)
			t := time.NewTicker(s.cfg.FlushInterval)
			defer t.Stop()
			for {
				select {
				case <-stopping:
					return
				case <-t.C:
					if err := s.saveLeases(ctx); err != nil {
						s.log.Warn("dhcp: saving leases", "err", err)
					}
				}
			}
		}()
	} else {
		close(flushDone)
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	// Stop the readers without closing the sockets, so that the workers
	// can still send the answers to what is already queued.
	close(stopping)
	for _, so := range socks {
		_ = so.conn.SetReadDeadline(time.Now())
	}
	readers.Wait()
	close(queue)
	workers.Wait()
	<-flushDone
	closeAll()
	if s.leases != nil && (s.cfg.LeaseFile != "" || s.cfg.LeaseStore != nil) {
		// The final save outlives Serve's context.
		if serr := s.saveLeases(context.WithoutCancel(ctx)); serr != nil {
			err = errors.Join(err, serr)
		}
	}
	s.log.Info("dhcp: stopped", "interface", s.cfg.Interface)
	return err
}

// read moves packets from conn to the queue until stopping is closed.
func (s *Server) read(conn net.PacketConn, proxy bool, queue chan<- inbound, stopping <-chan struct{}) error {
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := conn.ReadFrom(buf)
		if err != nil {
			select {
			case <-stopping:
				return nil
			default:
			}
			return fmt.Errorf("dhcp: reading from %v: %w", conn.LocalAddr(), err)
		}
		s.stats.received.Add(1)
		src, _ := addr.(*net.UDPAddr)
		select {
		case queue <- inbound{data: bytes.Clone(buf[:n]), src: src, conn: conn, onProxyPort: proxy}:
		default:
			s.stats.queueFull.Add(1)
			s.log.Debug("dhcp: queue full, dropped packet", "from", src)
		}
	}
}

// process answers one packet; it runs on a worker.
func (s *Server) process(ctx context.Context, in inbound) {
	if s.cfg.Active != nil && !s.cfg.Active() {
		s.stats.inactive.Add(1)
		return
	}
	reply, dst := s.handle(ctx, in.data, in.src, in.onProxyPort)
	if reply == nil {
		return
	}
	if _, err := in.conn.WriteTo(reply.ToBytes(), dst); err != nil {
		s.stats.sendErrors.Add(1)
		s.log.Warn("dhcp: sending reply", "to", dst, "err", err)
	}
}

// Stats are the server's counters since New. Received counts packets
// read from the sockets. A packet dropped before it is understood is
// counted in QueueFull or Malformed; every other one is counted by its
// message type (Discovers…Informs) and, if it gets no answer although it
// could have, in one of Ignored…PolicyErrors. Answers are counted by type.
type Stats struct {
	Received uint64 // packets read from the sockets
	// Dropped unread.
	QueueFull uint64 // no worker free and the queue full
	Malformed uint64 // not a valid DHCP client message
	Inactive  uint64 // read while Config.Active said no (a standby)
	// Valid client messages by type.
	Discovers, Requests, Releases, Declines, Informs uint64
	// Valid messages not answered.
	UnsupportedArch uint64 // network-boot client of an architecture LPMOS cannot boot
	Ignored         uint64 // policy said Ignore, not for this server, or nothing to say
	NoPool          uint64 // relayed from (or renewing on) a subnet without a pool
	PoolExhausted   uint64 // no free address to offer
	PolicyErrors    uint64 // BootPolicy failed
	// Answers.
	Offers, Acks, Naks uint64
	SendErrors         uint64 // answers the socket refused
}

type counters struct {
	received, queueFull, malformed, unsupportedArch  atomic.Uint64
	discovers, requests, releases, declines, informs atomic.Uint64
	ignored, noPool, poolExhausted, policyErrors     atomic.Uint64
	offers, acks, naks, sendErrors                   atomic.Uint64
	inactive                                         atomic.Uint64
	packets                                          packetCounters
	latency                                          latency
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Received: c.received.Load(), QueueFull: c.queueFull.Load(), Malformed: c.malformed.Load(),
		UnsupportedArch: c.unsupportedArch.Load(), Inactive: c.inactive.Load(),
		Discovers: c.discovers.Load(), Requests: c.requests.Load(), Releases: c.releases.Load(),
		Declines: c.declines.Load(), Informs: c.informs.Load(),
		Ignored: c.ignored.Load(), NoPool: c.noPool.Load(), PoolExhausted: c.poolExhausted.Load(),
		PolicyErrors: c.policyErrors.Load(),
		Offers:       c.offers.Load(), Acks: c.acks.Load(), Naks: c.naks.Load(), SendErrors: c.sendErrors.Load(),
	}
}
