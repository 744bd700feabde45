// Command fleet measures LPMOS at fleet scale with every component a real,
// separate process: etcd (one embedded member, or a cluster), a region
// process per region (examples/region), control-plane processes
// (examples/control-plane), and in this process the simulated machines
// (agent/sim: each boots over HTTP from its region from a loopback address
// of its own and runs the real agent with the demo installer), an operator
// that creates a task per machine over REST and approves them in bulk,
// and WebSocket dashboards spread over the control planes.
//
// It prints what it measured, one figure per line, and last
//
//	fleet: machines=N regions=R lifecycles_per_s=X p99_create_to_completed_s=Y lost=0 duplicated=0 stuck=0
//
// It exits 1 if a task was lost, duplicated or stuck, a timeline was
// incomplete or a dashboard missed a status change.
//
//	go run ./bench/fleet --machines 10000 --regions 10 --dashboards 1000
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if code, ok := runRole(); ok {
		os.Exit(code)
	}
	os.Exit(run())
}

func run() int {
	var cfg Config
	fs := flag.CommandLine
	fs.IntVar(&cfg.Machines, "machines", 1000, "simulated machines, one task each")
	fs.IntVar(&cfg.Regions, "regions", 3, "region processes")
	fs.IntVar(&cfg.ControlPlanes, "control-planes", 2, "control-plane processes")
	fs.IntVar(&cfg.Dashboards, "dashboards", 100, "WebSocket clients, spread over the control planes")
	fs.IntVar(&cfg.Firehose, "firehose", 2, `of the dashboards, those that follow every task ("*"); the others follow tasks one by one`)
	fs.IntVar(&cfg.EtcdMembers, "etcd-members", 1, "etcd member processes (3 for a cluster)")
	fs.Float64Var(&cfg.Speed, "speed", 10, "speed-up of the simulated installs (1: about 20 s each)")
	fs.DurationVar(&cfg.BootRetry, "boot-retry", time.Second, "how often a machine fetches its script again while its task is not ready")
	fs.IntVar(&cfg.CreateWorkers, "create-workers", 64, "concurrent task creations (one REST call each)")
	fs.DurationVar(&cfg.ApproveEvery, "approve-every", 250*time.Millisecond, "period of each region's bulk approvals (one caller per region)")
	fs.DurationVar(&cfg.ListEvery, "list-every", 100*time.Millisecond, "period of the list calls (a page of one region's tasks)")
	fs.Float64Var(&cfg.KillEtcdLeaderAt, "kill-etcd-leader-at", 0, "kill (SIGKILL) the etcd leader once this share of the machines completed, e.g. 0.5 with --etcd-members 3 (0: never)")
	fs.DurationVar(&cfg.Timeout, "timeout", 15*time.Minute, "bound on the load: tasks not completed by then are stuck")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "keep the processes' data and logs here (default: a temporary directory, removed)")
	fs.StringVar(&cfg.ProfileDir, "profile-dir", "", "take CPU profiles of the first etcd member, region and control plane during the load, into this directory")
	fs.DurationVar(&cfg.ProfileFor, "profile-for", 15*time.Second, "length of the CPU profiles")
	fs.DurationVar(&cfg.ProfileAfter, "profile-after", 5*time.Second, "when the profiles start, from the first create")
	verbose := fs.Bool("v", false, "log the run's progress to stderr")
	flag.Parse()
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fleet: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg.Log = slog.New(slog.DiscardHandler)
	if *verbose {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleet: %v\n", err)
		return 1
	}
	res.Print(os.Stdout)
	if !res.OK() {
		return 1
	}
	return 0
}

// OK reports whether nothing was lost, duplicated, stuck or missed.
func (r *Result) OK() bool {
	return r.Lost == 0 && r.Duplicated == 0 && r.Stuck == 0 && r.TimelineBad == 0 &&
		r.Created == r.Config.Machines && r.WS.Lost == 0 && r.WS.Misorder == 0 && len(r.WS.Ended) == 0
}

