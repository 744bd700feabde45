package etcd_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return etcdtest.NewStore(t) })
}

// Restarting an embedded member on the same directory keeps the data: the
// all-in-one binary's default store survives a restart.
func TestEmbeddedRestartKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := etcdtest.StartMember(t)
	s, err := m.Store(ctx)
	require.NoError(t, err)
	rev, err := s.Put(ctx, "/lpmos/test/persist", []byte("kept"))
	require.NoError(t, err)
	s.Close()
	cfg := m.Config()
	m.Close()

	m2, err := etcd.StartEmbedded(ctx, cfg)
	require.NoError(t, err)
	defer m2.Close()
	s2, err := m2.Store(ctx)
	require.NoError(t, err)
	defer s2.Close()
	kv, err := s2.Get(ctx, "/lpmos/test/persist")
	require.NoError(t, err)
	require.Equal(t, "kept", string(kv.Value))
	require.Equal(t, rev, kv.ModRevision)
}

func TestDialFailsFastOnWrongAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := etcd.Dial(ctx, etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: time.Second})
	require.Error(t, err)
	_, err = etcd.Dial(ctx, etcd.Config{})
	require.ErrorIs(t, err, store.ErrInvalid)
}
