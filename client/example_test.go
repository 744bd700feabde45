package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"time"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// Example drives a control plane (here one in this process, on a memory
// store, as a test would run it) through the client: it creates a task,
// follows it live while the region would boot the machine, and cancels it.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	// The control plane, served over HTTP.
	st := memory.New()
	defer st.Close()
	cp, err := controlplane.New(controlplane.Config{
		Store:  st,
		Auth:   auth.Config{Tokens: []auth.StaticToken{{Token: "operator-secret-0123", Subject: "ops", Role: auth.RoleOperator}}},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	defer func() { stop(); <-done }()
	srv := httptest.NewServer(cp.Handler())
	defer srv.Close()

	// The client.
	c, err := client.New(srv.URL, client.WithToken("operator-secret-0123"))
	if err != nil {
		log.Fatal(err)
	}
	for c.Ready(ctx) != nil { // the control plane is still loading its view
		time.Sleep(10 * time.Millisecond)
	}
	me, err := c.WhoAmI(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("signed in as", me.Subject, "with role", me.Role)

	created, err := c.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:12:34:56", OSType: "ubuntu", OSVersion: "24.04"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("created a task:", created.Status)

	w, err := c.Watch(ctx, client.Subscription{TaskIDs: []string{created.TaskID}})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()

	// The same machine cannot have two active tasks.
	_, err = c.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52-54-00-12-34-56", OSType: "ubuntu", OSVersion: "24.04"})
	if e, ok := client.AsError(err); ok {
		fmt.Println("second create refused:", e.StatusCode, e.Code)
	}

	if err := c.Cancel(ctx, created.TaskID, "changed my mind", client.IfMatch(created.Revision)); err != nil {
		log.Fatal(err)
	}
	for ev := range w.Events() {
		switch ev.Type {
		case client.EventStatus:
			fmt.Println("status:", ev.Status.Status)
		case client.EventLive:
			fmt.Println("watching live")
		}
		if ev.Type == client.EventStatus && ev.Status.Status.Terminal() {
			break
		}
	}
	// Output:
	// signed in as token:ops with role operator
	// created a task: pending
	// second create refused: 409 conflict
	// status: pending
	// watching live
	// status: cancelled
}
