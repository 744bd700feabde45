package task_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// stores runs every service test on both implementations.
var stores = []struct {
	name string
	new  func(t testing.TB) store.Store
}{
	{"memory", func(t testing.TB) store.Store {
		s := memory.New()
		t.Cleanup(func() { s.Close() })
		return s
	}},
	{"etcd", func(t testing.TB) store.Store { return etcdtest.NewStore(t) }},
}

func forEachStore(t *testing.T, fn func(t *testing.T, st store.Store, svc *task.Service)) {
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			st := s.new(t)
			fn(t, st, newService(st))
		})
	}
}

// newService uses a clock that advances a second per reading, so creation
// order is visible in timestamps.
func newService(st store.Store) *task.Service {
	var tick atomic.Int64
	base := time.Date(2026, 1, 29, 10, 0, 0, 0, time.UTC)
	return task.NewService(st, task.Config{
		Now: func() time.Time { return base.Add(time.Duration(tick.Add(1)) * time.Second) },
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func validRequest(mac string) task.CreateRequest {
	return task.CreateRequest{
		RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "22.04",
		Tags: map[string]string{"environment": "production"}, CreatedBy: "admin@example.com",
	}
}

var sampleHardware = hardware.Info{
	MACAddress: "00:1a:2b:3c:4d:5e",
	CPU:        hardware.CPU{Model: "Intel Xeon E5-2680 v4", Cores: 28, Threads: 56},
	Memory:     hardware.Memory{TotalGB: 256},
	Disks:      []hardware.Disk{{Device: "/dev/sda", SizeGB: 480, Type: hardware.DiskSSD, Model: "Samsung 860 PRO"}},
	Network:    []hardware.NIC{{Interface: "eth0", MAC: "00:1a:2b:3c:4d:5e", Speed: "10Gbps"}},
}

// toPendingApproval walks a new task to pending_approval as a region would.
func toPendingApproval(t *testing.T, svc *task.Service, mac string) *task.Task {
	t.Helper()
	ctx := ctxT(t)
	tk, err := svc.Create(ctx, validRequest(mac))
	require.NoError(t, err)
	_, err = svc.MarkReady(ctx, tk.ID, "region:dc1")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, tk.ID, "region:dc1")
	require.NoError(t, err)
	hw := sampleHardware
	hw.MACAddress = mac
	tk, err = svc.ReportHardware(ctx, tk.ID, "region:dc1", hw)
	require.NoError(t, err)
	require.Equal(t, task.StatusPendingApproval, tk.Status)
	return tk
}

// dump returns every key under /lpmos/ with its value, and the revision.
func dump(t *testing.T, st store.Store) (map[string]string, int64) {
	t.Helper()
	res, err := st.List(ctxT(t), task.Root, store.ListOptions{})
	require.NoError(t, err)
	m := make(map[string]string, len(res.KVs))
	for _, kv := range res.KVs {
		m[kv.Key] = string(kv.Value)
	}
	return m, res.Revision
}

func TestLifecycle(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		created, err := svc.Create(ctx, validRequest("00:1A:2B-3C-4D-5E"))
		require.NoError(t, err)
		assert.Equal(t, task.StatusPending, created.Status)
		require.NoError(t, lpmos.ValidateTaskID(created.ID))
		id := created.ID

		// The key schema of keys.go, exactly: it is a contract.
		keys, _ := dump(t, st)
		assert.Equal(t, map[string]string{
			"/lpmos/tasks/" + id + "/metadata":        keys["/lpmos/tasks/"+id+"/metadata"],
			"/lpmos/tasks/" + id + "/status":          "pending",
			"/lpmos/tasks/" + id + "/timeline":        keys["/lpmos/tasks/"+id+"/timeline"],
			"/lpmos/regions/dc1/tasks/" + id:          "",
			"/lpmos/agents/00:1a:2b:3c:4d:5e/task_id": id,
		}, keys)
		assert.JSONEq(t, `{"id":"`+id+`","region_id":"dc1","target_mac":"00:1a:2b:3c:4d:5e","os_type":"ubuntu",
			"os_version":"22.04","disk_layout":"auto","network_config":"dhcp","created_at":"2026-01-29T10:00:01Z",
			"created_by":"admin@example.com","tags":{"environment":"production"},"attempt":1,"max_attempts":3}`, keys["/lpmos/tasks/"+id+"/metadata"])

		active, err := svc.ActiveTask(ctx, lpmos.MAC{0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e})
		require.NoError(t, err)
		assert.Equal(t, id, active.ID)

		tk := toPendingApprovalFrom(t, svc, id)
		assert.Equal(t, "Intel Xeon E5-2680 v4", tk.Hardware.CPU.Model)

		tk, err = svc.Approve(ctx, id, "ops@example.com", "Hardware verified")
		require.NoError(t, err)
		assert.Equal(t, task.StatusApproved, tk.Status)
		assert.Equal(t, "ops@example.com", tk.Approval.ApprovedBy)

		for _, p := range []task.Progress{
			{Stage: task.StagePartitioning, Percentage: 5},
			{Stage: task.StageDownloading, Percentage: 20, Details: map[string]any{"bytes_downloaded": 100.0, "bytes_total": 1000.0}},
			{Stage: task.StageDownloading, Percentage: 45},
			{Stage: task.StageConfiguring, Percentage: 90, Message: "bootloader"},
		} {
			tk, err = svc.ReportProgress(ctx, id, "region:dc1", p)
			require.NoError(t, err)
			assert.Equal(t, task.StatusInstalling, tk.Status)
		}
		tk, err = svc.Complete(ctx, id, "region:dc1", task.Completion{Message: "installed"})
		require.NoError(t, err)
		assert.Equal(t, task.StatusCompleted, tk.Status)

		got, err := svc.Get(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, tk, got, "the view a move returns is the stored task")
		assert.Equal(t, 100, got.Progress.Percentage)
		var events []string
		for _, e := range got.Timeline {
			ev := e.Event
			if e.Stage != "" {
				ev += ":" + string(e.Stage)
			}
			events = append(events, ev)
		}
		assert.Equal(t, []string{
			"task_created", "prepared", "boot_started", "hardware_reported", "approved",
			"install_started", "stage_changed:partitioning", "stage_changed:downloading",
			"stage_changed:configuring", "completed",
		}, events)
		for i := 1; i < len(got.Timeline); i++ {
			assert.False(t, got.Timeline[i].Timestamp.Before(got.Timeline[i-1].Timestamp), "timeline in time order")
		}

		// The machine and the region are released: a new task may start.
		keys, _ = dump(t, st)
		assert.NotContains(t, keys, "/lpmos/agents/00:1a:2b:3c:4d:5e/task_id")
		assert.NotContains(t, keys, "/lpmos/regions/dc1/tasks/"+id)
		_, err = svc.ActiveTask(ctx, lpmos.MAC{0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e})
		require.ErrorIs(t, err, task.ErrNotFound)
		_, err = svc.Create(ctx, validRequest("00:1a:2b:3c:4d:5e"))
		require.NoError(t, err)
	})
}

