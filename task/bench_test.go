package task_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

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
