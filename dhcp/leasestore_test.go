package dhcp

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// memLeaseStore is a LeaseStore in memory, as a region's store would be
// for the processes of one region.
type memLeaseStore struct {
	mu     sync.Mutex
	data   []byte
	saves  int
	broken error
}

func (m *memLeaseStore) LoadLeases(context.Context) ([]Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken != nil {
		return nil, m.broken
	}
	if m.data == nil {
		return nil, nil
	}
	return DecodeLeases(m.data)
}

func (m *memLeaseStore) SaveLeases(_ context.Context, leases []Lease) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken != nil {
		return m.broken
	}
	b, err := EncodeLeases(leases)
	m.data, m.saves = b, m.saves+1
	return err
}

// TestLeaseStoreSharedByTwoServers: the leader's leases reach the store;
// a standby that takes over reloads them and hands out the same
// addresses; a standby never writes; an unreadable store falls back to
// the lease file.
func TestLeaseStoreSharedByTwoServers(t *testing.T) {
	ls := &memLeaseStore{}
	var aLeads, bLeads atomic.Bool
	aLeads.Store(true)
	cfgA, cfgB := testConfig(), testConfig()
	cfgA.LeaseStore, cfgA.Active = ls, aLeads.Load
	cfgB.LeaseStore, cfgB.Active = ls, bLeads.Load
	cfgA.LeaseFile = filepath.Join(t.TempDir(), "leases.json")
	a := newTestServer(t, cfgA)
	b := newTestServer(t, cfgB) // the standby, started with an empty store
	ctx := context.Background()

	newcomer := lpmos.MAC{2, 0, 0, 0, 0, 9}
	require.Equal(t, net.IPv4(10, 77, 0, 100).To4(), dora(t, a).YourIPAddr.To4())
	require.Equal(t, net.IPv4(10, 77, 0, 101).To4(), dora(t, a, withMAC(testMAC2)).YourIPAddr.To4())
	require.NoError(t, a.saveLeases(ctx))
	assert.Equal(t, 1, ls.saves)
	require.NoError(t, a.saveLeases(ctx))
	assert.Equal(t, 1, ls.saves, "nothing changed: nothing written")

	// A standby's table changes (a test calling handle directly; a real
	// standby answers nothing), yet it never writes the store.
	dora(t, b, withMAC(lpmos.MAC{2, 0, 0, 0, 0, 8}))
	require.NoError(t, b.saveLeases(ctx))
	assert.Equal(t, 1, ls.saves, "a standby does not overwrite its leader's leases")

	// Takeover: b leads, reloads, and gives the machines their addresses
	// and a newcomer another one.
	aLeads.Store(false)
	bLeads.Store(true)
	require.NoError(t, b.ReloadLeases(ctx))
	assert.Equal(t, net.IPv4(10, 77, 0, 101).To4(), dora(t, b, withMAC(testMAC2)).YourIPAddr.To4())
	assert.Equal(t, net.IPv4(10, 77, 0, 100).To4(), dora(t, b).YourIPAddr.To4())
	assert.Equal(t, net.IPv4(10, 77, 0, 102).To4(), dora(t, b, withMAC(newcomer)).YourIPAddr.To4())
	require.NoError(t, b.saveLeases(ctx))
	assert.Equal(t, 2, ls.saves)

	// A process started while the store cannot be read starts from its
	// lease file (the cache); a failed save is retried at the next flush.
	ls.broken = errors.New("etcd unreachable")
	c := newTestServer(t, cfgA)
	_, ok := c.LeasedAddr(testMAC)
	assert.True(t, ok, "from the lease file")
	aLeads.Store(true)
	dora(t, c, withMAC(newcomer))
	assert.Error(t, c.saveLeases(ctx))
	ls.broken = nil
	require.NoError(t, c.saveLeases(ctx), "retried")
	got, err := ls.LoadLeases(ctx)
	require.NoError(t, err)
	var macs []lpmos.MAC
	for _, l := range got {
		macs = append(macs, l.MAC)
	}
	assert.Contains(t, macs, newcomer)

	_, err = New(Config{ServerIP: testServer, Mode: ModeFull, Pool: cfgA.Pool, LeaseStore: &memLeaseStore{data: []byte("{not json")}, Conn: nopConn{}, ProxyConn: nopConn{}})
	assert.NoError(t, err, "an unreadable store is logged and the server starts empty")
}
