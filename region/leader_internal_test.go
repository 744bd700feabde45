package region

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// A leader that stops renewing (SIGSTOP, cut off) loses its term at its
// deadline, before a standby can take over, and whatever it then tries to
// write is refused by the store: its term's fence no longer holds.
func TestLeadershipFencesADeposedLeader(t *testing.T) {
	st := memory.New(memory.WithExpiryInterval(20 * time.Millisecond))
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	const ttl = 600 * time.Millisecond
	changes := map[string][]bool{}
	record := func(name string) func(bool) { return func(l bool) { changes[name] = append(changes[name], l) } }
	a := newLeadership(st, "dc1", "a", ttl, record("a"))
	b := newLeadership(st, "dc1", "b", ttl, record("b"))

	a.campaign(ctx)
	require.True(t, a.leading())
	b.campaign(ctx)
	require.False(t, b.leading(), "one leader at a time")
	assert.Equal(t, "a", b.leader(ctx))

	svcA := task.NewService(st, task.Config{Fence: a})
	tk, err := svcA.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:00:aa:01", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops"})
	require.NoError(t, err)

	// a stops renewing; b takes over once a's lease expired.
	require.Eventually(t, func() bool { b.campaign(ctx); return b.leading() }, 10*time.Second, 50*time.Millisecond)
	assert.False(t, a.leading(), "a's deadline passed before b could lead")
	assert.Equal(t, "b", a.leader(ctx))

	// a still holds its old term: the store refuses its writes.
	_, err = svcA.MarkReady(ctx, tk.ID, "region:dc1")
	require.ErrorIs(t, err, task.ErrFenced)
	require.ErrorIs(t, err, ErrNotLeader)
	got, err := svcA.Get(ctx, tk.ID)
	require.NoError(t, err)
	assert.Equal(t, task.StatusPending, got.Status, "nothing written")

	svcB := task.NewService(st, task.Config{Fence: b})
	_, err = svcB.MarkReady(ctx, tk.ID, "region:dc1")
	require.NoError(t, err)

	// a wakes up and renews: it finds its term over and stays a standby.
	a.renew(ctx)
	assert.False(t, a.leading())
	assert.Equal(t, []bool{true, false}, changes["a"])
	assert.Equal(t, []bool{true}, changes["b"])
}

// A process that restarts under the same instance ID does not wait for its
// predecessor's lease: it takes the key over with a term of its own.
func TestLeadershipRestartTakesItsOwnKeyAtOnce(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	old := newLeadership(st, "dc1", "host-1 http://10.0.0.1:8081", time.Minute, func(bool) {})
	old.campaign(ctx)
	require.True(t, old.leading())

	restarted := newLeadership(st, "dc1", "host-1 http://10.0.0.1:8081", time.Minute, func(bool) {})
	restarted.campaign(ctx)
	require.True(t, restarted.leading())
	assert.NotEqual(t, old.Compares(), restarted.Compares(), "a term of its own")
	require.Error(t, old.Check(ctx), "the predecessor's term is over")

	other := newLeadership(st, "dc1", "host-2 http://10.0.0.2:8081", time.Minute, func(bool) {})
	other.campaign(ctx)
	assert.False(t, other.leading())
}
