// Command firstboot is the end-to-end tests' stand-in for cloud-init's
// phone_home module in the test OS image (see testlab.BootableImage).
//
// A real cloud image that LPMOS installs boots, finds the NoCloud seed the
// agent appended (a FAT file system labelled CIDATA holding meta-data and
// user-data) and, on first boot, cloud-init POSTs to the phone_home URL of
// the user-data. The test image is a kernel and a u-root initramfs whose
// uinit is this command, which does just that and nothing else:
//
//  1. print "LPMOS-FIRSTBOOT: started" on the console;
//  2. load the initramfs's kernel modules;
//  3. find the CIDATA file system by the volume label in the FAT boot
//     sector of each block device, and mount it read-only;
//  4. read instance-id and local-hostname from meta-data and the url of
//     phone_home from user-data; bring the network up: statically when the
//     seed's network-config gives the NIC (matched by MAC) an address,
//     else the first NIC with a carrier by DHCP (agent/netup);
//  5. POST "instance_id=<id>&hostname=<name>" form-encoded, as cloud-init
//     does, up to 10 times 2 s apart until a 2xx answer;
//  6. print "LPMOS-FIRSTBOOT: phoned home <url without query> -> <status>"
//     or "LPMOS-FIRSTBOOT: FAILED: <reason>", sync and power off.
//
// Only the subset of the seed that LPMOS writes is understood: one
// "key: value" per line, values plain or JSON-quoted; of network-config,
// an ethernets entry matched by MAC with addresses and a default route.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/lpmos/lpmos/agent/netup"
)

const (
	// marker starts every line the tests look for on the console.
	marker = "LPMOS-FIRSTBOOT: "
	// seedLabel is the NoCloud seed's volume label.
	seedLabel  = "CIDATA"
	mountPoint = "/mnt/cidata"
	tries      = 10
	retryDelay = 2 * time.Second
)

func main() {
	fmt.Println(marker + "started")
	if os.Getpid() != 1 && os.Getppid() != 1 {
		// It reconfigures the first NIC and powers the machine off: only
		// ever as the init (or uinit) of the test image.
		fmt.Println(marker + "FAILED: not started by init; refusing to touch this machine")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	msg, err := run(ctx, log)
	cancel()
	if err != nil {
		fmt.Println(marker + "FAILED: " + err.Error())
	} else {
		fmt.Println(marker + msg)
	}
	// The machine has nothing else to do: power off, so the test sees QEMU
	// exit by itself.
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Println(marker+"power off:", err)
		os.Exit(1)
	}
}

