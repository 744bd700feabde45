package task

import (
	"context"
	"fmt"
	"sort"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// Filter selects tasks for List. Zero fields do not filter.
type Filter struct {
	RegionID string
	Statuses []Status
	// Limit caps the page size (default DefaultLimit, at most MaxLimit).
	Limit int
	// Offset skips that many tasks of the ordered result.
	Offset int
}

// Page limits.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// Page is one page of a listing, newest task first (ties by ID), and the
// total number of tasks that match the filter.
type Page struct {
	Tasks  []*Task `json:"tasks"`
	Total  int     `json:"total"`
	Limit  int     `json:"limit"`
	Offset int     `json:"offset"`
	// Revision is the store revision the page was read at.
	Revision int64 `json:"-"`
}

// Normalize validates the filter and fills the default limit.
func (f *Filter) Normalize() error {
	if f.RegionID != "" {
		if err := lpmos.ValidateRegionID(f.RegionID); err != nil {
			return invalid("region_id", "%v", err)
		}
	}
	for _, st := range f.Statuses {
		if !st.Valid() {
			return invalid("status", "unknown status %q", truncate(string(st)))
		}
	}
	switch {
	case f.Limit < 0:
		return invalid("limit", "must not be negative")
	case f.Limit == 0:
		f.Limit = DefaultLimit
	case f.Limit > MaxLimit:
		return invalid("limit", "at most %d", MaxLimit)
	}
	if f.Offset < 0 {
		return invalid("offset", "must not be negative")
	}
	return nil
}

// Matches reports whether a task passes the filter (limit and offset
// aside); caches that list without the store use it too.
func (f *Filter) Matches(t *Task) bool {
	if f.RegionID != "" && t.Metadata.RegionID != f.RegionID {
		return false
	}
	if len(f.Statuses) == 0 {
		return true
	}
	for _, st := range f.Statuses {
		if t.Status == st {
			return true
		}
	}
	return false
}

// SortTasks orders tasks newest first, ties broken by ID, so that pages are
// stable.
func SortTasks(ts []*Task) {
	sort.Slice(ts, func(i, j int) bool {
		a, b := ts[i].Metadata.CreatedAt, ts[j].Metadata.CreatedAt
		if !a.Equal(b) {
			return a.After(b)
		}
		return ts[i].ID < ts[j].ID
	})
}

// listChunk is how many keys one range of a listing reads.
const listChunk = 5000

// List returns a page of the tasks that match f. It ranges over every task
// in the store at one revision; a reader serving many lists (the control
// plane) keeps a View instead.
func (s *Service) List(ctx context.Context, f Filter) (*Page, error) {
	if err := f.Normalize(); err != nil {
		return nil, err
	}
	all, rev, err := s.readAll(ctx)
	if err != nil {
		return nil, err
	}
	var matched []*Task
	for _, t := range all {
		if f.Matches(t) {
			matched = append(matched, t)
		}
	}
	return pageOf(matched, f, rev), nil
}

// pageOf sorts the tasks that matched f and cuts f's page out of them.
func pageOf(matched []*Task, f Filter, rev int64) *Page {
	SortTasks(matched)
	page := &Page{Tasks: []*Task{}, Total: len(matched), Limit: f.Limit, Offset: f.Offset, Revision: rev}
	if f.Offset < len(matched) {
		page.Tasks = matched[f.Offset:min(f.Offset+f.Limit, len(matched))]
	}
	return page
}

func (s *Service) readAll(ctx context.Context) ([]*Task, int64, error) {
	snaps, rev, err := s.readSnapshots(ctx)
	if err != nil {
		return nil, 0, err
	}
	tasks := make([]*Task, len(snaps))
	for i, snap := range snaps {
		tasks[i] = snap.task
	}
	return tasks, rev, nil
}

// readSnapshots reads every task. A listing larger than one range is read
// in chunks, each at its own revision: a task whose keys straddle two chunks
// may show fields of two adjacent revisions, which a listing tolerates (Get
// reads a task at one revision). Each snapshot's readRev is that of the
// chunk its first key came from, the older one.
func (s *Service) readSnapshots(ctx context.Context) ([]*snapshot, int64, error) {
	var (
		snaps   []*snapshot
		rev     int64
		curID   string
		curRev  int64
		curKVs  []store.KV
		opts    = store.ListOptions{Limit: listChunk}
		flushed = func() {
			if curID == "" {
				return
			}
			snap, err := decodeSnapshot(curID, curKVs)
			if err != nil {
				// A task with a corrupt or missing key is skipped, not
				// fatal to the whole listing.
				s.cfg.Logger.Warn("skipping unreadable task in listing", "task_id", curID, "err", err)
			} else {
				snap.readRev = curRev
				snaps = append(snaps, snap)
			}
			curID, curKVs = "", nil
		}
	)
	for {
		res, err := s.st.List(ctx, TasksPrefix, opts)
		if err != nil {
			return nil, 0, fmt.Errorf("list tasks: %w", err)
		}
		if rev == 0 {
			rev = res.Revision
		}
		for _, kv := range res.KVs {
			id, _, ok := ParseTaskKey(kv.Key)
			if !ok {
				continue
			}
			if id != curID {
				flushed()
				curID, curRev = id, res.Revision
			}
			curKVs = append(curKVs, kv)
		}
		if !res.More || len(res.KVs) == 0 {
			break
		}
		opts.StartKey = res.KVs[len(res.KVs)-1].Key + "\x00"
	}
	flushed()
	return snaps, rev, nil
}
