package controlplane_test

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/task"
)

type received struct {
	event string
	body  []byte
	sig   string
}

// receiver is a webhook endpoint that records what it accepts; fail makes
// the first n attempts answer 500.
type receiver struct {
	mu   sync.Mutex
	got  []received
	fail atomic.Int32
	hits atomic.Int32
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.hits.Add(1)
	body, _ := io.ReadAll(r.Body)
	if rc.fail.Add(-1) >= 0 {
		http.Error(w, "try later", http.StatusInternalServerError)
		return
	}
	rc.mu.Lock()
	rc.got = append(rc.got, received{r.Header.Get("X-LPMOS-Event"), body, r.Header.Get("X-LPMOS-Signature")})
	rc.mu.Unlock()
}

func (rc *receiver) events() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []string
	for _, g := range rc.got {
		out = append(out, g.event)
	}
	return out
}

func TestWebhooks(t *testing.T) {
	secret := []byte("webhook-secret")
	good := &receiver{}
	flaky := &receiver{}
	flaky.fail.Store(2) // two 500s, then accepted
	goodSrv := httptest.NewServer(good)
	defer goodSrv.Close()
	flakySrv := httptest.NewServer(flaky)
	defer flakySrv.Close()
	// An endpoint that never answers must not hold anything up.
	hang := make(chan struct{})
	hangSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer hangSrv.Close()
	defer close(hang)

	hooks := func(c *controlplane.Config) {
		c.Webhooks = controlplane.WebhookConfig{
			URLs:   []string{goodSrv.URL, flakySrv.URL, hangSrv.URL},
			Secret: secret, InitialBackoff: 50 * time.Millisecond, Timeout: 2 * time.Second, MaxAttempts: 4,
		}
	}
	st := etcdtest.NewStore(t)
	// Two replicas watching the same store: each event is sent once.
	a := startCP(t, st, hooks)
	startCP(t, st, hooks)

	id := a.create("00:1a:2b:3c:9d:01")
	a.toPendingApproval(id)
	code, _ := a.do("PUT", "/api/v1/tasks/"+id+"/approve", operatorToken, map[string]any{"approved": true})
	require.Equal(t, http.StatusOK, code, "the hanging endpoint does not block the API")
	ctx := context.Background()
	_, err := a.svc.ReportProgress(ctx, id, "r", task.Progress{Stage: task.StageWriting, Percentage: 50})
	require.NoError(t, err)
	_, err = a.svc.Complete(ctx, id, "r", "")
	require.NoError(t, err)
	id2 := a.create("00:1a:2b:3c:9d:02")
	_, err = a.svc.Fail(ctx, id2, "r", task.ErrorInfo{Code: "timeout", Message: "never booted"})
	require.NoError(t, err)

	want := []string{"task.pending_approval", "task.completed", "task.failed"}
	for name, rc := range map[string]*receiver{"good": good, "flaky": flaky} {
		require.Eventually(t, func() bool { return len(rc.events()) >= 3 }, 30*time.Second, 20*time.Millisecond, name)
		time.Sleep(300 * time.Millisecond) // room for a duplicate to show up
		assert.ElementsMatch(t, want, rc.events(), "%s: each event exactly once across two replicas", name)
		rc.mu.Lock()
		for _, g := range rc.got {
			assert.True(t, hmac.Equal([]byte(controlplane.SignWebhook(secret, g.body)), []byte(g.sig)), "signature")
			var p controlplane.WebhookPayload
			require.NoError(t, json.Unmarshal(g.body, &p))
			assert.Equal(t, g.event, p.Event)
			if p.Event == "task.failed" {
				assert.Equal(t, id2, p.TaskID)
				require.NotNil(t, p.Error)
				assert.Equal(t, "timeout", p.Error.Code)
			} else {
				assert.Equal(t, id, p.TaskID)
			}
			assert.Equal(t, "dc1", p.RegionID)
		}
		rc.mu.Unlock()
	}
	assert.GreaterOrEqual(t, int(flaky.hits.Load()), 5, "the flaky endpoint was retried")
}

func TestWebhookConfigValidation(t *testing.T) {
	st := etcdtest.NewStore(t)
	for _, cfg := range []controlplane.WebhookConfig{
		{URLs: []string{"ftp://example.com/hook"}, Secret: []byte("s")},
		{URLs: []string{"not a url"}, Secret: []byte("s")},
		{URLs: []string{"http://example.com/hook"}}, // no secret
	} {
		_, err := controlplane.New(controlplane.Config{Store: st, Tokens: []controlplane.StaticToken{{Token: adminToken, Subject: "a", Role: controlplane.RoleAdmin}}, Webhooks: cfg})
		assert.Error(t, err, "%+v", cfg)
	}
	_, err := controlplane.New(controlplane.Config{Store: st})
	assert.Error(t, err, "no way to sign in is refused")
}
