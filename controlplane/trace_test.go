package controlplane_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/trace"
)

func TestAPIMachineTrace(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) store.Store
	}{
		{"memory", func(t *testing.T) store.Store {
			st := memory.New()
			t.Cleanup(func() { st.Close() })
			return st
		}},
		{"etcd", func(t *testing.T) store.Store {
			if testing.Short() {
				t.Skip("starts an embedded etcd; run without -short")
			}
			return etcdtest.NewStore(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.store(t)
			cp := startCP(t, st)
			mac := mustMAC(t, "52:54:00:aa:00:09")

			// Two regions saw the machine; their events merge, newest last.
			at := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
			for _, r := range []struct {
				region string
				events []trace.Event
			}{
				{"dc1", []trace.Event{
					{Time: at, Kind: trace.KindDHCP, Outcome: trace.OutcomeIgnored, Message: "DISCOVER ignored",
						Reason: "no active task for this machine in region dc1 (unknown machines are ignored)", Count: 4},
					{Time: at.Add(2 * time.Second), Kind: trace.KindScript, Outcome: trace.OutcomeIgnored, Message: "iPXE script: unknown-machine",
						Detail: map[string]string{"script": "unknown-machine"}},
				}},
				{"dc2", []trace.Event{{Time: at.Add(time.Second), Kind: trace.KindDHCP, Outcome: trace.OutcomeOK, Message: "DISCOVER → OFFER undionly.kpxe"}}},
			} {
				rec := trace.New(trace.Config{Store: st, Region: r.region, FlushInterval: time.Hour})
				rctx, cancel := context.WithCancel(ctx)
				done := make(chan error, 1)
				go func() { done <- rec.Run(rctx) }()
				for _, e := range r.events {
					rec.Record(mac, e)
				}
				require.NoError(t, rec.Flush(ctx))
				cancel()
				require.NoError(t, <-done)
			}

			code, body := cp.do("GET", "/api/v1/machines/52-54-00-AA-00-09/trace", viewerToken, nil)
			require.Equal(t, http.StatusOK, code, "%v", body)
			assert.Equal(t, "52:54:00:aa:00:09", body["mac"])
			events := body["events"].([]any)
			require.Len(t, events, 3)
			first := events[0].(map[string]any)
			assert.Equal(t, "dc1", first["region"])
			assert.Equal(t, "ignored", first["outcome"])
			assert.Equal(t, "no active task for this machine in region dc1 (unknown machines are ignored)", first["reason"])
			assert.Equal(t, float64(4), first["count"])
			assert.Equal(t, "dc2", events[1].(map[string]any)["region"])
			assert.Equal(t, "unknown-machine", events[2].(map[string]any)["detail"].(map[string]any)["script"])

			// A machine no region heard from: an empty trace, not a 404.
			code, body = cp.do("GET", "/api/v1/machines/52:54:00:aa:00:0a/trace", viewerToken, nil)
			require.Equal(t, http.StatusOK, code, "%v", body)
			assert.Equal(t, []any{}, body["events"])

			code, body = cp.do("GET", "/api/v1/machines/not-a-mac/trace", viewerToken, nil)
			require.Equal(t, http.StatusBadRequest, code, "%v", body)
			assert.Equal(t, "mac", body["error"].(map[string]any)["field"])

			code, _ = cp.do("GET", "/api/v1/machines/52:54:00:aa:00:09/trace", "", nil)
			assert.Equal(t, http.StatusUnauthorized, code)
		})
	}
}