// Print writes the figures, the summary line last.
func (r *Result) Print(w io.Writer) {
	c := r.Config
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }
	mb := func(b int64) string { return fmt.Sprintf("%.1fMB", float64(b)/(1<<20)) }
	fmt.Fprintf(w, "fleet: etcd_members=%d regions=%d control_planes=%d machines=%d dashboards=%d (firehose %d) speed=%g\n",
		c.EtcdMembers, c.Regions, c.ControlPlanes, c.Machines, c.Dashboards, c.Firehose, c.Speed)
	for _, op := range []string{opCreate, opApprove, opList, opGet} {
		f := r.REST[op]
		fmt.Fprintf(w, "fleet: rest %-7s p50=%s p99=%s calls=%d errors=%d\n", op, ms(f.P50), ms(f.P99), f.N, f.Errors)
	}
	fmt.Fprintf(w, "fleet: create_to_completed p50=%.2fs p99=%.2fs over %s (first create to last completion)\n",
		quantile(r.CreateToCompleted, 0.5).Seconds(), quantile(r.CreateToCompleted, 0.99).Seconds(), r.Elapsed.Round(time.Millisecond))
	var dw []string
	for _, st := range lifecycle[:len(lifecycle)-1] {
		ds := r.Dwell[st]
		dw = append(dw, fmt.Sprintf("%s=%.2f/%.2f", st, quantile(ds, 0.5).Seconds(), quantile(ds, 0.99).Seconds()))
	}
	fmt.Fprintf(w, "fleet: time in status p50/p99 (s): %s\n", strings.Join(dw, " "))
	if n := float64(max(r.Completed, 1)); r.Completed > 0 {
		fmt.Fprintf(w, "fleet: store per lifecycle (all writers and readers, etcd counters): txns=%.1f puts=%.1f deletes=%.1f ranges=%.1f raft_proposals=%.1f wal_bytes=%.0f\n",
			r.Store.Txns/n, r.Store.Puts/n, r.Store.Deletes/n, r.Store.Ranges/n, r.Store.Proposals/n, r.Store.WALBytes/n)
	}
	if r.Store.Fsyncs > 0 {
		fmt.Fprintf(w, "fleet: etcd wal fsyncs=%.0f mean=%s (raft batches many writes into one)\n",
			r.Store.Fsyncs, ms(time.Duration(r.Store.FsyncSeconds/r.Store.Fsyncs*float64(time.Second))))
	}
	ws := r.WS
	fmt.Fprintf(w, "fleet: websocket status delivery p50=%s p99=%s statuses=%d messages=%d expected=%d lost=%d misordered=%d watched_tasks=%d dropped_dashboards=%d\n",
		ms(quantile(ws.Delays, 0.5)), ms(quantile(ws.Delays, 0.99)), ws.Statuses, ws.Messages, ws.Expected, ws.Lost, ws.Misorder, ws.Watched, len(ws.Ended))
	for _, p := range r.Procs {
		fmt.Fprintf(w, "fleet: process %-40s peak_rss=%s rss=%s cpu=%.1fs\n", p.Name, mb(p.PeakRSS), mb(p.RSS), p.CPU.Seconds())
	}
	if r.Killed != "" {
		fmt.Fprintf(w, "fleet: etcd leader %s killed (SIGKILL) after %d machines had completed\n", r.Killed, r.KilledAfterDone)
	}
	if r.Unavailable > 0 {
		fmt.Fprintf(w, "fleet: answers 503 store unavailable, retried by the operator: %d\n", r.Unavailable)
	}
	fmt.Fprintf(w, "fleet: etcd db after run=%s (in use %s); after retention (%d tasks purged) + compaction + defragmentation=%s\n",
		mb(r.DBAfterRun), mb(r.DBInUseAfterRun), r.Purged, mb(r.DBAfterRetention))
	if r.WSWait != nil {
		fmt.Fprintf(w, "fleet: problem: %v\n", r.WSWait)
	}
	for _, e := range ws.Ended {
		fmt.Fprintf(w, "fleet: problem: %s\n", e)
	}
	for _, e := range ws.HubErrors[:min(len(ws.HubErrors), 5)] {
		fmt.Fprintf(w, "fleet: problem: hub error: %s\n", e)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "fleet: problem: %s\n", p)
	}
	fmt.Fprintf(w, "fleet: machines=%d regions=%d lifecycles_per_s=%.1f p99_create_to_completed_s=%.2f lost=%d duplicated=%d stuck=%d\n",
		c.Machines, c.Regions, r.LifecyclesPerSec, quantile(r.CreateToCompleted, 0.99).Seconds(), r.Lost, r.Duplicated, r.Stuck)
}
