package templates

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"

	"github.com/lpmos/lpmos"
)

// Data is what the templates know about a task. Render validates it and
// fills in defaults first; templates (built-in and overrides) see the
// result, with the methods below.
type Data struct {
	// TaskID and MAC identify the task and the machine; both are
	// required. MAC may be in any form lpmos.ParseMAC accepts and is
	// rendered in canonical form.
	TaskID string
	MAC    string
	// Hostname is a lowercase host name or fully qualified domain name;
	// empty means lpmos-<MAC as 12 hex digits>.
	Hostname string
	// OSType and OSVersion are the catalogue entry, such as "debian" and
	// "12"; OSType chooses the default mirror of a preseed.
	OSType    string
	OSVersion string
	// Disk is "auto" (empty means auto: the first non-removable disk, or
	// the installer's choice) or a device path such as /dev/sda or
	// /dev/disk/by-id/....
	Disk string
	// Network is "dhcp" (the default) or "static"; static needs Address
	// (IPv4 CIDR such as 10.0.0.5/24); Gateway (inside Address's subnet)
	// and up to 4 Nameservers are optional. Nameservers may also be given
	// with DHCP, on top of what DHCP hands out.
	Network     string
	Address     string
	Gateway     string
	Nameservers []string
	// VLANID, when not 0, puts the network (DHCP or static) on an 802.1Q
	// VLAN, interface vlan<ID>, of the NIC or the bond: 1 to 4094.
	VLANID int
	// Bond, when Bond.Name is set, bonds the named NICs (2 to 8) and
	// configures the network on the bond instead of the NIC matched by
	// MAC.
	Bond Bond
	// MirrorURL is the Debian/Ubuntu archive (preseed, autoinstall);
	// empty means the distribution's default. RepoURL is the Anaconda
	// installation tree (kickstart url); empty means the inst.repo= of
	// the kernel command line.
	MirrorURL string
	RepoURL   string
	// RegionURL is the region's base URL as machines reach it.
	// ProgressURL is the agent API endpoint the answer files post
	// progress to; empty means RegionURL + /api/v1/agent/progress. One of
	// the two is required.
	RegionURL   string
	ProgressURL string
	// Token is the per-task bearer token for the agent API; required.
	Token string
	// SSHAuthorizedKeys are authorized_keys lines for root: key type,
	// base64 key and an optional comment (no options prefix).
	SSHAuthorizedKeys []string
	// RootPasswordHash is a crypt(3) hash such as $6$salt$hash or
	// $y$j9T$salt$hash; empty locks root's password (SSH keys only).
	RootPasswordHash string
	// Timezone (default Etc/UTC) and Locale (default en_US.UTF-8).
	Timezone string
	Locale   string
	// Packages are installed on top of the minimal system.
	Packages []string
	// Tags are the task's tags; they are written to /etc/lpmos/tags.json
	// on the installed system.
	Tags map[string]string
	// UserData is the operator's cloud-config ("#cloud-config" first),
	// merged into the cloud-init and NoCloud user-data and autoinstall's
	// user-data (MergeUserData says how).
	UserData string

	// hostnameGiven: Hostname was given rather than defaulted; only then
	// does it win over a host name in UserData.
	hostnameGiven bool
}

// Bond is a Linux bond of NICs named by their kernel names.
type Bond struct {
	Name       string   // the bond's interface name, such as bond0
	Interfaces []string // the NICs, such as eno1 and eno2
	Mode       string   // a Linux bonding mode; empty means active-backup
}

var bondModes = []string{"balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"}

// Limits on the network.
const (
	maxNameservers = 4
	maxBondNICs    = 8
	maxUserData    = 64 << 10
)

// Limits on sizes of values.
const (
	maxURLLen   = 1024
	maxTokenLen = 256
	maxKeys     = 64
	maxPackages = 256
	maxTags     = 64
	maxTagValue = 256
)

