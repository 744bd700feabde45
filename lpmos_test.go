package lpmos_test

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

func TestParseMACAccepts(t *testing.T) {
	const want = "00:1a:2b:3c:4d:5e"
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"canonical", "00:1a:2b:3c:4d:5e", want},
		{"uppercase colons", "00:1A:2B:3C:4D:5E", want},
		{"mixed case", "00:1A:2b:3c:4D:5e", want},
		{"dashes", "00-1a-2b-3c-4d-5e", want},
		{"uppercase dashes", "00-1A-2B-3C-4D-5E", want},
		{"mixed separators", "00:1A:2b-3c-4d-5e", want},
		{"alternating separators", "00-1a:2b-3c:4d-5e", want},
		{"cisco dotted", "001a.2b3c.4d5e", want},
		{"cisco dotted uppercase", "001A.2B3C.4D5E", want},
		{"bare hex", "001a2b3c4d5e", want},
		{"bare hex uppercase", "001A2B3C4D5E", want},
		{"surrounding spaces", "  00:1a:2b:3c:4d:5e  ", want},
		{"surrounding tabs and newline", "\t001a2b3c4d5e\n", want},
		{"locally administered", "02:00:00:00:00:01", "02:00:00:00:00:01"},
		{"qemu default", "52:54:00:12:34:56", "52:54:00:12:34:56"},
		{"high bits", "fe:ff:ff:ff:ff:ff", "fe:ff:ff:ff:ff:ff"},
		{"only last octet", "00:00:00:00:00:01", "00:00:00:00:00:01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := lpmos.ParseMAC(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, m.String())
			assert.False(t, m.IsZero())
		})
	}
}

func TestParseMACRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"spaces only", "   "},
		{"too short", "00:1a:2b:3c:4d"},
		{"too long", "00:1a:2b:3c:4d:5e:6f"},
		{"single digit groups", "0:1a:2b:3c:4d:5e"},
		{"single digit groups padded", "0:1a:2b:3c:4d:5e:"},
		{"non hex", "00:1a:2b:3c:4d:5g"},
		{"non hex bare", "001a2b3c4d5z"},
		{"dot separators in colon form", "00.1a.2b.3c.4d.5e"},
		{"space separators", "00 1a 2b 3c 4d 5e"},
		{"underscore separators", "00_1a_2b_3c_4d_5e"},
		{"leading separator", ":001a2b3c4d5e"},
		{"separator shifted", "001:a2:b3:c4:d5:e"},
		{"dotted wrong grouping", "001a2.b3c.4d5e"},
		{"dotted with colons", "001a:2b3c:4d5e"},
		{"bare 11 digits", "001a2b3c4d5"},
		{"bare 13 digits", "001a2b3c4d5e0"},
		{"eui-64 colons", "00:1a:2b:ff:fe:3c:4d:5e"},
		{"eui-64 dotted", "001a.2bff.fe3c.4d5e"},
		{"eui-64 bare", "001a2bfffe3c4d5e"},
		{"infiniband", "80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:b1:c2"},
		{"inner space", "00:1a:2b: 3c:4d:5e"},
		{"plus sign hex", "+0:1a:2b:3c:4d:5e"},
		{"0x prefix", "0x001a2b3c4d5e"},
		{"non-ascii", "00:1a:2b:3c:4d:5é"},
		{"all zero", "00:00:00:00:00:00"},
		{"all zero bare", "000000000000"},
		{"broadcast", "ff:ff:ff:ff:ff:ff"},
		{"broadcast uppercase dashed", "FF-FF-FF-FF-FF-FF"},
		{"ipv4 multicast", "01:00:5e:00:00:01"},
		{"ipv6 multicast", "33:33:00:00:00:01"},
		{"stp multicast", "01:80:c2:00:00:00"},
		{"odd first octet", "03:1a:2b:3c:4d:5e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := lpmos.ParseMAC(tt.in)
			require.Error(t, err)
			assert.ErrorIs(t, err, lpmos.ErrInvalidMAC)
			assert.True(t, m.IsZero(), "a rejected MAC must come back as the zero value")
			assert.Contains(t, err.Error(), `"`, "the error should quote the input")
		})
	}
}

