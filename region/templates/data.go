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
	// (IPv4 CIDR such as 10.0.0.5/24), Gateway and Nameservers.
	Network     string
	Address     string
	Gateway     string
	Nameservers []string
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
}

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
	urlChars     = regexp.MustCompile(`^[A-Za-z0-9._~:/?&=%+,@\[\]-]+$`)
	tokenRE      = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)
	osTypeRE     = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	osVersionRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$`)
	diskRE       = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}$`)
	timezoneRE   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$`)
	localeRE     = regexp.MustCompile(`^[a-z]{2,3}(_[A-Z]{2})?(\.[A-Za-z0-9-]+)?(@[a-z]+)?$`)
	packageRE    = regexp.MustCompile(`^@?\^?[A-Za-z0-9][A-Za-z0-9._+~:-]{0,127}$`)
	tagKeyRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
	passwdHashRE = regexp.MustCompile(`^\$[0-9a-z]{1,2}\$[A-Za-z0-9./$=,]{1,512}$`)
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
	if d.RootPasswordHash != "" && !passwdHashRE.MatchString(d.RootPasswordHash) {
		return Data{}, invalid("RootPasswordHash", d.RootPasswordHash, "want a crypt(3) hash such as $6$salt$hash")
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
	return d, nil
}

func (d *Data) normalizeNetwork() error {
	switch d.Network {
	case "", "dhcp":
		d.Network = "dhcp"
		if d.Address != "" || d.Gateway != "" || len(d.Nameservers) > 0 {
			return fmt.Errorf("%w: Address, Gateway and Nameservers are only for Network \"static\"", ErrInvalid)
		}
		return nil
	case "static":
	default:
		return invalid("Network", d.Network, `want "dhcp" or "static"`)
	}
	p, err := netip.ParsePrefix(d.Address)
	if err != nil || !p.Addr().Is4() || p.Bits() < 1 || p.Bits() > 32 {
		return invalid("Address", d.Address, "want an IPv4 address with prefix length, such as 10.0.0.5/24")
	}
	d.Address = p.String()
	gw, err := netip.ParseAddr(d.Gateway)
	if err != nil || !gw.Is4() {
		return invalid("Gateway", d.Gateway, "want an IPv4 address")
	}
	d.Gateway = gw.String()
	if len(d.Nameservers) == 0 || len(d.Nameservers) > 3 {
		return fmt.Errorf("%w: Nameservers: want 1 to 3 for a static network", ErrInvalid)
	}
	ns := make([]string, len(d.Nameservers))
	for i, s := range d.Nameservers {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return invalid(fmt.Sprintf("Nameservers[%d]", i), s, "want an IP address")
		}
		ns[i] = a.String()
	}
	d.Nameservers = ns
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

// NetworkV2 is the machine's network as netplan version 2 YAML (the
// content of NoCloud network-config and of autoinstall's network key),
// every line indented by indent spaces, without a final newline. The NIC is matched by MAC address,
// so the name the kernel gives it does not matter.
func (d Data) NetworkV2(indent int) string {
	var lines []string
	line := func(depth int, s string) {
		lines = append(lines, strings.Repeat(" ", indent+2*depth)+s)
	}
	line(0, "version: 2")
	line(0, "ethernets:")
	line(1, "lpmos0:")
	line(2, "match:")
	line(3, "macaddress: "+yamlString(d.MAC))
	if !d.Static() {
		line(2, "dhcp4: true")
		return strings.Join(lines, "\n")
	}
	line(2, "dhcp4: false")
	line(2, "addresses:")
	line(3, "- "+yamlString(d.Address))
	line(2, "routes:")
	line(3, "- to: "+yamlString("0.0.0.0/0"))
	line(3, "  via: "+yamlString(d.Gateway))
	line(2, "nameservers:")
	line(3, "addresses:")
	for _, ns := range d.Nameservers {
		line(4, "- "+yamlString(ns))
	}
	return strings.Join(lines, "\n")
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
