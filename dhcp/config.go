package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
)

// Mode is how the server takes part in DHCP on its link.
type Mode string

const (
	// ModeProxy is ProxyDHCP: answer network-boot clients with boot
	// options only, beside an existing DHCP server that hands out
	// addresses. It is the zero value because it cannot break a network:
	// it never leases an address.
	ModeProxy Mode = "proxy"
	// ModeFull is an authoritative DHCP server that leases addresses from
	// its pools and adds boot options for network-boot clients.
	ModeFull Mode = "full"
)

// ErrInvalidConfig is wrapped by every error New returns for a bad Config.
var ErrInvalidConfig = errors.New("invalid DHCP configuration")

// ParseMode reads a mode from a flag or a configuration file.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case ModeProxy, ModeFull:
		return m, nil
	case "":
		return ModeProxy, nil
	}
	return "", fmt.Errorf("%w: mode %q: want full or proxy", ErrInvalidConfig, s)
}

// Pool is a range of addresses on one subnet, with the network settings its
// clients get.
type Pool struct {
	// Start and End are the first and last address handed out, inclusive.
	Start, End net.IP
	// Netmask is the subnet's mask. For Config.Pool it defaults to the
	// mask of the interface's address on that subnet; relay pools must set
	// it, as it is how a relay's giaddr picks its pool.
	Netmask net.IPMask
	// Router is the default gateway (option 3); nil sends none.
	Router net.IP
	// DNS servers (option 6); empty sends none.
	DNS []net.IP
	// DomainName (option 15); empty sends none.
	DomainName string
	// LeaseTime is how long a lease lasts; default DefaultLeaseTime.
	LeaseTime time.Duration
}

// Defaults for Config fields left zero.
const (
	DefaultLeaseTime     = time.Hour
	DefaultOfferTime     = time.Minute
	DefaultDeclineTime   = 10 * time.Minute
	DefaultPolicyTimeout = time.Second
	DefaultFlushInterval = time.Second
	DefaultQueueSize     = 1024
)

// LeaseStore keeps a full-mode server's leases outside the process.
type LeaseStore interface {
	// LoadLeases returns the saved leases; none if nothing was saved.
	LoadLeases(ctx context.Context) ([]Lease, error)
	// SaveLeases replaces the saved leases.
	SaveLeases(ctx context.Context, leases []Lease) error
}

// ReceiveBuffer is the receive buffer ListenPacket asks for on each DHCP
// socket: 4 MiB holds about 10,000 queued requests (the kernel accounts
// each datagram with its overhead, ~400 bytes of data plus ~300 of
// bookkeeping), against ~300 in Linux's default of 208 KiB
// (net.core.rmem_default). As root it is granted whatever
// net.core.rmem_max says; otherwise it is capped at net.core.rmem_max.
const ReceiveBuffer = 4 << 20

// Config configures a Server. The zero value of each field is a sensible
// default where one exists; Interface (or Conn) is always required, and
// full mode also needs Pool.Start and Pool.End.
type Config struct {
	// Interface is the one network interface to serve. Sockets are bound
	// to it with SO_BINDTODEVICE, so other interfaces' DHCP traffic never
	// reaches the server and replies leave through it.
	Interface string
	// ServerIP is the address the server answers as (option 54) and the
	// default next-server; default: the interface's first IPv4 address.
	ServerIP net.IP
	// Mode defaults to ModeProxy.
	Mode Mode

	// Pool is the address pool for clients on the interface's own link
	// (full mode only).
	Pool Pool
	// RelayPools are pools for subnets behind DHCP relays: a relayed
	// request is served from the pool whose subnet contains its giaddr
	// (full mode only).
	RelayPools []Pool
	// Reservations pin a machine to an address. The address must lie in
	// one of the pools' subnets; it need not lie in the range, and no
	// other machine is given it.
	Reservations map[lpmos.MAC]net.IP
	// LeaseFile, when set, keeps leases across restarts (full mode). It is
	// read by New and rewritten atomically (temporary file, fsync, rename)
	// at most FlushInterval after a lease changes, and when Serve returns.
	LeaseFile string
	// LeaseStore, when set, keeps leases where the other processes serving
	// the same network read them (full mode): a region keeps them in its
	// store, so that a standby that takes over hands out the same
	// addresses. New loads the leases from it (from LeaseFile, then a
	// cache, if it cannot be read); changes are saved to it as to
	// LeaseFile, and only while Active says yes (a standby never
	// overwrites its leader's leases). ReloadLeases reads it again when a
	// standby starts leading.
	LeaseStore LeaseStore
	// FlushInterval bounds how long a lease change waits before it is
	// written to LeaseFile and LeaseStore; default DefaultFlushInterval. Batching keeps a
	// DHCP storm from turning into an fsync per packet.
	FlushInterval time.Duration
	// OfferTime is how long an offered address is held for the client's
	// REQUEST; default DefaultOfferTime.
	OfferTime time.Duration
	// DeclineTime is how long an address a client declined (found in use)
	// stays out of the pool; default DefaultDeclineTime.
	DeclineTime time.Duration

	// Policy chooses boot files. If it has a Validate() error method, as
	// StaticPolicy has, New calls it, so a policy missing its URLs fails
	// at start rather than on the first client. Nil is allowed in full mode
	// only: the server then leases addresses and gives no boot options,
	// so network-boot clients move on to their next boot device.
	Policy BootPolicy
	// PolicyTimeout bounds one Policy.Boot call; default
	// DefaultPolicyTimeout.
	PolicyTimeout time.Duration

	// Workers is the number of goroutines handling packets; default
	// 2×GOMAXPROCS.
	Workers int
	// QueueSize is how many received packets may wait for a worker;
	// packets arriving when it is full are dropped and counted
	// (Stats.QueueFull). Default DefaultQueueSize.
	QueueSize int

	// Logger receives debug logs per packet and warnings; default: discard.
	Logger *slog.Logger

	// Active, if set, is asked before every packet is answered: while it
	// says false the server answers nothing (Stats.Inactive). A region
	// process that is a standby of its region's leader is such a server:
	// it keeps its sockets and starts answering the moment it leads, and a
	// leader stops the moment its term ends.
	Active func() bool

	// Trace, if set, is told what became of every packet from a client
	// with an Ethernet address (not of malformed ones, nor of those read
	// while Active said no), from the worker that handled it, once its
	// answer is decided. It runs on the DHCP hot path: it must not block
	// (a region queues the event for its boot trace and returns).
	Trace func(Trace)

	// Conn, when set, is used instead of opening port 67 on Interface;
	// ProxyConn likewise replaces port 4011 in proxy mode. The server owns
	// them and closes them when Serve returns. ListenPacket opens sockets
	// the way the server does, e.g. inside another network namespace.
	Conn      net.PacketConn
	ProxyConn net.PacketConn
}

