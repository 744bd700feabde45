package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/task"
)

func TestNew(t *testing.T) {
	tests := []struct {
		base    string
		wantErr string
	}{
		{"http://127.0.0.1:8080", ""},
		{"https://lpmos.example.net/prefix/", ""},
		{"ftp://lpmos.example.net", "scheme"},
		{"http://", "no host"},
		{"http://h/?x=1", "no query"},
		{"://bad", "base URL"},
	}
	for _, tt := range tests {
		t.Run(tt.base, func(t *testing.T) {
			_, err := client.New(tt.base)
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// TestTaskLifecycle runs every single-task call's happy path against a
// real control plane, on a memory store and on embedded etcd.
func TestTaskLifecycle(t *testing.T) {
	stores := map[string]func(t *testing.T) *testCP{
		"memory": func(t *testing.T) *testCP { return startCP(t, nil) },
		"etcd":   func(t *testing.T) *testCP { return startCP(t, etcdtest.NewStore(t)) },
	}
	for name, start := range stores {
		t.Run(name, func(t *testing.T) {
			cp := start(t)
			ctx := context.Background()
			op := cp.client(operatorToken, client.WithUserAgent("lifecycle-test/1"))

			require.NoError(t, op.Ready(ctx))
			me, err := op.WhoAmI(ctx)
			require.NoError(t, err)
			assert.Equal(t, &client.Principal{Subject: "token:otto", Role: "operator"}, me)

			created, err := op.Create(ctx, createReq("52:54:00:aa:00:01"))
			require.NoError(t, err)
			assert.Equal(t, task.StatusPending, created.Status)
			assert.Positive(t, created.Revision)
			assert.Equal(t, "/api/v1/tasks/"+created.TaskID, created.Links.Self)
			assert.False(t, created.CreatedAt.IsZero())

			w, err := op.Watch(ctx, client.Subscription{TaskIDs: []string{created.TaskID}})
			require.NoError(t, err)
			t.Cleanup(func() { _ = w.Close() })

			got, err := op.Get(ctx, created.TaskID)
			require.NoError(t, err)
			assert.Equal(t, created.TaskID, got.ID)
			assert.Equal(t, "52:54:00:aa:00:01", got.Metadata.TargetMAC.String())
			assert.Equal(t, "token:otto", got.Metadata.CreatedBy)
			assert.Equal(t, created.Revision, got.Revision)

			cp.toPendingApproval(created.TaskID)
			got, err = op.Get(ctx, created.TaskID)
			require.NoError(t, err)
			require.Equal(t, task.StatusPendingApproval, got.Status)
			require.NotNil(t, got.Hardware)

			dec, err := op.Approve(ctx, created.TaskID, "racked", client.IfMatch(got.Revision))
			require.NoError(t, err)
			assert.Equal(t, task.StatusApproved, dec.Status)
			assert.Equal(t, task.StatusInstalling, dec.NextStatus)
			require.NotNil(t, dec.Approval)
			assert.Equal(t, "token:otto", dec.Approval.ApprovedBy)
			assert.Equal(t, "racked", dec.Approval.Notes)
			assert.Greater(t, dec.Revision, got.Revision)
			evs := until(t, w, statusIs(task.StatusApproved))
			assert.Equal(t, []task.Status{task.StatusPending, task.StatusReady, task.StatusBooting, task.StatusPendingApproval, task.StatusApproved}, statuses(evs))
			require.NoError(t, w.Close())

			// Reject and cancel, on tasks of their own.
			rej, err := op.Create(ctx, createReq("52:54:00:aa:00:02"))
			require.NoError(t, err)
			cp.toPendingApproval(rej.TaskID)
			dec, err = op.Reject(ctx, rej.TaskID, "wrong disks")
			require.NoError(t, err)
			assert.Equal(t, task.StatusRejected, dec.Status)
			assert.Equal(t, "wrong disks", dec.Approval.Reason)

			can, err := op.Create(ctx, createReq("52:54:00:aa:00:03"))
			require.NoError(t, err)
			require.NoError(t, op.Cancel(ctx, can.TaskID, "not needed", client.IfMatch(can.Revision)))
			got, err = op.Get(ctx, can.TaskID)
			require.NoError(t, err)
			assert.Equal(t, task.StatusCancelled, got.Status)
			assert.Equal(t, "not needed", got.Timeline[len(got.Timeline)-1].Message)

			page, err := op.List(ctx, client.ListOptions{})
			require.NoError(t, err)
			assert.Equal(t, 3, page.Total)
			require.Len(t, page.Tasks, 3)
			assert.Equal(t, can.TaskID, page.Tasks[0].ID, "newest first")
			assert.Equal(t, "dc1", page.Tasks[0].Metadata.RegionID)
			assert.Equal(t, "production", page.Tasks[0].Metadata.Tags["environment"])

			regions, err := op.Regions(ctx)
			require.NoError(t, err)
			assert.Empty(t, regions)
		})
	}
}

func TestRegions(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	caps, err := json.Marshal(task.Capabilities{OS: []task.OSOffering{{Type: "ubuntu", Version: "24.04", Kind: "image"}}})
	require.NoError(t, err)
	_, err = cp.st.Put(ctx, task.RegionCapabilitiesKey("dc1"), caps)
	require.NoError(t, err)
	_, err = cp.st.Put(ctx, task.RegionHeartbeatKey("dc1"), []byte("2026-01-29T10:00:00Z"))
	require.NoError(t, err)
	_, err = cp.st.Put(ctx, task.RegionStatusKey("dc2"), []byte("online"))
	require.NoError(t, err)
	req := createReq("52:54:00:aa:00:01")
	req.CreatedBy = "test"
	_, err = cp.svc.Create(ctx, req)
	require.NoError(t, err)

	c := cp.client(viewerToken)
	var regions []client.Region
	require.Eventually(t, func() bool {
		regions, err = c.Regions(ctx)
		return err == nil && len(regions) == 2 && regions[0].ActiveTasks[task.StatusPending] == 1
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, map[task.Status]int{task.StatusPending: 1}, regions[0].ActiveTasks)
	assert.Equal(t, "dc1", regions[0].ID)
	assert.Equal(t, "online", regions[0].Status)
	assert.Equal(t, "2026-01-29T10:00:00Z", regions[0].LastHeartbeat)
	require.NotNil(t, regions[0].Capabilities)
	assert.True(t, regions[0].Capabilities.Supports("ubuntu", "24.04"))
	assert.Equal(t, client.Region{ID: "dc2", Status: "offline", ActiveTasks: map[task.Status]int{}}, regions[1])
}

// TestErrors checks that refusals come back as *client.Error with the
// API's status, code, field and Retry-After, and match the sentinels.
func TestErrors(t *testing.T) {
	ctx := context.Background()
	cp := startCP(t, nil)
	op := cp.client(operatorToken)
	pending, err := op.Create(ctx, createReq("52:54:00:ee:00:01"))
	require.NoError(t, err)
	capped := startCP(t, nil, func(c *controlplane.Config) { c.MaxActiveTasks = 1 })
	_, err = capped.client(operatorToken).Create(ctx, createReq("52:54:00:ee:00:02"))
	require.NoError(t, err)
	limited := startCP(t, nil, func(c *controlplane.Config) { c.RateLimit, c.RateBurst = 0.001, 1 })
	unknown := "00000000-0000-4000-8000-000000000001"

	tests := []struct {
		name       string
		call       func() error
		status     int
		code       string
		field      string
		sentinels  []error
		retryAfter time.Duration
	}{
		{"not found", func() error { _, err := op.Get(ctx, unknown); return err },
			404, client.CodeNotFound, "", []error{client.ErrNotFound, task.ErrNotFound}, 0},
		{"invalid transition", func() error { _, err := op.Approve(ctx, pending.TaskID, ""); return err },
			409, client.CodeInvalidTransition, "", []error{client.ErrInvalidTransition, task.ErrInvalidTransition}, 0},
		{"validation names the field", func() error { _, err := op.Create(ctx, createReq("not-a-mac")); return err },
			400, client.CodeInvalidRequest, "target_mac", []error{client.ErrInvalidRequest, task.ErrInvalid}, 0},
		{"bad list parameter", func() error { _, err := op.List(ctx, client.ListOptions{Sort: "sideways"}); return err },
			400, client.CodeInvalidRequest, "sort", []error{client.ErrInvalidRequest}, 0},
		{"reject needs a reason", func() error { _, err := op.Reject(ctx, pending.TaskID, ""); return err },
			400, client.CodeInvalidRequest, "reason", []error{client.ErrInvalidRequest}, 0},
		{"active task on the MAC", func() error { _, err := op.Create(ctx, createReq("52:54:00:ee:00:01")); return err },
			409, client.CodeConflict, "", []error{client.ErrConflict, task.ErrConflict}, 0},
		{"stale If-Match", func() error { return op.Cancel(ctx, pending.TaskID, "", client.IfMatch(pending.Revision-1)) },
			409, client.CodeConflict, "", []error{client.ErrConflict, task.ErrConflict}, 0},
		{"If-Match without a revision", func() error { return op.Cancel(ctx, pending.TaskID, "", client.IfMatch(0)) },
			400, client.CodeInvalidRequest, "", []error{client.ErrInvalidRequest}, 0},
		{"unknown token", func() error { _, err := cp.client("nobody-0123456789").WhoAmI(ctx); return err },
			401, client.CodeUnauthorized, "", []error{client.ErrUnauthorized}, 0},
		{"viewer may not create", func() error { _, err := cp.client(viewerToken).Create(ctx, createReq("52:54:00:ee:00:09")); return err },
			403, client.CodeForbidden, "", []error{client.ErrForbidden}, 0},
		{"capacity", func() error {
			_, err := capped.client(operatorToken).Create(ctx, createReq("52:54:00:ee:00:03"))
			return err
		}, 409, client.CodeCapacity, "", []error{client.ErrCapacity}, 0},
		{"rate limited, with Retry-After", func() error {
			c := limited.client(viewerToken)
			for {
				if _, err := c.WhoAmI(ctx); err != nil {
					return err
				}
			}
		}, 429, client.CodeRateLimited, "", []error{client.ErrRateLimited}, time.Second},
		{"malformed task ID, escaped into the path", func() error { _, err := op.Get(ctx, "x/../../nope"); return err },
			400, client.CodeInvalidRequest, "task_id", []error{client.ErrInvalidRequest}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			require.Error(t, err)
			e, ok := client.AsError(err)
			require.True(t, ok, "%T %v", err, err)
			assert.Equal(t, tt.status, e.StatusCode)
			assert.Equal(t, tt.code, e.Code)
			assert.Equal(t, tt.field, e.Field)
			assert.NotEmpty(t, e.Message)
			assert.Equal(t, tt.retryAfter, e.RetryAfter)
			assert.True(t, client.IsCode(err, tt.code))
			for _, s := range tt.sentinels {
				assert.ErrorIs(t, err, s)
			}
			for _, other := range []error{client.ErrInternal, client.ErrUnavailable, client.ErrTooLarge} {
				assert.NotErrorIs(t, err, other)
			}
			assert.Contains(t, err.Error(), fmt.Sprint(tt.status))
		})
	}
}

// TestErrorsFromElsewhere: answers that are not the API's (a proxy's), an
// error body too large to read whole, and a success too large to accept.
func TestErrorsFromElsewhere(t *testing.T) {
	var calls atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		switch r.URL.Path {
		case "/api/v1/whoami":
			w.Header().Set("Content-Type", "text/html")
			w.Header().Set("Retry-After", "Fri, 31 Dec 2100 23:59:59 GMT")
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprint(w, "<html>bad gateway</html>")
		case "/api/v1/regions":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, `{"error": {"code": "unavailable", "message": "%s"}}`, strings.Repeat("x", 1<<20))
		case "/readyz":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"status": "task cache not synced yet"}`)
		case "/api/v1/tasks":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"tasks": [], "total": 0, "padding": "%s"}`, strings.Repeat("x", 1<<20))
		}
	}))
	t.Cleanup(ts.Close)
	c, err := client.New(ts.URL, client.WithMaxResponseBytes(1<<10))
	require.NoError(t, err)
	ctx := context.Background()

	_, err = c.WhoAmI(ctx)
	e, ok := client.AsError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, http.StatusBadGateway, e.StatusCode)
	assert.Empty(t, e.Code)
	assert.Contains(t, e.Message, "bad gateway")
	assert.Greater(t, e.RetryAfter, 24*time.Hour, "an HTTP date")

	_, err = c.Regions(ctx)
	e, ok = client.AsError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, http.StatusServiceUnavailable, e.StatusCode)
	assert.Empty(t, e.Code, "a body cut at the limit is not read as the API's")
	assert.Less(t, len(e.Message), 1<<10)

	err = c.Ready(ctx)
	assert.ErrorIs(t, err, client.ErrUnavailable)
	assert.ErrorContains(t, err, "task cache not synced yet")

	_, err = c.List(ctx, client.ListOptions{})
	require.ErrorContains(t, err, "larger than 1024 bytes")
	_, ok = client.AsError(err)
	assert.False(t, ok)
}

