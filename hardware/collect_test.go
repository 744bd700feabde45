package hardware_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/hardware"
)

var fixedNow = time.Date(2026, 1, 29, 10, 5, 30, 0, time.FixedZone("CET", 3600))

func collect(t *testing.T, root string) hardware.Info {
	t.Helper()
	c := hardware.Collector{Root: root, Now: func() time.Time { return fixedNow }}
	info, err := c.Collect(t.Context())
	require.NoError(t, err)
	return info
}

func TestCollectFixtures(t *testing.T) {
	collectedAt := time.Date(2026, 1, 29, 9, 5, 30, 0, time.UTC)
	tests := []struct {
		root string
		want hardware.Info
	}{
		{
			// Captured from the VM these tests were written on: no DMI, no
			// SMBIOS tables, loop and zram devices, ifb interfaces.
			root: "testdata/host",
			want: hardware.Info{
				CPU:    hardware.CPU{Model: "AMD EPYC", Cores: 2, Threads: 2, Sockets: 1, Vendor: "AuthenticAMD"},
				Memory: hardware.Memory{TotalGB: 24, TotalBytes: 25276514304},
				Disks: []hardware.Disk{
					{Device: "/dev/vda", SizeGB: 274, SizeBytes: 274877906944, Type: hardware.DiskHDD, Serial: "overlayblk"},
				},
				Network: []hardware.NIC{
					{Interface: "eth0", MAC: "02:fc:00:00:00:01", Speed: "", Driver: "virtio_net"},
				},
				CollectedAt: collectedAt,
			},
		},
		{
			root: "testdata/qemu-q35",
			want: hardware.Info{
				CPU: hardware.CPU{Model: "QEMU Virtual CPU version 2.5+", Cores: 2, Threads: 2, Sockets: 1, Vendor: "GenuineIntel"},
				Memory: hardware.Memory{
					TotalGB:    2,
					TotalBytes: 2 << 30,
					DIMMs:      []hardware.DIMM{{Slot: "DIMM 0", SizeGB: 2, Type: "RAM", Manufacturer: "QEMU"}},
				},
				Disks: []hardware.Disk{
					{Device: "/dev/vda", SizeGB: 21, SizeBytes: 21474836480, Type: hardware.DiskHDD},
				},
				Network: []hardware.NIC{
					{Interface: "eth0", MAC: "52:54:00:12:34:56", Speed: "", Driver: "virtio_net"},
				},
				BIOS: hardware.BIOS{Vendor: "SeaBIOS", Version: "1.16.3-debian-1.16.3-2", Date: "04/01/2014"},
				System: hardware.System{
					Vendor: "QEMU", Product: "Standard PC (Q35 + ICH9, 2009)",
					UUID: "5b0a3e6c-2f1d-4c8e-9a7b-1d2e3f405162",
				},
				CollectedAt: collectedAt,
			},
		},
		{
			root: "testdata/server",
			want: hardware.Info{
				CPU: hardware.CPU{Model: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", Cores: 4, Threads: 8, Sockets: 2, Vendor: "GenuineIntel"},
				Memory: hardware.Memory{
					// The DIMMs' 256 GiB, not MemTotal's 251.
					TotalGB:    256,
					TotalBytes: 256 << 30,
					DIMMs: []hardware.DIMM{
						{Slot: "A1", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123450"},
						{Slot: "A2", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123451"},
						{Slot: "A3", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123452"},
						{Slot: "A4", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123453"},
						{Slot: "B1", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123456"},
						{Slot: "B2", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123457"},
						{Slot: "B3", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123458"},
						{Slot: "B4", SizeGB: 32, Type: "DDR4", SpeedMHz: 3200, Manufacturer: "Hynix", Serial: "80123459"},
					},
				},
				Disks: []hardware.Disk{
					{Device: "/dev/nvme0n1", SizeGB: 960, SizeBytes: 960197124096, Type: hardware.DiskNVMe,
						Model: "SAMSUNG MZQL2960HCJR-00A07", Serial: "S64FNE0R100001"},
					{Device: "/dev/nvme1n1", SizeGB: 960, SizeBytes: 960197124096, Type: hardware.DiskNVMe,
						Model: "SAMSUNG MZQL2960HCJR-00A07", Serial: "S64FNE0R100002"},
					{Device: "/dev/sda", SizeGB: 480, SizeBytes: 480103981056, Type: hardware.DiskSSD,
						Model: "SAMSUNG MZ7LH480", Serial: "naa.5002538e30a12345"},
					{Device: "/dev/sdb", SizeGB: 2000, SizeBytes: 2000398934016, Type: hardware.DiskHDD,
						Model: "ST2000NM0055-1V4"},
					{Device: "/dev/sdc", SizeGB: 30, SizeBytes: 30979129344, Type: hardware.DiskHDD,
						Model: "Ultra Fit", Removable: true},
				},
				Network: []hardware.NIC{
					{Interface: "eno1", MAC: "b4:96:91:aa:00:01", Speed: "1Gbps", Driver: "igb"},
					{Interface: "eno2", MAC: "b4:96:91:aa:00:02", Speed: "100Mbps", Driver: "igb"},
					{Interface: "ens1f0np0", MAC: "0c:42:a1:bb:00:10", Speed: "25Gbps", Driver: "mlx5_core"},
					{Interface: "ens1f1np1", MAC: "0c:42:a1:bb:00:11", Speed: "", Driver: "mlx5_core"},
				},
				BIOS:        hardware.BIOS{Vendor: "Dell Inc.", Version: "1.10.2", Serial: "SN12345", Date: "03/14/2024"},
				System:      hardware.System{Vendor: "Dell Inc.", Product: "PowerEdge R650", Serial: "SN12345", UUID: "4c4c4544-0053-4e10-8031-b3c04f313233"},
				Board:       hardware.Board{Vendor: "Dell Inc.", Product: "0Y2K8F", Serial: ".SN12345.CNFCP0012345."},
				CollectedAt: collectedAt,
			},
		},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.root), func(t *testing.T) {
			got := collect(t, tt.root)
			assert.Equal(t, tt.want, got)
			require.NoError(t, got.Validate())

			// What the agent will send survives the wire unchanged.
			data, err := json.Marshal(got)
			require.NoError(t, err)
			var back hardware.Info
			require.NoError(t, json.Unmarshal(data, &back))
			assert.Equal(t, got, back)
		})
	}
}

// emptyInfo is what a root with nothing readable in it yields.
func emptyInfo() hardware.Info {
	return hardware.Info{
		Disks:       []hardware.Disk{},
		Network:     []hardware.NIC{},
		CollectedAt: fixedNow.UTC(),
	}
}

// copyTree copies a fixture so a test can break parts of it.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	require.NoError(t, os.CopyFS(dst, os.DirFS(src)))
	return dst
}

func TestCollectMissingOrBrokenSources(t *testing.T) {
	// Firmware can say anything: control characters, terminal escapes and
	// bidi overrides are dropped so that the report still validates.
	garbage := "\xff\xfe\x00garbage\x00\x1b[2J\u202e\u0085\t\x7f" + strings.Repeat("\x80", 5000)
	tests := []struct {
		name  string
		setup func(t *testing.T) string // returns the root
		check func(t *testing.T, got hardware.Info)
	}{
		{
			name:  "empty root",
			setup: func(t *testing.T) string { return t.TempDir() },
			check: func(t *testing.T, got hardware.Info) { assert.Equal(t, emptyInfo(), got) },
		},
		{
			name: "empty proc and sys directories",
			setup: func(t *testing.T) string {
				root := t.TempDir()
				for _, d := range []string{"proc", "sys/block", "sys/class/net", "sys/class/dmi/id", "sys/firmware/dmi/tables"} {
					require.NoError(t, os.MkdirAll(filepath.Join(root, d), 0o755))
				}
				return root
			},
			check: func(t *testing.T, got hardware.Info) { assert.Equal(t, emptyInfo(), got) },
		},
		{
			name: "no dmi and no smbios",
			setup: func(t *testing.T) string {
				root := copyTree(t, "testdata/qemu-q35")
				require.NoError(t, os.RemoveAll(filepath.Join(root, "sys/class/dmi")))
				require.NoError(t, os.RemoveAll(filepath.Join(root, "sys/firmware")))
				return root
			},
			check: func(t *testing.T, got hardware.Info) {
				assert.Zero(t, got.BIOS)
				assert.Zero(t, got.System)
				assert.Zero(t, got.Board)
				assert.Nil(t, got.Memory.DIMMs)
				// Without DIMMs the total is MemTotal, rounded: 1.92 GiB.
				assert.Equal(t, hardware.Memory{TotalGB: 2, TotalBytes: 2014116 * 1024}, got.Memory)
				assert.Len(t, got.Disks, 1)
				assert.Len(t, got.Network, 1)
			},
		},
		{
			name: "smbios entry point without table",
			setup: func(t *testing.T) string {
				root := copyTree(t, "testdata/server")
				require.NoError(t, os.Remove(filepath.Join(root, "sys/firmware/dmi/tables/DMI")))
				return root
			},
			check: func(t *testing.T, got hardware.Info) {
				assert.Nil(t, got.Memory.DIMMs)
				assert.Equal(t, 251, got.Memory.TotalGB)
			},
		},
		{
			name: "truncated smbios table",
			setup: func(t *testing.T) string {
				root := copyTree(t, "testdata/server")
				p := filepath.Join(root, "sys/firmware/dmi/tables/DMI")
				data, err := os.ReadFile(p)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(p, data[:len(data)/2], 0o644))
				return root
			},
			check: func(t *testing.T, got hardware.Info) {
				assert.Nil(t, got.Memory.DIMMs, "a table u-root cannot parse yields no DIMMs, not half of them")
				assert.Equal(t, 251, got.Memory.TotalGB)
			},
		},
		{
			name: "garbage everywhere",
			setup: func(t *testing.T) string {
				root := copyTree(t, "testdata/server")
				require.NoError(t, filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
					if err == nil && d.Type().IsRegular() {
						return os.WriteFile(path, []byte(garbage), 0o644)
					}
					return err
				}))
				return root
			},
			check: func(t *testing.T, got hardware.Info) {
				assert.Zero(t, got.CPU)
				assert.Zero(t, got.Memory)
				assert.Empty(t, got.Disks, "no disk has a readable size")
				// Interfaces with a device are still listed, with what could be read.
				require.Len(t, got.Network, 4)
				for _, n := range got.Network {
					assert.Empty(t, n.Speed)
					assert.Empty(t, n.Driver)
					assert.LessOrEqual(t, len(n.MAC), hardware.MaxStringLen)
				}
				assert.LessOrEqual(t, len(got.BIOS.Vendor), hardware.MaxStringLen)
			},
		},
		{
			name: "unparseable numbers",
			setup: func(t *testing.T) string {
				root := copyTree(t, "testdata/server")
				writeTree(t, root, map[string]string{
					"proc/meminfo":                               "MemTotal: 99999999999999999999999 kB\n",
					"proc/cpuinfo":                               "no colon here\n\nprocessor : 0\nmodel name :\n",
					"sys/block/sda/size":                         "-5\n",
					"sys/block/sdb/size":                         "18446744073709551615\n",
					"sys/block/nvme0n1/queue/rotational":         "maybe\n",
					"sys/block/sdc/queue/rotational":             "2\n",
					"sys/class/net/eno1/speed":                   "fast\n",
					"sys/class/net/eno2/speed":                   "0\n",
					"sys/class/dmi/id/product_serial":            "To Be Filled By O.E.M.\n",
					"sys/class/dmi/id/chassis_serial":            "\n",
					"sys/firmware/dmi/tables/smbios_entry_point": "_SM3_ but not really",
				})
				return root
			},
			check: func(t *testing.T, got hardware.Info) {
				assert.Equal(t, hardware.CPU{Threads: 1, Cores: 1, Sockets: 1}, got.CPU)
				assert.Zero(t, got.Memory)
				devs := make([]string, 0, len(got.Disks))
				for _, d := range got.Disks {
					devs = append(devs, d.Device)
				}
				assert.Equal(t, []string{"/dev/nvme0n1", "/dev/nvme1n1", "/dev/sdc"}, devs)
				assert.Equal(t, hardware.DiskNVMe, got.Disks[0].Type, "NVMe by name, whatever rotational says")
				assert.Equal(t, hardware.DiskUnknown, got.Disks[2].Type)
				assert.Equal(t, "", got.Network[0].Speed)
				assert.Equal(t, "", got.Network[1].Speed)
				assert.Equal(t, "", got.System.Serial, "firmware placeholders are not serials")
				assert.Equal(t, ".SN12345.CNFCP0012345.", got.BIOS.Serial, "board serial stands in")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := collect(t, tt.setup(t))
			tt.check(t, got)
			assert.NoError(t, got.Validate())
			assert.Equal(t, fixedNow.UTC(), got.CollectedAt)
		})
	}
}

func TestCollectErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	for _, root := range []string{filepath.Join(t.TempDir(), "missing"), file} {
		_, err := (&hardware.Collector{Root: root}).Collect(t.Context())
		assert.Error(t, err, root)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := (&hardware.Collector{Root: "testdata/server"}).Collect(ctx)
	assert.ErrorIs(t, err, context.Canceled)
}

// TestCollectThisMachine runs the collector on the real root of the machine
// the tests run on: whatever it is, collection works and the basics add up.
func TestCollectThisMachine(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the collector reads Linux procfs and sysfs")
	}
	before := time.Now().UTC()
	info, err := hardware.Collect(t.Context())
	require.NoError(t, err)
	require.NoError(t, info.Validate())

	assert.Equal(t, runtime.NumCPU(), info.CPU.Threads, "threads are the logical CPUs")
	assert.Positive(t, info.CPU.Cores)
	assert.LessOrEqual(t, info.CPU.Cores, info.CPU.Threads)
	assert.Positive(t, info.CPU.Sockets)
	assert.Positive(t, info.Memory.TotalBytes)
	assert.Positive(t, info.Memory.TotalGB)
	assert.Empty(t, info.MACAddress, "the agent fills the boot MAC in")
	assert.False(t, info.CollectedAt.Before(before))
	assert.Equal(t, time.UTC, info.CollectedAt.Location())
	for _, d := range info.Disks {
		assert.True(t, strings.HasPrefix(d.Device, "/dev/"), d.Device)
		assert.Positive(t, d.SizeBytes, d.Device)
	}
	t.Logf("this machine: %+v", info)
}

// FuzzSMBIOS feeds the DIMM collector arbitrary tables behind a valid and an
// invalid entry point: whatever firmware left in memory, Collect returns a
// report that Validate accepts.
func FuzzSMBIOS(f *testing.F) {
	for _, dimms := range [][]dimmSpec{qemuDIMMs, serverDIMMs, nil} {
		entry, table := smbiosTables(f, dimms)
		f.Add(entry, table)
		f.Add(entry, table[:len(table)/3])
	}
	f.Add([]byte("_SM_"), []byte{17, 0x22, 0, 0})
	f.Fuzz(func(t *testing.T, entry, table []byte) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/firmware/dmi/tables/smbios_entry_point": string(entry),
			"sys/firmware/dmi/tables/DMI":                string(table),
		})
		got := collect(t, root)
		require.NoError(t, got.Validate())
		var sum uint64
		for _, d := range got.Memory.DIMMs {
			sum += uint64(d.SizeGB)
		}
		assert.LessOrEqual(t, sum<<30, got.Memory.TotalBytes)
	})
}