func toPendingApprovalFrom(t *testing.T, svc *task.Service, id string) *task.Task {
	t.Helper()
	ctx := ctxT(t)
	_, err := svc.MarkReady(ctx, id, "region:dc1")
	require.NoError(t, err)
	_, err = svc.MarkBooting(ctx, id, "region:dc1")
	require.NoError(t, err)
	tk, err := svc.ReportHardware(ctx, id, "region:dc1", sampleHardware)
	require.NoError(t, err)
	return tk
}

func TestCreateRejectsBadInputAndWritesNothing(t *testing.T) {
	manyTags := map[string]string{}
	for i := range task.MaxTags + 1 {
		manyTags[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name  string
		edit  func(r *task.CreateRequest)
		field string
	}{
		{"empty region", func(r *task.CreateRequest) { r.RegionID = "" }, "region_id"},
		{"bad region", func(r *task.CreateRequest) { r.RegionID = "DC 1" }, "region_id"},
		{"missing MAC", func(r *task.CreateRequest) { r.TargetMAC = "" }, "target_mac"},
		{"bad MAC", func(r *task.CreateRequest) { r.TargetMAC = "00:1a:2b:3c:4d" }, "target_mac"},
		{"garbage MAC", func(r *task.CreateRequest) { r.TargetMAC = "not-a-mac" }, "target_mac"},
		{"broadcast MAC", func(r *task.CreateRequest) { r.TargetMAC = "ff:ff:ff:ff:ff:ff" }, "target_mac"},
		{"unknown OS type", func(r *task.CreateRequest) { r.OSType = "windows" }, "os_type"},
		{"malformed OS type", func(r *task.CreateRequest) { r.OSType = "Ubuntu!" }, "os_type"},
		{"empty OS version", func(r *task.CreateRequest) { r.OSVersion = "" }, "os_version"},
		{"path in OS version", func(r *task.CreateRequest) { r.OSVersion = "../22.04" }, "os_version"},
		{"bad disk layout", func(r *task.CreateRequest) { r.DiskLayout = "/etc/passwd" }, "disk_layout"},
		{"traversing disk layout", func(r *task.CreateRequest) { r.DiskLayout = "/dev/../etc" }, "disk_layout"},
		{"bad network config", func(r *task.CreateRequest) { r.NetworkConfig = "bonded" }, "network_config"},
		{"too many tags", func(r *task.CreateRequest) { r.Tags = manyTags }, "tags"},
		{"oversize tag value", func(r *task.CreateRequest) {
			r.Tags = map[string]string{"k": strings.Repeat("v", task.MaxTagValueLen+1)}
		}, "tags.k"},
		{"bad tag key", func(r *task.CreateRequest) { r.Tags = map[string]string{"a b": "v"} }, "tags"},
		{"control chars in tag", func(r *task.CreateRequest) { r.Tags = map[string]string{"k": "a\x00b"} }, "tags.k"},
		{"ESC in tag", func(r *task.CreateRequest) { r.Tags = map[string]string{"k": "\x1b[2Jx"} }, "tags.k"},
		{"C1 in tag", func(r *task.CreateRequest) { r.Tags = map[string]string{"k": "a\u009bb"} }, "tags.k"},
		{"bidi override in tag", func(r *task.CreateRequest) { r.Tags = map[string]string{"k": "prod\u202Eved"} }, "tags.k"},
		{"newline in tag", func(r *task.CreateRequest) { r.Tags = map[string]string{"k": "a\nb"} }, "tags.k"},
		{"bad hostname", func(r *task.CreateRequest) { r.Tags = map[string]string{"hostname": "Web 01"} }, "tags.hostname"},
		{"shell in hostname", func(r *task.CreateRequest) { r.Tags = map[string]string{"hostname": "$(reboot)"} }, "tags.hostname"},
		{"hostname label too long", func(r *task.CreateRequest) { r.Tags = map[string]string{"hostname": strings.Repeat("a", 64)} }, "tags.hostname"},
		{"ssh_key with options", func(r *task.CreateRequest) {
			r.Tags = map[string]string{"ssh_key": `command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5`}
		}, "tags.ssh_key"},
		{"ssh_key not a key", func(r *task.CreateRequest) { r.Tags = map[string]string{"ssh_key": "hunter2"} }, "tags.ssh_key"},
		{"ssh_key bidi comment", func(r *task.CreateRequest) {
			r.Tags = map[string]string{"ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 a\u202Eb"}
		}, "tags.ssh_key"},
		{"ESC in creator", func(r *task.CreateRequest) { r.CreatedBy = "ada\x1b[2J" }, "actor"},
		{"no creator", func(r *task.CreateRequest) { r.CreatedBy = " " }, "actor"},
	}
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		_, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:01")) // something to keep
		require.NoError(t, err)
		before, rev := dump(t, st)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				req := validRequest("00:1a:2b:3c:4d:5e")
				tt.edit(&req)
				_, err := svc.Create(ctx, req)
				require.ErrorIs(t, err, task.ErrInvalid)
				var ve *task.ValidationError
				require.ErrorAs(t, err, &ve)
				assert.Equal(t, tt.field, ve.Field)
				after, rev2 := dump(t, st)
				assert.Equal(t, rev, rev2, "nothing written")
				assert.Equal(t, before, after)
			})
		}
	})
}

