package embedded

import (
	"fmt"
	"os"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// RestoreSnapshot restores a snapshot into dataDir, which must not exist
// yet, for a member that Start then starts with the same Dir,
// Name and PeerURL (defaults as Start's): a new single-member
// cluster holding every key of the snapshot.
func RestoreSnapshot(snapshotPath, dataDir, name, peerURL string) error {
	if name == "" {
		name = "lpmos"
	}
	if peerURL == "" {
		peerURL = "http://127.0.0.1:2380"
	}
	if _, err := os.Stat(dataDir); err == nil {
		return fmt.Errorf("restore: %s exists: restore into a new directory", dataDir)
	}
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        snapshotPath,
		Name:                name,
		OutputDataDir:       dataDir,
		PeerURLs:            []string{peerURL},
		InitialCluster:      name + "=" + peerURL,
		InitialClusterToken: "lpmos",
	})
	if err != nil {
		return fmt.Errorf("restore %s: %w", snapshotPath, err)
	}
	return nil
}