var (
	urlChars    = regexp.MustCompile(`^[A-Za-z0-9._~:/?&=%+,@\[\]-]+$`)
	tokenRE     = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)
	osTypeRE    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	osVersionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$`)
	diskRE      = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$`)
	timezoneRE  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$`)
	localeRE    = regexp.MustCompile(`^[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?$`)
	packageRE   = regexp.MustCompile(`^@?\^?[A-Za-z0-9][A-Za-z0-9._+~:-]{0,127}$`)
	tagKeyRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
)

func invalid(field, value, reason string) error {
	if len(value) > 64 {
		return fmt.Errorf("%w: %s %q…: %s", ErrInvalid, field, value[:64], reason)
	}
	return fmt.Errorf("%w: %s %q: %s", ErrInvalid, field, value, reason)
}

func checkURL(field, s string) error {
	if len(s) > maxURLLen {
		return invalid(field, s, fmt.Sprintf("%d bytes, at most %d allowed", len(s), maxURLLen))
	}
	if !urlChars.MatchString(s) {
		return invalid(field, s, "only letters, digits and -._~:/?&=%+,@[] are allowed in URLs")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return invalid(field, s, "not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid(field, s, "scheme must be http or https")
	case u.Opaque != "" || u.Hostname() == "":
		return invalid(field, s, "must be an absolute URL with a host")
	case u.User != nil:
		return invalid(field, s, "user information would end up in the installed system's logs")
	}
	return nil
}

// printable reports whether s is single-line text without control or
// bidirectional formatting characters (lpmos.ValidateText).
func printable(s string) bool { return lpmos.ValidateText(s, false) == nil }

// Validate reports the first problem with d, wrapping ErrInvalid; Render
// calls it.
func (d Data) Validate() error {
	_, err := d.normalize()
	return err
}

// normalize validates d and returns a copy with defaults filled in and the
// MAC in canonical form; the copy owns its slices and map.
func (d Data) normalize() (Data, error) {
	if err := lpmos.ValidateTaskID(d.TaskID); err != nil {
		return Data{}, fmt.Errorf("%w: TaskID: %w", ErrInvalid, err)
	}
	mac, err := lpmos.ParseMAC(d.MAC)
	if err != nil {
		return Data{}, fmt.Errorf("%w: MAC: %w", ErrInvalid, err)
	}
	d.MAC = mac.String()
	d.hostnameGiven = d.Hostname != ""
	if d.Hostname == "" {
		d.Hostname = "lpmos-" + strings.ReplaceAll(d.MAC, ":", "")
	}
	// The same check as at task creation: lpmos owns it so both agree.
	if err := lpmos.ValidateHostname(d.Hostname); err != nil {
		return Data{}, fmt.Errorf("%w: Hostname: %w", ErrInvalid, err)
	}
	if d.OSType != "" && !osTypeRE.MatchString(d.OSType) {
		return Data{}, invalid("OSType", d.OSType, "want a-z, 0-9 and '-'")
	}
	if d.OSVersion != "" && !osVersionRE.MatchString(d.OSVersion) {
		return Data{}, invalid("OSVersion", d.OSVersion, "want letters, digits and ._-")
	}
	switch {
	case d.Disk == "":
		d.Disk = "auto"
	case d.Disk == "auto":
	case !diskRE.MatchString(d.Disk) || strings.Contains(d.Disk, "/../") || strings.HasSuffix(d.Disk, "/.."):
		return Data{}, invalid("Disk", d.Disk, `want "auto" or a device path such as /dev/sda`)
	}
	if err := d.normalizeNetwork(); err != nil {
		return Data{}, err
	}
	for _, f := range []struct{ name, v string }{{"MirrorURL", d.MirrorURL}, {"RepoURL", d.RepoURL}, {"RegionURL", d.RegionURL}, {"ProgressURL", d.ProgressURL}} {
		if f.v != "" {
			if err := checkURL(f.name, f.v); err != nil {
				return Data{}, err
			}
		}
	}
	if d.ProgressURL == "" {
		if d.RegionURL == "" {
			return Data{}, fmt.Errorf("%w: ProgressURL and RegionURL are both empty: the answer file could not report progress", ErrInvalid)
		}
		d.ProgressURL = strings.TrimSuffix(d.RegionURL, "/") + "/api/v1/agent/progress"
	}
	switch {
	case d.Token == "":
		return Data{}, fmt.Errorf("%w: Token: empty", ErrInvalid)
	case len(d.Token) > maxTokenLen || !tokenRE.MatchString(d.Token):
		return Data{}, invalid("Token", d.Token, fmt.Sprintf("want 1 to %d of letters, digits and ._~-", maxTokenLen))
	}
	if len(d.SSHAuthorizedKeys) > maxKeys {
		return Data{}, fmt.Errorf("%w: SSHAuthorizedKeys: %d keys, at most %d allowed", ErrInvalid, len(d.SSHAuthorizedKeys), maxKeys)
	}
	for i, k := range d.SSHAuthorizedKeys {
		if err := lpmos.ValidateSSHAuthorizedKey(k); err != nil {
			return Data{}, fmt.Errorf("%w: SSHAuthorizedKeys[%d]: %w", ErrInvalid, i, err)
		}
	}
	d.SSHAuthorizedKeys = slices.Clone(d.SSHAuthorizedKeys)
	if d.RootPasswordHash != "" {
		// The same check as at task creation; the error never repeats
		// the value, which might be a password.
		if err := lpmos.ValidatePasswordHash(d.RootPasswordHash); err != nil {
			return Data{}, fmt.Errorf("%w: RootPasswordHash: %w", ErrInvalid, err)
		}
	}
	if d.Timezone == "" {
		d.Timezone = "Etc/UTC"
	}
	if !timezoneRE.MatchString(d.Timezone) || len(d.Timezone) > 64 {
		return Data{}, invalid("Timezone", d.Timezone, "want a tz database name such as Europe/Berlin")
	}
	if d.Locale == "" {
		d.Locale = "en_US.UTF-8"
	}
	if !localeRE.MatchString(d.Locale) {
		return Data{}, invalid("Locale", d.Locale, "want a locale such as en_US.UTF-8")
	}
	if len(d.Packages) > maxPackages {
		return Data{}, fmt.Errorf("%w: Packages: %d packages, at most %d allowed", ErrInvalid, len(d.Packages), maxPackages)
	}
	for i, p := range d.Packages {
		if !packageRE.MatchString(p) {
			return Data{}, invalid(fmt.Sprintf("Packages[%d]", i), p, "want a package name (or @group for kickstart)")
		}
	}
	d.Packages = slices.Clone(d.Packages)
	if len(d.Tags) > maxTags {
		return Data{}, fmt.Errorf("%w: Tags: %d tags, at most %d allowed", ErrInvalid, len(d.Tags), maxTags)
	}
	for k, v := range d.Tags {
		if !tagKeyRE.MatchString(k) {
			return Data{}, invalid("Tags key", k, "want letters, digits and ._/-")
		}
		if len(v) > maxTagValue || !printable(v) {
			return Data{}, invalid("Tags["+k+"]", v, fmt.Sprintf("want at most %d bytes of UTF-8 text without control characters", maxTagValue))
		}
	}
	d.Tags = maps.Clone(d.Tags)
	if d.UserData != "" {
		if _, err := parseUserData(d.UserData); err != nil {
			return Data{}, fmt.Errorf("%w: UserData: %w", ErrInvalid, err)
		}
	}
	return d, nil
}

func (d *Data) normalizeNetwork() error {
	switch d.Network {
	case "", "dhcp":
		d.Network = "dhcp"
		if d.Address != "" || d.Gateway != "" {
			return fmt.Errorf("%w: Address and Gateway are only for Network \"static\"", ErrInvalid)
		}
	case "static":
		p, err := netip.ParsePrefix(d.Address)
		if err != nil || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 32 {
			return invalid("Address", d.Address, "want an IPv4 address with prefix length, such as 10.0.0.5/24")
		}
		d.Address = p.String()
		if d.Gateway != "" {
			gw, err := netip.ParseAddr(d.Gateway)
			if err != nil || !gw.Is4() || !p.Masked().Contains(gw) {
				return invalid("Gateway", d.Gateway, "want an IPv4 address inside "+p.Masked().String())
			}
			d.Gateway = gw.String()
		}
	default:
		return invalid("Network", d.Network, `want "dhcp" or "static"`)
	}
	if len(d.Nameservers) > maxNameservers {
		return fmt.Errorf("%w: Nameservers: %d, at most %d allowed", ErrInvalid, len(d.Nameservers), maxNameservers)
	}
	var ns []string
	for i, s := range d.Nameservers {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return invalid(fmt.Sprintf("Nameservers[%d]", i), s, "want an IP address")
		}
		ns = append(ns, a.String())
	}
	d.Nameservers = ns
	if d.VLANID < 0 || d.VLANID > 4094 {
		return invalid("VLANID", strconv.Itoa(d.VLANID), "want 1 to 4094, or 0 for none")
	}
	b := d.Bond
	if b.Name == "" {
		if len(b.Interfaces) > 0 || b.Mode != "" {
			return fmt.Errorf("%w: Bond: interfaces or a mode without a name", ErrInvalid)
		}
		d.Bond = Bond{}
		return nil
	}
	if err := lpmos.ValidateInterfaceName(b.Name); err != nil {
		return fmt.Errorf("%w: Bond.Name: %w", ErrInvalid, err)
	}
	if len(b.Interfaces) < 2 || len(b.Interfaces) > maxBondNICs {
		return fmt.Errorf("%w: Bond.Interfaces: %d, want 2 to %d", ErrInvalid, len(b.Interfaces), maxBondNICs)
	}
	for i, nic := range b.Interfaces {
		if err := lpmos.ValidateInterfaceName(nic); err != nil {
			return fmt.Errorf("%w: Bond.Interfaces[%d]: %w", ErrInvalid, i, err)
		}
		if nic == b.Name || slices.Contains(b.Interfaces[:i], nic) {
			return invalid(fmt.Sprintf("Bond.Interfaces[%d]", i), nic, "named twice")
		}
	}
	if b.Mode == "" {
		b.Mode = "active-backup"
	}
	if !slices.Contains(bondModes, b.Mode) {
		return invalid("Bond.Mode", b.Mode, "want one of "+strings.Join(bondModes, ", "))
	}
	b.Interfaces = slices.Clone(b.Interfaces)
	d.Bond = b
	return nil
}

// Methods for templates. They assume normalized Data.

// Static reports whether the network is configured statically.
func (d Data) Static() bool { return d.Network == "static" }

// PhoneHomeURL is where cloud-init's phone_home on the installed system
// reports its first boot (the region records it in the task's timeline),
// with the task's token; empty without RegionURL.
func (d Data) PhoneHomeURL() string {
	if d.RegionURL == "" {
		return ""
	}
	return strings.TrimSuffix(d.RegionURL, "/") + "/api/v1/agent/phone-home/" + d.TaskID + "?token=" + d.Token
}

// IP is the static address without its prefix length.
func (d Data) IP() string {
	p, _ := netip.ParsePrefix(d.Address)
	return p.Addr().String()
}

// Netmask is the static address's prefix as a dotted netmask, for
// kickstart and /etc/network/interfaces.
func (d Data) Netmask() string {
	p, _ := netip.ParsePrefix(d.Address)
	m := uint32(0xffffffff) << (32 - p.Bits())
	return fmt.Sprintf("%d.%d.%d.%d", m>>24, m>>16&0xff, m>>8&0xff, m&0xff)
}

// ShortHostname is the host name's first label; Domain is the rest.
func (d Data) ShortHostname() string { h, _, _ := strings.Cut(d.Hostname, "."); return h }

// Domain is the host name without its first label, or "".
func (d Data) Domain() string { _, dom, _ := strings.Cut(d.Hostname, "."); return dom }

// DiskAuto reports whether the installer should pick the disk.
func (d Data) DiskAuto() bool { return d.Disk == "auto" }

// DiskName is Disk as kickstart names disks, relative to /dev: "sda" for
// /dev/sda, "disk/by-id/..." for /dev/disk/by-id/....
func (d Data) DiskName() string { return strings.TrimPrefix(d.Disk, "/dev/") }

// Mirror is MirrorURL, or the default archive for OSType.
func (d Data) Mirror() string {
	switch {
	case d.MirrorURL != "":
		return d.MirrorURL
	case d.OSType == "ubuntu":
		return "http://archive.ubuntu.com/ubuntu"
	}
	return "http://deb.debian.org/debian"
}

// MirrorProtocol, MirrorHost and MirrorDirectory split Mirror for the
// Debian installer's mirror questions.
func (d Data) MirrorProtocol() string { u, _ := url.Parse(d.Mirror()); return u.Scheme }

// MirrorHost is the host[:port] of Mirror.
func (d Data) MirrorHost() string { u, _ := url.Parse(d.Mirror()); return u.Host }

// MirrorDirectory is the path of Mirror, "/" when empty.
func (d Data) MirrorDirectory() string {
	u, _ := url.Parse(d.Mirror())
	if u.Path == "" {
		return "/"
	}
	return u.Path
}

// AuthorizedKeys is the content of root's authorized_keys file: one key
// per line.
func (d Data) AuthorizedKeys() string {
	if len(d.SSHAuthorizedKeys) == 0 {
		return ""
	}
	return strings.Join(d.SSHAuthorizedKeys, "\n") + "\n"
}

// TagsJSON is Tags as a JSON object with sorted keys.
func (d Data) TagsJSON() string {
	if d.Tags == nil {
		return "{}"
	}
	return jsonString(d.Tags)
}

// ProgressJSON is the agent API's progress body for this task: exactly
// mac_address, task_id, stage, percentage and message.
func (d Data) ProgressJSON(stage string, percentage int, message string) string {
	return jsonString(struct {
		MAC        string `json:"mac_address"`
		TaskID     string `json:"task_id"`
		Stage      string `json:"stage"`
		Percentage int    `json:"percentage"`
		Message    string `json:"message"`
	}{d.MAC, d.TaskID, stage, percentage, message})
}

// ProgressCurl is a shell command that posts ProgressJSON to ProgressURL
// with the task's token; every word is shell-quoted. It gives up after 30
// seconds, and the templates append "|| true": a region that cannot be
// reached must not fail an otherwise good install.
func (d Data) ProgressCurl(stage string, percentage int, message string) string {
	return strings.Join([]string{"curl", "-fsS", "-m", "30", "-X", "POST",
		"-H", shellQuote("Content-Type: application/json"),
		"-H", shellQuote("Authorization: Bearer " + d.Token),
		"--data", shellQuote(d.ProgressJSON(stage, percentage, message)),
		shellQuote(d.ProgressURL)}, " ")
}

// ProgressWget is ProgressCurl for systems with GNU wget but no curl.
func (d Data) ProgressWget(stage string, percentage int, message string) string {
	return strings.Join([]string{"wget", "-q", "-O", "/dev/null", "-T", "30", "-t", "1",
		shellQuote("--header=Content-Type: application/json"),
		shellQuote("--header=Authorization: Bearer " + d.Token),
		shellQuote("--post-data=" + d.ProgressJSON(stage, percentage, message)),
		shellQuote(d.ProgressURL)}, " ")
}

// HostnameGiven reports whether the task named the host (Hostname was
// not the default).
func (d Data) HostnameGiven() bool { return d.hostnameGiven }

// HasVLAN reports whether the network is on a VLAN.
func (d Data) HasVLAN() bool { return d.VLANID != 0 }

// HasBond reports whether NICs are bonded.
func (d Data) HasBond() bool { return d.Bond.Name != "" }

// VLANName is the VLAN interface's name, vlan<ID>: short enough for any
// parent's name (a kernel interface name has at most 15 bytes).
func (d Data) VLANName() string { return "vlan" + strconv.Itoa(d.VLANID) }

// NetworkPackages are what the installed system needs for its network
// beyond a minimal Debian: ifenslave for a bond, vlan for a VLAN
// (ifupdown's VLAN support lives there).
func (d Data) NetworkPackages() []string {
	var p []string
	if d.HasBond() {
		p = append(p, "ifenslave")
	}
	if d.HasVLAN() {
		p = append(p, "vlan")
	}
	return p
}

// NetworkV2 is the machine's network as netplan version 2 YAML (the
// content of NoCloud network-config and of autoinstall's network key),
// every line indented by indent spaces, without a final newline. Without
// a bond, the NIC is matched by MAC address, so the name the kernel gives
// it does not matter; a bond names its NICs. A VLAN sits on the NIC or
// the bond, and then carries the addresses.
func (d Data) NetworkV2(indent int) string {
	var lines []string
	line := func(depth int, s string) {
		lines = append(lines, strings.Repeat(" ", indent+2*depth)+s)
	}
	// l3 configures the interface that carries the addresses.
	l3 := func() {
		if !d.Static() {
			line(2, "dhcp4: true")
		} else {
			line(2, "dhcp4: false")
			line(2, "addresses:")
			line(3, "- "+yamlString(d.Address))
			if d.Gateway != "" {
				line(2, "routes:")
				line(3, "- to: "+yamlString("0.0.0.0/0"))
				line(3, "  via: "+yamlString(d.Gateway))
			}
		}
		if len(d.Nameservers) > 0 {
			line(2, "nameservers:")
			line(3, "addresses:")
			for _, ns := range d.Nameservers {
				line(4, "- "+yamlString(ns))
			}
		}
	}
	line(0, "version: 2")
	line(0, "ethernets:")
	parent := "lpmos0"
	if d.HasBond() {
		for _, nic := range d.Bond.Interfaces {
			line(1, yamlString(nic)+":")
			line(2, "dhcp4: false")
		}
		parent = d.Bond.Name
		line(0, "bonds:")
		line(1, yamlString(d.Bond.Name)+":")
		line(2, "interfaces: ["+strings.Join(mapStrings(d.Bond.Interfaces, yamlString), ", ")+"]")
		line(2, "parameters:")
		line(3, "mode: "+yamlString(d.Bond.Mode))
		line(3, "mii-monitor-interval: 100")
	} else {
		line(1, "lpmos0:")
		line(2, "match:")
		line(3, "macaddress: "+yamlString(d.MAC))
	}
	if !d.HasVLAN() {
		l3()
		return strings.Join(lines, "\n")
	}
	line(2, "dhcp4: false") // the parent carries no address of its own
	line(0, "vlans:")
	line(1, yamlString(d.VLANName())+":")
	line(2, "id: "+strconv.Itoa(d.VLANID))
	line(2, "link: "+yamlString(parent))
	l3()
	return strings.Join(lines, "\n")
}

func mapStrings(ss []string, f func(string) string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

// KickstartNetwork is the kickstart network command: the NIC by MAC, or
// a bond of the named NICs, DHCP or static, on a VLAN if any. Every value
// passed an allow-list without spaces or quotes.
func (d Data) KickstartNetwork() string {
	w := []string{"network"}
	if d.HasBond() {
		w = append(w, "--device="+d.Bond.Name, "--bondslaves="+strings.Join(d.Bond.Interfaces, ","),
			"--bondopts=mode="+d.Bond.Mode+",miimon=100")
	} else {
		w = append(w, "--device="+d.MAC)
	}
	if d.Static() {
		w = append(w, "--bootproto=static", "--ip="+d.IP(), "--netmask="+d.Netmask())
		if d.Gateway != "" {
			w = append(w, "--gateway="+d.Gateway)
		}
	} else {
		w = append(w, "--bootproto=dhcp")
	}
	if len(d.Nameservers) > 0 {
		w = append(w, "--nameserver="+strings.Join(d.Nameservers, ","))
	}
	if d.HasVLAN() {
		w = append(w, "--vlanid="+strconv.Itoa(d.VLANID))
	}
	w = append(w, "--hostname="+d.Hostname, "--activate")
	return strings.Join(w, " ")
}

// ManagesInterfaces reports whether the preseed writes the installed
// system's /etc/network/interfaces: for anything but plain DHCP on the
// NIC that installed it.
func (d Data) ManagesInterfaces() bool { return d.Static() || d.HasVLAN() || d.HasBond() }

// InterfacesLines is /etc/network/interfaces (ifupdown) for the installed
// system, as shell words, one per line: the NIC found by MAC is "$iface"
// (double-quoted), everything else single-quoted. Every value passed an
// allow-list without quotes, '$' or backslashes.
func (d Data) InterfacesLines() string {
	var words []string
	add := func(lines ...string) {
		for _, l := range lines {
			if strings.Contains(l, "$iface") {
				words = append(words, `"`+l+`"`)
			} else {
				words = append(words, shellQuote(l))
			}
		}
	}
	method := "dhcp"
	if d.Static() {
		method = "static"
	}
	l3 := func(start, name string, extra ...string) {
		add("", start+" "+name, "iface "+name+" inet "+method)
		add(extra...)
		if d.Static() {
			add("    address " + d.Address)
			if d.Gateway != "" {
				add("    gateway " + d.Gateway)
			}
		}
	}
	add("auto lo", "iface lo inet loopback")
	parent := "$iface"
	if d.HasBond() {
		parent = d.Bond.Name
		bond := []string{"    bond-slaves " + strings.Join(d.Bond.Interfaces, " "), "    bond-mode " + d.Bond.Mode, "    bond-miimon 100"}
		if d.HasVLAN() {
			add("", "auto "+parent, "iface "+parent+" inet manual")
			add(bond...)
		} else {
			l3("auto", parent, bond...)
		}
	} else if d.HasVLAN() {
		add("", "allow-hotplug $iface", "iface $iface inet manual")
	} else {
		l3("allow-hotplug", "$iface")
	}
	if d.HasVLAN() {
		l3("auto", d.VLANName(), "    vlan-raw-device "+parent)
	}
	return strings.Join(words, " ")
}

var funcs = template.FuncMap{
	"shellQuote": shellQuote,
	"shellWords": shellWords,
	"yaml":       yamlString,
	"json":       jsonString,
	"join":       strings.Join,
	"itoa":       strconv.Itoa,
	"base64":     func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
}

// shellQuote returns s as one POSIX shell word: wrapped in single quotes,
// each single quote inside written as quote, backslash, quote, quote
// (close, escaped quote, reopen). Nothing inside single quotes is special
// to sh, bash or busybox ash.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// shellWords quotes each string and joins them with spaces.
func shellWords(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = shellQuote(s)
	}
	return strings.Join(q, " ")
}

// jsonString marshals v without HTML escaping; maps get sorted keys.
func jsonString(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // only strings, ints, maps and structs of them reach here
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// yamlString writes s as a JSON string, which is also a YAML double-quoted
// scalar: every character that could end the scalar, start a comment or a
// new key, or break the line is escaped, and no type guessing applies
// ("yes", "0755" and "null" stay strings).
func yamlString(s string) string { return jsonString(s) }
