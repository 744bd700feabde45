package task_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"time"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// exampleService is a Service over an in-memory store with a clock and
// IDs fixed for the examples' output; a real one takes the defaults
// (time.Now, random UUIDs) and, usually, an etcd store.
func exampleService(st *memory.Store) *task.Service {
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	ids := 0
	return task.NewService(st, task.Config{
		Now: func() time.Time { now = now.Add(time.Second); return now },
		NewID: func() string {
			ids++
			return fmt.Sprintf("00000000-0000-4000-8000-%012d", ids)
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
}

// ExampleService walks one task through its lifecycle, the way the
// control plane (create, approve) and the region (everything else) do:
// every call is one store transaction that moves the status if the
// transition table allows it, and records the move in the timeline.
func ExampleService() {
	ctx := context.Background()
	st := memory.New()
	defer st.Close()
	svc := exampleService(st)

	tk, err := svc.Create(ctx, task.CreateRequest{
		RegionID: "dc1", TargetMAC: "52:54:00:12:34:56", OSType: "ubuntu", OSVersion: "24.04",
		CreatedBy: "alice",
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created", tk.ID, "for", tk.Metadata.TargetMAC, "status", tk.Status)

	// The region sends the machine its boot files; the agent boots and
	// reports the hardware.
	steps := []func() (*task.Task, error){
		func() (*task.Task, error) { return svc.MarkReady(ctx, tk.ID, "region:dc1") },
		func() (*task.Task, error) { return svc.MarkBooting(ctx, tk.ID, "region:dc1") },
		func() (*task.Task, error) {
			return svc.ReportHardware(ctx, tk.ID, "region:dc1", hardware.Info{
				MACAddress: "52:54:00:12:34:56", CPU: hardware.CPU{Cores: 8}, Memory: hardware.Memory{TotalGB: 32},
			})
		},
	}
	for _, step := range steps {
		if tk, err = step(); err != nil {
			log.Fatal(err)
		}
		fmt.Println("status", tk.Status)
	}

	// An operator approves what they saw, unless the task moved meanwhile.
	if tk, err = svc.Approve(ctx, tk.ID, "alice", "hardware ok", task.ExpectRevision(tk.Revision)); err != nil {
		log.Fatal(err)
	}
	fmt.Println("status", tk.Status)

	// The agent installs and reports.
	if tk, err = svc.ReportProgress(ctx, tk.ID, "agent", task.Progress{Stage: task.StageWriting, Percentage: 40}); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("status %s at %d%%\n", tk.Status, tk.Progress.Percentage)
	if tk, err = svc.Complete(ctx, tk.ID, "agent", task.Completion{Message: "installed"}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("status", tk.Status)

	// A task that ended takes no more moves.
	_, err = svc.Cancel(ctx, tk.ID, "alice", "too late")
	fmt.Println("cancel a completed task:", errors.Is(err, task.ErrInvalidTransition))

	fmt.Println("timeline:")
	for _, e := range tk.Timeline {
		fmt.Printf("  %s %-18s %-17s %s\n", e.Timestamp.Format(time.TimeOnly), e.Event, e.Status, e.Actor)
	}
	// Output:
	// created 00000000-0000-4000-8000-000000000001 for 52:54:00:12:34:56 status pending
	// status ready
	// status booting
	// status pending_approval
	// status approved
	// status installing at 40%
	// status completed
	// cancel a completed task: true
	// timeline:
	//   09:00:01 task_created       pending           alice
	//   09:00:02 prepared           ready             region:dc1
	//   09:00:03 boot_started       booting           region:dc1
	//   09:00:04 hardware_reported  pending_approval  region:dc1
	//   09:00:05 approved           approved          alice
	//   09:00:07 install_started    installing        agent
	//   09:00:07 stage_changed      installing        agent
	//   09:00:08 completed          completed         agent
}

// ExampleService_Create shows how the service refuses: bad input names the
// field (ErrInvalid, *ValidationError), a second active task for a machine
// is a conflict (ErrConflict, *ActiveTaskError), and so is a move based
// on a status someone else has changed since (ExpectRevision). Nothing is
// written when a call is refused.
func ExampleService_Create() {
	ctx := context.Background()
	st := memory.New()
	defer st.Close()
	svc := exampleService(st)

	_, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "not-a-mac", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "alice"})
	var verr *task.ValidationError
	if errors.As(err, &verr) {
		fmt.Println("invalid:", errors.Is(err, task.ErrInvalid), "field", verr.Field)
	}

	req := task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:12:34:56", OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "alice"}
	first, err := svc.Create(ctx, req)
	if err != nil {
		log.Fatal(err)
	}
	_, err = svc.Create(ctx, req)
	var active *task.ActiveTaskError
	if errors.As(err, &active) {
		fmt.Println("conflict:", errors.Is(err, task.ErrConflict), "the machine already has", active.TaskID)
	}

	// Two operators read the task; the first one's move wins.
	if _, err := svc.Cancel(ctx, first.ID, "alice", "wrong OS", task.ExpectRevision(first.Revision)); err != nil {
		log.Fatal(err)
	}
	_, err = svc.MarkReady(ctx, first.ID, "region:dc1", task.ExpectRevision(first.Revision))
	fmt.Println("stale move:", errors.Is(err, task.ErrConflict))

	got, err := svc.Get(ctx, first.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("status", got.Status)
	// Output:
	// invalid: true field target_mac
	// conflict: true the machine already has 00000000-0000-4000-8000-000000000001
	// stale move: true
	// status cancelled
}
