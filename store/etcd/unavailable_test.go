package etcd_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/etcd"
)

// A cluster that lost its quorum answers neither reads nor writes; the
// store says so with ErrUnavailable (a 503 to API callers), not with an
// error callers cannot tell from a bug. Once a member is back, the same
// calls succeed.
func TestUnavailableWithoutQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-member etcd cluster; not in -short mode")
	}
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := etcd.Dial(ctx, etcd.Config{Endpoints: c.Endpoints()[:1], DialTimeout: 5 * time.Second})
	require.NoError(t, err)
	defer st.Close()
	_, err = st.Put(ctx, "/lpmos/test/quorum", []byte("before"))
	require.NoError(t, err)

	c.Members[1].Close()
	c.Members[2].Close()
	for name, call := range map[string]func(context.Context) error{
		"put": func(ctx context.Context) error {
			_, err := st.Put(ctx, "/lpmos/test/quorum", []byte("after"))
			return err
		},
		"get": func(ctx context.Context) error { _, err := st.Get(ctx, "/lpmos/test/quorum"); return err },
		"txn": func(ctx context.Context) error {
			_, err := st.Txn(ctx, store.Txn{Then: []store.Op{store.OpPut("/lpmos/test/quorum", []byte("txn"))}})
			return err
		},
	} {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		err := call(cctx)
		ccancel()
		require.Error(t, err, name)
		assert.ErrorIs(t, err, store.ErrUnavailable, "%s: %v", name, err)
	}
}
