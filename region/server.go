package region

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/internal/httpserve"
	"github.com/lpmos/lpmos/ndp"
	"github.com/lpmos/lpmos/pxe"
)

// HTTPLimits bound what clients can hold of the region's HTTP server:
// header, body and idle timeouts, the header size, and the connections
// open at once in total and per source address. A zero field takes its
// value from DefaultHTTPLimits; a negative one disables that bound.
type HTTPLimits = httpserve.Limits

// DefaultHTTPLimits are the region's HTTP limits: 10 s to send headers,
// 30 s to send a body (long-polls, which send none, are not cut short),
// 2 min idle, 64 KiB of headers, 1024 connections and 64 per source
// address, so that one machine, or one misbehaving client on the
// provisioning network, cannot take them all.
func DefaultHTTPLimits() HTTPLimits {
	l := httpserve.Defaults()
	l.MaxConnsPerSource = 64
	return l
}

// ServerConfig configures a Server: a region and the services that answer
// its machines. Region and one of HTTPAddr or HTTPListener are required;
// TFTP and DHCP run only when configured.
type ServerConfig struct {
	// Region configures the region itself. Its Services are reported
	// together with the services the Server runs.
	Region Config

	// HTTPAddr is where the HTTP server (boot files, iPXE scripts, the
	// agent API, /health) listens, e.g. ":8081". HTTPListener, if set, is
	// used instead; the Server owns it and closes it.
	HTTPAddr     string
	HTTPListener net.Listener
	// HTTPLimits protect the HTTP server (and the HTTPS one, each on its
	// own); zero fields take DefaultHTTPLimits.
	HTTPLimits HTTPLimits

	// TLSAddr (e.g. ":8443") or TLSListener, with TLSCertFile and
	// TLSKeyFile (PEM), serve the same HTTP API over TLS 1.2 or later.
	// The plain HTTP server keeps running beside it: PXE firmware and
	// Debian's iPXE cannot speak TLS, so they fetch iPXE, scripts and boot
	// files from Region.BootURL over HTTP, while Region.PublicURL is the
	// https URL the agent uses. The certificate's SHA-256 becomes
	// Region.RegionCertSHA256 (unless set), which agents pin.
	TLSAddr                 string
	TLSListener             net.Listener
	TLSCertFile, TLSKeyFile string
	// ShutdownTimeout bounds the HTTP server's graceful shutdown when Run's
	// context ends (default 5 s).
	ShutdownTimeout time.Duration

	// TFTP, if set, serves the iPXE binaries over TFTP. Its Root defaults
	// to Region.IPXEDir and its Logger to Region.Logger.
	TFTP *pxe.TFTPConfig
	// TFTPOptional turns a TFTP start-up failure (no iPXE binaries, port
	// 69 not allowed) into a warning: the region runs without TFTP.
	TFTPOptional bool

	// DHCP, if set, answers DHCP or ProxyDHCP. Its Policy is the region's
	// (DHCPPolicy) and its Logger defaults to Region.Logger.
	DHCP *dhcp.Config

	// Registry receives the metrics of the region and of its DHCP and TFTP
	// servers (default: a new registry of its own). A binary adds the Go
	// and process collectors and the build information to it.
	Registry *prometheus.Registry
	// MetricsToken, if set, serves Registry at GET /metrics on the HTTP
	// listener to callers that send it as a bearer token. Without it the
	// region serves no /metrics: its listener faces the provisioning
	// network, where anyone can connect.
	MetricsToken string
	// RA, if set, answers IPv6 router solicitations on its Interface
	// (normally DHCP's) with an advertisement that configures nothing, so
	// that iPXE does not wait ~16 s for IPv6 on networks without an IPv6
	// router (see package ndp). Leave it nil where a real IPv6 router
	// advertises. Its Logger defaults to Region.Logger. It is best effort:
	// if it cannot run (no IPv6 on the interface), the region logs a
	// warning and runs without it.
	RA *ndp.Config

	// Ready, if set, is called once the HTTP server (and TFTP) listen,
	// with the HTTP server's address: a caller that asked for ":0" learns
	// its port here.
	Ready func(httpAddr net.Addr)
}

// Server is a region with its HTTP, TFTP and DHCP services: what a
// region binary runs. Run starts everything and stops it all again.
type Server struct {
	cfg      ServerConfig
	tls      *tls.Config // nil: no HTTPS
	reg      *Region
	dhcp     *dhcp.Server
	services map[string]string // shared with reg's Config: written only before Run starts reg
	ran      atomic.Bool
}

