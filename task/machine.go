package task

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/lpmos/lpmos"
)

// Network is a machine's network configuration, which installers write
// into the installed system (Metadata.Network). The NIC that booted is
// matched by its MAC address; with a Bond, the bond's NICs are named.
type Network struct {
	// Mode is NetworkDHCP or NetworkStatic.
	Mode string `json:"mode"`
	// Address is the static IPv4 address with its prefix length, such as
	// 10.0.0.5/24; required for static, refused for DHCP.
	Address string `json:"address,omitempty"`
	// Gateway is the default route's next hop, inside Address's subnet;
	// optional (no default route without it).
	Gateway string `json:"gateway,omitempty"`
	// DNS lists up to MaxDNS name servers (IPv4 or IPv6).
	DNS []string `json:"dns,omitempty"`
	// VLANID, when not 0, puts the address (or DHCP) on an 802.1Q VLAN
	// of the NIC or bond: 1 to 4094.
	VLANID int `json:"vlan_id,omitempty"`
	// Bond, when set, bonds two or more NICs and configures the bond.
	Bond *Bond `json:"bond,omitempty"`
}

// Bond is a Linux bond of NICs named by their kernel names.
type Bond struct {
	// Name is the bond's interface name, such as bond0.
	Name string `json:"name"`
	// Interfaces are the bonded NICs' names, at least two.
	Interfaces []string `json:"interfaces"`
	// Mode is one of BondModes; empty means active-backup, which needs
	// nothing from the switch.
	Mode string `json:"mode,omitempty"`
}

// Limits on per-machine configuration.
const (
	MaxDNS          = 4
	MaxSSHKeys      = 32
	MaxSSHKeyLen    = lpmos.MaxSSHKeyLen // 16 KiB
	MaxUserDataLen  = 64 << 10
	MaxBondNICs     = 8
	DefaultBondMode = "active-backup"
)

var bondModes = [...]string{"balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb"}

// BondModes are the Linux bonding modes a Bond may name. The slice is the
// caller's.
func BondModes() []string { return slices.Clone(bondModes[:]) }

// Static reports whether the network is configured statically.
func (n *Network) Static() bool { return n != nil && n.Mode == NetworkStatic }

// Network is the task's network configuration: Metadata.Network, or
// for a task created before it existed (or without it), the mode of
// NetworkConfig alone.
func (m *Metadata) EffectiveNetwork() Network {
	if m.Network != nil {
		n := *m.Network
		n.DNS = slices.Clone(n.DNS)
		if n.Bond != nil {
			b := *n.Bond
			b.Interfaces = slices.Clone(b.Interfaces)
			n.Bond = &b
		}
		return n
	}
	mode := m.NetworkConfig
	if mode == "" {
		mode = NetworkDHCP
	}
	return Network{Mode: mode}
}

// EffectiveHostname is the machine's host name: the hostname field, or
// for a task created before it existed, the hostname tag; "" means the
// region's default.
func (m *Metadata) EffectiveHostname() string {
	if m.Hostname != "" {
		return m.Hostname
	}
	return m.Tags[TagHostname]
}

// SSHAuthorizedKeys are the keys root gets: the ssh_keys field, which at
// creation took in the ssh_key tag, or for a task created before it
// existed, the tag alone. The slice is the caller's.
func (m *Metadata) SSHAuthorizedKeys() []string {
	if len(m.SSHKeys) > 0 {
		return slices.Clone(m.SSHKeys)
	}
	if k := m.Tags[TagSSHKey]; k != "" {
		return []string{k}
	}
	return nil
}

