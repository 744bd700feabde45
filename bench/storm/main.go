// Command storm is the boot-storm benchmark's load generator: from inside
// the clients' network namespace it powers on N simulated BIOS PXE
// firmware clients within a ramp, as a rack does, each with its own MAC.
// Each does what a PXE ROM and the iPXE it loads do: DHCP DISCOVER →
// OFFER → REQUEST → ACK (broadcast, option 93 arch 0, option 60
// PXEClient), a TFTP read of the boot file the ACK names with blksize 1468
// and no windowsize (lock-step, one ACK per block), then an HTTP GET of the
// iPXE script, each from the leased address. It prints p50/p95/p99 of the
// time to the script, of each phase, and the failures by phase.
//
//	ip netns exec CLIENTS storm -iface veth0 -clients 500 -ramp 1s \
//	    -script-url 'http://10.201.0.1:8081/boot/{mac}.ipxe?platform=pcbios'
//
// The leased addresses must be local to the clients' namespace so that the
// clients can use them: bench/storm/run.sh routes the pool's block to lo
// there (`ip route add local ... dev lo`), which also answers ARP for them.
// It retransmits as a PXE ROM does (DHCP after 4, 8, 16, 32 s; TFTP after
// 1, 2, 4, 8 s) and then gives up, so every client and the run are bounded.
// bench/storm/run.sh runs it against LPMOS and dnsmasq.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	cfg := Config{MACPrefix: [3]byte{0x02, 0x5b, 0x00}}
	flag.StringVar(&cfg.Iface, "iface", "veth0", "interface to broadcast on")
	flag.IntVar(&cfg.Clients, "clients", 500, "machines that power on")
	flag.DurationVar(&cfg.Ramp, "ramp", time.Second, "spread the power-ons evenly over this long (0: all at once)")
	flag.StringVar(&cfg.ScriptURL, "script-url", "", "URL of the iPXE script; {mac} becomes the client's MAC")
	flag.IntVar(&cfg.BlockSize, "blksize", 1468, "TFTP blksize")
	flag.IntVar(&cfg.BootFileSize, "boot-file-size", 0, "expected size of the boot file (0: not checked)")
	label := flag.String("label", "", "name of the server, for the summary line")
	jsonOut := flag.String("json", "", "also write the result as JSON to this file")
	flag.Parse()
	if cfg.ScriptURL == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: storm -iface IF -clients N -ramp D -script-url URL")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Bounded by the clients' own schedules; this is a backstop.
	ctx, cancel := context.WithTimeout(ctx, cfg.Ramp+5*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
	Report(os.Stdout, *label, res)
	// The clients share the machine with the server: say what they cost.
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		fmt.Printf("load generator CPU: %.2f s user, %.2f s system\n",
			time.Duration(ru.Utime.Nano()).Seconds(), time.Duration(ru.Stime.Nano()).Seconds())
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "storm:", err)
			os.Exit(1)
		}
	}
}

// Report prints the result: a table of percentiles per phase, the
// failures with a few of their errors, and a last line
// "RESULT label clients failed p50_ms p95_ms p99_ms" for scripts.
func Report(w io.Writer, label string, r Result) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(w, "%d clients in %s\n", r.Clients, r.Wall.Round(time.Millisecond))
	fmt.Fprintf(w, "%-16s %8s %10s %10s %10s %10s %9s\n", "phase", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "failures")
	for _, p := range Phases {
		q := r.Phase[p]
		fmt.Fprintf(w, "%-16s %8d %10s %10s %10s %10s %9d\n", p, q.N, ms(q.P50), ms(q.P95), ms(q.P99), ms(q.Max), r.Failures[p])
	}
	q := r.Total
	fmt.Fprintf(w, "%-16s %8d %10s %10s %10s %10s %9d\n", "time to script", q.N, ms(q.P50), ms(q.P95), ms(q.P99), ms(q.Max), r.Failed())
	for _, p := range Phases {
		for _, e := range r.Errors[p] {
			fmt.Fprintf(w, "  %s failure: %s\n", p, e)
		}
	}
	if label == "" {
		label = "-"
	}
	fmt.Fprintf(w, "RESULT %s %d %d %s %s %s\n", label, r.Clients, r.Failed(), ms(q.P50), ms(q.P95), ms(q.P99))
}