// NewServer checks the configuration and builds the region and its DHCP
// server. Nothing listens until Run.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.HTTPAddr == "" && cfg.HTTPListener == nil {
		return nil, errors.New("region: an HTTP address or listener is required")
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 5 * time.Second
	}
	cfg.HTTPLimits = cfg.HTTPLimits.Or(DefaultHTTPLimits())
	s := &Server{cfg: cfg, services: maps.Clone(cfg.Region.Services)}
	if s.services == nil {
		s.services = map[string]string{}
	}
	s.services["http"] = "running"
	rc := cfg.Region
	if cfg.TLSAddr != "" || cfg.TLSListener != nil || cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		tc, pin, err := loadTLS(cfg)
		if err != nil {
			if cfg.TLSListener != nil {
				cfg.TLSListener.Close()
			}
			return nil, err
		}
		s.tls = tc
		rc.RegionCertSHA256 = cmp.Or(rc.RegionCertSHA256, pin)
		s.services["https"] = "running"
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
		s.cfg.Registry = cfg.Registry
	}
	if rc.Registerer == nil {
		rc.Registerer = cfg.Registry
	}
	rc.Services = s.services
	if cfg.DHCP != nil && rc.Leases == nil {
		rc.Leases = serverLeases{s}
	}
	reg, err := New(rc)
	if err != nil {
		return nil, err
	}
	s.reg = reg
	if cfg.DHCP != nil {
		dc := *cfg.DHCP
		dc.Policy = reg.DHCPPolicy()
		dc.Active = reg.DHCPActive
		if dc.Trace == nil {
			dc.Trace = reg.DHCPTrace
		}
		dc.Logger = cmp.Or(dc.Logger, reg.cfg.Logger)
		if dc.Mode == dhcp.ModeFull && dc.LeaseStore == nil {
			// Leases in the store, for the standby that takes over; the
			// lease file stays as a cache.
			dc.LeaseStore = storeLeases{st: reg.cfg.Store, key: DHCPLeasesKey(reg.cfg.RegionID), fence: reg.lead}
		}
		if s.dhcp, err = dhcp.New(dc); err != nil {
			return nil, fmt.Errorf("region: DHCP: %w", err)
		}
		reg.reloadLeases = s.dhcp.ReloadLeases
		s.services["dhcp"] = string(cmp.Or(dc.Mode, dhcp.ModeProxy))
		if err := cfg.Registry.Register(newDHCPCollector(s.dhcp, s.labels())); err != nil {
			return nil, fmt.Errorf("region: DHCP metrics: %w", err)
		}
	}
	if cfg.RA != nil {
		if _, err := ndp.New(*cfg.RA); err != nil {
			return nil, fmt.Errorf("region: IPv6 RA: %w", err)
		}
	}
	return s, nil
}

// loadTLS reads the HTTPS certificate and key and returns the server's
// TLS configuration and the certificate's pin (SHA-256 of the leaf's DER,
// hex).
func loadTLS(cfg ServerConfig) (*tls.Config, string, error) {
	if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
		return nil, "", errors.New("region: HTTPS needs both a certificate and a key file")
	}
	if cfg.TLSAddr == "" && cfg.TLSListener == nil {
		return nil, "", errors.New("region: HTTPS needs an address or listener")
	}
	pair, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, "", fmt.Errorf("region: HTTPS certificate: %w", err)
	}
	if !strings.HasPrefix(cfg.Region.PublicURL, "https://") {
		return nil, "", fmt.Errorf("region: with HTTPS the public URL (the agent's) must be https://, not %q", cfg.Region.PublicURL)
	}
	// TLS 1.2 is the floor, not 1.3: UEFI firmware (EDK2's TlsDxe) speaks
	// only 1.2.
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}, CipherSuites: cipherSuites()},
		agent.CertSHA256(pair.Certificate[0]), nil
}

// cipherSuites are Go's secure TLS 1.2 suites, which it prefers, and
// then AES-GCM with RSA key exchange as a last resort for UEFI firmware:
// OVMF's HTTP boot (EDK2 2022.11) offers only RSA and DHE key exchange,
// and Go has no DHE. A client that offers ECDHE (every other client) gets
// ECDHE; the fallback needs an RSA certificate.
func cipherSuites() []uint16 {
	var ids []uint16
	for _, cs := range tls.CipherSuites() {
		if slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
			ids = append(ids, cs.ID)
		}
	}
	return append(ids, tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384)
}

// labels are the constant labels of the region's metrics.
func (s *Server) labels() prometheus.Labels {
	return prometheus.Labels{"region": s.reg.cfg.RegionID}
}

// handler is the region's handler with, when a metrics token is set,
// GET /metrics in front of it.
func (s *Server) handler() http.Handler {
	if s.cfg.MetricsToken == "" {
		return s.reg.Handler()
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsHandler(s.cfg.Registry, s.cfg.MetricsToken))
	mux.Handle("/", s.reg.Handler())
	return mux
}

// Region is the region the server runs: its handler, catalogue, public
// URL and Synced.
func (s *Server) Region() *Region { return s.reg }

