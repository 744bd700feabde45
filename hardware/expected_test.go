package hardware_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/hardware"
)

func TestExpectedValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		e     hardware.Expected
		field string
	}{
		{"cores only", hardware.Expected{Cores: 16}, ""},
		{"identity only", hardware.Expected{Vendor: "Dell Inc.", Serial: "7XK2M33"}, ""},
		{"nothing", hardware.Expected{}, "expected"},
		{"negative cores", hardware.Expected{Cores: -1}, "cores"},
		{"negative memory", hardware.Expected{MemoryGB: -64}, "memory_gb"},
		{"negative disks", hardware.Expected{Disks: -2}, "disks"},
		{"control character", hardware.Expected{Serial: "ab\x00c"}, "serial"},
		{"too long", hardware.Expected{Model: strings.Repeat("m", hardware.MaxStringLen+1)}, "model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.e.Validate()
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			var ve *hardware.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tc.field, ve.Field)
			assert.ErrorIs(t, err, hardware.ErrInvalid)
		})
	}
}

func TestExpectedMismatches(t *testing.T) {
	hw := &hardware.Info{
		CPU:    hardware.CPU{Cores: 32},
		Memory: hardware.Memory{TotalGB: 251},
		Disks:  []hardware.Disk{{Device: "/dev/sda", SizeGB: 480}, {Device: "/dev/sdb", SizeGB: 480}},
		System: hardware.System{Vendor: "Dell Inc.", Product: "PowerEdge R650", Serial: "7XK2M33"},
	}
	for _, tc := range []struct {
		name string
		e    hardware.Expected
		want []string
	}{
		{"all match", hardware.Expected{Cores: 32, MemoryGB: 256, Disks: 2, Vendor: " dell inc. ", Model: "PowerEdge R650", Serial: "7xk2m33"}, nil},
		{"memory within a sixteenth below", hardware.Expected{MemoryGB: 256}, nil},
		{"memory more than a sixteenth below", hardware.Expected{MemoryGB: 272}, []string{"251 GB memory, expected 272"}},
		{"memory above", hardware.Expected{MemoryGB: 128}, []string{"251 GB memory, expected 128"}},
		{"cores differ", hardware.Expected{Cores: 48}, []string{"32 cores, expected 48"}},
		{"a disk missing", hardware.Expected{Disks: 3}, []string{"2 disks, expected 3"}},
		{"another box", hardware.Expected{Serial: "9QQ1A00", Model: "PowerEdge R750"},
			[]string{`model "PowerEdge R650", expected "PowerEdge R750"`, `serial "7XK2M33", expected "9QQ1A00"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.e.Mismatches(hw))
		})
	}
	assert.Equal(t, []string{"no hardware report"}, hardware.Expected{Cores: 1}.Mismatches(nil))
	small := &hardware.Info{Memory: hardware.Memory{TotalGB: 1}}
	assert.Empty(t, hardware.Expected{MemoryGB: 2}.Mismatches(small), "at least 1 GB of slack")
}
