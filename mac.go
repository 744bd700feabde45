package lpmos

import (
	"encoding"
	"errors"
	"fmt"
	"net"
	"strings"
)

// ErrInvalidMAC is wrapped by every error from ParseMAC, MACFromHardwareAddr
// and MAC.UnmarshalText, so an HTTP handler can answer 400 with errors.Is.
var ErrInvalidMAC = errors.New("invalid MAC address")

// MAC is the 48-bit Ethernet address that identifies a machine throughout
// LPMOS: in task records, store keys, DHCP reservations and boot script URLs.
//
// It is an array rather than net.HardwareAddr so that it is comparable, can
// be a map key, and has exactly one text form: the same NIC written as
// 00-1A-2B-… in a spreadsheet and 00:1a:2b:… by a DHCP client must name the
// same task and the same etcd key. The zero value means "no MAC".
type MAC [6]byte

// Compile-time checks: JSON and map keys go through the text methods.
var (
	_ encoding.TextMarshaler   = MAC{}
	_ encoding.TextUnmarshaler = (*MAC)(nil)
	_ fmt.Stringer             = MAC{}
)

// ParseMAC accepts the forms operators and tools actually produce, ignoring
// letter case and surrounding white space:
//
//	00:1a:2b:3c:4d:5e   Linux, DHCP servers, this package's String
//	00-1A-2B-3C-4D-5E   Windows, many BMCs and inventory sheets
//	00:1a:2b-3c-4d-5e   mixed ':' and '-' (hand-edited lists)
//	001a.2b3c.4d5e      Cisco switches' MAC tables
//	001a2b3c4d5e        bare hex, as in iPXE's ${mac:hexraw}
//
// Everything else is rejected, including 8- and 20-byte EUI-64 and
// InfiniBand addresses, which cannot be PXE-boot identities here. It also
// rejects addresses no NIC has as its own: all zeros, and any group address
// (the least significant bit of the first octet set, which includes
// broadcast), since such a value in a task is always a typo or a copy of the
// wrong column, and would otherwise match no machine — or every machine.
func ParseMAC(s string) (MAC, error) {
	t := strings.TrimSpace(s)
	var m MAC
	var ok bool
	switch len(t) {
	case 17:
		ok = parseSeparated(&m, t)
	case 14:
		ok = parseDotted(&m, t)
	case 12:
		ok = parseHex(m[:], t)
	}
	if !ok {
		if t == "" {
			return MAC{}, macError(s, "empty")
		}
		return MAC{}, macError(s, "want six hex octets such as 00:1a:2b:3c:4d:5e")
	}
	if err := m.check(s); err != nil {
		return MAC{}, err
	}
	return m, nil
}

// MACFromHardwareAddr converts what the net package and DHCP libraries hand
// out, applying the same rules as ParseMAC.
func MACFromHardwareAddr(h net.HardwareAddr) (MAC, error) {
	if len(h) != len(MAC{}) {
		return MAC{}, macError(h.String(), fmt.Sprintf("%d bytes, want 6", len(h)))
	}
	var m MAC
	copy(m[:], h)
	if err := m.check(h.String()); err != nil {
		return MAC{}, err
	}
	return m, nil
}

// check rejects addresses that cannot belong to a single NIC; input is what
// the caller gave us, for the error message.
func (m MAC) check(input string) error {
	switch {
	case m.IsZero():
		return macError(input, "all-zero address")
	case m == MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}:
		return macError(input, "broadcast address")
	case m[0]&1 == 1:
		return macError(input, "multicast address (no NIC has one as its own)")
	}
	return nil
}

// String returns the canonical form used in store keys, logs and iPXE's
// ${mac}: lowercase, colon-separated, always 17 characters.
func (m MAC) String() string { return m.format(':') }

// Dashed returns the dash-separated lowercase form, for places where a colon
// is awkward, such as file names and URL paths on some systems.
func (m MAC) Dashed() string { return m.format('-') }

// PXELinuxName returns the per-machine configuration name that pxelinux and
// many PXE toolchains look up: the ARP hardware type for Ethernet ("01")
// followed by the dashed address.
func (m MAC) PXELinuxName() string { return "01-" + m.Dashed() }

func (m MAC) format(sep byte) string {
	const hexDigits = "0123456789abcdef"
	b := make([]byte, 0, 17)
	for i, o := range m {
		if i > 0 {
			b = append(b, sep)
		}
		b = append(b, hexDigits[o>>4], hexDigits[o&0x0f])
	}
	return string(b)
}

// HardwareAddr returns a fresh copy for the net and DHCP APIs; callers may
// modify it without affecting m.
func (m MAC) HardwareAddr() net.HardwareAddr {
	h := make(net.HardwareAddr, len(m))
	copy(h, m[:])
	return h
}

// IsZero reports whether m is unset. It also lets the `json:",omitzero"` tag
// leave out an unset MAC.
func (m MAC) IsZero() bool { return m == MAC{} }

// MarshalText writes the canonical form, so a MAC is a plain JSON string and
// works as a JSON object key. The zero MAC marshals as an empty string rather
// than failing, so a struct with an unset MAC can still be encoded.
func (m MAC) MarshalText() ([]byte, error) {
	if m.IsZero() {
		return []byte{}, nil
	}
	return []byte(m.String()), nil
}

// UnmarshalText accepts anything ParseMAC accepts, and the empty string as
// the zero MAC so that MarshalText's output always round-trips. Callers that
// require a MAC must check IsZero.
func (m *MAC) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*m = MAC{}
		return nil
	}
	parsed, err := ParseMAC(string(text))
	if err != nil {
		return err
	}
	*m = parsed
	return nil
}

// parseSeparated reads xx?xx?xx?xx?xx?xx where each ? is ':' or '-'.
func parseSeparated(m *MAC, s string) bool {
	for i := range m {
		if i > 0 {
			if sep := s[3*i-1]; sep != ':' && sep != '-' {
				return false
			}
		}
		if !parseHex(m[i:i+1], s[3*i:3*i+2]) {
			return false
		}
	}
	return true
}

// parseDotted reads Cisco's xxxx.xxxx.xxxx.
func parseDotted(m *MAC, s string) bool {
	if s[4] != '.' || s[9] != '.' {
		return false
	}
	return parseHex(m[0:2], s[0:4]) && parseHex(m[2:4], s[5:9]) && parseHex(m[4:6], s[10:14])
}

// parseHex decodes exactly 2*len(dst) hex digits of either case.
func parseHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := fromHex(s[2*i])
		lo, ok2 := fromHex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func macError(input, reason string) error {
	return fmt.Errorf("%w %s: %s", ErrInvalidMAC, quoteInput(input), reason)
}

// maxQuoted bounds how much of a rejected input goes into an error, because
// these errors end up in HTTP responses and logs and the input may be
// attacker-sized.
const maxQuoted = 64

// quoteInput quotes s for an error message, truncated to maxQuoted bytes.
func quoteInput(s string) string {
	if len(s) > maxQuoted {
		return fmt.Sprintf("%q…", s[:maxQuoted])
	}
	return fmt.Sprintf("%q", s)
}
