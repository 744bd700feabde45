// Package embedetcd starts the embedded etcd member of the binaries that
// run one (allinone): cmdutil.StoreFlags.Open calls Open, passed to
// StoreFlags.Register, when no --etcd-endpoints are given. It is apart
// from cmdutil because it links etcd's server, which the binaries that
// only dial etcd (region, control-plane) must not.
package embedetcd

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"

	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

var _ cmdutil.EmbedFunc = Open

// Open restores <DataDir>/etcd from f.RestoreFrom if set, starts the
// member there with its certificates in <DataDir>/etcd-pki, and takes
// snapshots into f.SnapshotDir if set; closeFn stops the snapshots, the
// client and the member.
func Open(ctx context.Context, f *cmdutil.StoreFlags, log *slog.Logger) (st store.Store, closeFn func(), err error) {
	if f.DataDir == "" {
		return nil, nil, errors.New("--data-dir is required for the embedded etcd (or set --etcd-endpoints)")
	}
	dir := filepath.Join(f.DataDir, "etcd")
	if f.RestoreFrom != "" {
		if err := embedded.RestoreSnapshot(f.RestoreFrom, dir, "", f.PeerURL); err != nil {
			return nil, nil, err
		}
		log.Info("restored the embedded etcd from a snapshot", "snapshot", f.RestoreFrom, "dir", dir)
	}
	m, err := embedded.Start(ctx, embedded.Config{
		Dir: dir, PKIDir: filepath.Join(f.DataDir, "etcd-pki"),
		ClientURL: f.ClientURL, PeerURL: f.PeerURL, Verbose: f.EtcdVerbose,
		Logger: log.With("component", "etcd"),
	})
	if err != nil {
		return nil, nil, err
	}
	s, err := m.Store(ctx)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	pki, _ := m.PKI()
	log.Info("embedded etcd started", "dir", filepath.Join(f.DataDir, "etcd"), "client_url", m.ClientURL(),
		"ca", pki.CAFile, "client_cert", pki.ClientCertFile, "client_key", pki.ClientKeyFile)
	stopSnapshots := func() {}
	if f.SnapshotDir != "" {
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { // owned: stopped by the returned close
			defer close(done)
			_ = s.RunSnapshots(sctx, etcd.SnapshotConfig{Dir: f.SnapshotDir, Interval: f.SnapshotInterval, Keep: f.SnapshotKeep, Logger: log})
		}()
		stopSnapshots = func() { cancel(); <-done }
	}
	return s, func() { stopSnapshots(); s.Close(); m.Close() }, nil
}
