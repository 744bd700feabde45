package power_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/ipmisim"
	"github.com/lpmos/lpmos/power"
)

// TestIPMIPowersOnQEMU is the seed of the end-to-end scenario: a virtual
// machine the test never starts. LPMOS sets its next boot to PXE and
// powers it on over IPMI; ipmi_sim starts QEMU, whose firmware boots from
// the network (here QEMU's own DHCP and TFTP stand in for the region) and
// runs the iPXE script it was given. Then LPMOS powers it off and the QEMU
// process is gone.
func TestIPMIPowersOnQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU machine under ipmi_sim")
	}
	const marker = "LPMOS-IPMI-PXE-BOOT"
	tftp := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(tftp, "boot.ipxe"), []byte("#!ipxe\necho "+marker+"\nshell\n"), 0o644))
	machine, serial := ipmisim.QEMU(t, tftp, "boot.ipxe")
	sim := ipmisim.Start(t, ipmisim.Config{Machine: machine})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := power.Open(ctx, ipmiBMC(sim))
	require.NoError(t, err)
	defer func() { assert.NoError(t, d.Close()) }()

	st, err := d.PowerState(ctx)
	require.NoError(t, err)
	require.Equal(t, power.StateOff, st)
	require.Zero(t, sim.MachinePID(), "nothing runs before LPMOS powers the machine on")

	require.NoError(t, d.SetNextBoot(ctx, power.BootPXE))
	require.NoError(t, power.Do(ctx, power.RetryPolicy{}, func(ctx context.Context) error {
		return d.SetPower(ctx, power.ActionOn)
	}))
	require.NoError(t, sim.WaitMachine(ctx, true), sim.Log())
	pid := sim.MachinePID()
	assert.Equal(t, []string{"pxe"}, sim.Starts())

	readSerial := func() string {
		data, _ := os.ReadFile(serial)
		return string(data)
	}
	start := time.Now()
	for !strings.Contains(readSerial(), marker) {
		require.NoError(t, ctx.Err(), "no network boot; serial console:\n%s\n%s", readSerial(), sim.Log())
		require.NotZero(t, sim.MachinePID(), "QEMU exited; serial console:\n%s\n%s", readSerial(), sim.Log())
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the machine ran the iPXE script from the network %v after power-on", time.Since(start).Round(time.Millisecond))
	out := readSerial()
	assert.Less(t, strings.Index(out, "iPXE"), strings.Index(out, "Booting from Hard Disk")+len(out)*boolInt(!strings.Contains(out, "Booting from Hard Disk")),
		"the network came first")

	st, err = d.PowerState(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.StateOn, st)

	require.NoError(t, d.SetPower(ctx, power.ActionOff))
	require.NoError(t, sim.WaitMachine(ctx, false), sim.Log())
	assert.Eventually(t, func() bool { return !ipmisim.Alive(pid) }, 5*time.Second, 20*time.Millisecond, "the QEMU process is gone")
	st, err = d.PowerState(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.StateOff, st)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
