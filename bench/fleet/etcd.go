package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

// dbSize is a member's database size (the file) and the part in use, from
// its status.
func dbSize(ctx context.Context, st *etcd.Store, endpoint string) (size, inUse int64, err error) {
	s, err := st.Client().Status(ctx, endpoint)
	if err != nil {
		return 0, 0, fmt.Errorf("etcd status %s: %w", endpoint, err)
	}
	return s.DbSize, s.DbSizeInUse, nil
}

// roleEnv names the environment variable that makes the fleet binary (or
// its test binary) run as one etcd member instead: the fleet starts its
// etcd members as separate processes of itself, so that the store is a
// process of its own, measured as such, whatever the machine has
// installed.
const roleEnv = "LPMOS_FLEET_ETCD_MEMBER"

// memberConfig is what a member process is given, as JSON in roleEnv.
type memberConfig struct {
	Dir, Name, ClientURL, PeerURL, InitialCluster string
	Quota                                         int64
	Pprof                                         bool
}

// runRole runs the etcd member if this process was started as one; it
// reports whether it was (the caller then exits with the code).
func runRole() (code int, isMember bool) {
	raw, ok := os.LookupEnv(roleEnv)
	if !ok {
		return 0, false
	}
	var mc memberConfig
	if err := json.Unmarshal([]byte(raw), &mc); err != nil {
		fmt.Fprintf(os.Stderr, "etcd member: %s: %v\n", roleEnv, err)
		return 2, true
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m, err := embedded.Start(ctx, embedded.Config{
		Dir: mc.Dir, Name: mc.Name, ClientURL: mc.ClientURL, PeerURL: mc.PeerURL,
		InitialCluster: mc.InitialCluster, ClusterToken: "lpmos-fleet",
		// Plain HTTP on loopback, in a throwaway directory: the fleet
		// measures the store, not TLS.
		Insecure:          true,
		QuotaBackendBytes: mc.Quota,
		Pprof:             mc.Pprof,
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd member %s: %v\n", mc.Name, err)
		return 1, true
	}
	<-ctx.Done()
	m.Close()
	return 0, true
}

// etcdMetrics are the member's counters the fleet reads before and after
// the load, from its /metrics.
type etcdMetrics struct {
	Txns, Puts, Deletes, Ranges float64 // etcd_mvcc_*_total
	Proposals                   float64 // etcd_server_proposals_committed_total
	WALBytes                    float64 // etcd_disk_wal_write_bytes_total
	// Fsyncs and FsyncSeconds: the WAL's fsyncs (count and total time).
	Fsyncs, FsyncSeconds float64
}

func scrapeEtcd(ctx context.Context, clientURL string) (etcdMetrics, error) {
	var m etcdMetrics
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/metrics", nil)
	if err != nil {
		return m, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("etcd metrics: %s", resp.Status)
	}
	fields := map[string]*float64{
		"etcd_mvcc_txn_total":                        &m.Txns,
		"etcd_mvcc_put_total":                        &m.Puts,
		"etcd_mvcc_delete_total":                     &m.Deletes,
		"etcd_mvcc_range_total":                      &m.Ranges,
		"etcd_server_proposals_committed_total":      &m.Proposals,
		"etcd_disk_wal_write_bytes_total":            &m.WALBytes,
		"etcd_disk_wal_fsync_duration_seconds_count": &m.Fsyncs,
		"etcd_disk_wal_fsync_duration_seconds_sum":   &m.FsyncSeconds,
	}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if p := fields[name]; p != nil { // series without labels only
			*p, _ = strconv.ParseFloat(strings.TrimSpace(val), 64)
		}
	}
	return m, sc.Err()
}

func (m etcdMetrics) sub(o etcdMetrics) etcdMetrics {
	return etcdMetrics{
		Txns: m.Txns - o.Txns, Puts: m.Puts - o.Puts, Deletes: m.Deletes - o.Deletes, Ranges: m.Ranges - o.Ranges,
		Proposals: m.Proposals - o.Proposals, WALBytes: m.WALBytes - o.WALBytes,
		Fsyncs: m.Fsyncs - o.Fsyncs, FsyncSeconds: m.FsyncSeconds - o.FsyncSeconds,
	}
}

// compactAndDefrag compacts the history up to the current revision and
// defragments every member: what an operator does after a purge to give
// the space back to the file system.
func compactAndDefrag(ctx context.Context, st *etcd.Store, endpoints []string) error {
	c := st.Client()
	resp, err := c.Get(ctx, "lpmos-fleet-revision")
	if err != nil {
		return err
	}
	// Physical: wait until the compaction is applied, so the
	// defragmentation finds the space free.
	if _, err := c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		return fmt.Errorf("compact: %w", err)
	}
	for _, ep := range endpoints {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := c.Defragment(dctx, ep)
		cancel()
		if err != nil {
			return fmt.Errorf("defragment %s: %w", ep, err)
		}
	}
	return nil
}
