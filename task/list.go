package task

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// Filter selects tasks for List. Zero fields do not filter; a task must
// pass every field that is set.
type Filter struct {
	RegionID string
	// Statuses: the task is in any one of them.
	Statuses []Status
	// MAC selects the task(s) of one machine.
	MAC lpmos.MAC
	// MACPrefix selects machines whose MAC starts with it, e.g. a vendor's
	// OUI "52:54:00". Normalize accepts ':' or '-' separators or none and
	// any letter case, and rewrites it to the canonical lowercase
	// colon-separated form Matches compares.
	MACPrefix string
	OSType    string
	OSVersion string
	// Tags: the task carries each of these keys with exactly this value.
	Tags map[string]string
	// CreatedBy is the subject that created the task, exactly.
	CreatedBy string
	// Sort orders the result (default SortNewest).
	Sort Sort
	// Limit caps the page size (default DefaultLimit, at most MaxLimit).
	Limit int
	// Offset skips that many tasks of the ordered result.
	Offset int
}

// Sort is an order of a listing; every order breaks ties by task ID, so
// that pages are stable. Its values are the API's sort parameter.
type Sort string

// The orders.
const (
	SortNewest Sort = "-created_at" // newest first, the default
	SortOldest Sort = "created_at"  // oldest first
	// SortStatus orders by status in lifecycle order (pending first, then
	// the terminal ones as Statuses lists them), newest first within one.
	SortStatus     Sort = "status"
	SortStatusDesc Sort = "-status" // the reverse lifecycle order, newest first within one
)

// Sorts lists the orders.
func Sorts() []Sort { return []Sort{SortNewest, SortOldest, SortStatus, SortStatusDesc} }

// Page limits.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// Page is one page of a listing, in the filter's order, and the
// total number of tasks that match the filter.
type Page struct {
	Tasks  []*Task `json:"tasks"`
	Total  int     `json:"total"`
	Limit  int     `json:"limit"`
	Offset int     `json:"offset"`
	// Revision is the store revision the page was read at.
	Revision int64 `json:"-"`
}

// Normalize validates the filter, canonicalises MACPrefix and fills the
// defaults. Its errors are *ValidationError naming the API's query
// parameter (region_id, status, mac_prefix, os_type, os_version, tag,
// created_by, sort, limit, offset).
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
	if f.MACPrefix != "" {
		p, err := canonicalMACPrefix(f.MACPrefix)
		if err != nil {
			return err
		}
		f.MACPrefix = p
	}
	if f.OSType != "" && !osTypeRe.MatchString(f.OSType) {
		return invalid("os_type", "%q is not an OS type (lowercase letters, digits, '-')", truncate(f.OSType))
	}
	if f.OSVersion != "" && !osVersionRe.MatchString(f.OSVersion) {
		return invalid("os_version", "%q is not a version", truncate(f.OSVersion))
	}
	if len(f.Tags) > MaxTags {
		return invalid("tag", "%d tags, at most %d allowed", len(f.Tags), MaxTags)
	}
	for k, v := range f.Tags {
		if !tagKeyRe.MatchString(k) {
			return invalid("tag", "key %q is not a valid tag name", truncate(k))
		}
		if err := checkLine("tag", v, MaxTagValueLen); err != nil {
			return err
		}
	}
	if err := checkLine("created_by", f.CreatedBy, MaxActorLen); err != nil {
		return err
	}
	switch f.Sort {
	case "":
		f.Sort = SortNewest
	case SortNewest, SortOldest, SortStatus, SortStatusDesc:
	default:
		return invalid("sort", "unknown order %q (known: %s, %s, %s, %s)", truncate(string(f.Sort)), SortNewest, SortOldest, SortStatus, SortStatusDesc)
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
	m := &t.Metadata
	switch {
	case f.RegionID != "" && m.RegionID != f.RegionID,
		!f.MAC.IsZero() && m.TargetMAC != f.MAC,
		f.MACPrefix != "" && !strings.HasPrefix(m.TargetMAC.String(), f.MACPrefix),
		f.OSType != "" && m.OSType != f.OSType,
		f.OSVersion != "" && m.OSVersion != f.OSVersion,
		f.CreatedBy != "" && m.CreatedBy != f.CreatedBy:
		return false
	}
	for k, v := range f.Tags {
		if got, ok := m.Tags[k]; !ok || got != v {
			return false
		}
	}
	return len(f.Statuses) == 0 || slices.Contains(f.Statuses, t.Status)
}

// canonicalMACPrefix rewrites the start of a MAC to the form MAC.String
// has: lowercase hex, octets separated by ':'.
func canonicalMACPrefix(p string) (string, error) {
	var hex []byte
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == ':' || c == '-':
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
			hex = append(hex, c)
		case 'A' <= c && c <= 'F':
			hex = append(hex, c+'a'-'A')
		default:
			return "", invalid("mac_prefix", "%q is not the start of a MAC (hex digits, ':' or '-')", truncate(p))
		}
	}
	if len(hex) == 0 || len(hex) > 12 {
		return "", invalid("mac_prefix", "%q: want 1 to 12 hex digits", truncate(p))
	}
	var b strings.Builder
	for i, c := range hex {
		if i > 0 && i%2 == 0 {
			b.WriteByte(':')
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// SortTasks orders tasks newest first, ties broken by ID, so that pages are
// stable.
func SortTasks(ts []*Task) { sortTasks(ts, SortNewest) }

// statusRank is a status's place in the lifecycle order of statuses.
var statusRank = func() map[Status]int {
	m := make(map[Status]int, len(statuses))
	for i, st := range statuses {
		m[st] = i
	}
	return m
}()

// sortTasks orders tasks by o (SortNewest if o is unknown).
func sortTasks(ts []*Task, o Sort) {
	newer := func(a, b *Task) int { return b.Metadata.CreatedAt.Compare(a.Metadata.CreatedAt) }
	var by func(a, b *Task) int
	switch o {
	case SortOldest:
		by = func(a, b *Task) int { return a.Metadata.CreatedAt.Compare(b.Metadata.CreatedAt) }
	case SortStatus:
		by = func(a, b *Task) int {
			return cmp.Or(cmp.Compare(statusRank[a.Status], statusRank[b.Status]), newer(a, b))
		}
	case SortStatusDesc:
		by = func(a, b *Task) int {
			return cmp.Or(cmp.Compare(statusRank[b.Status], statusRank[a.Status]), newer(a, b))
		}
	default:
		by = newer
	}
	slices.SortFunc(ts, func(a, b *Task) int { return cmp.Or(by(a, b), strings.Compare(a.ID, b.ID)) })
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
	sortTasks(matched, f.Sort)
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