// What installers read is accepted at create when well-formed, and free
// text keeps its lines; control characters, bidi overrides and hostile
// hardware strings are refused with the field, and nothing is written.
func TestTextChecks(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		req := validRequest("00:1a:2b:3c:4e:01")
		req.Tags = map[string]string{"hostname": "web-01.dc1.example.com", "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ada@example.com", "owner": "Grüße ✓"}
		_, err := svc.Create(ctx, req)
		require.NoError(t, err)
		req = validRequest("00:1a:2b:3c:4e:04")
		req.Tags = map[string]string{"hostname": "", "ssh_key": ""}
		_, err = svc.Create(ctx, req)
		require.NoError(t, err, "empty: the region's defaults (lpmos-<mac>, no key)")

		tk := toPendingApproval(t, svc, "00:1a:2b:3c:4e:02")
		_, rev := dump(t, st)
		for _, tc := range []struct {
			name  string
			call  func() error
			field string
		}{
			{"ESC in approval notes", func() error { _, err := svc.Approve(ctx, tk.ID, "ops", "ok\x1b]0;pwned\x07"); return err }, "notes"},
			{"bidi override in reject reason", func() error { _, err := svc.Reject(ctx, tk.ID, "ops", "bad \u202Edrac"); return err }, "reason"},
			{"C1 in cancel reason", func() error { _, err := svc.Cancel(ctx, tk.ID, "ops", "x\u0085y"); return err }, "reason"},
			{"NUL in actor", func() error { _, err := svc.Approve(ctx, tk.ID, "o\x00ps", ""); return err }, "actor"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := tc.call()
				var ve *task.ValidationError
				require.ErrorAs(t, err, &ve)
				assert.Equal(t, tc.field, ve.Field)
				_, rev2 := dump(t, st)
				assert.Equal(t, rev, rev2, "nothing written")
			})
		}
		_, err = svc.Approve(ctx, tk.ID, "ops", "checked:\n\t- disks\n\t- NICs")
		require.NoError(t, err, "notes may span lines")

		booting, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4e:03"))
		require.NoError(t, err)
		_, err = svc.MarkReady(ctx, booting.ID, "region:dc1")
		require.NoError(t, err)
		_, err = svc.MarkBooting(ctx, booting.ID, "region:dc1")
		require.NoError(t, err)
		hw := sampleHardware
		hw.MACAddress = "00:1a:2b:3c:4e:03"
		hw.Disks = []hardware.Disk{{Device: "/dev/sda", Model: "Samsung\x1b[31m"}}
		_, err = svc.ReportHardware(ctx, booting.ID, "region:dc1", hw)
		var ve *task.ValidationError
		require.ErrorAs(t, err, &ve)
		assert.Equal(t, "hardware.disks[0].model", ve.Field)
	})
}