func TestCreateBatch(t *testing.T) {
	cp := startCP(t, nil)
	ctx := context.Background()
	op := cp.client(operatorToken)

	res, err := op.CreateBatch(ctx, []task.CreateRequest{
		createReq("52:54:00:ba:00:01"),
		createReq("not-a-mac"),
		createReq("52:54:00:ba:00:02"),
		createReq("52:54:00:BA:00:01"), // the first item's machine again
	})
	require.NoError(t, err)
	assert.Equal(t, 2, res.Created)
	assert.Equal(t, 2, res.Failed)
	require.Len(t, res.Items, 4)
	for i, it := range res.Items {
		assert.Equal(t, i, it.Index)
	}
	for _, i := range []int{0, 2} {
		require.NoError(t, res.Items[i].Err)
		require.NotNil(t, res.Items[i].Task)
		assert.Equal(t, task.StatusPending, res.Items[i].Task.Status)
		_, err := op.Get(ctx, res.Items[i].Task.TaskID)
		assert.NoError(t, err)
	}
	for _, i := range []int{1, 3} {
		assert.Nil(t, res.Items[i].Task)
		e, ok := client.AsError(res.Items[i].Err)
		require.True(t, ok, "%v", res.Items[i].Err)
		assert.Equal(t, http.StatusBadRequest, e.StatusCode)
		assert.Equal(t, "target_mac", e.Field)
		assert.ErrorIs(t, res.Items[i].Err, client.ErrInvalidRequest)
	}

	// Refused as a whole: nothing to create.
	_, err = op.CreateBatch(ctx, nil)
	e, ok := client.AsError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, "tasks", e.Field)
}

