package region

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// InstancesPrefix is where a region's processes announce themselves: one
// key per process (its instance ID, path-escaped) holding the URL agents
// reach it at, on a lease of the leader TTL that the process keeps alive.
func InstancesPrefix(region string) string { return task.RegionsPrefix + region + "/instances/" }

// instanceRecord is the value of a process's key.
type instanceRecord struct {
	Instance string `json:"instance"`
	URL      string `json:"url"`
}

// announce keeps this process's key under InstancesPrefix and follows the
// others' until ctx ends, then revokes its lease. The agent scripts this
// process serves name the others' URLs (ipxe.AgentParams.OtherRegionURLs),
// so that an agent whose process dies turns to the one that takes over
// without a virtual IP in front of the pair. A process that cannot reach
// the store keeps the last list it read.
func (r *Region) announce(ctx context.Context) error {
	key := InstancesPrefix(r.cfg.RegionID) + url.PathEscape(r.cfg.InstanceID)
	value, err := json.Marshal(instanceRecord{Instance: r.cfg.InstanceID, URL: r.cfg.PublicURL})
	if err != nil {
		return err
	}
	ttl := r.cfg.LeaderTTL
	lease := store.NoLease
	defer func() {
		if lease != store.NoLease {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = r.cfg.Store.Revoke(rctx, lease)
			cancel()
		}
	}()
	tick := time.NewTicker(ttl / 3)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, r.cfg.StoreTimeout)
		if lease != store.NoLease {
			if err := r.cfg.Store.KeepAliveOnce(cctx, lease); errors.Is(err, store.ErrLeaseNotFound) {
				lease = store.NoLease // expired while the store was out of reach
			}
		}
		if lease == store.NoLease {
			if id, err := r.cfg.Store.Grant(cctx, ttl); err == nil {
				if _, err := r.cfg.Store.Put(cctx, key, value, store.WithLease(id)); err == nil {
					lease = id
				} else {
					_ = r.cfg.Store.Revoke(cctx, id)
				}
			}
		}
		if res, err := r.cfg.Store.List(cctx, InstancesPrefix(r.cfg.RegionID), store.ListOptions{}); err == nil {
			var others []string
			for _, kv := range res.KVs {
				var rec instanceRecord
				if json.Unmarshal(kv.Value, &rec) == nil && rec.URL != "" && rec.URL != r.cfg.PublicURL &&
					!strings.Contains(rec.URL, ",") && !slices.Contains(others, rec.URL) {
					others = append(others, rec.URL)
				}
			}
			slices.Sort(others)
			r.peers.Store(&others)
		}
		cancel()
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// otherRegionURLs returns the URLs of the region's other processes as
// last read (none before the first read or for a lone process).
func (r *Region) otherRegionURLs() []string {
	if p := r.peers.Load(); p != nil {
		return *p
	}
	return nil
}