// run does the work and returns the success line (without the marker).
func run(ctx context.Context, log *slog.Logger) (string, error) {
	n, err := netup.LoadModules(netup.ModulesFile, log)
	if err != nil {
		log.Warn("some kernel modules did not load", "loaded", n, "err", err)
	}
	dev, err := waitSeed(ctx, seedLabel, 30*time.Second)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(mountPoint, 0o755); err != nil {
		return "", fmt.Errorf("mount point: %w", err)
	}
	if err := unix.Mount(dev, mountPoint, "vfat", unix.MS_RDONLY, ""); err != nil {
		return "", fmt.Errorf("mount %s (vfat) on %s: %w", dev, mountPoint, err)
	}
	defer unix.Unmount(mountPoint, 0) //nolint:errcheck // powering off anyway
	fmt.Printf("%sseed %s mounted\n", marker, dev)

	meta, err := os.ReadFile(filepath.Join(mountPoint, "meta-data"))
	if err != nil {
		return "", fmt.Errorf("seed: %w", err)
	}
	user, err := os.ReadFile(filepath.Join(mountPoint, "user-data"))
	if err != nil {
		return "", fmt.Errorf("seed: %w", err)
	}
	id, host, err := parseMetaData(meta)
	if err != nil {
		return "", err
	}
	// The network as cloud-init would set it up: the seed's
	// network-config when it has a static address for a NIC, else DHCP
	// (cloud-init's fallback).
	var static *staticNet
	if nc, err := os.ReadFile(filepath.Join(mountPoint, "network-config")); err == nil {
		if static, err = parseNetworkConfig(nc); err != nil {
			return "", err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("seed: %w", err)
	}
	if static != nil {
		name, err := static.up(ctx, 30*time.Second)
		if err != nil {
			return "", fmt.Errorf("network (static): %w", err)
		}
		fmt.Printf("%snetwork up (static): %s %s\n", marker, name, static.addr)
	} else {
		res, err := netup.Up(ctx, netup.Options{Logger: log, Timeout: 2 * time.Minute})
		if err != nil {
			return "", fmt.Errorf("network: %w", err)
		}
		fmt.Printf("%snetwork up: %s %s\n", marker, res.Interface, res.Address)
	}
	target, err := parsePhoneHomeURL(user)
	if err != nil {
		return "", err
	}
	status, err := phoneHome(ctx, log, target, formBody(id, host))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("phoned home %s -> %s", withoutQuery(target), status), nil
}

// waitSeed scans the block devices for the seed until it shows up (disk
// drivers register their disks asynchronously after loading) or timeout.
func waitSeed(ctx context.Context, label string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		dev, err := findFATLabel("/sys/class/block", "/dev", label)
		if err == nil {
			return dev, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no FAT file system labelled %s: %w (last: %w)", label, ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// findFATLabel returns /dev/<name> of the first block device listed in
// sysDir (partitions first) whose FAT boot sector has the volume label.
func findFATLabel(sysDir, devDir, label string) (string, error) {
	entries, err := os.ReadDir(sysDir)
	if err != nil {
		return "", fmt.Errorf("list block devices: %w", err)
	}
	var parts, disks []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(sysDir, e.Name(), "partition")); err == nil {
			parts = append(parts, e.Name())
		} else {
			disks = append(disks, e.Name())
		}
	}
	var seen []string
	for _, name := range append(parts, disks...) {
		dev := filepath.Join(devDir, name)
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		sector := make([]byte, 512)
		_, err = io.ReadFull(f, sector)
		f.Close()
		if err != nil {
			continue
		}
		if got, ok := fatLabel(sector); ok {
			if strings.EqualFold(got, label) {
				return dev, nil
			}
			seen = append(seen, name+"="+got)
		}
	}
	return "", fmt.Errorf("FAT labels seen: %v", seen)
}

// fatLabel returns the volume label of a FAT boot sector: at 0x2B in the
// extended BPB of FAT12/16, at 0x47 in FAT32's; ok is false if the sector
// is not a FAT boot sector with an extended BPB.
func fatLabel(sector []byte) (label string, ok bool) {
	if len(sector) < 512 || sector[510] != 0x55 || sector[511] != 0xAA {
		return "", false
	}
	bytesPerSector := int(sector[0x0B]) | int(sector[0x0C])<<8
	if bytesPerSector < 512 || bytesPerSector > 4096 || bytesPerSector&(bytesPerSector-1) != 0 || sector[0x0D] == 0 {
		return "", false
	}
	fatSize16 := int(sector[0x16]) | int(sector[0x17])<<8
	var off int
	switch {
	case fatSize16 == 0 && (sector[0x42] == 0x29 || sector[0x42] == 0x28):
		off = 0x47 // FAT32
	case fatSize16 != 0 && (sector[0x26] == 0x29 || sector[0x26] == 0x28):
		off = 0x2B // FAT12/16
	default:
		return "", false
	}
	return strings.TrimRight(string(sector[off:off+11]), " \x00"), true
}

// parseMetaData reads instance-id and local-hostname from NoCloud
// meta-data.
func parseMetaData(b []byte) (instanceID, hostname string, err error) {
	kv, err := topLevel(b)
	if err != nil {
		return "", "", fmt.Errorf("meta-data: %w", err)
	}
	instanceID, hostname = kv["instance-id"], kv["local-hostname"]
	if instanceID == "" {
		return "", "", errors.New("meta-data: no instance-id")
	}
	return instanceID, hostname, nil
}

// topLevel returns the unindented "key: value" lines of a YAML document
// with their values decoded.
func topLevel(b []byte) (map[string]string, error) {
	kv := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == ' ' || line[0] == '\t' || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val, err := yamlScalar(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		kv[strings.TrimSpace(k)] = val
	}
	return kv, sc.Err()
}

// parsePhoneHomeURL returns the url of the phone_home section of a
// #cloud-config user-data.
func parsePhoneHomeURL(b []byte) (string, error) {
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		if line == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			in = strings.HasPrefix(line, "phone_home:")
			continue
		}
		if !in {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || k != "url" {
			continue
		}
		u, err := yamlScalar(v)
		if err != nil {
			return "", fmt.Errorf("user-data: phone_home url: %w", err)
		}
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return "", fmt.Errorf("user-data: phone_home url %q is not an http(s) URL", u)
		}
		return u, nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("user-data: %w", err)
	}
	return "", errors.New("user-data: no phone_home url")
}