func TestOneActiveTaskPerMAC(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		first, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:5e"))
		require.NoError(t, err)
		before, rev := dump(t, st)

		req := validRequest("00-1A-2B-3C-4D-5E") // same machine, other spelling
		req.RegionID = "dc2"
		_, err = svc.Create(ctx, req)
		require.ErrorIs(t, err, task.ErrConflict)
		var ae *task.ActiveTaskError
		require.ErrorAs(t, err, &ae)
		assert.Equal(t, first.ID, ae.TaskID)
		after, rev2 := dump(t, st)
		assert.Equal(t, rev, rev2)
		assert.Equal(t, before, after)

		// Concurrent creates for one MAC: exactly one wins.
		var wg sync.WaitGroup
		var wins atomic.Int32
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:77"))
				if err == nil {
					wins.Add(1)
				} else {
					assert.ErrorIs(t, err, task.ErrConflict)
				}
			}()
		}
		wg.Wait()
		assert.Equal(t, int32(1), wins.Load())
	})
}

func TestIllegalMovesWriteNothing(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:5e"))
		require.NoError(t, err)
		done := toPendingApproval(t, svc, "00:1a:2b:3c:4d:99")
		_, err = svc.Reject(ctx, done.ID, "ops", "bad disks")
		require.NoError(t, err)
		before, rev := dump(t, st)

		tests := []struct {
			name string
			call func() error
			want error
		}{
			{"approve pending", func() error { _, err := svc.Approve(ctx, tk.ID, "ops", ""); return err }, task.ErrInvalidTransition},
			{"reject pending", func() error { _, err := svc.Reject(ctx, tk.ID, "ops", "no"); return err }, task.ErrInvalidTransition},
			{"complete pending", func() error { _, err := svc.Complete(ctx, tk.ID, "r", task.Completion{}); return err }, task.ErrInvalidTransition},
			{"hardware before boot", func() error { _, err := svc.ReportHardware(ctx, tk.ID, "r", sampleHardware); return err }, task.ErrInvalidTransition},
			{"progress before approval", func() error {
				_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading})
				return err
			}, task.ErrInvalidTransition},
			{"cancel terminal", func() error { _, err := svc.Cancel(ctx, done.ID, "ops", ""); return err }, task.ErrInvalidTransition},
			{"fail terminal", func() error { _, err := svc.Fail(ctx, done.ID, "r", task.ErrorInfo{Code: "x"}); return err }, task.ErrInvalidTransition},
			{"unknown task", func() error { _, err := svc.Cancel(ctx, "00000000-0000-4000-8000-000000000001", "ops", ""); return err }, task.ErrNotFound},
			{"malformed ID", func() error { _, err := svc.Cancel(ctx, "../../etc", "ops", ""); return err }, task.ErrInvalid},
			{"no actor", func() error { _, err := svc.Cancel(ctx, tk.ID, "", ""); return err }, task.ErrInvalid},
			{"reject without reason", func() error { _, err := svc.Reject(ctx, tk.ID, "ops", " "); return err }, task.ErrInvalid},
			{"oversize notes", func() error {
				_, err := svc.Approve(ctx, tk.ID, "ops", strings.Repeat("n", task.MaxTextLen+1))
				return err
			}, task.ErrInvalid},
			{"bad progress", func() error {
				_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading, Percentage: 101})
				return err
			}, task.ErrInvalid},
			{"unknown stage", func() error {
				_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: "dancing"})
				return err
			}, task.ErrInvalid},
			{"nested details", func() error {
				_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading, Details: map[string]any{"x": []any{1}}})
				return err
			}, task.ErrInvalid},
			{"fail without code", func() error { _, err := svc.Fail(ctx, tk.ID, "r", task.ErrorInfo{}); return err }, task.ErrInvalid},
			{"invalid hardware", func() error {
				_, err := svc.ReportHardware(ctx, tk.ID, "r", hardware.Info{CPU: hardware.CPU{Cores: -1}})
				return err
			}, task.ErrInvalid},
			{"stale revision", func() error {
				_, err := svc.Cancel(ctx, tk.ID, "ops", "", task.ExpectRevision(tk.Revision-1))
				return err
			}, task.ErrConflict},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				require.ErrorIs(t, tt.call(), tt.want)
				after, rev2 := dump(t, st)
				assert.Equal(t, rev, rev2, "nothing written")
				assert.Equal(t, before, after)
			})
		}
	})
}

