package hardware

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// The few parts of SMBIOS (DMTF DSP0134) the collector reads: the entry
// point, to know the table is one, and the memory devices (type 17).
// u-root's pkg/smbios decodes every structure type through reflection and
// added about 0.1 MB to the agent's binary for this; the rules here are its
// rules, so the reports are the same: a table that does not parse to its
// end yields no DIMMs, a device whose structure ends inside a field is
// skipped, a string index past the strings reads "<BAD INDEX>", index 0
// "Not Specified".

// memoryDevice holds the type 17 fields the collector uses.
type memoryDevice struct {
	Size            uint16 // 0Ch
	DeviceLocator   string // 10h
	Type            uint8  // 12h
	Speed           uint16 // 15h
	Manufacturer    string // 17h
	SerialNumber    string // 18h
	PartNumber      string // 1Ah
	ExtendedSize    uint32 // 1Ch
	ConfiguredSpeed uint16 // 20h
}

// SizeBytes is the device's size: MiB (KiB with bit 15), or the extended
// size in MiB when Size is 0x7fff.
func (md *memoryDevice) SizeBytes() uint64 {
	switch md.Size {
	case 0:
		return 0
	case 0x7fff:
		return uint64(md.ExtendedSize&0x7fffffff) << 20
	}
	if md.Size&0x8000 != 0 {
		return uint64(md.Size&0x7fff) << 10
	}
	return uint64(md.Size) << 20
}

// memoryTypes names the memory types (DSP0134 7.18.2) as u-root does.
var memoryTypes = map[uint8]string{
	0x01: "Other", 0x02: "Unknown", 0x03: "DRAM", 0x04: "EDRAM", 0x05: "VRAM", 0x06: "SRAM",
	0x07: "RAM", 0x08: "ROM", 0x09: "Flash", 0x0a: "EEPROM", 0x0b: "FEPROM", 0x0c: "EPROM",
	0x0d: "CDRAM", 0x0e: "3DRAM", 0x0f: "SDRAM", 0x10: "SGRAM", 0x11: "RDRAM", 0x12: "DDR",
	0x13: "DDR2", 0x14: "DDR2 FB-DIMM", 0x18: "DDR3", 0x19: "FBD2", 0x1a: "DDR4", 0x1b: "LPDDR",
	0x1c: "LPDDR2", 0x1d: "LPDDR3", 0x1e: "LPDDR4", 0x1f: "Logical non-volatile device", 0x22: "DDR5",
}

func memoryTypeName(t uint8) string {
	if n, ok := memoryTypes[t]; ok {
		return n
	}
	return fmt.Sprintf("%#x", t)
}

var errSMBIOS = errors.New("smbios: malformed")

// checkEntryPoint accepts an SMBIOS 2.1 (_SM_, with its _DMI_ part) or 3.0
// (_SM3_) entry point of the right length and checksums.
func checkEntryPoint(e []byte) error {
	sum := func(b []byte) (s byte) {
		for _, c := range b {
			s += c
		}
		return s
	}
	switch {
	case len(e) >= 0x1f && bytes.HasPrefix(e, []byte("_SM_")) && e[5] == 0x1f &&
		sum(e[:0x1f]) == 0 && bytes.Equal(e[0x10:0x15], []byte("_DMI_")) && sum(e[0x10:0x1f]) == 0:
		return nil
	case len(e) >= 0x18 && bytes.HasPrefix(e, []byte("_SM3_")) && e[6] == 0x18 && sum(e[:0x18]) == 0:
		return nil
	}
	return fmt.Errorf("%w entry point", errSMBIOS)
}

// smbiosStruct is one structure: its formatted part (header included, so
// offsets are the specification's) and its strings.
type smbiosStruct struct {
	typ     uint8
	data    []byte
	strings []string
}

// parseSMBIOS splits a structure table; any malformed structure fails it
// whole.
func parseSMBIOS(table []byte) ([]smbiosStruct, error) {
	var out []smbiosStruct
	for len(table) > 0 {
		if len(table) < 4 {
			return nil, fmt.Errorf("%w structure header", errSMBIOS)
		}
		n := int(table[1])
		if len(table) < n+2 {
			return nil, fmt.Errorf("%w: structure longer than the table", errSMBIOS)
		}
		s := smbiosStruct{typ: table[0], data: table[:n]}
		rest := table[n:]
		for strs := rest; ; {
			end := bytes.IndexByte(strs, 0)
			if end < 0 {
				return nil, fmt.Errorf("%w: unterminated string", errSMBIOS)
			}
			if end == 0 {
				break
			}
			s.strings = append(s.strings, string(strs[:end]))
			strs = strs[end+1:]
		}
		end := bytes.Index(rest, []byte{0, 0})
		if end < 0 {
			return nil, fmt.Errorf("%w: no end of structure", errSMBIOS)
		}
		table = rest[end+2:]
		out = append(out, s)
	}
	return out, nil
}

// str reads the string whose index is at off.
func (s *smbiosStruct) str(off int) string {
	switch i := int(s.data[off]); {
	case i == 0:
		return "Not Specified"
	case i <= len(s.strings):
		return s.strings[i-1]
	default:
		return "<BAD INDEX>"
	}
}

// type17Fields are the sizes of the type 17 fields in order from offset
// 04h up to SMBIOS 3.7 (0 is a string index, one byte).
var type17Fields = []int{2, 2, 2, 2, 2, 1, 1, 0, 0, 1, 2, 2, 0, 0, 0, 0, 1, 4, 2, 2, 2, 2, 1, 2, 0, 2, 2, 2, 2, 8, 8, 8, 8}

// newMemoryDevice decodes a type 17 structure: at least its SMBIOS 2.1
// part (15h bytes), and every field it has must be whole.
func newMemoryDevice(s *smbiosStruct) (*memoryDevice, error) {
	if s.typ != 17 || len(s.data) < 0x15 {
		return nil, fmt.Errorf("%w memory device", errSMBIOS)
	}
	off := 4
	for _, size := range type17Fields {
		if off >= len(s.data) {
			break
		}
		if off+size > len(s.data) {
			return nil, fmt.Errorf("%w: memory device ends inside a field", errSMBIOS)
		}
		off += max(size, 1)
	}
	le := binary.LittleEndian
	md := &memoryDevice{
		Size:          le.Uint16(s.data[0x0c:]),
		DeviceLocator: s.str(0x10),
		Type:          s.data[0x12],
	}
	n := len(s.data)
	if n >= 0x17 {
		md.Speed = le.Uint16(s.data[0x15:])
	}
	if n > 0x17 {
		md.Manufacturer = s.str(0x17)
	}
	if n > 0x18 {
		md.SerialNumber = s.str(0x18)
	}
	if n > 0x1a {
		md.PartNumber = s.str(0x1a)
	}
	if n >= 0x20 {
		md.ExtendedSize = le.Uint32(s.data[0x1c:])
	}
	if n >= 0x22 {
		md.ConfiguredSpeed = le.Uint16(s.data[0x20:])
	}
	return md, nil
}