// yamlScalar decodes a scalar value: JSON-quoted (what LPMOS writes),
// single-quoted or plain.
func yamlScalar(v string) (string, error) {
	v = strings.TrimSpace(v)
	switch {
	case strings.HasPrefix(v, `"`):
		var s string
		if err := json.Unmarshal([]byte(v), &s); err != nil {
			return "", fmt.Errorf("quoted value %s: %w", v, err)
		}
		return s, nil
	case strings.HasPrefix(v, "'") && strings.HasSuffix(v, "'") && len(v) >= 2:
		return strings.ReplaceAll(v[1:len(v)-1], "''", "'"), nil
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	return v, nil
}

// formBody is what cloud-init's phone_home posts for
// post: [instance_id, hostname].
func formBody(instanceID, hostname string) string {
	return "instance_id=" + url.QueryEscape(instanceID) + "&hostname=" + url.QueryEscape(hostname)
}

// withoutQuery drops the query (it carries the token) and fragment.
func withoutQuery(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.RawQuery, p.Fragment = "", ""
	return p.String()
}

// phoneHome POSTs body to target until it answers 2xx, at most tries times.
func phoneHome(ctx context.Context, log *slog.Logger, target, body string) (string, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	var last error
	for i := 1; i <= tries; i++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(body))
		if err != nil {
			return "", fmt.Errorf("phone home: %w", err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := client.Do(req)
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // its message repeats the URL, token and all
		}
		if err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return resp.Status, nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		log.Warn("phone home failed", "try", i, "err", err)
		if i < tries {
			select {
			case <-ctx.Done():
				return "", fmt.Errorf("phone home: %w (last: %w)", ctx.Err(), last)
			case <-time.After(retryDelay):
			}
		}
	}
	return "", fmt.Errorf("phone home %s: %d tries: %w", withoutQuery(target), tries, last)
}

// staticNet is a NIC's static configuration from network-config.
type staticNet struct {
	mac  net.HardwareAddr
	addr netip.Prefix
	gw   netip.Addr // invalid: no default route
}

// parseNetworkConfig reads NoCloud network-config (netplan version 2, as
// LPMOS writes it): the first ethernets entry matched by MAC with an
// address. nil means none (DHCP).
func parseNetworkConfig(b []byte) (*staticNet, error) {
	var nc struct {
		Version   int `yaml:"version"`
		Ethernets map[string]struct {
			Match struct {
				MAC string `yaml:"macaddress"`
			} `yaml:"match"`
			Addresses []string `yaml:"addresses"`
			Routes    []struct {
				To  string `yaml:"to"`
				Via string `yaml:"via"`
			} `yaml:"routes"`
		} `yaml:"ethernets"`
	}
	if err := yaml.Unmarshal(b, &nc); err != nil {
		return nil, fmt.Errorf("network-config: %w", err)
	}
	if nc.Version != 2 {
		return nil, fmt.Errorf("network-config: version %d, want 2", nc.Version)
	}
	for name, e := range nc.Ethernets {
		if e.Match.MAC == "" || len(e.Addresses) == 0 {
			continue
		}
		mac, err := net.ParseMAC(e.Match.MAC)
		if err != nil {
			return nil, fmt.Errorf("network-config: %s: %w", name, err)
		}
		p, err := netip.ParsePrefix(e.Addresses[0])
		if err != nil {
			return nil, fmt.Errorf("network-config: %s: %w", name, err)
		}
		s := &staticNet{mac: mac, addr: p}
		for _, r := range e.Routes {
			if r.To == "0.0.0.0/0" || r.To == "default" {
				if s.gw, err = netip.ParseAddr(r.Via); err != nil {
					return nil, fmt.Errorf("network-config: %s: route via: %w", name, err)
				}
			}
		}
		return s, nil
	}
	return nil, nil
}

// up configures the NIC with the MAC: link up, the address, the default
// route; it waits up to timeout for the NIC to appear.
func (s *staticNet) up(ctx context.Context, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var link netlink.Link
	for link == nil {
		links, err := netlink.LinkList()
		if err != nil {
			return "", fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, s.mac) {
				link = l
			}
		}
		if link != nil {
			break
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no NIC with MAC %s: %w", s.mac, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("%s up: %w", name, err)
	}
	ipnet := &net.IPNet{IP: s.addr.Addr().AsSlice(), Mask: net.CIDRMask(s.addr.Bits(), s.addr.Addr().BitLen())}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return "", fmt.Errorf("%s address %s: %w", name, s.addr, err)
	}
	if s.gw.IsValid() {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: s.gw.AsSlice()}); err != nil {
			return "", fmt.Errorf("%s default route via %s: %w", name, s.gw, err)
		}
	}
	return name, nil
}