// normalizeMachine validates the per-machine fields of a create request
// and combines them with the older network_config string and the
// hostname and ssh_key tags (README, "Per-machine configuration"):
//
//   - network_config alone keeps working; "dhcp" is network mode dhcp,
//     and "static" without network.address is refused.
//   - network.mode empty takes network_config's value (dhcp if that is
//     empty too); both given must agree. network_config is then set to
//     the mode, so readers of the old field see the truth.
//   - the hostname field and the hostname tag must agree when both are
//     given; the field is set to whichever was given.
//   - ssh_keys takes in the ssh_key tag's key (if not listed already),
//     so ssh_keys is every key root gets.
func (r *CreateRequest) normalizeMachine() error {
	if err := r.normalizeNetwork(); err != nil {
		return err
	}
	if r.Hostname != "" {
		if err := lpmos.ValidateHostname(r.Hostname); err != nil {
			return invalid("hostname", "%v", err)
		}
		if tag := r.Tags[TagHostname]; tag != "" && tag != r.Hostname {
			return invalid("hostname", "%q differs from tags.%s %q: give one, or the same in both", r.Hostname, TagHostname, truncate(tag))
		}
	} else {
		r.Hostname = r.Tags[TagHostname] // validated with the tags
	}
	if len(r.SSHKeys) > MaxSSHKeys {
		return invalid("ssh_keys", "%d keys, at most %d allowed", len(r.SSHKeys), MaxSSHKeys)
	}
	for i, k := range r.SSHKeys {
		if err := checkSSHKey(k); err != nil {
			return invalid(fmt.Sprintf("ssh_keys[%d]", i), "%v", err)
		}
	}
	if k := r.Tags[TagSSHKey]; k != "" && !slices.Contains(r.SSHKeys, k) {
		if len(r.SSHKeys) == MaxSSHKeys {
			return invalid("ssh_keys", "%d keys and tags.%s, at most %d allowed", len(r.SSHKeys), TagSSHKey, MaxSSHKeys)
		}
		r.SSHKeys = append(slices.Clone(r.SSHKeys), k)
	}
	if r.RootPasswordHash != "" {
		// The error never repeats the value: it may be a password.
		if err := lpmos.ValidatePasswordHash(r.RootPasswordHash); err != nil {
			return invalid("root_password_hash", "%v", err)
		}
	}
	if r.UserData != "" {
		if err := CheckUserData(r.UserData); err != nil {
			return invalid("user_data", "%v", err)
		}
	}
	return nil
}

func (r *CreateRequest) normalizeNetwork() error {
	if r.NetworkConfig != "" && r.NetworkConfig != NetworkDHCP && r.NetworkConfig != NetworkStatic {
		return invalid("network_config", "%q is neither %q nor %q", truncate(r.NetworkConfig), NetworkDHCP, NetworkStatic)
	}
	if r.Network == nil {
		if r.NetworkConfig == NetworkStatic {
			return invalid("network.address", "required for static (network_config %q gives no address: send network: {mode, address, gateway, dns})", NetworkStatic)
		}
		if r.NetworkConfig == "" {
			r.NetworkConfig = NetworkDHCP
		}
		return nil
	}
	n := *r.Network
	switch {
	case n.Mode == "" && r.NetworkConfig != "":
		n.Mode = r.NetworkConfig
	case n.Mode == "":
		n.Mode = NetworkDHCP
	case n.Mode != NetworkDHCP && n.Mode != NetworkStatic:
		return invalid("network.mode", "%q is neither %q nor %q", truncate(n.Mode), NetworkDHCP, NetworkStatic)
	case r.NetworkConfig != "" && r.NetworkConfig != n.Mode:
		return invalid("network.mode", "%q differs from network_config %q: give one, or the same in both", n.Mode, r.NetworkConfig)
	}
	r.NetworkConfig = n.Mode
	if n.Mode == NetworkStatic {
		if n.Address == "" {
			return invalid("network.address", "required for static")
		}
		p, err := netip.ParsePrefix(n.Address)
		if err != nil || !p.Addr().Is4() {
			return invalid("network.address", "%q is not an IPv4 address with a prefix length, such as 10.0.0.5/24", truncate(n.Address))
		}
		if p.Bits() < 1 || p.Bits() > 32 {
			return invalid("network.address", "prefix length /%d: want 1 to 32", p.Bits())
		}
		if p.Bits() < 31 && (p.Addr() == p.Masked().Addr() || p.Addr() == broadcast(p)) {
			return invalid("network.address", "%s is the subnet's network or broadcast address", p.Addr())
		}
		n.Address = p.String()
		if n.Gateway != "" {
			gw, err := netip.ParseAddr(n.Gateway)
			if err != nil || !gw.Is4() {
				return invalid("network.gateway", "%q is not an IPv4 address", truncate(n.Gateway))
			}
			if !p.Masked().Contains(gw) || gw == p.Addr() {
				return invalid("network.gateway", "%s is not another address inside %s", gw, p.Masked())
			}
			n.Gateway = gw.String()
		}
	} else if n.Address != "" || n.Gateway != "" {
		field := "network.address"
		if n.Address == "" {
			field = "network.gateway"
		}
		return invalid(field, "only for mode %q (DHCP gives the address and gateway)", NetworkStatic)
	}
	if len(n.DNS) > MaxDNS {
		return invalid("network.dns", "%d name servers, at most %d allowed", len(n.DNS), MaxDNS)
	}
	dns := make([]string, len(n.DNS))
	for i, s := range n.DNS {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.IsUnspecified() {
			return invalid(fmt.Sprintf("network.dns[%d]", i), "%q is not an IP address", truncate(s))
		}
		dns[i] = a.String()
	}
	if len(dns) == 0 {
		dns = nil
	}
	n.DNS = dns
	if n.VLANID != 0 && (n.VLANID < 1 || n.VLANID > 4094) {
		return invalid("network.vlan_id", "%d: want 1 to 4094", n.VLANID)
	}
	if n.Bond != nil {
		b := *n.Bond
		if err := lpmos.ValidateInterfaceName(b.Name); err != nil {
			return invalid("network.bond.name", "%v", err)
		}
		if len(b.Interfaces) < 2 || len(b.Interfaces) > MaxBondNICs {
			return invalid("network.bond.interfaces", "%d interfaces: want 2 to %d", len(b.Interfaces), MaxBondNICs)
		}
		for i, nic := range b.Interfaces {
			if err := lpmos.ValidateInterfaceName(nic); err != nil {
				return invalid(fmt.Sprintf("network.bond.interfaces[%d]", i), "%v", err)
			}
			if nic == b.Name || slices.Contains(b.Interfaces[:i], nic) {
				return invalid(fmt.Sprintf("network.bond.interfaces[%d]", i), "%q is named twice", nic)
			}
		}
		b.Interfaces = slices.Clone(b.Interfaces)
		if b.Mode == "" {
			b.Mode = DefaultBondMode
		}
		if !slices.Contains(bondModes[:], b.Mode) {
			return invalid("network.bond.mode", "%q: want one of %s", truncate(b.Mode), strings.Join(bondModes[:], ", "))
		}
		n.Bond = &b
	}
	r.Network = &n
	return nil
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], v)
	return netip.AddrFrom4(a)
}

