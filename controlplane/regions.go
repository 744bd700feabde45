package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// Region is a region as the control plane sees it.
type Region struct {
	ID string `json:"region_id"`
	// Status is "online" while the region's heartbeat key lives (it is on
	// a lease with a 30 s TTL) and the region has not said "offline".
	// A region that died stays listed, offline.
	Status string `json:"status"`
	// LastHeartbeat is the heartbeat's time; once it expired, the time of
	// the last one (from the capabilities the region wrote with it).
	LastHeartbeat string `json:"last_heartbeat,omitempty"`
	// Leader names the region process that leads the region (its
	// instance ID), "" while none does: of several processes started for
	// one region, only the leader answers machines.
	Leader       string             `json:"leader,omitempty"`
	Capabilities *task.Capabilities `json:"capabilities,omitempty"`
	// ActiveTasks counts the region's tasks that have not ended, by
	// status, from this replica's task view: {} when there are none, nil
	// (null) while the view is still loading and cannot tell.
	ActiveTasks map[task.Status]int `json:"active_tasks"`
}

type regionState struct {
	leader       string
	heartbeat    string
	status       string
	capabilities *task.Capabilities
}

// regionCache follows /lpmos/regions/*/client/ keys.
type regionCache struct {
	log     *slog.Logger
	mu      sync.RWMutex
	regions map[string]*regionState
}

func newRegionCache(log *slog.Logger) *regionCache {
	return &regionCache{log: log, regions: map[string]*regionState{}}
}

func (c *regionCache) run(ctx context.Context, st store.Store) {
	storeWatchLoop(ctx, st, c.log, task.RegionsPrefix, func(kvs []store.KV) {
		c.mu.Lock()
		c.regions = map[string]*regionState{}
		for _, kv := range kvs {
			c.putLocked(kv.Key, kv.Value)
		}
		c.mu.Unlock()
	}, func(ev store.Event) {
		c.mu.Lock()
		if ev.Type == store.EventDelete {
			c.putLocked(ev.KV.Key, nil)
		} else {
			c.putLocked(ev.KV.Key, ev.KV.Value)
		}
		c.mu.Unlock()
	})
}

// putLocked records one key; a nil value is a delete.
func (c *regionCache) putLocked(key string, value []byte) {
	rest, _ := strings.CutPrefix(key, task.RegionsPrefix)
	region, field, ok := strings.Cut(rest, "/client/")
	if !ok || region == "" || strings.Contains(region, "/") {
		return // a task assignment or something else
	}
	r := c.regions[region]
	if r == nil {
		if value == nil {
			return
		}
		r = &regionState{}
		c.regions[region] = r
	}
	switch field {
	case "leader":
		r.leader = string(value)
	case "heartbeat":
		r.heartbeat = string(value)
	case "status":
		r.status = string(value)
	case "capabilities":
		r.capabilities = nil
		if value != nil {
			var caps task.Capabilities
			if err := json.Unmarshal(value, &caps); err != nil {
				c.log.Warn("ignoring unreadable region capabilities", "region", region, "err", err)
			} else {
				r.capabilities = &caps
			}
		}
	}
	if r.heartbeat == "" && r.status == "" && r.capabilities == nil && r.leader == "" {
		delete(c.regions, region)
	}
}

func (c *regionCache) list() []Region {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Region, 0, len(c.regions))
	for id, r := range c.regions {
		status, last := task.RegionOffline, r.heartbeat
		if r.heartbeat != "" && r.status != task.RegionOffline {
			status = task.RegionOnline
		}
		if last == "" && r.capabilities != nil && !r.capabilities.UpdatedAt.IsZero() {
			last = r.capabilities.UpdatedAt.UTC().Format(time.RFC3339Nano)
		}
		out = append(out, Region{ID: id, Status: status, LastHeartbeat: last, Leader: r.leader, Capabilities: r.capabilities})
	}
	slices.SortFunc(out, func(a, b Region) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// countActive counts the tasks that have not ended by region and status,
// so that the regions page needs one request instead of one list per
// region and status.
func countActive(tasks []*task.Task) map[string]map[task.Status]int {
	out := map[string]map[task.Status]int{}
	for _, t := range tasks {
		if t.Status.Terminal() {
			continue
		}
		r := t.Metadata.RegionID
		if out[r] == nil {
			out[r] = map[task.Status]int{}
		}
		out[r][t.Status]++
	}
	return out
}

// validateOS refuses, at creation, an OS that the task's region has said it
// cannot install. A region that has published no capabilities (not started
// yet, or an older region) gets the default check of known OS families, so
// tasks can be queued before their region comes up.
func (c *regionCache) validateOS(ctx context.Context, region, osType, osVersion string) error {
	c.mu.RLock()
	var caps *task.Capabilities
	if r := c.regions[region]; r != nil {
		caps = r.capabilities
	}
	c.mu.RUnlock()
	if caps == nil || len(caps.OS) == 0 {
		return task.DefaultValidateOS(ctx, region, osType, osVersion)
	}
	if caps.Supports(osType, osVersion) {
		return nil
	}
	if why := imageNotReady(caps, region, osType, osVersion); why != "" {
		return &task.ValidationError{Field: "os_version", Reason: why}
	}
	offered := make([]string, 0, len(caps.OS))
	for _, o := range caps.OS {
		offered = append(offered, o.Type+" "+o.Version)
	}
	return &task.ValidationError{Field: "os_version", Reason: fmt.Sprintf("region %s cannot install %s %s (it offers: %s)",
		region, osType, osVersion, strings.Join(offered, ", "))}
}

// storeWatchLoop lists a prefix and follows it, calling reset with each
// full listing and apply with each event, re-listing after compaction or a
// broken watch. It is the regions cache's engine.
func storeWatchLoop(ctx context.Context, st store.Store, log *slog.Logger, prefix string, reset func([]store.KV), apply func(store.Event)) {
	store.Follow(ctx, log, "watch of "+prefix, func(ctx context.Context) error {
		var kvs []store.KV
		var rev int64
		opts := store.ListOptions{Limit: 5000}
		for {
			res, err := st.List(ctx, prefix, opts)
			if err != nil {
				return err
			}
			if rev == 0 {
				rev = res.Revision
			}
			kvs = append(kvs, res.KVs...)
			if !res.More || len(res.KVs) == 0 {
				break
			}
			opts.StartKey = res.KVs[len(res.KVs)-1].Key + "\x00"
		}
		reset(kvs)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for resp := range st.Watch(wctx, prefix, rev+1) {
			if resp.Err != nil {
				return resp.Err
			}
			for _, ev := range resp.Events {
				apply(ev)
			}
		}
		return errors.New("watch closed")
	})
}
