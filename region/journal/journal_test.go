package journal_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/region/journal"
)

func rec(i int) journal.Record {
	return journal.Record{Kind: journal.KindProgress, TaskID: fmt.Sprintf("task-%d", i), MAC: "52:54:00:00:00:01",
		Source: "10.0.0.5", At: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC), StatusRev: int64(10 + i),
		Body: json.RawMessage(fmt.Sprintf(`{"stage":"downloading","percentage":%d}`, i))}
}

func open(t *testing.T, path string, l journal.Limits) *journal.Journal {
	t.Helper()
	j, err := journal.Open(path, l)
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return j
}

func taskIDs(rs []journal.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.TaskID)
	}
	return out
}

// Records survive a reopen in order with their fields; acked ones do not
// come back; once all are acked the file is empty.
func TestAppendReopenAck(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.journal")
	j := open(t, path, journal.Limits{})
	for i := 1; i <= 5; i++ {
		r, err := j.Append(rec(i))
		require.NoError(t, err)
		assert.Equal(t, uint64(i), r.Seq)
	}
	require.NoError(t, j.Ack(2))
	require.NoError(t, j.Close())

	j = open(t, path, journal.Limits{})
	got := j.Pending()
	require.Len(t, got, 3)
	assert.Equal(t, []string{"task-3", "task-4", "task-5"}, taskIDs(got))
	want := rec(3)
	want.Seq = 3
	assert.Equal(t, want, got[0])

	r, err := j.Append(rec(6))
	require.NoError(t, err)
	assert.Equal(t, uint64(6), r.Seq, "sequence numbers go on after a reopen")
	require.NoError(t, j.Ack(6))
	assert.Zero(t, j.Len())
	assert.Zero(t, j.Size())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Zero(t, fi.Size(), "the file is truncated once everything is applied")
}

// A crash tears the last record in several ways; each is ignored on
// reopen and cut off, and the records before it stay.
func TestTornLastRecord(t *testing.T) {
	tests := []struct {
		name string
		tear func(data []byte) []byte
	}{
		{"cut in the middle", func(d []byte) []byte { return d[:len(d)-20] }},
		{"no newline", func(d []byte) []byte { return d[:len(d)-1] }},
		{"checksum mismatch", func(d []byte) []byte {
			d = append([]byte(nil), d...)
			d[len(d)-5] ^= 0xff
			return d
		}},
		{"only the checksum", func(d []byte) []byte { return append(d, []byte("0123")...) }},
		{"garbage line", func(d []byte) []byte { return append(d, []byte("zz not a record\n")...) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.journal")
			j := open(t, path, journal.Limits{})
			for i := 1; i <= 3; i++ {
				_, err := j.Append(rec(i))
				require.NoError(t, err)
			}
			require.NoError(t, j.Close())
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(path, tt.tear(data), 0o600))

			j = open(t, path, journal.Limits{})
			got := taskIDs(j.Pending())
			if tt.name == "only the checksum" || tt.name == "garbage line" {
				assert.Equal(t, []string{"task-1", "task-2", "task-3"}, got)
			} else {
				assert.Equal(t, []string{"task-1", "task-2"}, got)
			}
			// The torn tail is gone: a new record follows good ones.
			_, err = j.Append(rec(9))
			require.NoError(t, err)
			require.NoError(t, j.Close())
			j = open(t, path, journal.Limits{})
			got = taskIDs(j.Pending())
			assert.Equal(t, "task-9", got[len(got)-1])
		})
	}
}

// Damage before the last record is not a torn write: Open refuses the
// file instead of dropping the records after it.
func TestCorruptMiddle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.journal")
	j := open(t, path, journal.Limits{})
	for i := 1; i <= 3; i++ {
		_, err := j.Append(rec(i))
		require.NoError(t, err)
	}
	require.NoError(t, j.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	data[12] ^= 0xff // inside the first record
	require.NoError(t, os.WriteFile(path, data, 0o600))
	_, err = journal.Open(path, journal.Limits{})
	require.ErrorIs(t, err, journal.ErrCorrupt)
}

// lineSize is the size of one of rec's records in the file.
func lineSize(t *testing.T) int64 {
	j := open(t, filepath.Join(t.TempDir(), "size.journal"), journal.Limits{})
	_, err := j.Append(rec(1))
	require.NoError(t, err)
	return j.Size()
}

// A full journal refuses new records (ErrFull) and keeps what it has;
// acking makes room again.
func TestBounds(t *testing.T) {
	tests := []struct {
		name   string
		limits journal.Limits
	}{
		{"records", journal.Limits{MaxRecords: 3}},
		{"bytes", journal.Limits{MaxBytes: 3*lineSize(t) + 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.journal")
			j := open(t, path, tt.limits)
			n := 0
			for ; n < 10; n++ {
				if _, err := j.Append(rec(n + 1)); err != nil {
					require.ErrorIs(t, err, journal.ErrFull)
					break
				}
			}
			require.Equal(t, 3, n, "three records fit")
			size := j.Size()
			_, err := j.Append(rec(99))
			require.ErrorIs(t, err, journal.ErrFull)
			assert.Equal(t, size, j.Size(), "a refused record writes nothing")
			assert.Equal(t, []string{"task-1", "task-2", "task-3"}, taskIDs(j.Pending()))

			require.NoError(t, j.Ack(1))
			_, err = j.Append(rec(4))
			require.NoError(t, err, "an applied record makes room")
			assert.Equal(t, []string{"task-2", "task-3", "task-4"}, taskIDs(j.Pending()))
			require.NoError(t, j.Close())
			j = open(t, path, tt.limits)
			assert.Equal(t, []string{"task-2", "task-3", "task-4"}, taskIDs(j.Pending()))
		})
	}
}

// Acks one by one keep the file small (acked lines are compacted away)
// and a reopen after any of them replays exactly the rest.
func TestAckOneByOneCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.journal")
	j := open(t, path, journal.Limits{})
	const n = 50
	for i := 1; i <= n; i++ {
		_, err := j.Append(rec(i))
		require.NoError(t, err)
	}
	full := j.Size()
	for i := 1; i < n; i++ {
		require.NoError(t, j.Ack(uint64(i)))
		assert.LessOrEqual(t, j.Size(), full+4096)
	}
	require.NoError(t, j.Close())
	j = open(t, path, journal.Limits{})
	assert.Equal(t, []string{fmt.Sprintf("task-%d", n)}, taskIDs(j.Pending()))
	r, err := j.Append(rec(1))
	require.NoError(t, err)
	assert.Equal(t, uint64(n+1), r.Seq)
}

// One journal file has one writer: a second Open fails while the first
// is open, also after a compaction replaced the file, and succeeds once
// it is closed.
func TestOneWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.journal")
	j := open(t, path, journal.Limits{})
	_, err := journal.Open(path, journal.Limits{})
	require.ErrorIs(t, err, journal.ErrLocked)

	for i := 1; i <= 20; i++ {
		_, err := j.Append(rec(i))
		require.NoError(t, err)
	}
	for i := 1; i < 20; i++ {
		require.NoError(t, j.Ack(uint64(i))) // compacts on the way
	}
	_, err = journal.Open(path, journal.Limits{})
	require.ErrorIs(t, err, journal.ErrLocked, "the compacted file is locked too")

	require.NoError(t, j.Close())
	j2 := open(t, path, journal.Limits{})
	assert.Equal(t, []string{"task-20"}, taskIDs(j2.Pending()))
}
