// Package netup brings the network up for the agent when it runs from the
// LPMOS initramfs, where nothing else does: it loads the kernel modules the
// initramfs lists (NIC and disk drivers, in dependency order), finds the
// boot NIC by its MAC, brings it up and configures it by DHCPv4 (address,
// routes, DNS), so the agent can reach its region even across routers.
//
// It is Linux-only, needs CAP_NET_ADMIN and CAP_SYS_MODULE, and does nothing
// else: no IPv6, no bonding, no VLANs.
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

	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/vishvananda/netlink"
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
// first non-loopback Ethernet link) to appear: drivers register their
// devices asynchronously after the module loads.
func findLink(ctx context.Context, mac lpmos.MAC) (netlink.Link, error) {
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagLoopback != 0 || len(a.HardwareAddr) != 6 {
				continue
			}
			got, err := lpmos.MACFromHardwareAddr(a.HardwareAddr)
			if err != nil {
				continue
			}
			// Without a MAC, only a physical NIC will do; with one, the
			// link that has it, whatever its kind.
			if (mac.IsZero() && l.Type() == "device") || (!mac.IsZero() && got == mac) {
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no network interface with MAC %s: %w", mac, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
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
	res.Interface = link.Attrs().Name
	left := time.Until(deadline(ctx))
	if _, err := dhclient.IfUp(res.Interface, left); err != nil {
		return res, fmt.Errorf("bring %s up: %w", res.Interface, err)
	}
	for r := range dhclient.SendRequests(ctx, []netlink.Link{link}, true, false,
		dhclient.Config{Timeout: 5 * time.Second, Retries: 6}, left) {
		if r.Err != nil {
			return res, fmt.Errorf("DHCP on %s: %w", res.Interface, r.Err)
		}
		if err := r.Lease.Configure(); err != nil {
			return res, fmt.Errorf("configure %s: %w", res.Interface, err)
		}
		if p4, ok := r.Lease.(*dhclient.Packet4); ok {
			res.Address = &net.IPNet{IP: p4.P.YourIPAddr, Mask: p4.P.SubnetMask()}
			if gws := p4.P.Router(); len(gws) > 0 {
				res.Gateway = gws[0]
			}
		}
		o.Logger.Info("network up", "interface", res.Interface, "address", res.Address, "gateway", res.Gateway)
		return res, nil
	}
	return res, fmt.Errorf("DHCP on %s: no answer", res.Interface)
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}