func TestHardwareForAnotherMachineIsRefused(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:5e"))
		require.NoError(t, err)
		_, err = svc.MarkReady(ctx, tk.ID, "r")
		require.NoError(t, err)
		_, err = svc.MarkBooting(ctx, tk.ID, "r")
		require.NoError(t, err)
		_, rev := dump(t, st)
		hw := sampleHardware
		hw.MACAddress = "00:1a:2b:3c:4d:5f"
		_, err = svc.ReportHardware(ctx, tk.ID, "r", hw)
		require.ErrorIs(t, err, task.ErrInvalid)
		_, rev2 := dump(t, st)
		assert.Equal(t, rev, rev2)
	})
}

// Many goroutines race approve, reject and cancel on one task, each acting
// on the revision it read: exactly one wins, the rest get ErrConflict, and
// the stored task is exactly the winner's.
func TestRacingDecisions(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		for round := range 5 {
			tk := toPendingApproval(t, svc, fmt.Sprintf("00:1a:2b:3c:4e:%02x", round))
			const racers = 12
			type result struct {
				kind string
				err  error
			}
			results := make(chan result, racers)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					rev := task.ExpectRevision(tk.Revision)
					var err error
					kind := []string{"approve", "reject", "cancel"}[i%3]
					switch kind {
					case "approve":
						_, err = svc.Approve(ctx, tk.ID, fmt.Sprintf("op%d", i), "ok", rev)
					case "reject":
						_, err = svc.Reject(ctx, tk.ID, fmt.Sprintf("op%d", i), "no", rev)
					case "cancel":
						_, err = svc.Cancel(ctx, tk.ID, fmt.Sprintf("op%d", i), "stop", rev)
					}
					results <- result{kind, err}
				}()
			}
			close(start)
			wg.Wait()
			close(results)
			var winners []string
			for r := range results {
				if r.err == nil {
					winners = append(winners, r.kind)
					continue
				}
				require.ErrorIs(t, r.err, task.ErrConflict)
			}
			require.Len(t, winners, 1, "exactly one decision wins")

			got, err := svc.Get(ctx, tk.ID)
			require.NoError(t, err)
			want := map[string]task.Status{"approve": task.StatusApproved, "reject": task.StatusRejected, "cancel": task.StatusCancelled}[winners[0]]
			assert.Equal(t, want, got.Status)
			assert.Len(t, got.Timeline, len(tk.Timeline)+1, "one timeline entry for the one move")
			assert.Equal(t, want, got.Timeline[len(got.Timeline)-1].Status)
			switch winners[0] {
			case "approve":
				require.NotNil(t, got.Approval)
				assert.Equal(t, "approved", got.Approval.Status)
			case "reject":
				require.NotNil(t, got.Approval)
				assert.Equal(t, "rejected", got.Approval.Status)
			case "cancel":
				assert.Nil(t, got.Approval)
			}
			keys, _ := dump(t, st)
			_, claimed := keys[task.AgentKey(got.Metadata.TargetMAC, task.AgentFieldTaskID)]
			assert.Equal(t, !got.Status.Terminal(), claimed, "MAC claimed iff the task is still active")
		}
	})
}

// Without a revision precondition, approve and reject still exclude each
// other: the loser finds the task decided.
func TestApproveRejectExclusive(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:4f:01")
		var wg sync.WaitGroup
		var wins atomic.Int32
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				if i%2 == 0 {
					_, err = svc.Approve(ctx, tk.ID, "a", "")
				} else {
					_, err = svc.Reject(ctx, tk.ID, "r", "no")
				}
				if err == nil {
					wins.Add(1)
					return
				}
				assert.True(t, errors.Is(err, task.ErrConflict) || errors.Is(err, task.ErrInvalidTransition), "%v", err)
			}()
		}
		wg.Wait()
		assert.Equal(t, int32(1), wins.Load())
	})
}

func TestProgressAndFailure(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:50:01")
		_, err := svc.Approve(ctx, tk.ID, "ops", "")
		require.NoError(t, err)
		_, err = svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading, Percentage: 10})
		require.NoError(t, err)
		before, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		// Same stage: only the progress key moves, not the timeline or status.
		after, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading, Percentage: 30, Message: "300 MB"})
		require.NoError(t, err)
		assert.Equal(t, before.Timeline, after.Timeline)
		assert.Equal(t, before.Revision, after.Revision)
		assert.Equal(t, 30, after.Progress.Percentage)

		failed, err := svc.Fail(ctx, tk.ID, "r", task.ErrorInfo{Code: "checksum_mismatch", Message: "sha256 differs"})
		require.NoError(t, err)
		assert.Equal(t, task.StatusFailed, failed.Status)
		got, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		require.NotNil(t, got.Error)
		assert.Equal(t, "downloading", got.Error.Stage, "failure stage taken from the install's progress")
		assert.Equal(t, "checksum_mismatch", got.Error.Code)
		assert.False(t, got.Error.OccurredAt.IsZero())
		_, err = svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading, Percentage: 40})
		require.ErrorIs(t, err, task.ErrInvalidTransition, "no progress after the end")
	})
}

