// Package journal is a region's durable journal of agent calls that could
// not reach the store: an append-only file of JSON records on the region's
// disk, each fsynced before the agent is answered, bounded in records and
// bytes, replayed in order and dropped once applied.
//
// The file holds one line per record, "<crc32c hex> <json>\n": a record
// line carries an agent call, an ack line ({"ack":N}) says every record up
// to sequence N was applied. A crash may tear the last line (a write cut
// short, no newline, a checksum that does not match): Open ignores it and
// cuts it off. A bad line followed by good ones is not a torn write but
// damage, and Open refuses the file (ErrCorrupt) rather than drop records
// silently. Once every record is acked the file is truncated to nothing;
// when acked lines make up most of it, it is rewritten (to a temporary
// file, fsynced, renamed over it).
package journal

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Kinds of records: the agent calls that must reach the store.
const (
	KindReport   = "report"   // a hardware report
	KindProgress = "progress" // a progress report (a stage or a percentage)
	KindComplete = "complete" // the install finished
	KindFail     = "fail"     // the agent reported a failure
)

// Record is one agent call, journaled.
type Record struct {
	// Seq numbers the records of a journal from 1, in append order;
	// Append sets it.
	Seq    uint64 `json:"seq"`
	Kind   string `json:"kind"`
	TaskID string `json:"task_id"`
	MAC    string `json:"mac"`
	// Source is the address the agent called from, its token checked
	// for TaskID (the identity the region vouched for).
	Source string `json:"source,omitempty"`
	// At is when the region accepted the call.
	At time.Time `json:"at"`
	// StatusRev is the task's status revision as the region saw it when
	// it accepted the call.
	StatusRev int64 `json:"status_rev"`
	// Body is the call's payload (its shape depends on Kind).
	Body json.RawMessage `json:"body,omitempty"`
}

// Limits bound a journal. Zero values take the defaults.
type Limits struct {
	MaxRecords int   // records not yet applied (default 10,000)
	MaxBytes   int64 // bytes of the file (default 64 MiB)
}

// Default limits.
const (
	DefaultMaxRecords = 10_000
	DefaultMaxBytes   = 64 << 20
)

var (
	// ErrFull: the journal is at its bounds; the caller refuses the
	// agent's call (it retries) rather than lose it.
	ErrFull = errors.New("journal: full")
	// ErrCorrupt: a damaged record that is not the file's last.
	ErrCorrupt = errors.New("journal: corrupt")
	// ErrLocked: another open journal (this process's or another's)
	// holds the file.
	ErrLocked = errors.New("journal: in use")
	// ErrClosed: the journal was closed.
	ErrClosed = errors.New("journal: closed")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Journal is an open journal file. Its methods are safe for concurrent use.
type Journal struct {
	path   string
	limits Limits

	mu      sync.Mutex
	f       *os.File
	size    int64 // bytes in the file
	pending []Record
	sizes   []int64 // bytes of each pending record's line
	next    uint64  // the next record's Seq
}

type ackLine struct {
	Ack uint64 `json:"ack"`
}

// Open opens (or creates) the journal at path with its pending records:
// those not acked, in order. A torn last line is cut off.
func Open(path string, limits Limits) (*Journal, error) {
	if limits.MaxRecords <= 0 {
		limits.MaxRecords = DefaultMaxRecords
	}
	if limits.MaxBytes <= 0 {
		limits.MaxBytes = DefaultMaxBytes
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	// One writer: a second process on the same directory would
	// interleave its records with ours.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrLocked, path, err)
	}
	j := &Journal{path: path, limits: limits, f: f, next: 1}
	if err := j.load(); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

// load reads the file, keeps its pending records and cuts off a torn tail.
func (j *Journal) load() error {
	data, err := io.ReadAll(j.f)
	if err != nil {
		return fmt.Errorf("journal: read %s: %w", j.path, err)
	}
	var good int64 // offset after the last good line
	var acked uint64
	type entry struct {
		rec  Record
		size int64
	}
	var recs []entry
	rest := data
	for len(rest) > 0 {
		nl := bytes.IndexByte(rest, '\n')
		var line []byte
		if nl >= 0 {
			line = rest[:nl]
		}
		payload, ok := checkLine(line)
		if nl < 0 || !ok {
			// A bad line: torn if nothing good follows it.
			if nl >= 0 && hasGoodLine(rest[nl+1:]) {
				return fmt.Errorf("%w: %s: bad record at offset %d", ErrCorrupt, j.path, good)
			}
			break
		}
		size := int64(nl + 1)
		var a ackLine
		var r Record
		switch {
		case json.Unmarshal(payload, &a) == nil && a.Ack > 0:
			acked = max(acked, a.Ack)
		case json.Unmarshal(payload, &r) == nil && r.Seq > 0:
			recs = append(recs, entry{r, size})
			j.next = max(j.next, r.Seq+1)
		default:
			return fmt.Errorf("%w: %s: unknown line at offset %d", ErrCorrupt, j.path, good)
		}
		good += size
		rest = rest[nl+1:]
	}
	for _, e := range recs {
		if e.rec.Seq > acked {
			j.pending = append(j.pending, e.rec)
			j.sizes = append(j.sizes, e.size)
		}
	}
	j.next = max(j.next, acked+1)
	if good < int64(len(data)) {
		if err := j.f.Truncate(good); err != nil {
			return fmt.Errorf("journal: cut the torn tail of %s: %w", j.path, err)
		}
		if err := j.f.Sync(); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
	}
	j.size = good
	if _, err := j.f.Seek(good, io.SeekStart); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if len(j.pending) == 0 && j.size > 0 {
		return j.truncateLocked()
	}
	return nil
}

// checkLine verifies a line's checksum and returns its JSON.
func checkLine(line []byte) ([]byte, bool) {
	sum, payload, ok := bytes.Cut(line, []byte{' '})
	if !ok || len(sum) != 8 {
		return nil, false
	}
	want, err := strconv.ParseUint(string(sum), 16, 32)
	if err != nil || crc32.Checksum(payload, castagnoli) != uint32(want) {
		return nil, false
	}
	return payload, true
}

func hasGoodLine(rest []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(rest))
	sc.Buffer(nil, len(rest)+1)
	for sc.Scan() {
		if _, ok := checkLine(sc.Bytes()); ok {
			return true
		}
	}
	return false
}

func encodeLine(v any) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, "%08x %s\n", crc32.Checksum(payload, castagnoli), payload), nil
}

