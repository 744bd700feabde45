package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config says how many firmware clients to simulate and how.
type Config struct {
	// Iface is the interface the clients broadcast on (in the clients'
	// network namespace).
	Iface string
	// Clients is how many machines power on.
	Clients int
	// Ramp spreads their starts evenly over this long (0: all at once).
	Ramp time.Duration
	// MACPrefix is the first three bytes of every client's MAC; the last
	// three count from 1.
	MACPrefix [3]byte
	// ScriptURL is the URL of the script the iPXE stage fetches; {mac} is
	// replaced by the client's MAC (aa:bb:cc:dd:ee:ff).
	ScriptURL string
	// BlockSize is the TFTP blksize asked for (1468).
	BlockSize int
	// BootFileSize, if not 0, is the boot file's size: a transfer of any
	// other length fails.
	BootFileSize int
	// DHCPWaits and TFTPWaits are the waits before each retransmission
	// (default a PXE ROM's: 4, 8, 16, 32 s for DHCP; 1, 2, 4, 8 s for TFTP).
	DHCPWaits, TFTPWaits []time.Duration
	// HTTPTimeout bounds the script's fetch (default 30 s).
	HTTPTimeout time.Duration
}

// Phase names a step of a client's boot.
type Phase string

// The phases, in order.
const (
	PhaseDHCP Phase = "dhcp"
	PhaseTFTP Phase = "tftp"
	PhaseHTTP Phase = "http"
)

// Phases lists them in order.
var Phases = []Phase{PhaseDHCP, PhaseTFTP, PhaseHTTP}

// clientResult is one client's boot.
type clientResult struct {
	mac    net.HardwareAddr
	times  map[Phase]time.Duration
	total  time.Duration
	failed Phase // empty when the script arrived
	err    error
}

// Result summarises a storm.
type Result struct {
	Clients  int
	Failures map[Phase]int
	// Errors holds up to a few error messages per phase.
	Errors map[Phase][]string
	// Total is time from a client's first DISCOVER to its script, of the
	// clients that got one; Phase the time of each phase.
	Total Percentiles
	Phase map[Phase]Percentiles
	// Wall is from the first start to the last client's end.
	Wall time.Duration
}

// Failed is the number of clients that did not get their script.
func (r Result) Failed() int {
	n := 0
	for _, c := range r.Failures {
		n += c
	}
	return n
}

// Percentiles of a set of durations.
type Percentiles struct {
	N                  int
	P50, P95, P99, Max time.Duration
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(p float64) time.Duration {
		return d[min(len(d)-1, int(math.Ceil(p*float64(len(d))))-1)]
	}
	return Percentiles{N: len(d), P50: at(0.50), P95: at(0.95), P99: at(0.99), Max: d[len(d)-1]}
}

func (c *Config) defaults() {
	if c.BlockSize == 0 {
		c.BlockSize = 1468
	}
	if c.DHCPWaits == nil {
		c.DHCPWaits = []time.Duration{4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second}
	}
	if c.TFTPWaits == nil {
		c.TFTPWaits = []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	}
	if c.HTTPTimeout == 0 {
		c.HTTPTimeout = 30 * time.Second
	}
}

