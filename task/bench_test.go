package task_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// benchStores: the etcd member fsyncs, as a production one does, so the
// rates are honest.
var benchStores = []struct {
	name string
	new  func(b *testing.B) store.Store
}{
	{"memory", func(b *testing.B) store.Store {
		s := memory.New()
		b.Cleanup(func() { s.Close() })
		return s
	}},
	{"etcd", func(b *testing.B) store.Store { return etcdtest.NewStore(b, etcdtest.Durable()) }},
}

// counting counts the store calls a workload makes.
type counting struct {
	store.Store
	txns, ops, reads atomic.Int64
}

func (c *counting) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	c.txns.Add(1)
	c.ops.Add(int64(len(txn.Then)))
	return c.Store.Txn(ctx, txn)
}

func (c *counting) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	c.reads.Add(1)
	return c.Store.List(ctx, prefix, opts)
}

func (c *counting) Get(ctx context.Context, key string) (store.KV, error) {
	c.reads.Add(1)
	return c.Store.Get(ctx, key)
}

func benchMAC(i int) string {
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))
}

func BenchmarkCreate(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			svc := task.NewService(s.new(b), task.Config{})
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req := validRequest(benchMAC(i))
				if _, err := svc.Create(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
		})
	}
}

func BenchmarkCreateParallel(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			svc := task.NewService(s.new(b), task.Config{})
			ctx := context.Background()
			var n atomic.Int64
			b.SetParallelism(32) // many API clients at once
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := svc.Create(ctx, validRequest(benchMAC(int(n.Add(1))))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
		})
	}
}

func BenchmarkApprove(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			svc := task.NewService(s.new(b), task.Config{})
			ctx := context.Background()
			ids := make([]string, b.N)
			for i := range ids {
				tk, err := svc.Create(ctx, validRequest(benchMAC(i)))
				require.NoError(b, err)
				for _, move := range []func(context.Context, string, string, ...task.MoveOption) (*task.Task, error){svc.MarkReady, svc.MarkBooting} {
					_, err = move(ctx, tk.ID, "region:dc1")
					require.NoError(b, err)
				}
				_, err = svc.ReportHardware(ctx, tk.ID, "region:dc1", hardware.Info{CPU: hardware.CPU{Cores: 8}})
				require.NoError(b, err)
				ids[i] = tk.ID
			}
			b.ResetTimer()
			for _, id := range ids {
				if _, err := svc.Approve(ctx, id, "ops", "ok"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "approves/s")
		})
	}
}

// BenchmarkLifecycle runs whole task lifecycles (create → ready → booting →
// hardware → approve → 4 progress reports in 3 stages → completed) and
// reports the store transactions and reads each costs.
func BenchmarkLifecycle(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			st := &counting{Store: s.new(b)}
			svc := task.NewService(st, task.Config{})
			ctx := context.Background()
			hw := hardware.Info{CPU: hardware.CPU{Cores: 8}}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				tk, err := svc.Create(ctx, validRequest(benchMAC(i)))
				if err != nil {
					b.Fatal(err)
				}
				steps := []func() error{
					func() error { _, err := svc.MarkReady(ctx, tk.ID, "r"); return err },
					func() error { _, err := svc.MarkBooting(ctx, tk.ID, "r"); return err },
					func() error { _, err := svc.ReportHardware(ctx, tk.ID, "r", hw); return err },
					func() error { _, err := svc.Approve(ctx, tk.ID, "ops", ""); return err },
					func() error {
						_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StagePartitioning, Percentage: 5})
						return err
					},
					func() error {
						_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageWriting, Percentage: 40})
						return err
					},
					func() error {
						_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageWriting, Percentage: 80})
						return err
					},
					func() error {
						_, err := svc.ReportProgress(ctx, tk.ID, "r", task.Progress{Stage: task.StageConfiguring, Percentage: 95})
						return err
					},
					func() error { _, err := svc.Complete(ctx, tk.ID, "r", task.Completion{}); return err },
				}
				for _, step := range steps {
					if err := step(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(st.txns.Load())/float64(b.N), "txns/lifecycle")
			b.ReportMetric(float64(st.ops.Load())/float64(b.N), "ops/lifecycle")
			b.ReportMetric(float64(st.reads.Load())/float64(b.N), "reads/lifecycle")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lifecycles/s")
		})
	}
}

// runBenchView runs a view until the benchmark ends and waits until it is
// synced.
func runBenchView(b *testing.B, svc *task.Service, cfg task.ViewConfig) *task.View {
	v := task.NewView(svc, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = v.Run(ctx)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	<-v.Synced()
	return v
}

// waitView polls until cond holds for the view.
func waitView(b *testing.B, cond func() bool) {
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the view never caught up")
		}
	}
}

// BenchmarkRegionViewTraffic runs whole lifecycles in region dcb and
// reports the watch events that reach a region's view of its tasks: dcb's
// own, and dca's, which has nothing to do with them.
func BenchmarkRegionViewTraffic(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			st := s.new(b)
			svc := task.NewService(st, task.Config{})
			ctx := context.Background()
			hw := hardware.Info{CPU: hardware.CPU{Cores: 8}}
			marker, err := svc.Create(ctx, inRegion("dca", benchMAC(1<<30)))
			require.NoError(b, err)
			own, foreign := newWatchCounter(st), newWatchCounter(st)
			ownView := runBenchView(b, task.NewService(own, task.Config{}), task.ViewConfig{Region: "dcb", ActiveOnly: true})
			foreignView := runBenchView(b, task.NewService(foreign, task.Config{}), task.ViewConfig{Region: "dca", ActiveOnly: true})
			b.ResetTimer()
			var last string
			for i := 0; i < b.N; i++ {
				tk, err := svc.Create(ctx, inRegion("dcb", benchMAC(i)))
				require.NoError(b, err)
				_, err = svc.MarkReady(ctx, tk.ID, "r")
				require.NoError(b, err)
				_, err = svc.MarkBooting(ctx, tk.ID, "r")
				require.NoError(b, err)
				_, err = svc.ReportHardware(ctx, tk.ID, "r", hw)
				require.NoError(b, err)
				_, err = svc.Approve(ctx, tk.ID, "ops", "")
				require.NoError(b, err)
				for _, p := range []task.Progress{{Stage: task.StagePartitioning, Percentage: 5}, {Stage: task.StageWriting, Percentage: 40}, {Stage: task.StageWriting, Percentage: 80}, {Stage: task.StageConfiguring, Percentage: 95}} {
					_, err = svc.ReportProgress(ctx, tk.ID, "r", p)
					require.NoError(b, err)
				}
				_, err = svc.Complete(ctx, tk.ID, "r", task.Completion{})
				require.NoError(b, err)
				last = tk.ID
			}
			// A change of dca's own: once its view shows it, its watches
			// have delivered what they were sent before.
			_, err = svc.MarkReady(ctx, marker.ID, "r")
			require.NoError(b, err)
			waitView(b, func() bool {
				got, _, ok := foreignView.Get(marker.ID)
				return ok && got.Status == task.StatusReady
			})
			waitView(b, func() bool {
				_, _, ok := ownView.Get(last)
				return !ok
			})
			b.StopTimer()
			const markerEvents = 2 // its status and timeline
			b.ReportMetric(float64(own.count())/float64(b.N), "own-events/lifecycle")
			b.ReportMetric(float64(foreign.count()-markerEvents)/float64(b.N), "other-region-events/lifecycle")
		})
	}
}