// Writers that lose a transaction to a write that does not invalidate
// their decision read again and succeed: racing first progress reports all
// land (one of them starts the install), and a failure racing stage
// changes still ends the task.
func TestLosingWritersRetry(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:50:03")
		_, err := svc.Approve(ctx, tk.ID, "ops", "")
		require.NoError(t, err)

		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageDownloading, Percentage: i})
				assert.NoError(t, err)
			}()
		}
		wg.Wait()
		got, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		assert.Equal(t, task.StatusInstalling, got.Status)
		var started, stages int
		for _, e := range got.Timeline {
			switch e.Event {
			case string(task.EventInstallStarted):
				started++
			case task.TimelineStageChanged:
				stages++
			}
		}
		assert.Equal(t, 1, started, "one report started the install")
		assert.Equal(t, 1, stages, "one stage entry for one stage")

		failed := make(chan error, 1)
		for _, stage := range []task.Stage{task.StageWriting, task.StageInstalling, task.StageConfiguring} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: stage, Percentage: 50})
				if err != nil {
					assert.ErrorIs(t, err, task.ErrInvalidTransition, "refused only once the task failed")
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := svc.Fail(ctx, tk.ID, "r", task.ErrorInfo{Code: "disk_error", Message: "I/O error"})
			failed <- err
		}()
		wg.Wait()
		require.NoError(t, <-failed, "stage changes do not make the failure conflict")
		got, err = svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		assert.Equal(t, task.StatusFailed, got.Status)
	})
}

func TestList(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		var ids []string // in creation order
		for i := range 7 {
			req := validRequest(fmt.Sprintf("00:1a:2b:3c:60:%02x", i))
			if i%2 == 1 {
				req.RegionID = "dc2"
			}
			tk, err := svc.Create(ctx, req)
			require.NoError(t, err)
			ids = append(ids, tk.ID)
		}
		_, err := svc.Cancel(ctx, ids[0], "ops", "")
		require.NoError(t, err)
		_, err = svc.MarkReady(ctx, ids[2], "r")
		require.NoError(t, err)

		idsOf := func(p *task.Page) []string {
			var out []string
			for _, t := range p.Tasks {
				out = append(out, t.ID)
			}
			return out
		}
		tests := []struct {
			name   string
			filter task.Filter
			want   []string
			total  int
		}{
			{"all, newest first", task.Filter{}, []string{ids[6], ids[5], ids[4], ids[3], ids[2], ids[1], ids[0]}, 7},
			{"region", task.Filter{RegionID: "dc2"}, []string{ids[5], ids[3], ids[1]}, 3},
			{"status", task.Filter{Statuses: []task.Status{task.StatusReady, task.StatusCancelled}}, []string{ids[2], ids[0]}, 2},
			{"region and status", task.Filter{RegionID: "dc1", Statuses: []task.Status{task.StatusPending}}, []string{ids[6], ids[4]}, 2},
			{"page", task.Filter{Limit: 2, Offset: 2}, []string{ids[4], ids[3]}, 7},
			{"past the end", task.Filter{Offset: 10}, nil, 7},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p, err := svc.List(ctx, tt.filter)
				require.NoError(t, err)
				assert.Equal(t, tt.want, idsOf(p))
				assert.Equal(t, tt.total, p.Total)
				assert.NotNil(t, p.Tasks, "an empty page is [] in JSON, not null")
			})
		}
		for _, bad := range []task.Filter{{Limit: -1}, {Offset: -1}, {Limit: task.MaxLimit + 1}, {RegionID: "Bad!"}, {Statuses: []task.Status{"nope"}}} {
			_, err := svc.List(ctx, bad)
			require.ErrorIs(t, err, task.ErrInvalid, "%+v", bad)
		}
	})
}

// Watch delivers every change of every task in order, one Change per task
// per transaction, and resumes from a revision.
func TestWatch(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		_, rev0 := dump(t, st)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:70:01")
		_, err := svc.Approve(ctx, tk.ID, "ops", "")
		require.NoError(t, err)
		_, err = svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageWriting, Percentage: 50})
		require.NoError(t, err)
		_, err = svc.Complete(ctx, tk.ID, "r", task.Completion{})
		require.NoError(t, err)

		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ch := svc.Watch(wctx, rev0+1)
		var statuses []task.Status
		var sawHW, sawProgress, created bool
		var lastRev int64
		for len(statuses) < 7 {
			select {
			case c, ok := <-ch:
				require.True(t, ok)
				require.NoError(t, c.Err)
				assert.Equal(t, tk.ID, c.TaskID)
				assert.Greater(t, c.Revision, lastRev, "one change per revision, in order")
				lastRev = c.Revision
				if c.Status != "" {
					statuses = append(statuses, c.Status)
				}
				created = created || c.Created
				sawHW = sawHW || (c.Hardware != nil && c.Hardware.CPU.Cores == 28)
				sawProgress = sawProgress || (c.Progress != nil && c.Progress.Stage == task.StageWriting)
			case <-time.After(30 * time.Second):
				t.Fatalf("watch stalled after %v", statuses)
			}
		}
		assert.Equal(t, []task.Status{task.StatusPending, task.StatusReady, task.StatusBooting, task.StatusPendingApproval,
			task.StatusApproved, task.StatusInstalling, task.StatusCompleted}, statuses)
		assert.True(t, created)
		assert.True(t, sawHW)
		assert.True(t, sawProgress)
	})
}

