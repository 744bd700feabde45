package region_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// watchedEvent is one event a watch delivered.
type watchedEvent struct {
	key string
	rev int64
}

// watchRecorder passes a store through and records the events its watches
// deliver.
type watchRecorder struct {
	store.Store
	mu     sync.Mutex
	events []watchedEvent
}

func (w *watchRecorder) Watch(ctx context.Context, prefix string, rev int64) <-chan store.WatchResponse {
	in := w.Store.Watch(ctx, prefix, rev)
	out := make(chan store.WatchResponse)
	go func() {
		defer close(out)
		for resp := range in {
			w.mu.Lock()
			for _, ev := range resp.Events {
				w.events = append(w.events, watchedEvent{ev.KV.Key, ev.KV.ModRevision})
			}
			w.mu.Unlock()
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func (w *watchRecorder) received() []watchedEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]watchedEvent(nil), w.events...)
}

// Two regions share a store: while region dc2's machine boots, reports and
// installs, region dc1 receives no event of it, only its own task's.
func TestRegionReceivesNoEventsOfAnotherRegion(t *testing.T) {
	stores := []struct {
		name string
		new  func(t *testing.T) store.Store
	}{
		{"memory", memStore},
		{"etcd", func(t *testing.T) store.Store { return etcdtest.NewStore(t) }},
	}
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			ctx := context.Background()
			st := s.new(t)
			rec := &watchRecorder{Store: st}
			dc1 := startRegion(t, rec)
			dc2 := startRegion(t, st, func(c *region.Config) { c.RegionID = "dc2" })

			mine := dc1.create("52:54:00:00:01:01")
			dc1.waitStatus(mine.ID, task.StatusReady)

			// dc2's machine: boot, hardware, approval, progress in
			// three stages, completion.
			const mac = "52:54:00:00:02:01"
			theirs, err := dc2.svc.Create(ctx, task.CreateRequest{
				RegionID: "dc2", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "ops",
			})
			require.NoError(t, err)
			dc2.waitStatus(theirs.ID, task.StatusReady)
			_, token := dc2.boot(mac)
			require.NotEmpty(t, token)
			dc2.report(theirs.ID, mac, token)
			_, err = dc2.svc.Approve(ctx, theirs.ID, "ops", "")
			require.NoError(t, err)
			code, body := dc2.call("GET", agent.PathApproval+mac, token, nil) // answered once dc2 knows
			require.Equal(t, http.StatusOK, code, "%v", body)
			require.Equal(t, true, body["approved"], "%v", body)
			for _, stage := range []string{"partitioning", "writing", "configuring"} {
				code, body := dc2.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: theirs.ID, Stage: stage, Percentage: 50})
				require.Equal(t, http.StatusOK, code, "%v", body)
			}
			code, body = dc2.call("POST", agent.PathStatus, token, agent.StatusRequest{MACAddress: mac, TaskID: theirs.ID, Status: "completed"})
			require.Equal(t, http.StatusOK, code, "%v", body)
			dc2.waitStatus(theirs.ID, task.StatusCompleted)

			// Then a change of dc1's own task: once dc1's watches have
			// delivered it, they have delivered all they were sent.
			cancelled, err := dc1.svc.Cancel(ctx, mine.ID, "ops", "")
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				for _, ev := range rec.received() {
					if ev.key == task.TaskKey(mine.ID, task.FieldStatus) && ev.rev == cancelled.Revision {
						return true
					}
				}
				return false
			}, 30*time.Second, 10*time.Millisecond, "dc1 sees its task cancelled")

			events := rec.received()
			require.NotEmpty(t, events)
			for _, ev := range events {
				assert.True(t, strings.HasPrefix(ev.key, task.TaskPrefix(mine.ID)) || strings.HasPrefix(ev.key, task.RegionTasksPrefix("dc1")),
					"dc1 received %s", ev.key)
				assert.NotContains(t, ev.key, theirs.ID)
			}
		})
	}
}
