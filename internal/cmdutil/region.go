package cmdutil

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/ndp"
	"github.com/lpmos/lpmos/pxe"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// RegionFlags configure a region's services: the flags every binary that
// runs a region shares (allinone, region).
type RegionFlags struct {
	Region     string
	Listen     string
	TFTPListen string
	DHCPIface  string
	DHCPMode   string
	DHCPRange  string
	DHCPRouter string
	DHCPDNS    string
	// IPv6RA answers IPv6 router solicitations on DHCPIface (package ndp).
	IPv6RA    bool
	RegionURL string
	// TLSCert and TLSKey turn on the region's HTTPS listener (TLSListen);
	// BootURL and FirmwareURL are where iPXE and UEFI HTTP boot firmware
	// go then (default: the plain listener).
	TLSCert, TLSKey, TLSListen string
	BootURL, FirmwareURL       string
	BootDir                    string
	IPXEDir                    string
	Unknown                    string
	LeaseFile                  string
	Timeouts                   string
	InstanceID                 string
	LeaderTTL                  time.Duration
	// JournalDir is where a region cut off from etcd journals its agents'
	// calls (region.Config.JournalDir); empty: none.
	JournalDir string
	// MetricsTokenFile holds the bearer token for the region's /metrics;
	// empty: the region serves no /metrics.
	MetricsTokenFile string
	// MaxConns and MaxConnsPerSource cap the region's HTTP connections
	// (0: region.DefaultHTTPLimits).
	MaxConns, MaxConnsPerSource int
	// DHCPFile is the --config file's dhcp: section (relay pools and
	// reservations, which have no flag); set by the program after
	// Configure.
	DHCPFile DHCPSection
}

// Register adds the region flags.
func (f *RegionFlags) Register(fs *flag.FlagSet) {
	def := os.Getenv("REGION_ID")
	if def == "" {
		def = "dc1"
	}
	fs.StringVar(&f.Region, "region", def, "the region this process serves (env REGION_ID)")
	fs.StringVar(&f.Listen, "region-listen", ":8081", "region HTTP: boot files, /boot/{mac}.ipxe, agent API, /health")
	fs.StringVar(&f.TFTPListen, "tftp-listen", ":69", "TFTP for the iPXE binaries; empty disables")
	fs.StringVar(&f.DHCPIface, "dhcp-iface", "", "interface for DHCP; empty disables DHCP")
	fs.StringVar(&f.DHCPMode, "dhcp-mode", "proxy", "full (with --dhcp-range) or proxy (beside an existing DHCP server)")
	fs.StringVar(&f.DHCPRange, "dhcp-range", "", "FIRST-LAST addresses for full mode, e.g. 10.0.0.100-10.0.0.200")
	fs.StringVar(&f.DHCPRouter, "dhcp-router", "", "default gateway handed out in full mode")
	fs.StringVar(&f.DHCPDNS, "dhcp-dns", "", "comma-separated DNS servers handed out in full mode")
	fs.BoolVar(&f.IPv6RA, "ipv6-ra", true, "with --dhcp-iface: answer IPv6 router solicitations there with an advertisement that configures nothing (no prefix, not a router), so iPXE does not wait ~16 s for IPv6; set false where a real IPv6 router advertises")
	fs.StringVar(&f.RegionURL, "region-url", "", "URL machines use to reach the region (default: from the DHCP interface's address)")
	fs.StringVar(&f.TLSCert, "region-tls-cert", "", "with --region-tls-key: serve the region's API over HTTPS (TLS 1.2+) on --region-tls-listen too; agents then use https and pin this certificate (PEM)")
	fs.StringVar(&f.TLSKey, "region-tls-key", "", "key of --region-tls-cert (PEM)")
	fs.StringVar(&f.TLSListen, "region-tls-listen", ":8443", "region HTTPS, with --region-tls-cert: the agent API, boot files and scripts over TLS")
	fs.StringVar(&f.BootURL, "region-boot-url", "", "with TLS: URL iPXE fetches its script and the agent's kernel from, and installers their answer files (default: http:// on --region-listen; Debian's iPXE has no HTTPS)")
	fs.StringVar(&f.FirmwareURL, "region-firmware-url", "", "URL whose /boot/ipxe/ UEFI HTTP boot firmware is handed in DHCP (default: --region-boot-url; https needs firmware that trusts the certificate)")
	fs.StringVar(&f.BootDir, "boot-dir", "./lpmos-data/boot", "kernels, initramfs and OS images served over HTTP")
	fs.StringVar(&f.IPXEDir, "ipxe-dir", lpmos.DefaultIPXEDir, "directory of the iPXE binaries")
	fs.StringVar(&f.Unknown, "unknown-machines", region.UnknownIgnore, "machines without a task: ignore (no DHCP answer), record (note them, no answer) or discover (boot the agent in inventory mode: it reports the hardware into the machine record and powers off)")
	fs.StringVar(&f.Timeouts, "task-timeouts", "", "status timeouts overriding the defaults, e.g. installing=30m,booting=10m (0 disables one)")
	fs.StringVar(&f.LeaseFile, "dhcp-lease-file", "./lpmos-data/dhcp-leases.json", "where full-mode DHCP keeps its leases")
	fs.StringVar(&f.InstanceID, "instance-id", "", "this process's name among its region's processes (default: host name and region URL)")
	fs.DurationVar(&f.LeaderTTL, "leader-ttl", 10*time.Second, "lease on the region's leadership: start two or more processes with the same --region and one leads, the others take over within about this long after it dies")
	fs.StringVar(&f.JournalDir, "journal-dir", "", "directory of the journal that keeps the region's machines installing while etcd is out of reach (their agents' calls, fsynced, applied once etcd is back); for a region run as a single process; empty: agent calls fail while etcd is out of reach")
	fs.StringVar(&f.MetricsTokenFile, "metrics-token-file", "", "file (mode 0600) holding the bearer token Prometheus sends to GET /metrics on --region-listen; empty: no /metrics there")
	lim := region.DefaultHTTPLimits()
	fs.IntVar(&f.MaxConns, "http-max-conns", lim.MaxConns, "most region HTTP connections open at once (machines booting and agents at once; more are closed on accept)")
	fs.IntVar(&f.MaxConnsPerSource, "http-max-conns-per-source", lim.MaxConnsPerSource, "most region HTTP connections from one source address (raise it behind a NAT or relay; -1: no cap)")
}