func TestRecordFirstBoot(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk := toPendingApproval(t, svc, "00:1a:2b:3c:50:02")

		// Not completed yet: refused, nothing written.
		_, before := dump(t, st)
		_, err := svc.RecordFirstBoot(ctx, tk.ID, "region:dc1", "came up")
		require.ErrorIs(t, err, task.ErrInvalidTransition)
		_, after := dump(t, st)
		require.Equal(t, before, after, "a refused first boot writes nothing")

		_, err = svc.Approve(ctx, tk.ID, "ops", "")
		require.NoError(t, err)
		_, err = svc.ReportProgress(ctx, tk.ID, "region:dc1", task.Progress{Stage: task.StageWriting, Percentage: 50})
		require.NoError(t, err)
		done, err := svc.Complete(ctx, tk.ID, "region:dc1", task.Completion{Message: "installed", Details: map[string]any{"written_sha256": "ab12", "bytes_written": 42}})
		require.NoError(t, err)
		stored, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		require.NotNil(t, stored.Progress)
		assert.Equal(t, map[string]any{"written_sha256": "ab12", "bytes_written": float64(42)}, stored.Progress.Details, "the final details are kept")
		_, err = svc.Complete(ctx, tk.ID, "region:dc1", task.Completion{Message: "again", Details: map[string]any{strings.Repeat("k", 1000): "key too long"}})
		require.ErrorIs(t, err, task.ErrInvalid)

		got, err := svc.RecordFirstBoot(ctx, tk.ID, "region:dc1", "installed system web-01 came up")
		require.NoError(t, err)
		assert.Equal(t, task.StatusCompleted, got.Status)
		require.Len(t, got.Timeline, len(done.Timeline)+1)
		last := got.Timeline[len(got.Timeline)-1]
		assert.Equal(t, task.TimelineFirstBoot, last.Event)
		assert.Equal(t, task.StatusCompleted, last.Status)
		assert.Equal(t, "installed system web-01 came up", last.Message)

		// Once only: a retry changes nothing.
		_, before = dump(t, st)
		again, err := svc.RecordFirstBoot(ctx, tk.ID, "region:dc1", "again")
		require.NoError(t, err)
		assert.Equal(t, got.Timeline, again.Timeline)
		_, after = dump(t, st)
		assert.Equal(t, before, after, "a repeated first boot writes nothing")

		stored, err = svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		assert.Equal(t, got.Timeline, stored.Timeline)

		_, err = svc.RecordFirstBoot(ctx, "no-such-task", "region:dc1", "x")
		require.ErrorIs(t, err, task.ErrInvalid)
		_, err = svc.RecordFirstBoot(ctx, "00000000-0000-4000-8000-000000000000", "region:dc1", "x")
		require.ErrorIs(t, err, task.ErrNotFound)
	})
}

func TestPurge(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		// Three ended tasks and one active one; the clock advances a
		// second per reading, so they end in creation order.
		var ended []*task.Task
		for i, mac := range []string{"00:1a:2b:3c:60:01", "00:1a:2b:3c:60:02", "00:1a:2b:3c:60:03"} {
			tk := toPendingApproval(t, svc, mac)
			var err error
			if i == 1 {
				tk, err = svc.Reject(ctx, tk.ID, "ops", "no")
			} else {
				tk, err = svc.Cancel(ctx, tk.ID, "ops", "no")
			}
			require.NoError(t, err)
			ended = append(ended, tk)
		}
		active := toPendingApproval(t, svc, "00:1a:2b:3c:60:04")
		require.True(t, active.EndedAt().IsZero())

		// Nothing ended before the first task's end.
		got, err := svc.Purge(ctx, ended[0].EndedAt(), 0)
		require.NoError(t, err)
		assert.Empty(t, got)

		// The first two, with a limit of one per call.
		cutoff := ended[1].EndedAt().Add(time.Millisecond)
		got, err = svc.Purge(ctx, cutoff, 1)
		require.NoError(t, err)
		assert.Equal(t, []string{ended[0].ID}, got)
		got, err = svc.Purge(ctx, cutoff, 1)
		require.NoError(t, err)
		assert.Equal(t, []string{ended[1].ID}, got)

		for i, tk := range ended {
			_, err := svc.Get(ctx, tk.ID)
			if i < 2 {
				require.ErrorIs(t, err, task.ErrNotFound, "purged task %d", i)
				res, err := st.List(ctx, task.TaskPrefix(tk.ID), store.ListOptions{})
				require.NoError(t, err)
				assert.Empty(t, res.KVs, "no key of a purged task is left")
			} else {
				require.NoError(t, err, "task %d ended after the cutoff", i)
			}
		}
		// Far in the future: the third goes, the active task never.
		got, err = svc.Purge(ctx, time.Now().Add(24*time.Hour*365*100), 0)
		require.NoError(t, err)
		assert.Equal(t, []string{ended[2].ID}, got)
		_, err = svc.Get(ctx, active.ID)
		require.NoError(t, err)
	})
}

