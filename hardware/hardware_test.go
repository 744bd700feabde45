package hardware_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
)

// seedReport is the example value of /lpmos/tasks/{id}/hardware from the v1
// specification; stored reports look like this, so it must keep decoding.
const seedReport = `{
  "mac_address": "00:1a:2b:3c:4d:5e",
  "cpu": {
    "model": "Intel Xeon E5-2680 v4",
    "cores": 28,
    "threads": 56
  },
  "memory": {
    "total_gb": 256,
    "dimms": [
      {"slot": "A1", "size_gb": 16, "type": "DDR4", "speed_mhz": 2400}
    ]
  },
  "disks": [
    {"device": "/dev/sda", "size_gb": 480, "type": "SSD", "model": "Samsung 860 PRO"},
    {"device": "/dev/sdb", "size_gb": 2000, "type": "HDD", "model": "Seagate ST2000"}
  ],
  "network": [
    {"interface": "eth0", "mac": "00:1a:2b:3c:4d:5e", "speed": "10Gbps"},
    {"interface": "eth1", "mac": "00:1a:2b:3c:4d:5f", "speed": "10Gbps"}
  ],
  "bios": {
    "vendor": "Dell Inc.",
    "version": "2.10.0",
    "serial": "SN123456"
  },
  "collected_at": "2026-01-29T10:05:30Z"
}`

func TestSeedReportRoundTrip(t *testing.T) {
	var info hardware.Info
	require.NoError(t, json.Unmarshal([]byte(seedReport), &info))

	want := hardware.Info{
		MACAddress: "00:1a:2b:3c:4d:5e",
		CPU:        hardware.CPU{Model: "Intel Xeon E5-2680 v4", Cores: 28, Threads: 56},
		Memory: hardware.Memory{
			TotalGB: 256,
			DIMMs:   []hardware.DIMM{{Slot: "A1", SizeGB: 16, Type: "DDR4", SpeedMHz: 2400}},
		},
		Disks: []hardware.Disk{
			{Device: "/dev/sda", SizeGB: 480, Type: hardware.DiskSSD, Model: "Samsung 860 PRO"},
			{Device: "/dev/sdb", SizeGB: 2000, Type: hardware.DiskHDD, Model: "Seagate ST2000"},
		},
		Network: []hardware.NIC{
			{Interface: "eth0", MAC: "00:1a:2b:3c:4d:5e", Speed: "10Gbps"},
			{Interface: "eth1", MAC: "00:1a:2b:3c:4d:5f", Speed: "10Gbps"},
		},
		BIOS:        hardware.BIOS{Vendor: "Dell Inc.", Version: "2.10.0", Serial: "SN123456"},
		CollectedAt: time.Date(2026, 1, 29, 10, 5, 30, 0, time.UTC),
	}
	assert.Equal(t, want, info)
	require.NoError(t, info.Validate())

	// Re-encoding gives back the original report document: no field renamed, and the
	// fields added since (system, board, sizes in bytes, …) stay out of the
	// way when empty.
	out, err := json.Marshal(info)
	require.NoError(t, err)
	assert.JSONEq(t, seedReport, string(out))
}

