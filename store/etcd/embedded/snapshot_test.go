package embedded_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

// A snapshot of a serving member, restored into a new data directory,
// starts a member holding every key; the snapshots are pruned to Keep.
func TestSnapshotRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := secureConfig(t, "https")
	m, err := embedded.Start(ctx, cfg)
	require.NoError(t, err)
	st, err := m.Store(ctx)
	require.NoError(t, err)
	for i := range 50 {
		_, err := st.Put(ctx, fmt.Sprintf("/lpmos/tasks/t%02d/status", i), []byte("completed"))
		require.NoError(t, err)
	}

	dir := filepath.Join(t.TempDir(), "snapshots")
	base := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	var tick int
	now := func() time.Time { tick++; return base.Add(time.Duration(tick) * time.Minute) }
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- st.RunSnapshots(sctx, etcd.SnapshotConfig{Dir: dir, Interval: 20 * time.Millisecond, Keep: 2, Now: now})
	}()
	require.Eventually(t, func() bool {
		all, err := etcd.Snapshots(dir)
		return err == nil && len(all) == 2 && filepath.Base(all[0]) != "lpmos-20261204T100100.000Z.snapshot.db"
	}, 30*time.Second, 20*time.Millisecond, "snapshots taken and the oldest pruned")
	stop()
	require.NoError(t, <-done)
	all, err := etcd.Snapshots(dir)
	require.NoError(t, err)
	require.Len(t, all, 2)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "no partial files left")

	// A write after the snapshot is not in it.
	_, err = st.Put(ctx, "/lpmos/tasks/later/status", []byte("pending"))
	require.NoError(t, err)
	latest := all[len(all)-1]
	st.Close()
	m.Close()

	restored := embedded.Config{
		Dir: filepath.Join(t.TempDir(), "restored"), ClientURL: cfg.ClientURL, PeerURL: cfg.PeerURL,
		HeartbeatInterval: cfg.HeartbeatInterval, ElectionTimeout: cfg.ElectionTimeout, UnsafeNoFsync: true,
	}
	require.NoError(t, embedded.RestoreSnapshot(latest, restored.Dir, "", restored.PeerURL))
	err = embedded.RestoreSnapshot(latest, restored.Dir, "", restored.PeerURL)
	require.Error(t, err, "never over an existing directory")
	assert.Contains(t, err.Error(), "exists")

	m2, err := embedded.Start(ctx, restored)
	require.NoError(t, err)
	defer m2.Close()
	st2, err := m2.Store(ctx)
	require.NoError(t, err)
	defer st2.Close()
	res, err := st2.List(ctx, "/lpmos/tasks/", store.ListOptions{})
	require.NoError(t, err)
	assert.Len(t, res.KVs, 50, "every key of the snapshot, and nothing written after it")
	_, err = st2.Put(ctx, "/lpmos/tasks/new/status", []byte("pending"))
	assert.NoError(t, err, "the restored member takes writes")
}
