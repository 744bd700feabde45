package task_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

func TestHardwareReportRecordsItsSource(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk, err := svc.Create(ctx, validRequest("00:1a:2b:3c:60:01"))
		require.NoError(t, err)
		_, err = svc.MarkReady(ctx, tk.ID, "region:dc1")
		require.NoError(t, err)
		_, err = svc.MarkBooting(ctx, tk.ID, "region:dc1")
		require.NoError(t, err)
		hw := sampleHardware
		hw.MACAddress = "00:1a:2b:3c:60:01"
		_, err = svc.ReportHardware(ctx, tk.ID, "region:dc1", hw, task.FromAddress("10.0.0.7\x1b[2J"))
		require.ErrorIs(t, err, task.ErrInvalid, "control characters in the source are refused")
		got, err := svc.ReportHardware(ctx, tk.ID, "region:dc1", hw, task.FromAddress("10.0.0.7"))
		require.NoError(t, err)
		last := got.Timeline[len(got.Timeline)-1]
		assert.Equal(t, string(task.EventHardwareReported), last.Event)
		assert.Equal(t, "10.0.0.7", last.Source)
		stored, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		assert.Equal(t, "10.0.0.7", stored.Timeline[len(stored.Timeline)-1].Source, "the source is stored")
	})
}

func TestRecordRefusal(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:60:02")
		n := len(tk.Timeline)

		got, err := svc.RecordRefusal(ctx, tk.ID, "region:dc1", "192.0.2.9", "boot script refused: already booting")
		require.NoError(t, err)
		assert.Equal(t, tk.LastActivity(), got.LastActivity(), "a refusal is no activity: it does not put off the status timeout")
		assert.Equal(t, task.StatusPendingApproval, got.Status, "a refusal moves nothing")
		assert.Equal(t, tk.Revision, got.Revision)
		require.Len(t, got.Timeline, n+1)
		last := got.Timeline[n]
		assert.Equal(t, task.TimelineRefused, last.Event)
		assert.Equal(t, "192.0.2.9", last.Source)
		assert.Equal(t, task.StatusPendingApproval, last.Status)

		// Bounded: an attacker cannot grow the timeline without limit.
		for range 3 * task.MaxRefusals {
			_, err = svc.RecordRefusal(ctx, tk.ID, "region:dc1", "192.0.2.9", "again")
			require.NoError(t, err)
		}
		stored, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		refusals := 0
		for _, e := range stored.Timeline {
			if e.Event == task.TimelineRefused {
				refusals++
			}
		}
		assert.Equal(t, task.MaxRefusals, refusals)
		_, before := dump(t, st)
		_, err = svc.RecordRefusal(ctx, tk.ID, "region:dc1", "192.0.2.9", "once more")
		require.NoError(t, err)
		_, after := dump(t, st)
		assert.Equal(t, before, after, "a refusal beyond the bound writes nothing")

		// An ended task takes no more entries.
		_, err = svc.Cancel(ctx, tk.ID, "ops", "")
		require.NoError(t, err)
		tk2 := toPendingApproval(t, svc, "00:1a:2b:3c:60:03")
		_, err = svc.Cancel(ctx, tk2.ID, "ops", "")
		require.NoError(t, err)
		_, before = dump(t, st)
		_, err = svc.RecordRefusal(ctx, tk2.ID, "region:dc1", "192.0.2.9", "late")
		require.NoError(t, err)
		_, after = dump(t, st)
		assert.Equal(t, before, after, "an ended task is not written")

		_, err = svc.RecordRefusal(ctx, tk.ID, "region:dc1", "192.0.2.9", "bad\x1b[31m")
		require.ErrorIs(t, err, task.ErrInvalid)
	})
}

func TestRecordPower(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:60:04")
		got, err := svc.RecordPower(ctx, tk.ID, "region:dc1", "powered on over IPMI (next boot: PXE)")
		require.NoError(t, err)
		assert.Equal(t, task.StatusPendingApproval, got.Status, "a power entry moves nothing")
		last := got.Timeline[len(got.Timeline)-1]
		assert.Equal(t, task.TimelinePower, last.Event)
		assert.Equal(t, "powered on over IPMI (next boot: PXE)", last.Message)

		_, err = svc.RecordPower(ctx, tk.ID, "region:dc1", "bad\x1b[2J")
		require.ErrorIs(t, err, task.ErrInvalid)

		// Recorded on an ended task (the power-off after a rejection),
		// and bounded.
		_, err = svc.Reject(ctx, tk.ID, "ops", "wrong box")
		require.NoError(t, err)
		for range task.MaxPowerEntries + 5 {
			_, err = svc.RecordPower(ctx, tk.ID, "region:dc1", "powered off")
			require.NoError(t, err)
		}
		stored, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		n := 0
		for _, e := range stored.Timeline {
			if e.Event == task.TimelinePower {
				n++
			}
		}
		assert.Equal(t, task.MaxPowerEntries, n)
		assert.Equal(t, task.StatusRejected, stored.Status)
	})
}
