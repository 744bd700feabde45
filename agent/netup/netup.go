// Package netup brings the network up for the agent when it runs from the
// LPMOS initramfs, where nothing else does: it loads the kernel modules the
// initramfs lists (NIC and disk drivers, in dependency order), finds the
// boot NIC by its MAC, brings it up and configures it by DHCPv4 (address,
// routes, DNS), so the agent can reach its region even across routers.
//
// It is Linux-only, needs CAP_NET_ADMIN and CAP_SYS_MODULE, and does nothing
// else: no IPv6, no bonding, no VLANs.
//
// The DHCP client is its own (dhcp4.go), and links, addresses and routes go
// through the kernel's ioctls and two hand-built rtnetlink messages
// (rtnl.go): u-root's dhclient, vishvananda/netlink and insomniacslk's
// nclient4 added about 0.9 MB to the agent's binary (DHCPv6, regexp, every
// link type's and DHCP option's decoder) for the few calls used here.
package netup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lpmos/lpmos"
)

// ModulesFile is where the initramfs lists its kernel modules, one path per
// line in load order (see agent/initramfs).
const ModulesFile = "/etc/lpmos/modules"

// Options configure Up.
type Options struct {
	// ModulesFile lists the modules to load; empty skips loading.
	ModulesFile string
	// MAC is the boot NIC (from lpmos.mac=); zero means the first
	// Ethernet interface that gets a carrier.
	MAC lpmos.MAC
	// Timeout bounds the whole bring-up (default 2 min: slow NICs take
	// tens of seconds to get a carrier).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Result says what was configured.
type Result struct {
	Interface string
	Address   *net.IPNet
	Gateway   net.IP
	Modules   int // modules loaded
}

// LoadModules loads every module the file lists, in order. A module that
// is already loaded (or built in) is fine; others that fail are reported
// together but do not stop the rest — a missing driver for one NIC must not
// keep the machine's actual NIC from coming up.
func LoadModules(path string, log *slog.Logger) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("open module list: %w", err)
	}
	defer f.Close()
	var errs []error
	loaded := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		p := strings.TrimSpace(sc.Text())
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if err := loadModule(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
			log.Warn("module not loaded", "module", p, "err", err)
			continue
		}
		loaded++
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	return loaded, errors.Join(errs...)
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// findLink waits for the NIC with the given MAC (or, for a zero MAC, the
// first non-loopback Ethernet link with a device behind it) to appear:
// drivers register their devices asynchronously after the module loads.
func findLink(ctx context.Context, mac lpmos.MAC) (net.Interface, error) {
	for {
		ifs, err := net.Interfaces()
		if err != nil {
			return net.Interface{}, fmt.Errorf("list links: %w", err)
		}
		for _, l := range ifs {
			if l.Flags&net.FlagLoopback != 0 || len(l.HardwareAddr) != 6 {
				continue
			}
			got, err := lpmos.MACFromHardwareAddr(l.HardwareAddr)
			if err != nil {
				continue
			}
			// Without a MAC, only a physical NIC will do; with one, the
			// link that has it, whatever its kind.
			if (mac.IsZero() && isDevice(l.Name)) || (!mac.IsZero() && got == mac) {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return net.Interface{}, fmt.Errorf("no network interface with MAC %s: %w", mac, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// isDevice reports whether a link is hardware: a physical NIC has a device
// in sysfs; bridges, bonds, VLANs, veth and tunnels have none.
func isDevice(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name + "/device")
	return err == nil
}

// Up loads the modules, then brings the boot NIC up with DHCPv4.
func Up(ctx context.Context, o Options) (Result, error) {
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var res Result
	if o.ModulesFile != "" {
		n, err := LoadModules(o.ModulesFile, o.Logger)
		res.Modules = n
		if err != nil {
			o.Logger.Warn("some kernel modules did not load", "loaded", n, "err", err)
		}
	}
	link, err := findLink(ctx, o.MAC)
	if err != nil {
		return res, err
	}
	res.Interface = link.Name
	if err := linkUp(ctx, link.Name); err != nil {
		return res, fmt.Errorf("bring %s up: %w", res.Interface, err)
	}
	ack, err := lease(ctx, link)
	if err != nil {
		return res, fmt.Errorf("DHCP on %s: %w", res.Interface, err)
	}
	addr, gw, err := configure(link, ack)
	if err != nil {
		return res, fmt.Errorf("configure %s: %w", res.Interface, err)
	}
	res.Address, res.Gateway = addr, gw
	o.Logger.Info("network up", "interface", res.Interface, "address", res.Address, "gateway", res.Gateway)
	return res, nil
}

// linkUp sets the link up and waits until the kernel says it is
// operational ("up", or "unknown" for drivers that do not tell).
func linkUp(ctx context.Context, name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	for {
		b, err := os.ReadFile("/sys/class/net/" + name + "/operstate")
		if err != nil {
			return err
		}
		if st := strings.TrimSpace(string(b)); st == "up" || st == "unknown" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("link still down: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ResolvConf is where configure writes the lease's DNS settings.
var ResolvConf = "/etc/resolv.conf"

// configure gives the link the lease's address, its routes (the classless
// static routes of option 121 if any, as RFC 3442 says, else a default
// route through the first router) and writes its DNS settings.
func configure(link net.Interface, ack *Lease) (*net.IPNet, net.IP, error) {
	mask := ack.Mask
	if mask == nil {
		mask = net.CIDRMask(32, 32) // the most restrictive choice
	}
	addr := &net.IPNet{IP: ack.IP.To4(), Mask: mask}
	if addr.IP == nil || addr.IP.IsUnspecified() {
		return nil, nil, fmt.Errorf("the lease has no IPv4 address: %s", ack.IP)
	}
	if err := addrReplace(link.Index, addr); err != nil {
		return nil, nil, fmt.Errorf("add %s: %w", addr, err)
	}
	var gw net.IP
	if len(ack.Routes) > 0 {
		for _, r := range ack.Routes {
			if err := routeReplace(link.Index, r.Dest, r.Router); err != nil {
				return nil, nil, fmt.Errorf("route %s via %s: %w", r.Dest, r.Router, err)
			}
			if ones, _ := r.Dest.Mask.Size(); ones == 0 && gw == nil {
				gw = r.Router
			}
		}
	} else if len(ack.Routers) > 0 {
		gw = ack.Routers[0]
		if err := routeReplace(link.Index, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, gw); err != nil {
			return nil, nil, fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	if err := os.WriteFile(ResolvConf, resolvConf(ack), 0o644); err != nil {
		return nil, nil, err
	}
	return addr, gw, nil
}

// resolvConf renders the lease's domain, name servers and search list.
func resolvConf(ack *Lease) []byte {
	var b strings.Builder
	if ack.Domain != "" {
		b.WriteString("domain " + ack.Domain + "\n")
	}
	for _, ip := range ack.DNS {
		b.WriteString("nameserver " + ip.String() + "\n")
	}
	if len(ack.Search) > 0 {
		b.WriteString("search " + strings.Join(ack.Search, " ") + "\n")
	}
	return []byte(b.String())
}
