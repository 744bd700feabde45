package task_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// keysNaming returns the keys that name s (a task ID, a MAC).
func keysNaming(all map[string]string, s string) []string {
	var out []string
	for k := range all {
		if strings.Contains(k, s) {
			out = append(out, k)
		}
	}
	return out
}

func TestCreateBatch(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		active, err := svc.Create(ctx, validRequest("00:1a:2b:3c:70:00"))
		require.NoError(t, err)

		badOS := validRequest("00:1a:2b:3c:70:02")
		badOS.OSType = "windows"
		reqs := []task.CreateRequest{
			validRequest("00:1a:2b:3c:70:01"),
			badOS,
			validRequest("00:1a:2b:3c:70:00"), // active already
			validRequest("00-1A-2B-3C-70-01"), // item 0's machine, spelt otherwise
			validRequest("00:1a:2b:3c:70"),    // not a MAC
			validRequest("00:1a:2b:3c:70:02"), // badOS's machine: a duplicate though badOS failed
			validRequest("00:1a:2b:3c:70:03"),
		}
		before, _ := dump(t, st)
		results, err := svc.CreateBatch(ctx, reqs)
		require.NoError(t, err)
		require.Len(t, results, len(reqs))

		require.NoError(t, results[0].Err)
		require.NoError(t, results[6].Err)
		assert.Equal(t, task.StatusPending, results[0].Task.Status)

		var ve *task.ValidationError
		require.ErrorAs(t, results[1].Err, &ve)
		assert.Equal(t, "os_type", ve.Field)
		var ate *task.ActiveTaskError
		require.ErrorAs(t, results[2].Err, &ate)
		assert.Equal(t, active.ID, ate.TaskID)
		for _, i := range []int{3, 5} {
			require.ErrorAs(t, results[i].Err, &ve, "item %d", i)
			assert.Equal(t, "target_mac", ve.Field)
			assert.Contains(t, ve.Reason, "of this batch")
		}
		require.ErrorAs(t, results[4].Err, &ve)
		assert.Equal(t, "target_mac", ve.Field)
		for i, r := range results {
			assert.True(t, (r.Err == nil) != (r.Task == nil), "item %d has a task or an error", i)
		}

		// Exactly the two created tasks were written: five keys each.
		after, _ := dump(t, st)
		added := map[string]string{}
		for k, v := range after {
			if _, ok := before[k]; !ok {
				added[k] = v
			}
		}
		assert.Len(t, added, 10, "%v", added)
		for _, r := range []task.BatchResult{results[0], results[6]} {
			assert.Len(t, keysNaming(added, r.Task.ID), 4) // 3 task keys and the region's index
		}
		assert.Empty(t, keysNaming(after, "00:1a:2b:3c:70:02"), "a failed item claimed no MAC")
		assert.Equal(t, before[task.AgentKey(mustMAC(t, "00:1a:2b:3c:70:00"), task.AgentFieldTaskID)],
			after[task.AgentKey(mustMAC(t, "00:1a:2b:3c:70:00"), task.AgentFieldTaskID)])
	})
}

func mustMAC(t *testing.T, s string) lpmos.MAC {
	m, err := lpmos.ParseMAC(s)
	require.NoError(t, err)
	return m
}

func TestBatchRefusedAsAWhole(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	svc := newService(st)
	ctx := ctxT(t)
	pa := toPendingApproval(t, svc, "00:1a:2b:3c:71:01")
	tooMany := make([]task.CreateRequest, task.MaxBatch+1)
	for i := range tooMany {
		tooMany[i] = validRequest(fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff))
	}
	tooManyIDs := make([]string, task.MaxBatch+1)
	for i := range tooManyIDs {
		tooManyIDs[i] = pa.ID
	}
	tests := []struct {
		name  string
		call  func() ([]task.BatchResult, error)
		field string
	}{
		{"no tasks", func() ([]task.BatchResult, error) { return svc.CreateBatch(ctx, nil) }, "tasks"},
		{"too many tasks", func() ([]task.BatchResult, error) { return svc.CreateBatch(ctx, tooMany) }, "tasks"},
		{"no ids", func() ([]task.BatchResult, error) { return svc.ApproveBatch(ctx, []string{}, "ops", "") }, "ids"},
		{"too many ids", func() ([]task.BatchResult, error) { return svc.CancelBatch(ctx, tooManyIDs, "ops", "") }, "ids"},
		{"no actor", func() ([]task.BatchResult, error) { return svc.ApproveBatch(ctx, []string{pa.ID}, " ", "") }, "actor"},
		{"reject without reason", func() ([]task.BatchResult, error) { return svc.RejectBatch(ctx, []string{pa.ID}, "ops", "") }, "reason"},
		{"notes too long", func() ([]task.BatchResult, error) {
			return svc.ApproveBatch(ctx, []string{pa.ID}, "ops", strings.Repeat("x", task.MaxTextLen+1))
		}, "notes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, rev := dump(t, st)
			results, err := tt.call()
			var ve *task.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tt.field, ve.Field)
			assert.Nil(t, results)
			after, rev2 := dump(t, st)
			assert.Equal(t, before, after)
			assert.Equal(t, rev, rev2, "nothing written")
		})
	}
}

