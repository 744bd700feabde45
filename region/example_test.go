package region_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// A region embedded in a program: it serves the machines over HTTP on a
// port of its own and moves their tasks along in the store it shares with
// the control plane (here an in-memory store; TFTP and DHCP are left out).
func Example() {
	st := memory.New()
	defer st.Close()
	bootDir, err := os.MkdirTemp("", "lpmos-boot-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(bootDir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	srv, err := region.NewServer(region.ServerConfig{
		Region: region.Config{RegionID: "dc1", Store: st, PublicURL: url, BootDir: bootDir,
			SkipBootFileCheck: true, // no agent kernel in this example
			Logger:            slog.New(slog.DiscardHandler)},
		HTTPListener: ln,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()

	// The control plane's part: a task for a machine in region dc1.
	svc := task.NewService(st, task.Config{})
	tk, err := svc.Create(ctx, task.CreateRequest{RegionID: "dc1", TargetMAC: "52:54:00:12:34:56",
		OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "example"})
	if err != nil {
		log.Fatal(err)
	}
	// The machine's part: iPXE fetches its script until the region has
	// prepared the task; the script boots the agent.
	var script string
	for !strings.Contains(script, "lpmos.task="+tk.ID) {
		time.Sleep(10 * time.Millisecond)
		resp, err := http.Get(url + "/boot/52:54:00:12:34:56.ipxe")
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		script = string(body)
	}
	if tk, err = svc.Get(ctx, tk.ID); err != nil {
		log.Fatal(err)
	}
	fmt.Println("task", tk.Status, "- script", strings.SplitN(script, "\n", 2)[0])

	stop()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output: task booting - script #!ipxe
}