func TestParseMACErrorQuotesTruncatedInput(t *testing.T) {
	long := strings.Repeat("a", 1000)
	_, err := lpmos.ParseMAC(long)
	require.ErrorIs(t, err, lpmos.ErrInvalidMAC)
	assert.Contains(t, err.Error(), `"`+strings.Repeat("a", 64)+`"`)
	assert.NotContains(t, err.Error(), strings.Repeat("a", 65))

	_, err = lpmos.ParseMAC("ff:ff:ff:ff:ff:ff")
	assert.ErrorContains(t, err, `"ff:ff:ff:ff:ff:ff"`)
	assert.ErrorContains(t, err, "broadcast")
}

func TestMACForms(t *testing.T) {
	m, err := lpmos.ParseMAC("00-1A-2B-3C-4D-5E")
	require.NoError(t, err)

	assert.Equal(t, "00:1a:2b:3c:4d:5e", m.String())
	assert.Equal(t, "00-1a-2b-3c-4d-5e", m.Dashed())
	assert.Equal(t, "01-00-1a-2b-3c-4d-5e", m.PXELinuxName())
	assert.Equal(t, lpmos.MAC{0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e}, m)

	h := m.HardwareAddr()
	assert.Equal(t, net.HardwareAddr{0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e}, h)
	h[0] = 0xaa
	assert.Equal(t, byte(0x00), m[0], "HardwareAddr must return a copy")

	assert.True(t, lpmos.MAC{}.IsZero())
	assert.Equal(t, "00:00:00:00:00:00", lpmos.MAC{}.String())
}

func TestMACFromHardwareAddr(t *testing.T) {
	tests := []struct {
		name    string
		in      net.HardwareAddr
		want    string
		wantErr bool
	}{
		{"ethernet", net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}, "52:54:00:12:34:56", false},
		{"nil", nil, "", true},
		{"short", net.HardwareAddr{0x52, 0x54, 0x00}, "", true},
		{"eui-64", net.HardwareAddr{0, 0x1a, 0x2b, 0xff, 0xfe, 0x3c, 0x4d, 0x5e}, "", true},
		{"infiniband", make(net.HardwareAddr, 20), "", true},
		{"zero", make(net.HardwareAddr, 6), "", true},
		{"broadcast", net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "", true},
		{"multicast", net.HardwareAddr{0x01, 0x00, 0x5e, 0, 0, 1}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := lpmos.MACFromHardwareAddr(tt.in)
			if tt.wantErr {
				assert.ErrorIs(t, err, lpmos.ErrInvalidMAC)
				assert.True(t, m.IsZero())
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, m.String())
			assert.Equal(t, tt.in, m.HardwareAddr())
		})
	}
}

