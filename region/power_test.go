package region_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/redfishsim"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/power"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// bmcLab is a Redfish stand-in BMC (the real protocol over TLS, a machine
// in memory) for one machine.
type bmcLab struct {
	mem *redfishsim.Memory
	bmc machine.BMCInput
}

func newBMCLab(t *testing.T, password string) *bmcLab {
	mem := redfishsim.NewMemory(false)
	srv := httptest.NewUnstartedServer(redfishsim.New(redfishsim.Config{Username: "root", Password: "right-pw"}, mem))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	sum := sha256.Sum256(srv.Certificate().Raw)
	return &bmcLab{mem: mem, bmc: machine.BMCInput{Driver: machine.DriverRedfish, Address: strings.TrimPrefix(srv.URL, "https://"),
		Username: "root", Password: password, CertSHA256: hex.EncodeToString(sum[:])}}
}

func hasPowerEntry(tk *task.Task, substr string) bool {
	return slices.ContainsFunc(tk.Timeline, func(e task.TimelineEntry) bool {
		return e.Event == task.TimelinePower && strings.Contains(e.Message, substr)
	})
}

// TestPowerFollowsTheTask: the region powers a machine with a BMC on (next
// boot PXE) when its task is ready, off when it is cancelled, carries out
// an operator's request, and fails the task with power_failed when the
// BMC refuses.
func TestPowerFollowsTheTask(t *testing.T) {
	st := memStore(t)
	sealer, err := machine.NewSealer([]byte(strings.Repeat("r", machine.KeySize)))
	require.NoError(t, err)
	l := startRegion(t, st, func(c *region.Config) {
		c.BMCSealer = sealer
		c.PowerRetry = power.RetryPolicy{Attempts: 2, Initial: 10 * time.Millisecond}
	})
	machines := machine.NewService(st, machine.Config{Sealer: sealer})
	ctx := context.Background()

	const mac = "52:54:00:b0:00:01"
	parsed, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	bmc := newBMCLab(t, "right-pw")
	_, err = machines.Create(ctx, parsed, machine.Patch{Region: ptr("dc1"), BMC: &bmc.bmc})
	require.NoError(t, err)

	tk := l.create(mac)
	require.Eventually(t, bmc.mem.On, 20*time.Second, 20*time.Millisecond, "ready: powered on")
	assert.Equal(t, []string{"Pxe"}, bmc.mem.Boots(), "booted once from the network")
	require.Eventually(t, func() bool {
		got, err := l.svc.Get(ctx, tk.ID)
		return err == nil && hasPowerEntry(got, "done (power on)")
	}, 10*time.Second, 20*time.Millisecond)
	rec, err := machines.Get(ctx, parsed)
	require.NoError(t, err)
	require.NotNil(t, rec.Power)
	assert.Equal(t, "on", rec.Power.State)
	assert.True(t, rec.Power.OK)

	_, err = l.svc.Cancel(ctx, tk.ID, "ops", "not today")
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !bmc.mem.On() }, 20*time.Second, 20*time.Millisecond, "cancelled: powered off")

	// An operator's request is carried out and leaves the record.
	_, err = machines.RequestPower(ctx, parsed, machine.PowerOn, "token:otto")
	require.NoError(t, err)
	require.Eventually(t, bmc.mem.On, 20*time.Second, 20*time.Millisecond, "operator: powered on")
	require.Eventually(t, func() bool {
		rec, err := machines.Get(ctx, parsed)
		return err == nil && rec.PendingPower == nil && rec.Power != nil && rec.Power.Actor == "token:otto" && rec.Power.OK
	}, 10*time.Second, 20*time.Millisecond)

	// Someone presses the power button: the record still says on, until
	// an operator asks for the state, which changes nothing.
	require.NoError(t, bmc.mem.PowerOff(ctx, false))
	_, err = machines.RequestPower(ctx, parsed, machine.PowerStatus, "token:vera")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		rec, err := machines.Get(ctx, parsed)
		return err == nil && rec.PendingPower == nil && rec.Power != nil && rec.Power.Action == machine.PowerStatus &&
			rec.Power.State == machine.StateOff && rec.Power.OK
	}, 10*time.Second, 20*time.Millisecond, "status read into the record")
	assert.False(t, bmc.mem.On(), "a status request powers nothing")

	// A BMC that refuses the credentials fails the task; nothing is
	// powered.
	const mac2 = "52:54:00:b0:00:02"
	parsed2, err := lpmos.ParseMAC(mac2)
	require.NoError(t, err)
	bad := newBMCLab(t, "wrong-pw")
	_, err = machines.Create(ctx, parsed2, machine.Patch{Region: ptr("dc1"), BMC: &bad.bmc})
	require.NoError(t, err)
	tk2 := l.create(mac2)
	failed := l.waitStatus(tk2.ID, task.StatusFailed)
	require.NotNil(t, failed.Error)
	assert.Equal(t, task.PowerCodeFailed, failed.Error.Code)
	assert.NotContains(t, failed.Error.Message, "wrong-pw", "the password is never in a message")
	assert.True(t, hasPowerEntry(failed, "failed"))
	assert.False(t, bad.mem.On())

	// Both machines' boot traces have their power actions, and the failure
	// says why without the password.
	require.NoError(t, l.reg.FlushTrace(ctx))
	okTrace, err := trace.Read(ctx, st, parsed)
	require.NoError(t, err)
	assert.True(t, slices.ContainsFunc(okTrace, func(e trace.Event) bool {
		return e.Kind == trace.KindPower && e.Outcome == trace.OutcomeOK && e.Detail["actor"] == "token:otto"
	}), "%+v", okTrace)
	badTrace, err := trace.Read(ctx, st, parsed2)
	require.NoError(t, err)
	i := slices.IndexFunc(badTrace, func(e trace.Event) bool { return e.Kind == trace.KindPower })
	require.GreaterOrEqual(t, i, 0, "%+v", badTrace)
	assert.Equal(t, trace.OutcomeError, badTrace[i].Outcome)
	assert.NotEmpty(t, badTrace[i].Reason)
	assert.NotContains(t, badTrace[i].Reason+badTrace[i].Message, "wrong-pw")

	// A machine without a BMC is left alone: its task just waits.
	tk3 := l.create("52:54:00:b0:00:03")
	got := l.waitStatus(tk3.ID, task.StatusReady)
	assert.False(t, hasPowerEntry(got, ""))
}

