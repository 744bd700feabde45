package region

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// DHCPLeasesKey is where a region keeps its full-mode DHCP leases: one
// key, the lease file's JSON, gzip-compressed.
func DHCPLeasesKey(region string) string { return task.RegionsPrefix + region + "/dhcp/leases" }

// DHCPLeases reads the full-mode DHCP leases a region keeps in st (none
// if it keeps none), for diagnostics and tests.
func DHCPLeases(ctx context.Context, st store.Store, region string) ([]dhcp.Lease, error) {
	return storeLeases{st: st, key: DHCPLeasesKey(region)}.LoadLeases(ctx)
}

// maxLeasesValue bounds the compressed leases under one key, below
// etcd's default request limit (1.5 MiB). About 100,000 leases fit.
const maxLeasesValue = 1 << 20

// storeLeases is a dhcp.LeaseStore over the region's store, so that the
// standby that takes over a region hands out the addresses its leader
// did. Writes are fenced with the leadership: a deposed leader's save
// fails.
type storeLeases struct {
	st    store.Store
	key   string
	fence task.Fence
}

func (l storeLeases) LoadLeases(ctx context.Context) ([]dhcp.Lease, error) {
	kv, err := l.st.Get(ctx, l.key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(kv.Value))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.key, err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.key, err)
	}
	leases, err := dhcp.DecodeLeases(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.key, err)
	}
	return leases, nil
}

func (l storeLeases) SaveLeases(ctx context.Context, leases []dhcp.Lease) error {
	b, err := dhcp.EncodeLeases(leases)
	if err != nil {
		return err
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	if _, err := zw.Write(b); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if z.Len() > maxLeasesValue {
		return fmt.Errorf("%d leases take %d bytes compressed, more than one key holds (%d)", len(leases), z.Len(), maxLeasesValue)
	}
	res, err := l.st.Txn(ctx, store.Txn{If: l.fence.Compares(), Then: []store.Op{store.OpPut(l.key, z.Bytes())}})
	if err != nil {
		return err
	}
	if !res.Succeeded {
		return ErrNotLeader
	}
	return nil
}