// ipv4Of returns the first IPv4 address of an interface, or of any
// non-loopback interface when iface is empty.
func ipv4Of(iface string) (net.IP, error) {
	var ifaces []net.Interface
	if iface != "" {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return nil, err
		}
		ifaces = []net.Interface{*ifi}
	} else {
		all, err := net.Interfaces()
		if err != nil {
			return nil, err
		}
		for _, ifi := range all {
			if ifi.Flags&net.FlagLoopback == 0 && ifi.Flags&net.FlagUp != 0 {
				ifaces = append(ifaces, ifi)
			}
		}
	}
	for _, ifi := range ifaces {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				return n.IP.To4(), nil
			}
		}
	}
	return nil, fmt.Errorf("no IPv4 address on %q", iface)
}

func (f *RegionFlags) tlsOn() bool { return f.TLSCert != "" || f.TLSKey != "" }

// urls are the region's public URL (the agent's: https with TLS) and,
// with TLS, its boot URL (plain HTTP, for iPXE) and firmware URL.
func (f *RegionFlags) urls() (public, boot, firmware string, err error) {
	if !f.tlsOn() {
		if f.RegionURL != "" {
			public = strings.TrimSuffix(f.RegionURL, "/")
		} else if public, err = f.urlOf("http", f.Listen, "--region-listen", "--region-url"); err != nil {
			return "", "", "", err
		}
		return public, strings.TrimSuffix(f.BootURL, "/"), strings.TrimSuffix(f.FirmwareURL, "/"), nil
	}
	if f.TLSCert == "" || f.TLSKey == "" {
		return "", "", "", errors.New("--region-tls-cert and --region-tls-key must be given together")
	}
	if f.RegionURL != "" {
		public = strings.TrimSuffix(f.RegionURL, "/")
		if !strings.HasPrefix(public, "https://") {
			return "", "", "", fmt.Errorf("--region-url %q: with --region-tls-cert the agent's URL must be https://", f.RegionURL)
		}
	} else if public, err = f.urlOf("https", f.TLSListen, "--region-tls-listen", "--region-url"); err != nil {
		return "", "", "", err
	}
	if f.BootURL != "" {
		boot = strings.TrimSuffix(f.BootURL, "/")
	} else if boot, err = f.urlOf("http", f.Listen, "--region-listen", "--region-boot-url"); err != nil {
		return "", "", "", err
	}
	return public, boot, strings.TrimSuffix(f.FirmwareURL, "/"), nil
}

// urlOf is scheme://ADDRESS:PORT of a listen address, with the DHCP
// interface's address (else loopback).
func (f *RegionFlags) urlOf(scheme, listen, listenFlag, urlFlag string) (string, error) {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("%s: %w", listenFlag, err)
	}
	if port == "0" {
		// The port is chosen only when the server listens, after the URL
		// went into every boot script: machines would be told port 0.
		return "", fmt.Errorf("%s %q: a chosen port (0) needs %s, the URL machines use", listenFlag, listen, urlFlag)
	}
	ip, err := ipv4Of(f.DHCPIface)
	if err != nil {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return fmt.Sprintf("%s://%s:%s", scheme, ip, port), nil
}

