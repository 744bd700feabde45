package machine

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store"
)

// ViewConfig configures a View.
type ViewConfig struct {
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// View is an in-memory copy of every machine record, filled by one listing
// and kept current by one watch of Prefix, so that lists and searches are
// served from memory. Machines handed out are the caller's.
type View struct {
	st  store.Store
	cfg ViewConfig
	log *slog.Logger

	mu       sync.RWMutex
	machines map[lpmos.MAC]*entry
	rev      int64

	synced     chan struct{}
	syncedOnce sync.Once
}

// NewView returns a View over st; Run fills it.
func NewView(st store.Store, cfg ViewConfig) *View {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &View{st: st, cfg: cfg, log: log, machines: map[lpmos.MAC]*entry{}, synced: make(chan struct{})}
}

// Synced is closed once the first listing is in.
func (v *View) Synced() <-chan struct{} { return v.synced }

// Revision is the store revision the view reflects.
func (v *View) Revision() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.rev
}

// Run lists and watches until ctx ends, listing again after a compaction
// or a broken watch.
func (v *View) Run(ctx context.Context) error {
	store.Follow(ctx, v.log, "machine view", v.follow)
	return nil
}

// listPage bounds one range of the listing.
const listPage = 1000

func (v *View) follow(ctx context.Context) error {
	fresh := map[lpmos.MAC]*entry{}
	var rev int64
	opts := store.ListOptions{Limit: listPage}
	for {
		res, err := v.st.List(ctx, Prefix, opts)
		if err != nil {
			return err
		}
		if rev == 0 {
			rev = res.Revision
		}
		for _, kv := range res.KVs {
			if kv.ModRevision > rev {
				continue // after the first page's revision: the watch brings it
			}
			mac, field, ok := splitKey(kv.Key)
			if !ok {
				continue
			}
			e := fresh[mac]
			if e == nil {
				e = &entry{}
				fresh[mac] = e
			}
			e.set(field, kv.Value)
		}
		if !res.More || len(res.KVs) == 0 {
			break
		}
		opts.StartKey = res.KVs[len(res.KVs)-1].Key + "\x00"
	}
	v.mu.Lock()
	v.machines, v.rev = fresh, rev
	v.mu.Unlock()
	v.syncedOnce.Do(func() { close(v.synced) })

	wctx, cancel := context.WithCancel(ctx)
	watch := v.st.Watch(wctx, Prefix, rev+1)
	defer func() {
		cancel()
		for range watch { // the store's watch goroutine is done when it closes
		}
	}()
	for resp := range watch {
		if resp.Err != nil {
			return resp.Err
		}
		v.mu.Lock()
		for _, ev := range resp.Events {
			mac, field, ok := splitKey(ev.KV.Key)
			if !ok {
				continue
			}
			e := v.machines[mac]
			if e == nil {
				e = &entry{}
			}
			// Entries are replaced, never changed in place: a reader may
			// hold the old one.
			ne := *e
			if ev.Type == store.EventDelete {
				ne.unset(field)
			} else {
				ne.set(field, ev.KV.Value)
			}
			if ne.empty() {
				delete(v.machines, mac)
			} else {
				v.machines[mac] = &ne
			}
			v.rev = max(v.rev, ev.KV.ModRevision)
		}
		v.mu.Unlock()
	}
	if ctx.Err() == nil {
		return errors.New("machine watch closed")
	}
	return ctx.Err()
}

// Get returns a machine's record from the view, or ErrNotFound.
func (v *View) Get(mac lpmos.MAC) (*Machine, error) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	e := v.machines[mac]
	if e == nil {
		return nil, ErrNotFound
	}
	return e.machine(mac), nil
}

// Filter selects machines for List; the zero value selects all.
type Filter struct {
	Region string
	// Tags must all be present with these values.
	Tags map[string]string
	// MinCores, MinMemoryGB: at least this much in the last report.
	MinCores    int
	MinMemoryGB int
	// MinDiskGB: at least one disk at least this large.
	MinDiskGB int
	// Vendor and Model match the system's vendor and product name,
	// case-insensitively, as substrings.
	Vendor, Model string
	// MACPrefix matches the start of the MAC in its canonical
	// lower-case colon form (e.g. "52:54:00").
	MACPrefix string
	// After is the last MAC of the previous page; Limit caps the page
	// (default and at most MaxMachinesPage).
	After lpmos.MAC
	Limit int
}

// Match reports whether m passes the filter (After and Limit aside).
func (f *Filter) Match(m *Machine) bool {
	if f.Region != "" && m.Region != f.Region {
		return false
	}
	for k, want := range f.Tags {
		if got, ok := m.Tags[k]; !ok || got != want {
			return false
		}
	}
	if f.MACPrefix != "" && !strings.HasPrefix(m.MAC.String(), strings.ToLower(f.MACPrefix)) {
		return false
	}
	needHW := f.MinCores > 0 || f.MinMemoryGB > 0 || f.MinDiskGB > 0 || f.Vendor != "" || f.Model != ""
	if !needHW {
		return true
	}
	if m.LastReport == nil || m.LastReport.Hardware == nil {
		return false
	}
	hw := m.LastReport.Hardware
	if hw.CPU.Cores < f.MinCores || hw.Memory.TotalGB < f.MinMemoryGB {
		return false
	}
	if f.MinDiskGB > 0 && !slices.ContainsFunc(hw.Disks, func(d hardware.Disk) bool { return d.SizeGB >= f.MinDiskGB }) {
		return false
	}
	if f.Vendor != "" && !containsFold(hw.System.Vendor, f.Vendor) {
		return false
	}
	if f.Model != "" && !containsFold(hw.System.Product, f.Model) {
		return false
	}
	return true
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// Page is one page of List.
type Page struct {
	Machines []*Machine `json:"machines"`
	// Total is how many machines match the filter in all.
	Total int `json:"total"`
	// Next is the After of the next page; empty on the last.
	Next string `json:"next,omitempty"`
}

// List returns a page of the machines passing f, sorted by MAC.
func (v *View) List(f Filter) Page {
	limit := f.Limit
	if limit <= 0 || limit > MaxMachinesPage {
		limit = MaxMachinesPage
	}
	v.mu.RLock()
	all := make([]*Machine, 0, len(v.machines))
	for mac, e := range v.machines {
		m := e.machine(mac)
		if f.Match(m) {
			all = append(all, m)
		}
	}
	v.mu.RUnlock()
	slices.SortFunc(all, func(a, b *Machine) int { return cmp.Compare(a.MAC.String(), b.MAC.String()) })
	p := Page{Total: len(all), Machines: []*Machine{}}
	start := 0
	if !f.After.IsZero() {
		start, _ = slices.BinarySearchFunc(all, f.After.String(), func(m *Machine, s string) int { return cmp.Compare(m.MAC.String(), s) })
		if start < len(all) && all[start].MAC == f.After {
			start++
		}
	}
	end := min(start+limit, len(all))
	p.Machines = append(p.Machines, all[start:end]...)
	if end < len(all) && end > start {
		p.Next = all[end-1].MAC.String()
	}
	return p
}