func TestBulkMoves(t *testing.T) {
	cp := startCP(t, nil, tickingTasks)
	ctx := context.Background()
	op := cp.client(operatorToken)
	mk := func(mac, rack string) string {
		r := createReq(mac)
		r.Tags = map[string]string{"rack": rack}
		c, err := op.Create(ctx, r)
		require.NoError(t, err)
		return c.TaskID
	}
	r1a, r1b := mk("52:54:00:b0:00:01", "r1"), mk("52:54:00:b0:00:02", "r1")
	r2a, r2b := mk("52:54:00:b0:00:03", "r2"), mk("52:54:00:b0:00:04", "r2")
	pending := mk("52:54:00:b0:00:05", "r2")
	for _, id := range []string{r1a, r1b, r2a, r2b} {
		cp.toPendingApproval(id)
	}
	unknown := "00000000-0000-4000-8000-000000000001"

	// By IDs: each moves or fails on its own, and says why.
	res, err := op.BulkApprove(ctx, client.ByIDs(r1a, pending, unknown), "racked")
	require.NoError(t, err)
	assert.Equal(t, 3, res.Matched)
	assert.False(t, res.Truncated)
	require.Len(t, res.Moved, 1)
	assert.Equal(t, r1a, res.Moved[0].TaskID)
	assert.Equal(t, task.StatusApproved, res.Moved[0].Status)
	require.Len(t, res.Failed, 2)
	assert.Equal(t, pending, res.Failed[0].TaskID)
	assert.ErrorIs(t, res.Failed[0].Err, client.ErrInvalidTransition)
	assert.Equal(t, unknown, res.Failed[1].TaskID)
	assert.ErrorIs(t, res.Failed[1].Err, client.ErrNotFound)

	// By filter, with a limit: the oldest first, and it says more matched.
	sel := client.ByFilter(client.BulkFilter{Tags: map[string]string{"rack": "r2"}})
	sel.Limit = 1
	res, err = op.BulkReject(ctx, sel, "wrong rack")
	require.NoError(t, err)
	assert.Equal(t, 2, res.Matched, "the pending task is not selected")
	assert.True(t, res.Truncated)
	require.Len(t, res.Moved, 1)
	assert.Equal(t, r2a, res.Moved[0].TaskID)
	assert.Equal(t, task.StatusRejected, res.Moved[0].Status)
	assert.Empty(t, res.Failed)

	res, err = op.BulkCancel(ctx, client.ByFilter(client.BulkFilter{Tags: map[string]string{"rack": "r2"}}), "decommissioned")
	require.NoError(t, err)
	assert.Equal(t, 2, res.Matched)
	assert.ElementsMatch(t, []string{r2b, pending}, []string{res.Moved[0].TaskID, res.Moved[1].TaskID})

	// A filter that selects nothing, and a filter naming a status the move
	// does not apply to.
	_, err = op.BulkApprove(ctx, client.ByFilter(client.BulkFilter{Tags: map[string]string{"rack": "r9"}}), "")
	e, ok := client.AsError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, client.CodeNotFound, e.Code)
	assert.Equal(t, "filter", e.Field)
	_, err = op.BulkApprove(ctx, client.ByFilter(client.BulkFilter{Statuses: []task.Status{task.StatusPending}}), "")
	e, ok = client.AsError(err)
	require.True(t, ok, "%v", err)
	assert.Equal(t, "filter.status", e.Field)
	_, err = op.BulkReject(ctx, client.ByIDs(r1b), "")
	assert.ErrorIs(t, err, client.ErrInvalidRequest, "a reject needs a reason")
}

