package hardware

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/smbios"
)

// uroot is what u-root's pkg/smbios, which the collector used before,
// makes of the tables: the memory devices in the same form, or nil.
func uroot(entry, table []byte) (mds []*memoryDevice) {
	defer func() {
		if recover() != nil {
			mds = nil
		}
	}()
	si, err := smbios.ParseInfo(entry, table)
	if err != nil {
		return nil
	}
	for _, t := range si.GetTablesByType(smbios.TableTypeMemoryDevice) {
		if md, err := smbios.NewMemoryDevice(t); err == nil {
			mds = append(mds, &memoryDevice{Size: md.Size, DeviceLocator: md.DeviceLocator, Type: uint8(md.Type),
				Speed: md.Speed, Manufacturer: md.Manufacturer, SerialNumber: md.SerialNumber, PartNumber: md.PartNumber,
				ExtendedSize: md.ExtendedSize, ConfiguredSpeed: md.ConfiguredSpeed})
		}
	}
	return mds
}

// FuzzMemoryDevicesMatchURoot: our type 17 decoder reads any table exactly
// as u-root's does, seeded with the fixtures' real tables (a QEMU VM and
// a server) and cut or flipped versions of them.
func FuzzMemoryDevicesMatchURoot(f *testing.F) {
	for _, fx := range []string{"qemu-q35", "server"} {
		dir := filepath.Join("testdata", fx, "sys/firmware/dmi/tables")
		entry, err := os.ReadFile(filepath.Join(dir, "smbios_entry_point"))
		require.NoError(f, err)
		table, err := os.ReadFile(filepath.Join(dir, "DMI"))
		require.NoError(f, err)
		f.Add(entry, table)
		f.Add(entry, table[:len(table)/2])
		f.Add(entry[:len(entry)-1], table)
		bad := append([]byte(nil), entry...)
		bad[len(bad)-1]++
		f.Add(bad, table)
		short := append([]byte(nil), table...)
		for i := 0; i+1 < len(short); i++ {
			if short[i] == 17 && short[i+1] > 0x20 { // a type 17 header: shorten it to 0x1d
				short[i+1] = 0x1d
				break
			}
		}
		f.Add(entry, short)
	}
	f.Fuzz(func(t *testing.T, entry, table []byte) {
		want := uroot(entry, table)
		got := memoryDevices(entry, table)
		assert.Equal(t, want, got)
		for i := range min(len(got), len(want)) {
			assert.Equal(t, smbios.MemoryDeviceType(want[i].Type).String(), memoryTypeName(got[i].Type))
		}
	})
}