func TestMACJSON(t *testing.T) {
	type machine struct {
		MAC      lpmos.MAC            `json:"mac"`
		Spare    lpmos.MAC            `json:"spare,omitzero"`
		Unset    lpmos.MAC            `json:"unset"`
		Ports    []lpmos.MAC          `json:"ports"`
		Hostname map[lpmos.MAC]string `json:"hostname"`
	}
	a := lpmos.MAC{0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e}
	b := lpmos.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	in := machine{
		MAC:      a,
		Ports:    []lpmos.MAC{a, b},
		Hostname: map[lpmos.MAC]string{a: "node-a", b: "node-b"},
	}

	data, err := json.Marshal(in)
	require.NoError(t, err)
	assert.JSONEq(t, `{
		"mac": "00:1a:2b:3c:4d:5e",
		"unset": "",
		"ports": ["00:1a:2b:3c:4d:5e", "52:54:00:12:34:56"],
		"hostname": {"00:1a:2b:3c:4d:5e": "node-a", "52:54:00:12:34:56": "node-b"}
	}`, string(data))

	var out machine
	require.NoError(t, json.Unmarshal(data, &out))
	assert.Equal(t, in, out)

	t.Run("decodes any accepted form and normalises", func(t *testing.T) {
		var got machine
		require.NoError(t, json.Unmarshal([]byte(`{
			"mac": "00-1A-2B-3C-4D-5E",
			"ports": ["001a.2b3c.4d5e"],
			"hostname": {"5254.0012.3456": "node-b"}
		}`), &got))
		assert.Equal(t, a, got.MAC)
		assert.Equal(t, []lpmos.MAC{a}, got.Ports)
		assert.Equal(t, map[lpmos.MAC]string{b: "node-b"}, got.Hostname)
	})

	t.Run("rejects garbage", func(t *testing.T) {
		for _, doc := range []string{
			`{"mac": "not-a-mac"}`,
			`{"mac": "ff:ff:ff:ff:ff:ff"}`,
			`{"hostname": {"zz:zz:zz:zz:zz:zz": "x"}}`,
		} {
			var got machine
			err := json.Unmarshal([]byte(doc), &got)
			assert.ErrorIs(t, err, lpmos.ErrInvalidMAC, doc)
		}
		var got machine
		assert.Error(t, json.Unmarshal([]byte(`{"mac": 12}`), &got), "a number is not a MAC")
	})
}

func TestMACTextZero(t *testing.T) {
	text, err := lpmos.MAC{}.MarshalText()
	require.NoError(t, err)
	assert.Empty(t, text)

	m := lpmos.MAC{1, 2, 3, 4, 5, 6}
	require.NoError(t, m.UnmarshalText(nil))
	assert.True(t, m.IsZero(), "empty text resets to the zero MAC")
}

func TestValidateRegionID(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"single letter", "a", true},
		{"typical", "dc1", true},
		{"with hyphens", "eu-west-1", true},
		{"double hyphen", "eu--west", true},
		{"63 chars", "a" + strings.Repeat("b", 62), true},
		{"64 chars", "a" + strings.Repeat("b", 63), false},
		{"empty", "", false},
		{"uppercase", "DC1", false},
		{"mixed case", "Dc1", false},
		{"leading digit", "1dc", false},
		{"leading hyphen", "-dc1", false},
		{"trailing hyphen", "dc1-", false},
		{"only hyphen", "-", false},
		{"underscore", "dc_1", false},
		{"dot", "dc.1", false},
		{"slash", "dc/1", false},
		{"space", "dc 1", false},
		{"surrounding space", " dc1 ", false},
		{"unicode", "dć1", false},
		{"nul", "dc\x001", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := lpmos.ValidateRegionID(tt.in)
			if tt.ok {
				assert.NoError(t, err)
				return
			}
			assert.ErrorIs(t, err, lpmos.ErrInvalidRegionID)
			assert.NotErrorIs(t, err, lpmos.ErrInvalidTaskID)
		})
	}
}