// Run listens, then runs the region (task watch, heartbeat, timeouts), its
// HTTP server and, as configured, TFTP and DHCP, until ctx ends or one of
// them fails. Then it stops them all (the HTTP server gracefully, within
// ShutdownTimeout) and returns: nil when ctx ended, else the first
// failure, such as an address already in use. Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("region: Server.Run called twice")
	}
	log := s.reg.log
	ln := s.cfg.HTTPListener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("region: HTTP: %w", err)
		}
	}
	tln := s.cfg.TLSListener
	if s.tls != nil && tln == nil {
		var err error
		if tln, err = net.Listen("tcp", s.cfg.TLSAddr); err != nil {
			ln.Close()
			return fmt.Errorf("region: HTTPS: %w", err)
		}
	}
	var tftp *pxe.TFTPServer
	if s.cfg.TFTP != nil {
		tc := *s.cfg.TFTP
		if tc.Files == nil {
			tc.Root = cmp.Or(tc.Root, s.reg.cfg.IPXEDir)
		}
		tc.Logger = cmp.Or(tc.Logger, s.reg.cfg.Logger)
		if tc.Trace == nil {
			tc.Trace = s.reg.TFTPTrace
		}
		var err error
		tftp, err = pxe.NewTFTPServer(tc)
		switch {
		case err != nil && s.cfg.TFTPOptional:
			log.Warn("TFTP disabled: machines cannot PXE-boot from this region", "err", err)
		case err != nil:
			ln.Close()
			closeListener(tln)
			return fmt.Errorf("region: TFTP: %w", err)
		default:
			s.services["tftp"] = "running"
			if err := s.cfg.Registry.Register(newTFTPCollector(tftp, s.labels())); err != nil {
				tftp.Close()
				ln.Close()
				closeListener(tln)
				return fmt.Errorf("region: TFTP metrics: %w", err)
			}
		}
	}
	ra := s.openRA(ctx)
	log.Info("region started", "url", s.reg.PublicURL(), "http", ln.Addr().String(), "https", listenerAddr(tln),
		"tftp", tftpAddr(tftp), "dhcp", s.services["dhcp"], "ipv6_ra", s.services["ipv6_ra"])
	if s.cfg.Ready != nil {
		s.cfg.Ready(ln.Addr())
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.reg.Run(gctx) })
	g.Go(func() error {
		err := httpserve.Serve(gctx, ln, s.handler(), httpserve.Config{
			Limits: s.cfg.HTTPLimits, ShutdownTimeout: s.cfg.ShutdownTimeout, Logger: log.With("component", "http"),
		})
		if err != nil {
			return fmt.Errorf("region: HTTP: %w", err)
		}
		return nil
	})
	if tln != nil {
		g.Go(func() error {
			err := httpserve.Serve(gctx, tln, s.handler(), httpserve.Config{TLS: s.tls,
				Limits: s.cfg.HTTPLimits, ShutdownTimeout: s.cfg.ShutdownTimeout, Logger: log.With("component", "https"),
			})
			if err != nil {
				return fmt.Errorf("region: HTTPS: %w", err)
			}
			return nil
		})
	}
	if tftp != nil {
		g.Go(func() error { return tftp.Serve(gctx) })
	}
	if s.dhcp != nil {
		g.Go(func() error {
			if err := s.dhcp.Serve(gctx); err != nil {
				return fmt.Errorf("region: DHCP: %w", err)
			}
			return nil
		})
	}
	if ra != nil {
		g.Go(func() error {
			// Best effort: without it machines boot, only slower.
			if err := ra.Serve(gctx); err != nil {
				log.Warn("IPv6 router advertisements off: iPXE will wait ~16 s for IPv6 on every boot", "err", err)
			}
			return nil
		})
	}
	return g.Wait()
}

// openRA opens the IPv6 RA responder's socket, if one is configured. It
// is best effort: when that fails (no IPv6 on the interface) the region
// warns and runs without it.
func (s *Server) openRA(ctx context.Context) *ndp.Server {
	if s.cfg.RA == nil {
		return nil
	}
	rc := *s.cfg.RA
	rc.Logger = cmp.Or(rc.Logger, s.reg.cfg.Logger)
	if rc.Conn == nil {
		conn, err := ndp.Listen(ctx, rc.Interface)
		if err != nil {
			s.reg.log.Warn("IPv6 router advertisements off: iPXE will wait ~16 s for IPv6 on every boot (where that is intended, leave them off: --ipv6-ra=false)", "err", err)
			return nil
		}
		rc.Conn = conn
	}
	ra, err := ndp.New(rc) // checked by NewServer
	if err != nil {
		rc.Conn.Close()
		s.reg.log.Warn("IPv6 router advertisements off", "err", err)
		return nil
	}
	s.services["ipv6_ra"] = "running"
	return ra
}

// serverLeases asks the Server's DHCP server, built after the region
// (it needs the region's policy), for leases.
type serverLeases struct{ s *Server }

func (l serverLeases) LeasedAddr(mac lpmos.MAC) (net.IP, bool) {
	if l.s.dhcp == nil {
		return nil, false
	}
	return l.s.dhcp.LeasedAddr(mac)
}

func closeListener(ln net.Listener) {
	if ln != nil {
		ln.Close()
	}
}

func listenerAddr(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

func tftpAddr(t *pxe.TFTPServer) string {
	if t == nil {
		return ""
	}
	return t.Addr().String()
}
