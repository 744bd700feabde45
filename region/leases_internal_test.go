package region

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/store/memory"
)

// A region's DHCP leases go to the store under its leadership: the leader
// saves them (compressed), a standby's or a deposed leader's save is
// refused, and whoever leads next reads what its predecessor saved.
func TestStoreLeasesFollowTheLeadership(t *testing.T) {
	st := memory.New(memory.WithExpiryInterval(20 * time.Millisecond))
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	const ttl = 600 * time.Millisecond
	a := newLeadership(st, "dc1", "a", ttl, func(bool) {})
	b := newLeadership(st, "dc1", "b", ttl, func(bool) {})
	la := storeLeases{st: st, key: DHCPLeasesKey("dc1"), fence: a}
	lb := storeLeases{st: st, key: DHCPLeasesKey("dc1"), fence: b}

	got, err := la.LoadLeases(ctx)
	require.NoError(t, err)
	assert.Empty(t, got, "nothing saved yet")

	a.campaign(ctx)
	require.True(t, a.leading())
	mac, err := lpmos.ParseMAC("52:54:00:00:aa:01")
	require.NoError(t, err)
	leases := []dhcp.Lease{{MAC: mac, IP: net.IPv4(10, 0, 0, 100).To4(), State: dhcp.LeaseBound, Expires: time.Now().Add(time.Hour).UTC().Truncate(time.Second)}}
	require.NoError(t, la.SaveLeases(ctx, leases))
	require.ErrorIs(t, lb.SaveLeases(ctx, nil), ErrNotLeader, "a standby never overwrites the leader's leases")

	// a stops renewing; b takes over and reads a's leases; a's late save
	// is refused.
	require.Eventually(t, func() bool { b.campaign(ctx); return b.leading() }, 10*time.Second, 50*time.Millisecond)
	got, err = lb.LoadLeases(ctx)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, mac, got[0].MAC)
	assert.Equal(t, "10.0.0.100", got[0].IP.String())
	require.ErrorIs(t, la.SaveLeases(ctx, nil), ErrNotLeader)
	got, err = lb.LoadLeases(ctx)
	require.NoError(t, err)
	assert.Len(t, got, 1, "the deposed leader's save changed nothing")

	kv, err := st.Get(ctx, DHCPLeasesKey("dc1"))
	require.NoError(t, err)
	assert.Equal(t, []byte{0x1f, 0x8b}, kv.Value[:2], "stored gzip-compressed")
}

// A process that starts leading reads the leases before anything else.
func TestLeadingReloadsTheLeases(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	r, err := New(Config{RegionID: "dc1", Store: st, PublicURL: "http://127.0.0.1:8081", BootDir: t.TempDir()})
	require.NoError(t, err)
	calls := 0
	var loadedDuringReload bool
	r.reloadLeases = func(context.Context) error {
		calls++
		loadedDuringReload = r.leasesLoaded.Load()
		return errors.New("etcd unreachable")
	}
	r.leadershipChanged(false)
	assert.Zero(t, calls)
	r.leadershipChanged(true)
	assert.Equal(t, 1, calls)
	assert.False(t, loadedDuringReload, "DHCP is not active while the leases are read")
	assert.True(t, r.leasesLoaded.Load(), "active after the reload (from its own table if the reload failed)")
	r.leadershipChanged(false)
	assert.False(t, r.leasesLoaded.Load(), "a term's end needs the next term's reload")
	assert.False(t, r.DHCPActive())
}