func TestValidateTaskID(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"seed example v4", "550e8400-e29b-41d4-a716-446655440000", true},
		{"v7", "01890a5d-ac96-774b-bcce-b302099a8057", true},
		{"all f", "ffffffff-ffff-ffff-ffff-ffffffffffff", true},
		{"empty", "", false},
		{"nil uuid", "00000000-0000-0000-0000-000000000000", false},
		{"uppercase", "550E8400-E29B-41D4-A716-446655440000", false},
		{"one uppercase digit", "550e8400-e29b-41d4-a716-44665544000A", false},
		{"no hyphens", "550e8400e29b41d4a716446655440000", false},
		{"braces", "{550e8400-e29b-41d4-a716-446655440000}", false},
		{"urn", "urn:uuid:550e8400-e29b-41d4-a716-446655440000", false},
		{"35 chars", "550e8400-e29b-41d4-a716-44665544000", false},
		{"37 chars", "550e8400-e29b-41d4-a716-4466554400000", false},
		{"hyphen moved", "550e840-0e29b-41d4-a716-446655440000", false},
		{"non hex", "550e8400-e29b-41d4-a716-44665544000g", false},
		{"underscore for hyphen", "550e8400_e29b-41d4-a716-446655440000", false},
		{"surrounding space", " 550e8400-e29b-41d4-a716-446655440000", false},
		{"path traversal", "../../../../../../../../../etc/passwd", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := lpmos.ValidateTaskID(tt.in)
			if tt.ok {
				assert.NoError(t, err)
				return
			}
			assert.ErrorIs(t, err, lpmos.ErrInvalidTaskID)
			assert.NotErrorIs(t, err, lpmos.ErrInvalidRegionID)
		})
	}
}

func TestArchFirmware(t *testing.T) {
	tests := []struct {
		arch     lpmos.Arch
		code     uint16
		name     string
		firmware lpmos.Firmware
		http     bool
		wantErr  bool
	}{
		{lpmos.ArchBIOS, 0, "x86-bios", lpmos.FirmwareBIOS, false, false},
		{lpmos.ArchEFIIA32, 6, "efi-ia32", "", false, true},
		{lpmos.ArchEFIx64, 7, "efi-x64", lpmos.FirmwareUEFI, false, false},
		{lpmos.ArchEFIBC, 9, "efi-bc", lpmos.FirmwareUEFI, false, false},
		{lpmos.ArchEFIARM64, 11, "efi-arm64", lpmos.FirmwareARM64, false, false},
		{lpmos.ArchEFIx64HTTP, 16, "efi-x64-http", lpmos.FirmwareUEFIHTTP, true, false},
		{lpmos.ArchEFIARM64HTTP, 19, "efi-arm64-http", lpmos.FirmwareARM64HTTP, true, false},
		{lpmos.Arch(1), 1, "Arch(1)", "", false, true},
		{lpmos.Arch(2), 2, "Arch(2)", "", false, true},
		{lpmos.Arch(10), 10, "Arch(10)", "", false, true},
		{lpmos.Arch(15), 15, "Arch(15)", "", false, true},
		{lpmos.Arch(0xffff), 0xffff, "Arch(65535)", "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.code, uint16(tt.arch), "IANA code")
			assert.Equal(t, tt.name, tt.arch.String())
			f, err := tt.arch.Firmware()
			if tt.wantErr {
				assert.ErrorIs(t, err, lpmos.ErrUnknownFirmware)
				assert.Empty(t, f)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.firmware, f)
			assert.Equal(t, tt.http, f.HTTPBoot())
		})
	}
}

func TestParseFirmware(t *testing.T) {
	tests := []struct {
		in      string
		want    lpmos.Firmware
		wantErr bool
	}{
		{"bios", lpmos.FirmwareBIOS, false},
		{"uefi", lpmos.FirmwareUEFI, false},
		{"uefi-http", lpmos.FirmwareUEFIHTTP, false},
		{"arm64", lpmos.FirmwareARM64, false},
		{"arm64-http", lpmos.FirmwareARM64HTTP, false},
		{"UEFI", lpmos.FirmwareUEFI, false},
		{" bios\n", lpmos.FirmwareBIOS, false},
		{"", "", true},
		{"efi", "", true},
		{"uefi_http", "", true},
		{"x86-64", "", true},
		{"7", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			f, err := lpmos.ParseFirmware(tt.in)
			if tt.wantErr {
				assert.ErrorIs(t, err, lpmos.ErrUnknownFirmware)
				assert.Empty(t, f)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, f)
		})
	}

	for _, f := range []lpmos.Firmware{lpmos.FirmwareBIOS, lpmos.FirmwareUEFI, lpmos.FirmwareARM64} {
		assert.False(t, f.HTTPBoot(), f)
	}
	for _, f := range []lpmos.Firmware{lpmos.FirmwareUEFIHTTP, lpmos.FirmwareARM64HTTP} {
		assert.True(t, f.HTTPBoot(), f)
	}
}