// PutProgress writes only the progress key of an installing task, and
// nothing once its status moved or for a bad report.
func TestPutProgress(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		tk, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:5e")) // sampleHardware's machine
		require.NoError(t, err)
		toPendingApprovalFrom(t, svc, tk.ID)
		_, err = svc.Approve(ctx, tk.ID, "ops", "")
		require.NoError(t, err)
		tk, err = svc.ReportProgress(ctx, tk.ID, "region:dc1", task.Progress{Stage: task.StageWriting, Percentage: 10})
		require.NoError(t, err)
		require.Equal(t, task.StatusInstalling, tk.Status)

		before, _ := dump(t, st)
		ok, err := svc.PutProgress(ctx, tk.ID, task.Progress{Stage: task.StageWriting, Percentage: 60, Message: "half"}, tk.Revision)
		require.NoError(t, err)
		require.True(t, ok)
		after, _ := dump(t, st)
		progressKey := task.TaskKey(tk.ID, task.FieldProgress)
		for k, v := range before {
			if k != progressKey {
				assert.Equal(t, v, after[k], "only the progress key is written: %s", k)
			}
		}
		got, err := svc.Get(ctx, tk.ID)
		require.NoError(t, err)
		assert.Equal(t, 60, got.Progress.Percentage)
		assert.Equal(t, "half", got.Progress.Message)
		assert.Equal(t, tk.Timeline, got.Timeline, "no timeline entry within a stage")

		for _, tc := range []struct {
			name string
			p    task.Progress
			id   string
		}{
			{"bad percentage", task.Progress{Stage: task.StageWriting, Percentage: 101}, tk.ID},
			{"bad stage", task.Progress{Stage: "nope", Percentage: 1}, tk.ID},
			{"bad id", task.Progress{Stage: task.StageWriting, Percentage: 1}, "../x"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				before, _ := dump(t, st)
				_, err := svc.PutProgress(ctx, tc.id, tc.p, tk.Revision)
				require.ErrorIs(t, err, task.ErrInvalid)
				after, _ := dump(t, st)
				assert.Equal(t, before, after)
			})
		}

		_, err = svc.Cancel(ctx, tk.ID, "ops", "")
		require.NoError(t, err)
		before, _ = dump(t, st)
		ok, err = svc.PutProgress(ctx, tk.ID, task.Progress{Stage: task.StageWriting, Percentage: 70}, tk.Revision)
		require.NoError(t, err)
		assert.False(t, ok, "the status moved")
		after, _ = dump(t, st)
		assert.Equal(t, before, after, "nothing written")
	})
}

// A create that names its ID makes that task once; naming it again gives
// the task as it is (ExistsError), which SameAs compares with the request.
func TestCreateWithID(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := context.Background()
		req := validRequest("00:1a:2b:3c:7e:01")
		req.ID = "6f1d2c3b-4a5e-5f60-8a7b-9c0d1e2f3a4b"
		tk, err := svc.Create(ctx, req)
		require.NoError(t, err)
		assert.Equal(t, req.ID, tk.ID)

		_, err = svc.Cancel(ctx, tk.ID, "ops", "done with it")
		require.NoError(t, err)
		again := validRequest("00-1A-2B-3C-7E-01")
		again.ID = req.ID
		_, err = svc.Create(ctx, again)
		var ee *task.ExistsError
		require.ErrorAs(t, err, &ee)
		assert.ErrorIs(t, err, task.ErrConflict)
		assert.Equal(t, task.StatusCancelled, ee.Task.Status)
		assert.True(t, again.SameAs(ee.Task), "same request, MAC spelled otherwise")
		other := again
		other.OSVersion = "24.04"
		assert.False(t, other.SameAs(ee.Task))

		bad := validRequest("00:1a:2b:3c:7e:02")
		bad.ID = "not-a-task-id"
		before, rev := dump(t, st)
		_, err = svc.Create(ctx, bad)
		var ve *task.ValidationError
		require.ErrorAs(t, err, &ve)
		assert.Equal(t, "id", ve.Field)
		after, rev2 := dump(t, st)
		assert.Equal(t, before, after)
		assert.Equal(t, rev, rev2)
	})
}