// normalize fills in defaults and checks the configuration, returning the
// pools in selection order (the local pool first).
func (c *Config) normalize() ([]*pool, error) {
	var err error
	if c.Mode, err = ParseMode(string(c.Mode)); err != nil {
		return nil, err
	}
	if c.Interface == "" && (c.Conn == nil || (c.Mode == ModeProxy && c.ProxyConn == nil)) {
		return nil, fmt.Errorf("%w: Interface is required", ErrInvalidConfig)
	}
	var ifaceNets []*net.IPNet
	if c.Interface != "" {
		ifi, ierr := net.InterfaceByName(c.Interface)
		if ierr != nil {
			if c.ServerIP == nil {
				return nil, fmt.Errorf("%w: interface %q: %v", ErrInvalidConfig, c.Interface, ierr)
			}
		} else {
			addrs, _ := ifi.Addrs()
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
					ifaceNets = append(ifaceNets, &net.IPNet{IP: n.IP.To4(), Mask: n.Mask})
				}
			}
		}
	}
	if c.ServerIP == nil {
		if len(ifaceNets) == 0 {
			return nil, fmt.Errorf("%w: ServerIP not set and interface %q has no IPv4 address", ErrInvalidConfig, c.Interface)
		}
		c.ServerIP = ifaceNets[0].IP
	}
	if c.ServerIP = c.ServerIP.To4(); c.ServerIP == nil || c.ServerIP.IsUnspecified() {
		return nil, fmt.Errorf("%w: ServerIP must be a unicast IPv4 address", ErrInvalidConfig)
	}
	switch v := c.Policy.(type) {
	case nil:
		if c.Mode == ModeProxy {
			return nil, fmt.Errorf("%w: proxy mode needs a Policy: it answers only network-boot clients, "+
				"and only with boot files a policy names (StaticPolicy, or a region's DHCPPolicy)", ErrInvalidConfig)
		}
		c.Policy = noBoot
	case interface{ Validate() error }:
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	c.PolicyTimeout = orDuration(c.PolicyTimeout, DefaultPolicyTimeout)
	c.FlushInterval = orDuration(c.FlushInterval, DefaultFlushInterval)
	c.OfferTime = orDuration(c.OfferTime, DefaultOfferTime)
	c.DeclineTime = orDuration(c.DeclineTime, DefaultDeclineTime)
	if c.Workers <= 0 {
		c.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	if c.QueueSize <= 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Mode == ModeProxy {
		return nil, nil
	}

	if c.Pool.Netmask == nil {
		start := c.Pool.Start.To4()
		for _, n := range ifaceNets {
			if start != nil && n.Contains(start) {
				c.Pool.Netmask = n.Mask
				break
			}
		}
	}
	var pools []*pool
	local, err := newPool(c.Pool, "local pool")
	if err != nil {
		return nil, err
	}
	pools = append(pools, local)
	for i, rp := range c.RelayPools {
		p, err := newPool(rp, fmt.Sprintf("relay pool %d", i))
		if err != nil {
			return nil, err
		}
		for _, q := range pools {
			if q.subnet == p.subnet || q.contains(p.subnet) || p.contains(q.subnet) {
				return nil, fmt.Errorf("%w: %s (%s) overlaps %s (%s)", ErrInvalidConfig, p.name, p.cidr(), q.name, q.cidr())
			}
		}
		pools = append(pools, p)
	}
	server := ipToU32(c.ServerIP)
	for _, p := range pools {
		p.exclude(server)
	}
	owner := make(map[uint32]lpmos.MAC)
	for mac, ip := range c.Reservations {
		if mac.IsZero() {
			return nil, fmt.Errorf("%w: reservation for the zero MAC", ErrInvalidConfig)
		}
		ip4 := ip.To4()
		if ip4 == nil {
			return nil, fmt.Errorf("%w: reservation for %s: %v is not an IPv4 address", ErrInvalidConfig, mac, ip)
		}
		a := ipToU32(ip4)
		if other, dup := owner[a]; dup {
			return nil, fmt.Errorf("%w: %v is reserved for both %s and %s", ErrInvalidConfig, ip4, other, mac)
		}
		owner[a] = mac
		p := poolContaining(pools, a)
		if p == nil {
			return nil, fmt.Errorf("%w: reservation %s → %v is on none of the pools' subnets", ErrInvalidConfig, mac, ip4)
		}
		if !p.usable(a) || a == server {
			return nil, fmt.Errorf("%w: reservation %s → %v is the network, broadcast, router or server address", ErrInvalidConfig, mac, ip4)
		}
	}
	return pools, nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// pool is a validated Pool with addresses as integers. Its mutable state
// (the allocation cursor) is guarded by the lease table's mutex.
type pool struct {
	cfg        Pool
	name       string
	start, end uint32 // inclusive range
	subnet     uint32 // network address
	mask       uint32
	excluded   map[uint32]bool // server and router addresses inside the range
	next       uint32          // where the next allocation scan starts
	leaseTime  time.Duration
}

func newPool(p Pool, name string) (*pool, error) {
	start, end := p.Start.To4(), p.End.To4()
	if start == nil || end == nil {
		return nil, fmt.Errorf("%w: %s: Start and End must be IPv4 addresses", ErrInvalidConfig, name)
	}
	if len(p.Netmask) != net.IPv4len {
		if len(p.Netmask) == net.IPv6len {
			p.Netmask = p.Netmask[12:]
		} else {
			return nil, fmt.Errorf("%w: %s: Netmask is required (no interface address covers %v)", ErrInvalidConfig, name, start)
		}
	}
	ones, bits := p.Netmask.Size()
	if bits != 32 || ones < 8 || ones > 30 {
		return nil, fmt.Errorf("%w: %s: netmask %v: want a contiguous mask between /8 and /30", ErrInvalidConfig, name, net.IP(p.Netmask))
	}
	q := &pool{cfg: p, name: name, start: ipToU32(start), end: ipToU32(end), mask: ipToU32(net.IP(p.Netmask))}
	q.subnet = q.start & q.mask
	if q.start > q.end {
		return nil, fmt.Errorf("%w: %s: Start %v is after End %v", ErrInvalidConfig, name, start, end)
	}
	if q.end&q.mask != q.subnet {
		return nil, fmt.Errorf("%w: %s: %v and %v are not on one /%d subnet", ErrInvalidConfig, name, start, end, ones)
	}
	if !q.usable(q.start) || !q.usable(q.end) {
		return nil, fmt.Errorf("%w: %s: the range %v-%v includes the network or broadcast address", ErrInvalidConfig, name, start, end)
	}
	if p.Router != nil {
		r := p.Router.To4()
		if r == nil || !q.contains(ipToU32(r)) {
			return nil, fmt.Errorf("%w: %s: router %v is not on %s", ErrInvalidConfig, name, p.Router, q.cidr())
		}
		q.exclude(ipToU32(r))
	}
	q.leaseTime = orDuration(p.LeaseTime, DefaultLeaseTime)
	q.next = q.start
	return q, nil
}

func (p *pool) contains(a uint32) bool { return a&p.mask == p.subnet }
func (p *pool) inRange(a uint32) bool  { return a >= p.start && a <= p.end }
func (p *pool) size() uint32           { return p.end - p.start + 1 }

// usable reports whether a may be given to a client: on the subnet and
// neither its network nor its broadcast address.
func (p *pool) usable(a uint32) bool {
	return p.contains(a) && a != p.subnet && a != p.subnet|^p.mask
}

func (p *pool) exclude(a uint32) {
	if p.inRange(a) {
		if p.excluded == nil {
			p.excluded = make(map[uint32]bool)
		}
		p.excluded[a] = true
	}
}

func (p *pool) cidr() string {
	ones, _ := net.IPMask(u32ToIP(p.mask)).Size()
	return fmt.Sprintf("%v/%d", u32ToIP(p.subnet), ones)
}

func poolContaining(pools []*pool, a uint32) *pool {
	for _, p := range pools {
		if p.contains(a) {
			return p
		}
	}
	return nil
}

func ipToU32(ip net.IP) uint32 {
	ip = ip.To4()
	if ip == nil {
		return 0
	}
	return uint32(ip[0])<<24 | uint32(ip[1])<<16 | uint32(ip[2])<<8 | uint32(ip[3])
}

func u32ToIP(a uint32) net.IP {
	return net.IPv4(byte(a>>24), byte(a>>16), byte(a>>8), byte(a)).To4()
}