func TestExtendedFieldsRoundTrip(t *testing.T) {
	in := hardware.Info{
		MACAddress: "52:54:00:12:34:56",
		CPU:        hardware.CPU{Model: "AMD EPYC 9654", Cores: 192, Threads: 384, Sockets: 2, Vendor: "AuthenticAMD"},
		Memory: hardware.Memory{
			TotalGB:    64,
			TotalBytes: 68719476736,
			DIMMs: []hardware.DIMM{
				{Slot: "DIMM_A1", SizeGB: 32, Type: "DDR5", SpeedMHz: 4800, Manufacturer: "Samsung", Serial: "S1"},
			},
		},
		Disks: []hardware.Disk{
			{Device: "/dev/nvme0n1", SizeGB: 960, SizeBytes: 960197124096, Type: hardware.DiskNVMe, Model: "MZQL2960HCJR", Serial: "S64F", Removable: false},
			{Device: "/dev/sdc", SizeGB: 32, Type: hardware.DiskUnknown, Model: "USB Stick", Removable: true},
		},
		Network:     []hardware.NIC{{Interface: "ens3", MAC: "52:54:00:12:34:56", Speed: "", Driver: "virtio_net"}},
		BIOS:        hardware.BIOS{Vendor: "SeaBIOS", Version: "1.16.3", Date: "04/01/2014"},
		System:      hardware.System{Vendor: "QEMU", Product: "Standard PC (Q35 + ICH9, 2009)", Serial: "X", UUID: "8f7c2b1e-0000-4000-8000-000000000001"},
		Board:       hardware.Board{Vendor: "QEMU", Product: "Q35", Serial: "B"},
		CollectedAt: time.Date(2026, 2, 1, 8, 0, 0, 123000000, time.UTC),
	}
	data, err := json.Marshal(in)
	require.NoError(t, err)

	var doc map[string]any
	require.NoError(t, json.Unmarshal(data, &doc))
	for _, key := range []string{"mac_address", "cpu", "memory", "disks", "network", "bios", "system", "board", "collected_at"} {
		assert.Contains(t, doc, key)
	}
	assert.Equal(t, "", doc["network"].([]any)[0].(map[string]any)["speed"], "speed is present even when unknown")
	assert.Equal(t, true, doc["disks"].([]any)[1].(map[string]any)["removable"])

	var out hardware.Info
	require.NoError(t, json.Unmarshal(data, &out))
	assert.Equal(t, in, out)
	assert.NoError(t, out.Validate())
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", hardware.MaxStringLen+1)
	tests := []struct {
		name   string
		modify func(*hardware.Info)
		field  string // expected in the error; empty means valid
	}{
		{"seed report", func(*hardware.Info) {}, ""},
		{"empty report", func(i *hardware.Info) { *i = hardware.Info{} }, ""},
		{"no mac", func(i *hardware.Info) { i.MACAddress = "" }, ""},
		{"mac in another form", func(i *hardware.Info) { i.MACAddress = "00-1A-2B-3C-4D-5E" }, ""},
		{"string at limit", func(i *hardware.Info) { i.CPU.Model = strings.Repeat("x", hardware.MaxStringLen) }, ""},
		{"unknown disk type is fine", func(i *hardware.Info) { i.Disks[0].Type = "Optane" }, ""},
		{"infiniband nic mac is fine", func(i *hardware.Info) {
			i.Network[0].MAC = "80:00:02:08:fe:80:00:00:00:00:00:00:00:02:c9:03:00:0a:b1:c2"
		}, ""},
		{"limits exactly", func(i *hardware.Info) {
			i.Disks = make([]hardware.Disk, hardware.MaxDisks)
			i.Network = make([]hardware.NIC, hardware.MaxNICs)
			i.Memory.DIMMs = make([]hardware.DIMM, hardware.MaxDIMMs)
		}, ""},

		{"bad mac", func(i *hardware.Info) { i.MACAddress = "not-a-mac" }, "mac_address"},
		{"broadcast mac", func(i *hardware.Info) { i.MACAddress = "ff:ff:ff:ff:ff:ff" }, "mac_address"},
		{"negative cores", func(i *hardware.Info) { i.CPU.Cores = -1 }, "cpu.cores"},
		{"negative threads", func(i *hardware.Info) { i.CPU.Threads = -56 }, "cpu.threads"},
		{"negative sockets", func(i *hardware.Info) { i.CPU.Sockets = -2 }, "cpu.sockets"},
		{"negative memory", func(i *hardware.Info) { i.Memory.TotalGB = -256 }, "memory.total_gb"},
		{"negative dimm size", func(i *hardware.Info) { i.Memory.DIMMs[0].SizeGB = -16 }, "memory.dimms[0].size_gb"},
		{"negative dimm speed", func(i *hardware.Info) { i.Memory.DIMMs[0].SpeedMHz = -1 }, "memory.dimms[0].speed_mhz"},
		{"negative disk size", func(i *hardware.Info) { i.Disks[1].SizeGB = -1 }, "disks[1].size_gb"},
		{"too many disks", func(i *hardware.Info) { i.Disks = make([]hardware.Disk, hardware.MaxDisks+1) }, "disks"},
		{"too many nics", func(i *hardware.Info) { i.Network = make([]hardware.NIC, hardware.MaxNICs+1) }, "network"},
		{"too many dimms", func(i *hardware.Info) { i.Memory.DIMMs = make([]hardware.DIMM, hardware.MaxDIMMs+1) }, "memory.dimms"},
		{"long cpu model", func(i *hardware.Info) { i.CPU.Model = long }, "cpu.model"},
		{"long disk model", func(i *hardware.Info) { i.Disks[1].Model = long }, "disks[1].model"},
		{"long nic name", func(i *hardware.Info) { i.Network[1].Interface = long }, "network[1].interface"},
		{"long dimm serial", func(i *hardware.Info) { i.Memory.DIMMs[0].Serial = long }, "memory.dimms[0].serial"},
		{"long bios vendor", func(i *hardware.Info) { i.BIOS.Vendor = long }, "bios.vendor"},
		{"long system uuid", func(i *hardware.Info) { i.System.UUID = long }, "system.uuid"},
		{"long board serial", func(i *hardware.Info) { i.Board.Serial = long }, "board.serial"},
		{"invalid utf-8 serial", func(i *hardware.Info) { i.BIOS.Serial = "SN\xff\xfe" }, "bios.serial"},
		{"invalid utf-8 disk type", func(i *hardware.Info) { i.Disks[0].Type = "\xc3" }, "disks[0].type"},
		{"invalid utf-8 speed", func(i *hardware.Info) { i.Network[0].Speed = "10\x80Gbps" }, "network[0].speed"},
		{"NUL in serial", func(i *hardware.Info) { i.System.Serial = "SN\x00123" }, "system.serial"},
		{"ESC in CPU model", func(i *hardware.Info) { i.CPU.Model = "\x1b[2JXeon" }, "cpu.model"},
		{"C1 in disk model", func(i *hardware.Info) { i.Disks[1].Model = "Samsung\u009b31m" }, "disks[1].model"},
		{"bidi override in board product", func(i *hardware.Info) { i.Board.Product = "X11\u202eDPS" }, "board.product"},
		{"newline in NIC driver", func(i *hardware.Info) { i.Network[0].Driver = "ixgbe\napproved" }, "network[0].driver"},
		{"tab in DIMM slot", func(i *hardware.Info) { i.Memory.DIMMs[0].Slot = "A1\tB1" }, "memory.dimms[0].slot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var info hardware.Info
			require.NoError(t, json.Unmarshal([]byte(seedReport), &info))
			tt.modify(&info)
			err := info.Validate()
			if tt.field == "" {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, hardware.ErrInvalid)
			assert.ErrorContains(t, err, tt.field+":")
			var ve *hardware.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tt.field, ve.Field)
		})
	}
}

func TestValidateMACWrapsBothSentinels(t *testing.T) {
	info := hardware.Info{MACAddress: "01:00:5e:00:00:01"}
	err := info.Validate()
	assert.ErrorIs(t, err, hardware.ErrInvalid)
	assert.ErrorIs(t, err, lpmos.ErrInvalidMAC)
}

func TestValidateRejectsHostileJSON(t *testing.T) {
	// What a server sees from a broken agent: valid JSON, impossible values.
	var info hardware.Info
	require.NoError(t, json.Unmarshal([]byte(`{"cpu":{"cores":-4},"disks":[]}`), &info))
	assert.ErrorIs(t, info.Validate(), hardware.ErrInvalid)

	// json.Unmarshal replaces invalid UTF-8 with U+FFFD, so such input is
	// already harmless once decoded; Validate guards Go callers.
	var decoded hardware.Info
	require.NoError(t, json.Unmarshal([]byte("{\"bios\":{\"vendor\":\"Dell\xff\"}}"), &decoded))
	assert.Equal(t, "Dell\uFFFD", decoded.BIOS.Vendor)
	assert.NoError(t, decoded.Validate())
}