// checkSSHKey is lpmos.ValidateSSHAuthorizedKey plus what the key's blob
// says: it must decode and name the line's key type, which catches keys
// cut short or pasted into the wrong line.
func checkSSHKey(k string) error {
	if err := lpmos.ValidateSSHAuthorizedKey(k); err != nil {
		return err
	}
	fields := strings.Fields(k)
	typ, b64 := fields[0], fields[1]
	blob, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("%w: the key is not valid base64", lpmos.ErrInvalidSSHKey)
	}
	if len(blob) < 4 {
		return fmt.Errorf("%w: the key is too short", lpmos.ErrInvalidSSHKey)
	}
	n := binary.BigEndian.Uint32(blob)
	if uint64(n) > uint64(len(blob)-4) || string(blob[4:4+n]) != typ {
		return fmt.Errorf("%w: the key's data is not a %s key", lpmos.ErrInvalidSSHKey, typ)
	}
	return nil
}

// CheckUserData checks an operator's cloud-config (CreateRequest.UserData):
// at most MaxUserDataLen bytes of UTF-8, starting with the line
// "#cloud-config", one YAML document whose top level is a mapping.
// LPMOS merges it with what it writes itself (README, "Per-machine
// configuration"), so other user-data formats (scripts, MIME multipart,
// #include) are refused.
func CheckUserData(s string) error {
	if len(s) > MaxUserDataLen {
		return fmt.Errorf("%d bytes, at most %d allowed", len(s), MaxUserDataLen)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("not valid UTF-8")
	}
	first, _, _ := strings.Cut(s, "\n")
	if strings.TrimRight(first, " \t\r") != "#cloud-config" {
		return fmt.Errorf("must start with the line #cloud-config (only cloud-config is merged; scripts, MIME and #include are not)")
	}
	dec := yaml.NewDecoder(strings.NewReader(s))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("not valid YAML: %v", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return fmt.Errorf("the cloud-config must be a YAML mapping (key: value lines)")
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("holds more than one YAML document")
	}
	// A mapping decodes only without duplicate keys, which cloud-init
	// would take silently, one of them lost.
	var m map[string]any
	if err := yaml.Unmarshal([]byte(s), &m); err != nil {
		return fmt.Errorf("not valid YAML: %v", err)
	}
	return nil
}