func parseRange(s string) (net.IP, net.IP, error) {
	a, b, ok := strings.Cut(s, "-")
	first, last := net.ParseIP(strings.TrimSpace(a)).To4(), net.ParseIP(strings.TrimSpace(b)).To4()
	if !ok || first == nil || last == nil {
		return nil, nil, fmt.Errorf("--dhcp-range %q: want FIRST-LAST IPv4 addresses", s)
	}
	return first, last, nil
}

// ServerConfig maps the flags to a region server's configuration. The
// binary adds what is its own (SkipBootFileCheck for simulated machines,
// TFTPOptional for the all-in-one demo) before region.NewServer.
func (f *RegionFlags) ServerConfig(st store.Store, log *slog.Logger) (region.ServerConfig, error) {
	url, bootURL, firmwareURL, err := f.urls()
	if err != nil {
		return region.ServerConfig{}, err
	}
	timeouts, err := ParseTimeouts(f.Timeouts)
	if err != nil {
		return region.ServerConfig{}, err
	}
	cfg := region.ServerConfig{
		Region: region.Config{Timeouts: timeouts,
			RegionID: f.Region, Store: st, PublicURL: url, BootURL: bootURL, FirmwareURL: firmwareURL,
			BootDir: f.BootDir, IPXEDir: f.IPXEDir,
			UnknownMachines: f.Unknown, Logger: log, InstanceID: f.InstanceID, LeaderTTL: f.LeaderTTL,
			JournalDir: f.JournalDir,
		},
		HTTPAddr:   f.Listen,
		HTTPLimits: region.HTTPLimits{MaxConns: f.MaxConns, MaxConnsPerSource: f.MaxConnsPerSource},
	}
	if f.tlsOn() {
		cfg.TLSAddr, cfg.TLSCertFile, cfg.TLSKeyFile = f.TLSListen, f.TLSCert, f.TLSKey
	}
	if f.MetricsTokenFile != "" {
		tok, err := readSecretFile(f.MetricsTokenFile, "--metrics-token-file")
		if err != nil {
			return region.ServerConfig{}, err
		}
		cfg.MetricsToken = string(tok)
	}
	if f.TFTPListen != "" {
		cfg.TFTP = &pxe.TFTPConfig{Root: f.IPXEDir, Addr: f.TFTPListen, Logger: log}
	}
	if !f.DHCPFile.Empty() && (f.DHCPIface == "" || f.DHCPMode != string(dhcp.ModeFull)) {
		return region.ServerConfig{}, errors.New("the config file's dhcp: section (relay pools, reservations) needs --dhcp-iface and --dhcp-mode full")
	}
	if f.DHCPIface != "" {
		mode, err := dhcp.ParseMode(f.DHCPMode)
		if err != nil {
			return region.ServerConfig{}, err
		}
		dc := dhcp.Config{Interface: f.DHCPIface, Mode: mode, Logger: log}
		if mode == dhcp.ModeFull {
			if dc.Pool.Start, dc.Pool.End, err = parseRange(f.DHCPRange); err != nil {
				return region.ServerConfig{}, err
			}
			dc.Pool.Router = net.ParseIP(f.DHCPRouter)
			for _, d := range strings.Split(f.DHCPDNS, ",") {
				if ip := net.ParseIP(strings.TrimSpace(d)); ip != nil {
					dc.Pool.DNS = append(dc.Pool.DNS, ip)
				}
			}
			dc.LeaseFile = f.LeaseFile
			if err := f.DHCPFile.Apply(&dc); err != nil {
				return region.ServerConfig{}, err
			}
		}
		cfg.DHCP = &dc
		if f.IPv6RA {
			cfg.RA = &ndp.Config{Interface: f.DHCPIface, Logger: log}
		}
	}
	return cfg, nil
}

// ParseTimeouts parses --task-timeouts: comma-separated status=duration
// pairs for the statuses a region times out.
func ParseTimeouts(s string) (map[task.Status]time.Duration, error) {
	out := map[task.Status]time.Duration{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, pair := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(pair), "=")
		st := task.Status(strings.TrimSpace(name))
		if _, known := region.DefaultTimeouts()[st]; !ok || !known {
			return nil, fmt.Errorf("--task-timeouts: %q: want status=duration with status one of ready, booting, pending_approval, approved, installing", pair)
		}
		d, err := time.ParseDuration(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("--task-timeouts: %s: %w", st, err)
		}
		out[st] = d
	}
	return out, nil
}