// Append writes rec (its Seq set) and syncs it to disk before it returns:
// once it returned, the record survives a crash. It fails with ErrFull
// when the journal is at its bounds, having written nothing.
func (j *Journal) Append(rec Record) (Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return rec, ErrClosed
	}
	rec.Seq = j.next
	line, err := encodeLine(rec)
	if err != nil {
		return rec, fmt.Errorf("journal: %w", err)
	}
	if len(j.pending) >= j.limits.MaxRecords || j.size+int64(len(line)) > j.limits.MaxBytes {
		if err := j.compactLocked(); err != nil {
			return rec, err
		}
		if len(j.pending) >= j.limits.MaxRecords || j.size+int64(len(line)) > j.limits.MaxBytes {
			return rec, fmt.Errorf("%w: %d records, %d bytes", ErrFull, len(j.pending), j.size)
		}
	}
	if err := j.writeLocked(line); err != nil {
		return rec, err
	}
	j.next++
	j.pending = append(j.pending, rec)
	j.sizes = append(j.sizes, int64(len(line)))
	return rec, nil
}

// writeLocked appends a line and syncs; a failed write is cut off again so
// that the file stays well formed.
func (j *Journal) writeLocked(line []byte) error {
	if _, err := j.f.Write(line); err != nil {
		_ = j.f.Truncate(j.size)
		_, _ = j.f.Seek(j.size, io.SeekStart)
		return fmt.Errorf("journal: write: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal: sync: %w", err)
	}
	j.size += int64(len(line))
	return nil
}

// Pending returns the records not yet acked, in order.
func (j *Journal) Pending() []Record {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]Record(nil), j.pending...)
}

// Len is the number of records not yet acked.
func (j *Journal) Len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.pending)
}

// Size is the file's size in bytes.
func (j *Journal) Size() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.size
}

// Ack records that every record up to seq was applied (or dropped): they
// are not replayed again, even after a crash.
func (j *Journal) Ack(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return ErrClosed
	}
	n := 0
	for n < len(j.pending) && j.pending[n].Seq <= seq {
		n++
	}
	if n == 0 {
		return nil
	}
	if n == len(j.pending) {
		j.pending, j.sizes = nil, nil
		return j.truncateLocked()
	}
	line, err := encodeLine(ackLine{Ack: seq})
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := j.writeLocked(line); err != nil {
		return err
	}
	j.pending, j.sizes = j.pending[n:], j.sizes[n:]
	var live int64
	for _, s := range j.sizes {
		live += s
	}
	if j.size > 2*live+4096 {
		return j.compactLocked()
	}
	return nil
}

// truncateLocked empties the file (nothing is pending).
func (j *Journal) truncateLocked() error {
	if err := j.f.Truncate(0); err != nil {
		return fmt.Errorf("journal: truncate: %w", err)
	}
	if _, err := j.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal: sync: %w", err)
	}
	j.size = 0
	return nil
}

// compactLocked rewrites the file with only the pending records: to a
// temporary file, synced, renamed over the journal, the directory synced.
func (j *Journal) compactLocked() error {
	var live int64
	for _, s := range j.sizes {
		live += s
	}
	if live == j.size {
		return nil
	}
	if len(j.pending) == 0 {
		return j.truncateLocked()
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("journal: compact: %w", err)
	}
	// Locked before it takes the journal's name.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("journal: compact: %w", err)
	}
	var buf bytes.Buffer
	for _, r := range j.pending {
		line, _ := encodeLine(r)
		buf.Write(line)
	}
	if _, err := f.Write(buf.Bytes()); err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("journal: compact: %w", err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("journal: compact: %w", err)
	}
	if d, err := os.Open(filepath.Dir(j.path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	j.f.Close()
	j.f = f
	j.size = int64(buf.Len())
	if _, err := f.Seek(j.size, io.SeekStart); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// Close closes the file; pending records stay for the next Open.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
