package power_test

import (
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/redfishsim"
	"github.com/lpmos/lpmos/power"
)

// TestRedfishPowersQEMU drives a QEMU machine behind the Redfish stand-in:
// the boot override reaches QEMU's boot order when it starts, and QMP
// switches it on and off.
func TestRedfishPowersQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("runs QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	require.NoError(t, err, "qemu-system-x86_64 (Debian package qemu-system-x86)")
	var (
		mu     sync.Mutex
		orders []string
	)
	q := &redfishsim.QEMU{
		Dir: t.TempDir(),
		Command: func(boot string) []string {
			order := "c"
			if boot == "Pxe" {
				order = "n"
			}
			mu.Lock()
			orders = append(orders, order)
			mu.Unlock()
			return []string{bin, "-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", "64",
				"-display", "none", "-monitor", "none", "-serial", "none", "-boot", "order=" + order}
		},
	}
	t.Cleanup(func() { _ = q.Close() })
	sim := redfishsim.New(redfishsim.Config{Username: "root", Password: "qemu-pw"}, q)
	srv := quietTLSServer(sim)
	defer srv.Close()

	ctx := ctxT(t)
	d, err := power.Open(ctx, power.BMC{Driver: power.DriverRedfish, Address: strings.TrimPrefix(srv.URL, "https://"),
		Username: "root", Password: "qemu-pw", CAPEM: (&rfLab{srv: srv}).caPEM()})
	require.NoError(t, err)
	defer d.Close()

	state := func() power.State {
		st, err := d.PowerState(ctx)
		require.NoError(t, err)
		return st
	}
	assert.Equal(t, power.StateOff, state())
	require.NoError(t, d.SetNextBoot(ctx, power.BootPXE))
	require.NoError(t, d.SetPower(ctx, power.ActionOn))
	assert.Equal(t, power.StateOn, state())

	require.NoError(t, d.SetPower(ctx, power.ActionCycle))
	assert.Equal(t, power.StateOn, state())
	mu.Lock()
	assert.Equal(t, []string{"n", "c"}, orders, "PXE first once, then the normal order")
	mu.Unlock()

	start := time.Now()
	require.NoError(t, d.SetPower(ctx, power.ActionOff))
	assert.Equal(t, power.StateOff, state())
	t.Logf("off (QMP quit) took %v", time.Since(start).Round(time.Millisecond))
}
