package power_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/ipmisim"
	"github.com/lpmos/lpmos/power"
)

func ipmiBMC(sim *ipmisim.Sim) power.BMC {
	return power.BMC{Driver: power.DriverIPMI, Address: sim.Addr, Username: sim.Username, Password: sim.Password}
}

// TestIPMIAgainstIPMISim drives OpenIPMI's ipmi_sim through a machine's
// life: off, next boot PXE, on (the simulator starts the machine with the
// override), cycle (restarted, override used up), off (machine gone).
func TestIPMIAgainstIPMISim(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ipmi_sim")
	}
	sim := ipmisim.Start(t, ipmisim.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := power.Open(ctx, ipmiBMC(sim))
	require.NoError(t, err, sim.Log())
	defer func() {
		assert.NoError(t, d.Close())
		assert.NoError(t, d.Close(), "a second Close")
		_, err := d.PowerState(ctx)
		assert.ErrorIs(t, err, power.ErrInvalid, "a closed driver")
	}()

	st, err := d.PowerState(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.StateOff, st)

	require.NoError(t, d.SetNextBoot(ctx, power.BootPXE))
	assert.Equal(t, "pxe", sim.NextBoot())

	require.NoError(t, d.SetPower(ctx, power.ActionOn))
	require.NoError(t, sim.WaitMachine(ctx, true), sim.Log())
	first := sim.MachinePID()
	st, err = d.PowerState(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.StateOn, st)
	assert.Equal(t, []string{"pxe"}, sim.Starts(), "the machine starts with the PXE override")
	assert.Empty(t, sim.NextBoot(), "the override is for one boot")

	require.NoError(t, d.SetPower(ctx, power.ActionOn), "on when on is a no-op")
	assert.Equal(t, first, sim.MachinePID())

	require.NoError(t, d.SetPower(ctx, power.ActionCycle))
	// ipmi_sim powers off at once and on again a second later.
	require.Eventually(t, func() bool {
		pid := sim.MachinePID()
		return pid != 0 && pid != first
	}, 10*time.Second, 50*time.Millisecond, sim.Log())
	assert.Equal(t, []string{"pxe", ""}, sim.Starts())
	assert.Eventually(t, func() bool { return !ipmisim.Alive(first) }, 5*time.Second, 20*time.Millisecond, "the cycle ended the first machine")
	second := sim.MachinePID()

	require.NoError(t, d.SetNextBoot(ctx, power.BootDisk))
	assert.Equal(t, "disk", sim.NextBoot())

	require.NoError(t, d.SetPower(ctx, power.ActionOff))
	require.NoError(t, sim.WaitMachine(ctx, false), sim.Log())
	assert.Eventually(t, func() bool { return !ipmisim.Alive(second) }, 5*time.Second, 20*time.Millisecond, "off ended the machine")
	st, err = d.PowerState(ctx)
	require.NoError(t, err)
	assert.Equal(t, power.StateOff, st)

	// Cycling a machine that is off switches it on.
	require.NoError(t, d.SetPower(ctx, power.ActionCycle))
	require.NoError(t, sim.WaitMachine(ctx, true), sim.Log())
	assert.Equal(t, []string{"pxe", "", "disk"}, sim.Starts())

	assert.ErrorIs(t, d.SetPower(ctx, "reboot"), power.ErrInvalid)
	assert.ErrorIs(t, d.SetNextBoot(ctx, "cdrom"), power.ErrInvalid)
}

func TestIPMIWrongPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("starts ipmi_sim")
	}
	sim := ipmisim.Start(t, ipmisim.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, b := range map[string]power.BMC{
		"password": {Driver: power.DriverIPMI, Address: sim.Addr, Username: sim.Username, Password: "wrong-password"},
		"user":     {Driver: power.DriverIPMI, Address: sim.Addr, Username: "nobody", Password: sim.Password},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := power.Open(ctx, b)
			require.ErrorIs(t, err, power.ErrAuth, sim.Log())
			assert.NotErrorIs(t, err, power.ErrUnreachable)
			assert.NotContains(t, err.Error(), b.Password)
		})
	}
}

func TestIPMIUnreachable(t *testing.T) {
	// Nothing listens: loopback answers with ICMP port unreachable.
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	closed := c.LocalAddr().String()
	require.NoError(t, c.Close())

	// A socket that reads and never answers: a BMC that is gone quietly.
	silent, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer silent.Close()

	for name, addr := range map[string]string{"closed port": closed, "silent": silent.LocalAddr().String()} {
		t.Run(name, func(t *testing.T) {
			const deadline = 500 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			_, err := power.Open(ctx, power.BMC{Driver: power.DriverIPMI, Address: addr, Username: "admin", Password: "x"})
			require.ErrorIs(t, err, power.ErrUnreachable)
			assert.Less(t, time.Since(start), deadline+time.Second, "Open must end with its context")
		})
	}
}

func TestIPMIAddressDefaultPort(t *testing.T) {
	// A port-less address means 623; nothing listens there on loopback.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := power.Open(ctx, power.BMC{Driver: power.DriverIPMI, Address: "127.0.0.1", Username: "admin", Password: "x"})
	require.ErrorIs(t, err, power.ErrUnreachable)
	assert.Contains(t, err.Error(), net.JoinHostPort("127.0.0.1", strconv.Itoa(power.DefaultIPMIPort)))
}
