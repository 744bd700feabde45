package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/region/templates"
)

func TestParseMetaData(t *testing.T) {
	for name, tc := range map[string]struct {
		in       string
		id, host string
		err      bool
	}{
		"lpmos":    {in: "instance-id: \"task-1\"\nlocal-hostname: \"web-01\"\n", id: "task-1", host: "web-01"},
		"plain":    {in: "instance-id: iid-local01\nlocal-hostname: cloudimg\n", id: "iid-local01", host: "cloudimg"},
		"escaped":  {in: "instance-id: \"a\\\"b\"\n", id: `a"b`},
		"crlf":     {in: "instance-id: \"x\"\r\nlocal-hostname: 'h'\r\n", id: "x", host: "h"},
		"no id":    {in: "local-hostname: \"web-01\"\n", err: true},
		"bad json": {in: "instance-id: \"unterminated\n", err: true},
	} {
		t.Run(name, func(t *testing.T) {
			id, host, err := parseMetaData([]byte(tc.in))
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.id, id)
			require.Equal(t, tc.host, host)
		})
	}
}

func TestParsePhoneHomeURL(t *testing.T) {
	const lpmos = "#cloud-config\nhostname: \"web-01\"\nphone_home:\n  url: \"http://10.0.0.1:8080/api/v1/agent/phone-home/T1?token=abc\"\n  post: [instance_id, hostname]\n  tries: 10\n"
	for name, tc := range map[string]struct {
		in, want string
		err      bool
	}{
		"lpmos":        {in: lpmos, want: "http://10.0.0.1:8080/api/v1/agent/phone-home/T1?token=abc"},
		"plain":        {in: "#cloud-config\nphone_home:\n  post: all\n  url: http://h/p/$INSTANCE_ID/\n", want: "http://h/p/$INSTANCE_ID/"},
		"other url":    {in: "#cloud-config\nfoo:\n  url: \"http://wrong/\"\nphone_home:\n  url: \"http://right/\"\n", want: "http://right/"},
		"after":        {in: "phone_home:\n  tries: 3\nruncmd:\n  url: \"http://no/\"\n", err: true},
		"none":         {in: "#cloud-config\nhostname: x\n", err: true},
		"not http":     {in: "phone_home:\n  url: \"file:///etc/passwd\"\n", err: true},
		"bad quotes":   {in: "phone_home:\n  url: \"http://x/\n", err: true},
		"escaped amp":  {in: "phone_home:\n  url: \"http://x/?a=1\\u0026b=2\"\n", want: "http://x/?a=1&b=2"},
		"tabs comment": {in: "phone_home:\n  # comment\n\turl: \"http://x/\"\n", want: "http://x/"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parsePhoneHomeURL([]byte(tc.in))
			if tc.err {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// bootSector makes a FAT boot sector with label at the FAT32 or FAT16
// position.
func bootSector(fat32 bool, label string) []byte {
	b := make([]byte, 512)
	b[0x0B], b[0x0C], b[0x0D] = 0x00, 0x02, 1 // 512 bytes per sector, 1 per cluster
	b[510], b[511] = 0x55, 0xAA
	lbl := []byte(label + "           ")[:11]
	if fat32 {
		b[0x42] = 0x29
		copy(b[0x47:], lbl)
		copy(b[0x52:], "FAT32   ")
	} else {
		b[0x16] = 9 // sectors per FAT
		b[0x26] = 0x29
		copy(b[0x2B:], lbl)
		copy(b[0x36:], "FAT16   ")
	}
	return b
}

func TestFATLabel(t *testing.T) {
	noSig := bootSector(true, "CIDATA")
	noSig[511] = 0
	noEBPB := bootSector(false, "CIDATA")
	noEBPB[0x26] = 0
	badBPS := bootSector(true, "CIDATA")
	badBPS[0x0C] = 0x03 // 768 bytes per sector
	for name, tc := range map[string]struct {
		sector []byte
		want   string
		ok     bool
	}{
		"fat32":          {sector: bootSector(true, "CIDATA"), want: "CIDATA", ok: true},
		"fat16":          {sector: bootSector(false, "cidata"), want: "cidata", ok: true},
		"no name":        {sector: bootSector(true, "NO NAME"), want: "NO NAME", ok: true},
		"no signature":   {sector: noSig},
		"no ebpb":        {sector: noEBPB},
		"bad bps":        {sector: badBPS},
		"short":          {sector: make([]byte, 100)},
		"zeroes (MBR-0)": {sector: make([]byte, 512)},
	} {
		t.Run(name, func(t *testing.T) {
			got, ok := fatLabel(tc.sector)
			require.Equal(t, tc.ok, ok)
			require.Equal(t, tc.want, got)
		})
	}
}

func TestFindFATLabel(t *testing.T) {
	sys, dev := t.TempDir(), t.TempDir()
	for name, content := range map[string][]byte{
		"vda":  make([]byte, 512),
		"vda1": bootSector(true, "EFI"),
		"vda2": bootSector(false, "CIDATA"),
		"sr0":  nil, // unreadable: skipped
	} {
		require.NoError(t, os.MkdirAll(filepath.Join(sys, name), 0o755))
		if name != "vda" {
			require.NoError(t, os.WriteFile(filepath.Join(sys, name, "partition"), []byte("1\n"), 0o644))
		}
		if content != nil {
			require.NoError(t, os.WriteFile(filepath.Join(dev, name), content, 0o644))
		}
	}
	got, err := findFATLabel(sys, dev, "CIDATA")
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dev, "vda2"), got)

	_, err = findFATLabel(sys, dev, "MISSING")
	require.ErrorContains(t, err, "vda1=EFI")
}

func TestFormBodyAndURL(t *testing.T) {
	for name, tc := range map[string]struct{ id, host, body string }{
		"simple":  {"task-1", "web-01", "instance_id=task-1&hostname=web-01"},
		"escaped": {"a b&c", "h=1", "instance_id=a+b%26c&hostname=h%3D1"},
		"empty":   {"x", "", "instance_id=x&hostname="},
	} {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, tc.body, formBody(tc.id, tc.host))
		})
	}
	require.Equal(t, "http://10.0.2.2:8080/api/v1/agent/phone-home/T1",
		withoutQuery("http://10.0.2.2:8080/api/v1/agent/phone-home/T1?token=secret#x"))
}

// The stand-in reads the network-config the region renders.
func TestParseNetworkConfig(t *testing.T) {
	d := templates.Data{TaskID: "550e8400-e29b-41d4-a716-446655440000", MAC: "52:54:00:12:34:56", RegionURL: "http://10.99.0.1:8081", Token: "t",
		Network: "static", Address: "10.99.0.50/24", Gateway: "10.99.0.1", Nameservers: []string{"10.99.0.1"}}
	nc, err := templates.Render(templates.NetworkConfig, d, nil)
	require.NoError(t, err)
	s, err := parseNetworkConfig(nc)
	require.NoError(t, err)
	require.NotNil(t, s)
	assert.Equal(t, "52:54:00:12:34:56", s.mac.String())
	assert.Equal(t, netip.MustParsePrefix("10.99.0.50/24"), s.addr)
	assert.Equal(t, netip.MustParseAddr("10.99.0.1"), s.gw)

	d.Network, d.Address, d.Gateway = "dhcp", "", ""
	nc, err = templates.Render(templates.NetworkConfig, d, nil)
	require.NoError(t, err)
	s, err = parseNetworkConfig(nc)
	require.NoError(t, err)
	assert.Nil(t, s, "DHCP")

	_, err = parseNetworkConfig([]byte("version: 1\n"))
	assert.Error(t, err)
}