func TestMoveBatch(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		a := toPendingApproval(t, svc, "00:1a:2b:3c:72:01")
		b := toPendingApproval(t, svc, "00:1a:2b:3c:72:02")
		pending, err := svc.Create(ctx, validRequest("00:1a:2b:3c:72:03"))
		require.NoError(t, err)
		unknown := "00000000-0000-4000-8000-000000000001"

		before, _ := dump(t, st)
		ids := []string{a.ID, pending.ID, unknown, "not-an-id", a.ID, b.ID}
		results, err := svc.ApproveBatch(ctx, ids, "ops", "rack checked")
		require.NoError(t, err)
		require.Len(t, results, len(ids))

		for _, i := range []int{0, 5} {
			require.NoError(t, results[i].Err)
			assert.Equal(t, task.StatusApproved, results[i].Task.Status)
			assert.Equal(t, "rack checked", results[i].Task.Approval.Notes)
		}
		assert.ErrorIs(t, results[1].Err, task.ErrInvalidTransition)
		assert.ErrorIs(t, results[2].Err, task.ErrNotFound)
		var ve *task.ValidationError
		require.ErrorAs(t, results[3].Err, &ve)
		assert.Equal(t, "task_id", ve.Field)
		require.ErrorAs(t, results[4].Err, &ve, "a repeated ID")
		assert.Equal(t, "task_id", ve.Field)

		// The tasks that did not move are as they were, key by key.
		after, _ := dump(t, st)
		for _, id := range []string{pending.ID, unknown} {
			for k, v := range before {
				if strings.Contains(k, id) {
					assert.Equal(t, v, after[k], k)
				}
			}
			assert.Len(t, keysNaming(after, id), len(keysNaming(before, id)), id)
		}

		// Cancel moves what is not over, and says why the rest stays.
		results, err = svc.CancelBatch(ctx, []string{a.ID, pending.ID}, "ops", "rack decommissioned")
		require.NoError(t, err)
		require.NoError(t, results[0].Err)
		require.NoError(t, results[1].Err)
		results, err = svc.RejectBatch(ctx, []string{a.ID, b.ID}, "ops", "too late")
		require.NoError(t, err)
		assert.ErrorIs(t, results[0].Err, task.ErrInvalidTransition, "cancelled")
		assert.ErrorIs(t, results[1].Err, task.ErrInvalidTransition, "approved")
	})
}

