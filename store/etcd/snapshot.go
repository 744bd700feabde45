package etcd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Backups of the store are etcd snapshots: a consistent copy of the whole
// database taken from a member while it serves, restored (by package
// store/etcd/embedded, which links etcd's server code) into a new data
// directory from which a member starts with every key (and a fresh cluster
// identity).

// snapshotPrefix and snapshotSuffix frame the snapshots' file names; the
// time between them sorts the files from oldest to newest.
const (
	snapshotPrefix = "lpmos-"
	snapshotSuffix = ".snapshot.db"
)

// SaveSnapshot writes a snapshot of the member st is connected to into
// dir, as lpmos-<UTC time>.snapshot.db, and returns its path. The file is
// written under a temporary name, synced and renamed, so a snapshot that
// exists is whole.
func (s *Store) SaveSnapshot(ctx context.Context, dir string, now time.Time) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	rc, err := s.c.Snapshot(ctx)
	if err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(dir, ".partial-*")
	if err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	defer os.Remove(tmp.Name()) // gone after the rename; cleans up on error
	if _, err := io.Copy(tmp, rc); err != nil {
		tmp.Close()
		return "", fmt.Errorf("snapshot: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", fmt.Errorf("snapshot: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	name := filepath.Join(dir, snapshotPrefix+now.UTC().Format("20060102T150405.000Z")+snapshotSuffix)
	if err := os.Rename(tmp.Name(), name); err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	return name, nil
}

// Snapshots lists the snapshots in dir, oldest first.
func Snapshots(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); e.Type().IsRegular() && strings.HasPrefix(n, snapshotPrefix) && strings.HasSuffix(n, snapshotSuffix) {
			out = append(out, filepath.Join(dir, n))
		}
	}
	slices.Sort(out)
	return out, nil
}

// SnapshotConfig configures RunSnapshots.
type SnapshotConfig struct {
	Dir      string        // where snapshots go (required)
	Interval time.Duration // between snapshots (default 1 h)
	Keep     int           // newest snapshots kept (default 24)
	Logger   *slog.Logger
	Now      func() time.Time
}

// RunSnapshots takes a snapshot every Interval (the first one at once)
// and removes all but the newest Keep, until ctx ends. A failed snapshot
// is logged and tried again at the next interval.
func (s *Store) RunSnapshots(ctx context.Context, cfg SnapshotConfig) error {
	if cfg.Dir == "" {
		return errors.New("snapshots: a directory is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Hour
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 24
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		if path, err := s.SaveSnapshot(ctx, cfg.Dir, cfg.Now()); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			cfg.Logger.Error("etcd snapshot failed", "dir", cfg.Dir, "err", err)
		} else {
			cfg.Logger.Info("etcd snapshot saved", "path", path)
			if all, err := Snapshots(cfg.Dir); err == nil && len(all) > cfg.Keep {
				for _, old := range all[:len(all)-cfg.Keep] {
					_ = os.Remove(old)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