func ptr[T any](v T) *T { return &v }

// TestExpiredPowerRequestIsNotCarriedOut: a request the region sees only
// after it lapsed (here: made an hour ago, by the requester's clock) is
// not carried out; the machine's trace says why.
func TestExpiredPowerRequestIsNotCarriedOut(t *testing.T) {
	st := memStore(t)
	sealer, err := machine.NewSealer([]byte(strings.Repeat("r", machine.KeySize)))
	require.NoError(t, err)
	l := startRegion(t, st, func(c *region.Config) { c.BMCSealer = sealer })
	hourAgo := func() time.Time { return time.Now().Add(-time.Hour) }
	machines := machine.NewService(st, machine.Config{Sealer: sealer, Now: hourAgo})
	ctx := context.Background()

	parsed, err := lpmos.ParseMAC("52:54:00:b0:00:03")
	require.NoError(t, err)
	bmc := newBMCLab(t, "right-pw")
	_, err = machines.Create(ctx, parsed, machine.Patch{Region: ptr("dc1"), BMC: &bmc.bmc})
	require.NoError(t, err)
	req, err := machines.RequestPower(ctx, parsed, machine.PowerOn, "token:otto")
	require.NoError(t, err)
	assert.Equal(t, req.RequestedAt.Add(machine.DefaultPowerRequestTTL), req.ExpiresAt)

	var events []trace.Event
	require.Eventually(t, func() bool {
		if l.reg.FlushTrace(ctx) != nil {
			return false
		}
		events, err = trace.Read(ctx, st, parsed)
		return err == nil && slices.ContainsFunc(events, func(e trace.Event) bool {
			return e.Kind == trace.KindPower && e.Outcome == trace.OutcomeIgnored && strings.Contains(e.Reason, "expired")
		})
	}, 20*time.Second, 50*time.Millisecond, "no trace of the expired request: %+v", events)
	assert.False(t, bmc.mem.On(), "an expired request powers nothing")
	rec, err := machines.Get(ctx, parsed)
	require.NoError(t, err)
	assert.Nil(t, rec.Power, "no outcome recorded: nothing was done")
}
