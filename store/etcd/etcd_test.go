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

func TestDialFailsFastOnWrongAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := etcd.Dial(ctx, etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: time.Second})
	require.Error(t, err)
	_, err = etcd.Dial(ctx, etcd.Config{})
	require.ErrorIs(t, err, store.ErrInvalid)
}