func TestFirmwareIPXEBinary(t *testing.T) {
	tests := []struct {
		firmware lpmos.Firmware
		want     string
		wantErr  error
	}{
		{lpmos.FirmwareBIOS, "undionly.kpxe", nil},
		{lpmos.FirmwareUEFI, "snponly.efi", nil},
		{lpmos.FirmwareUEFIHTTP, "snponly.efi", nil},
		{lpmos.FirmwareARM64, "", lpmos.ErrNoIPXEBinary},
		{lpmos.FirmwareARM64HTTP, "", lpmos.ErrNoIPXEBinary},
		{"efi-ia32", "", lpmos.ErrUnknownFirmware},
		{"", "", lpmos.ErrUnknownFirmware},
	}
	for _, tt := range tests {
		t.Run(string(tt.firmware), func(t *testing.T) {
			got, err := tt.firmware.IPXEBinary()
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
				assert.Empty(t, got)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			assert.Contains(t, lpmos.IPXEBinaries(), got, "every default binary is one a directory is checked for")
		})
	}
	_, err := lpmos.FirmwareARM64.IPXEBinary()
	assert.ErrorContains(t, err, "no arm64 iPXE binary in Debian's ipxe package")
}

func TestIPXEBinariesIsACopy(t *testing.T) {
	names := lpmos.IPXEBinaries()
	assert.Equal(t, []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"}, names)
	names[0] = "evil.kpxe"
	assert.Equal(t, "undionly.kpxe", lpmos.IPXEBinaries()[0])
}

func TestSentinelsDistinct(t *testing.T) {
	sentinels := []error{lpmos.ErrInvalidMAC, lpmos.ErrInvalidRegionID, lpmos.ErrInvalidTaskID, lpmos.ErrUnknownFirmware, lpmos.ErrNoIPXEBinary,
		lpmos.ErrInvalidText, lpmos.ErrInvalidHostname, lpmos.ErrInvalidSSHKey}
	for i, a := range sentinels {
		for j, b := range sentinels {
			assert.Equal(t, i == j, errors.Is(a, b), "%v vs %v", a, b)
		}
	}
}

func FuzzParseMAC(f *testing.F) {
	for _, seed := range []string{
		"00:1a:2b:3c:4d:5e", "00-1A-2B-3C-4D-5E", "00:1A:2b-3c-4d-5e", "001a.2b3c.4d5e",
		"001a2b3c4d5e", " 52:54:00:12:34:56\n", "", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00",
		"01:00:5e:00:00:01", "00:1a:2b:ff:fe:3c:4d:5e", "001a2b3c4d5", "0:1:2:3:4:5",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := lpmos.ParseMAC(s)
		if err != nil {
			if !errors.Is(err, lpmos.ErrInvalidMAC) {
				t.Fatalf("ParseMAC(%q) error %v does not wrap ErrInvalidMAC", s, err)
			}
			if !m.IsZero() {
				t.Fatalf("ParseMAC(%q) returned %v with an error", s, m)
			}
			return
		}
		str := m.String()
		if len(str) != 17 || str != strings.ToLower(str) {
			t.Fatalf("ParseMAC(%q).String() = %q, want 17 lowercase characters", s, str)
		}
		again, err := lpmos.ParseMAC(str)
		if err != nil || again != m {
			t.Fatalf("ParseMAC(%q) = %v, but re-parsing %q gives %v, %v", s, m, str, again, err)
		}
		if m.IsZero() || m[0]&1 == 1 {
			t.Fatalf("ParseMAC(%q) accepted a non-unicast address %v", s, m)
		}
	})
}