// tickingTasks gives the task service a clock that advances a second per
// reading, so that creation order is visible in created_at.
func tickingTasks(c *controlplane.Config) {
	var tick atomic.Int64
	base := time.Date(2026, 1, 29, 10, 0, 0, 0, time.UTC)
	c.Now = time.Now
	c.TaskConfig.Now = func() time.Time { return base.Add(time.Duration(tick.Add(1)) * time.Second) }
}

// TestListAndPages checks every list filter and walking a listing a page
// at a time.
func TestListAndPages(t *testing.T) {
	cp := startCP(t, nil, tickingTasks)
	ctx := context.Background()
	op := cp.client(operatorToken)
	var ids []string
	for i := range 7 {
		r := createReq(fmt.Sprintf("52:54:00:11:00:%02x", i))
		if i >= 5 {
			r.TargetMAC = fmt.Sprintf("00:1a:2b:11:00:%02x", i)
			r.RegionID = "dc2"
			r.Tags = map[string]string{"rack": "r9", "environment": "staging"}
		}
		c, err := op.Create(ctx, r)
		require.NoError(t, err)
		ids = append(ids, c.TaskID)
	}
	cp.toPendingApproval(ids[1])
	require.NoError(t, op.Cancel(ctx, ids[2], ""))

	list := func(o client.ListOptions) []string {
		t.Helper()
		p, err := op.List(ctx, o)
		require.NoError(t, err)
		var got []string
		for _, tk := range p.Tasks {
			got = append(got, tk.ID)
		}
		return got
	}
	tests := []struct {
		name string
		opts client.ListOptions
		want []string
	}{
		{"region", client.ListOptions{RegionID: "dc2", Sort: task.SortOldest}, ids[5:]},
		{"statuses", client.ListOptions{Statuses: []task.Status{task.StatusPendingApproval, task.StatusCancelled}, Sort: task.SortOldest}, ids[1:3]},
		{"mac in another spelling", client.ListOptions{MAC: "5254.0011.0003"}, ids[3:4]},
		{"mac prefix", client.ListOptions{MACPrefix: "00-1A-2B", Sort: task.SortOldest}, ids[5:]},
		{"os", client.ListOptions{OSType: "ubuntu", OSVersion: "22.04", Limit: 2}, []string{ids[6], ids[5]}},
		{"tags", client.ListOptions{Tags: map[string]string{"rack": "r9", "environment": "staging"}, Sort: task.SortOldest}, ids[5:]},
		{"created by", client.ListOptions{CreatedBy: "token:otto", Limit: 1, Offset: 6}, ids[:1]},
		{"nobody's", client.ListOptions{CreatedBy: "token:vera"}, nil},
		{"status order", client.ListOptions{Sort: task.SortStatusDesc, Limit: 2}, []string{ids[2], ids[1]}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, list(tt.opts))
		})
	}

	t.Run("pages", func(t *testing.T) {
		p, err := op.List(ctx, client.ListOptions{Limit: 3, Offset: 3, Sort: task.SortOldest})
		require.NoError(t, err)
		assert.Equal(t, 7, p.Total)
		assert.Equal(t, 3, p.Limit)
		assert.Equal(t, 3, p.Offset)
		assert.Len(t, p.Tasks, 3)

		var walked []string
		for tk, err := range op.Tasks(ctx, client.ListOptions{Limit: 3}) {
			require.NoError(t, err)
			walked = append(walked, tk.ID)
		}
		assert.Equal(t, ids, walked, "every task once, oldest first, over three pages")

		all, err := op.ListAll(ctx, client.ListOptions{RegionID: "dc1", Limit: 2, Sort: task.SortNewest})
		require.NoError(t, err)
		require.Len(t, all, 5)
		assert.Equal(t, ids[4], all[0].ID)

		// Stopping early stops the walk.
		n := 0
		for range op.Tasks(ctx, client.ListOptions{Limit: 2}) {
			n++
			if n == 3 {
				break
			}
		}
		assert.Equal(t, 3, n)

		// An error ends the walk and is yielded.
		var errs []error
		for tk, err := range op.Tasks(ctx, client.ListOptions{MACPrefix: "zz"}) {
			assert.Nil(t, tk)
			errs = append(errs, err)
		}
		require.Len(t, errs, 1)
		assert.True(t, errors.Is(errs[0], client.ErrInvalidRequest), "%v", errs[0])
	})
}