func TestListFilters(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	svc := newService(st)
	ctx := ctxT(t)
	type spec struct {
		mac, region, os, version, by string
		tags                         map[string]string
	}
	specs := []spec{
		{"52:54:00:00:00:01", "dc1", "ubuntu", "22.04", "otto", map[string]string{"rack": "r1", "env": "prod"}},
		{"52:54:00:00:01:02", "dc1", "debian", "12", "otto", map[string]string{"rack": "r2", "env": "prod"}},
		{"52:54:01:00:00:03", "dc2", "ubuntu", "24.04", "ada", map[string]string{"rack": "r1"}},
		{"02:00:00:00:00:04", "dc2", "ubuntu", "22.04", "ada", nil},
	}
	ids := make([]string, len(specs)) // creation order: the clock ticks
	for i, s := range specs {
		tk, err := svc.Create(ctx, task.CreateRequest{RegionID: s.region, TargetMAC: s.mac, OSType: s.os, OSVersion: s.version, CreatedBy: s.by, Tags: s.tags})
		require.NoError(t, err)
		ids[i] = tk.ID
	}
	_, err := svc.Cancel(ctx, ids[0], "ops", "")
	require.NoError(t, err)
	_, err = svc.MarkReady(ctx, ids[3], "r")
	require.NoError(t, err)

	view := task.NewView(svc, task.ViewConfig{})
	vctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- view.Run(vctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-view.Synced()

	tests := []struct {
		name   string
		filter task.Filter
		want   []int
	}{
		{"MAC", task.Filter{MAC: mustMAC(t, "52-54-00-00-01-02")}, []int{1}},
		{"MAC prefix", task.Filter{MACPrefix: "52:54:00"}, []int{1, 0}},
		{"MAC prefix, other spellings", task.Filter{MACPrefix: "5254-0"}, []int{2, 1, 0}},
		{"MAC prefix, odd digits", task.Filter{MACPrefix: "525400000"}, []int{1, 0}},
		{"OS", task.Filter{OSType: "ubuntu"}, []int{3, 2, 0}},
		{"OS and version", task.Filter{OSType: "ubuntu", OSVersion: "22.04"}, []int{3, 0}},
		{"tag", task.Filter{Tags: map[string]string{"rack": "r1"}}, []int{2, 0}},
		{"tags, all of them", task.Filter{Tags: map[string]string{"rack": "r1", "env": "prod"}}, []int{0}},
		{"tag with another value", task.Filter{Tags: map[string]string{"env": "dev"}}, nil},
		{"created by", task.Filter{CreatedBy: "ada"}, []int{3, 2}},
		{"combined", task.Filter{RegionID: "dc2", OSType: "ubuntu", CreatedBy: "ada", Statuses: []task.Status{task.StatusReady}}, []int{3}},
		{"oldest first", task.Filter{Sort: task.SortOldest}, []int{0, 1, 2, 3}},
		{"by status", task.Filter{Sort: task.SortStatus}, []int{2, 1, 3, 0}},               // pending (newest first), ready, cancelled
		{"by status, reversed", task.Filter{Sort: task.SortStatusDesc}, []int{0, 3, 2, 1}}, // cancelled, ready, pending (newest first)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []string
			for _, i := range tt.want {
				want = append(want, ids[i])
			}
			p, err := svc.List(ctx, tt.filter)
			require.NoError(t, err)
			var got []string
			for _, tk := range p.Tasks {
				got = append(got, tk.ID)
			}
			assert.Equal(t, want, got, "Service.List")
			f := tt.filter
			require.NoError(t, f.Normalize())
			got = nil
			for _, tk := range view.List(f).Tasks {
				got = append(got, tk.ID)
			}
			assert.Equal(t, want, got, "View.List")
		})
	}

	for _, bad := range []struct {
		filter task.Filter
		field  string
	}{
		{task.Filter{MACPrefix: "52:54:zz"}, "mac_prefix"},
		{task.Filter{MACPrefix: "52:54:00:00:00:01:02"}, "mac_prefix"},
		{task.Filter{MACPrefix: "::"}, "mac_prefix"},
		{task.Filter{OSType: "Ubuntu!"}, "os_type"},
		{task.Filter{OSVersion: "../x"}, "os_version"},
		{task.Filter{Tags: map[string]string{"bad key": "x"}}, "tag"},
		{task.Filter{CreatedBy: "a\x00b"}, "created_by"},
		{task.Filter{Sort: "name"}, "sort"},
	} {
		_, err := svc.List(ctx, bad.filter)
		var ve *task.ValidationError
		require.ErrorAs(t, err, &ve, "%+v", bad.filter)
		assert.Equal(t, bad.field, ve.Field)
	}
}

// BenchmarkCreateBatch creates task.MaxBatch tasks per call.
func BenchmarkCreateBatch(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			svc := task.NewService(s.new(b), task.Config{})
			ctx := context.Background()
			reqs := make([]task.CreateRequest, task.MaxBatch)
			n := 0
			b.ResetTimer()
			for range b.N {
				for i := range reqs {
					reqs[i] = validRequest(benchMAC(n))
					n++
				}
				results, err := svc.CreateBatch(ctx, reqs)
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range results {
					if r.Err != nil {
						b.Fatal(r.Err)
					}
				}
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "creates/s")
		})
	}
}

// TestCreateBatchAdmitting: admit is asked in order about each item not
// refused already (a bad or repeated MAC), and an item it refuses fails
// with its error and writes nothing.
func TestCreateBatchAdmitting(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		full := errors.New("full")
		var asked []string
		admit := func(r task.CreateRequest) error {
			asked = append(asked, r.TargetMAC)
			if len(asked) > 2 {
				return full
			}
			return nil
		}
		results, err := svc.CreateBatchAdmitting(ctx, []task.CreateRequest{
			validRequest("00:1a:2b:3c:71:01"),
			validRequest("00:1a:2b:3c:71"),    // not a MAC
			validRequest("00-1a-2b-3c-71-01"), // item 0's machine
			validRequest("00:1a:2b:3c:71:02"),
			validRequest("00:1a:2b:3c:71:03"),
		}, admit)
		require.NoError(t, err)
		assert.Equal(t, []string{"00:1a:2b:3c:71:01", "00:1a:2b:3c:71:02", "00:1a:2b:3c:71:03"}, asked)
		require.NoError(t, results[0].Err)
		require.NoError(t, results[3].Err)
		assert.ErrorIs(t, results[4].Err, full)
		assert.Nil(t, results[4].Task)
		mac, err := lpmos.ParseMAC("00:1a:2b:3c:71:03")
		require.NoError(t, err)
		_, err = svc.ActiveTask(ctx, mac)
		assert.ErrorIs(t, err, task.ErrNotFound, "a refused item writes nothing")
	})
}