// Run powers on cfg.Clients machines and waits for all of them to get their
// script or fail. Every client is bounded by its retransmission schedules
// and the HTTP timeout, and the whole run by ctx.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg.defaults()
	if cfg.Clients <= 0 || cfg.Clients > 1<<24-1 {
		return Result{}, fmt.Errorf("clients: %d is not between 1 and %d", cfg.Clients, 1<<24-1)
	}
	if !strings.Contains(cfg.ScriptURL, "://") {
		return Result{}, fmt.Errorf("script URL: %q is not a URL", cfg.ScriptURL)
	}
	mux, err := listenDHCP(ctx, cfg.Iface)
	if err != nil {
		return Result{}, err
	}
	var reader sync.WaitGroup
	reader.Go(mux.run)
	defer func() {
		mux.conn.Close()
		reader.Wait()
	}()

	results := make([]clientResult, cfg.Clients)
	var clients sync.WaitGroup
	start := time.Now()
	for i := range cfg.Clients {
		at := start
		if cfg.Clients > 1 {
			at = start.Add(cfg.Ramp * time.Duration(i) / time.Duration(cfg.Clients-1))
		}
		mac := net.HardwareAddr{cfg.MACPrefix[0], cfg.MACPrefix[1], cfg.MACPrefix[2], byte((i + 1) >> 16), byte((i + 1) >> 8), byte(i + 1)}
		clients.Go(func() {
			select {
			case <-ctx.Done():
				results[i] = clientResult{mac: mac, failed: PhaseDHCP, err: ctx.Err()}
				return
			case <-time.After(time.Until(at)):
			}
			results[i] = boot(ctx, cfg, mux, mac)
		})
	}
	clients.Wait()
	wall := time.Since(start)

	res := Result{Clients: cfg.Clients, Failures: map[Phase]int{}, Errors: map[Phase][]string{},
		Phase: map[Phase]Percentiles{}, Wall: wall}
	var totals []time.Duration
	phases := map[Phase][]time.Duration{}
	for _, r := range results {
		for p, d := range r.times {
			phases[p] = append(phases[p], d)
		}
		if r.failed != "" {
			res.Failures[r.failed]++
			if len(res.Errors[r.failed]) < 5 {
				res.Errors[r.failed] = append(res.Errors[r.failed], fmt.Sprintf("%s: %v", r.mac, r.err))
			}
			continue
		}
		totals = append(totals, r.total)
	}
	res.Total = percentiles(totals)
	for p, d := range phases {
		res.Phase[p] = percentiles(d)
	}
	return res, nil
}

// boot is one machine: DHCP, TFTP of the boot file the ACK names, HTTP of
// the script.
func boot(ctx context.Context, cfg Config, mux *dhcpMux, mac net.HardwareAddr) clientResult {
	r := clientResult{mac: mac, times: map[Phase]time.Duration{}}
	t0 := time.Now()
	fail := func(p Phase, err error) clientResult {
		r.failed, r.err = p, err
		return r
	}

	ack, err := mux.dora(ctx, mac, cfg.DHCPWaits)
	if err != nil {
		return fail(PhaseDHCP, err)
	}
	t1 := time.Now()
	r.times[PhaseDHCP] = t1.Sub(t0)
	file := ack.BootFileName
	if file == "" {
		file = ack.BootFileNameOption()
	}
	next := ack.ServerIPAddr
	if next == nil || next.IsUnspecified() {
		next = ack.ServerIdentifier()
	}
	if file == "" || next == nil || next.IsUnspecified() {
		return fail(PhaseDHCP, fmt.Errorf("the ACK names no boot file (%q) or next server (%v)", file, next))
	}
	yiaddr := ack.YourIPAddr

	n, err := tftpGet(ctx, yiaddr, &net.UDPAddr{IP: next, Port: 69}, file, cfg.BlockSize, cfg.TFTPWaits)
	if err != nil {
		return fail(PhaseTFTP, fmt.Errorf("%s from %s as %s: %w", file, next, yiaddr, err))
	}
	if cfg.BootFileSize != 0 && n != cfg.BootFileSize {
		return fail(PhaseTFTP, fmt.Errorf("%s from %s: got %d bytes, want %d", file, next, n, cfg.BootFileSize))
	}
	t2 := time.Now()
	r.times[PhaseTFTP] = t2.Sub(t1)

	if err := fetchScript(ctx, cfg, yiaddr, mac); err != nil {
		return fail(PhaseHTTP, fmt.Errorf("as %s: %w", yiaddr, err))
	}
	t3 := time.Now()
	r.times[PhaseHTTP] = t3.Sub(t2)
	r.total = t3.Sub(t0)
	return r
}

// fetchScript GETs the script from the leased address, on a connection of
// its own, and checks that it is an iPXE script.
func fetchScript(ctx context.Context, cfg Config, local net.IP, mac net.HardwareAddr) error {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: local}, Timeout: cfg.HTTPTimeout}
	client := &http.Client{
		Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true},
		Timeout:   cfg.HTTPTimeout,
	}
	defer client.CloseIdleConnections()
	url := strings.ReplaceAll(cfg.ScriptURL, "{mac}", mac.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "iPXE/1.0.0+")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	if !strings.HasPrefix(string(body), "#!ipxe") {
		return fmt.Errorf("GET %s: not an iPXE script: %.40q", url, body)
	}
	return nil
}
