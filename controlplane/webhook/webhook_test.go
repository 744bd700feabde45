package webhook_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/controlplane/webhook"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

type received struct {
	event  string
	body   []byte
	header http.Header
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
	rc.got = append(rc.got, received{r.Header.Get("X-LPMOS-Event"), body, r.Header.Clone()})
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

func memStore(t *testing.T) store.Store {
	s := memory.New()
	t.Cleanup(func() { s.Close() })
	return s
}

// start runs a notifier until the test ends.
func start(t *testing.T, cfg webhook.Config) *webhook.Notifier {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n, err := webhook.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
	return n
}

func testTask(id string, st task.Status) *task.Task {
	mac, _ := lpmos.ParseMAC("00:1a:2b:3c:9d:01")
	return &task.Task{ID: id, Status: st, Metadata: task.Metadata{ID: id, RegionID: "dc1", TargetMAC: mac, OSType: "ubuntu", OSVersion: "24.04"}}
}

const (
	task1 = "0a1b2c3d-1111-4eee-8fff-111111111111"
	task2 = "0a1b2c3d-2222-4eee-8fff-222222222222"
)

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

	st := memStore(t)
	at := time.Date(2026, 1, 29, 10, 0, 0, 0, time.UTC)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	cfg := func(replica string, r prometheus.Registerer) webhook.Config {
		return webhook.Config{
			URLs:   []string{goodSrv.URL, flakySrv.URL, hangSrv.URL},
			Secret: secret, InitialBackoff: 50 * time.Millisecond, Timeout: 2 * time.Second, MaxAttempts: 4,
			Store: st, ReplicaID: replica, Registerer: r, Now: func() time.Time { return at },
		}
	}
	// Two replicas fed the same changes by their watches: each event is
	// sent once.
	replicas := []*webhook.Notifier{start(t, cfg("a", regA)), start(t, cfg("b", regB))}
	feed := func(ch task.Change, t *task.Task) {
		for _, n := range replicas {
			n.Handle(ch, t)
		}
	}
	feed(task.Change{TaskID: task1, Revision: 2, Status: task.StatusReady}, testTask(task1, task.StatusReady)) // not an event
	feed(task.Change{TaskID: task1, Revision: 3, Status: task.StatusPendingApproval}, testTask(task1, task.StatusPendingApproval))
	feed(task.Change{TaskID: task1, Revision: 4, Progress: &task.Progress{Stage: task.StageWriting}}, testTask(task1, task.StatusInstalling)) // no status
	feed(task.Change{TaskID: task1, Revision: 5, Status: task.StatusCompleted}, testTask(task1, task.StatusCompleted))
	failed := testTask(task2, task.StatusFailed)
	failed.Error = &task.ErrorInfo{Code: "timeout", Message: "never booted"}
	feed(task.Change{TaskID: task2, Revision: 6, Status: task.StatusFailed}, failed)

	want := []string{"task.pending_approval", "task.completed", "task.failed"}
	for name, rc := range map[string]*receiver{"good": good, "flaky": flaky} {
		require.Eventually(t, func() bool { return len(rc.events()) >= 3 }, 30*time.Second, 20*time.Millisecond, name)
		time.Sleep(300 * time.Millisecond) // room for a duplicate to show up
		assert.ElementsMatch(t, want, rc.events(), "%s: each event exactly once across two replicas", name)
		rc.mu.Lock()
		for _, g := range rc.got {
			assert.NoError(t, webhook.Verify(secret, g.header, g.body, at, 0), "signature")
			assert.Equal(t, strconv.FormatInt(at.Unix(), 10), g.header.Get("webhook-timestamp"))
			var p webhook.Payload
			require.NoError(t, json.Unmarshal(g.body, &p))
			assert.Equal(t, g.event, p.Event)
			assert.True(t, at.Equal(p.Timestamp), "the timestamp comes from the injected clock")
			if p.Event == "task.failed" {
				assert.Equal(t, task2, p.TaskID)
				require.NotNil(t, p.Error)
				assert.Equal(t, "timeout", p.Error.Code)
			} else {
				assert.Equal(t, task1, p.TaskID)
			}
			assert.Equal(t, "dc1", p.RegionID)
			assert.Equal(t, "00:1a:2b:3c:9d:01", p.TargetMAC)
		}
		rc.mu.Unlock()
	}
	assert.GreaterOrEqual(t, int(flaky.hits.Load()), 5, "the flaky endpoint was retried")
	// Whichever replica claimed an event counts its failed attempts.
	assert.Positive(t, failures(t, regA, "attempt")+failures(t, regB, "attempt"), "failed attempts are counted")
	assert.Zero(t, failures(t, regA, "queue_full")+failures(t, regB, "queue_full"))
}

// failures reads lpmos_webhook_failures_total for one reason.
func failures(t *testing.T, reg prometheus.Gatherer, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "lpmos_webhook_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no lpmos_webhook_failures_total{reason=%q}", reason)
	return 0
}

func TestWebhookConfigValidation(t *testing.T) {
	st := memStore(t)
	for _, cfg := range []webhook.Config{
		{URLs: []string{"ftp://example.com/hook"}, Secret: []byte("s"), Store: st},
		{URLs: []string{"not a url"}, Secret: []byte("s"), Store: st},
		{URLs: []string{"http://example.com/hook"}, Store: st},           // no secret
		{URLs: []string{"http://example.com/hook"}, Secret: []byte("s")}, // no store
	} {
		_, err := webhook.New(cfg)
		assert.Error(t, err, "%+v", cfg)
	}
	n, err := webhook.New(webhook.Config{})
	require.NoError(t, err, "no URLs: a notifier that does nothing")
	n.Handle(task.Change{TaskID: task1, Status: task.StatusCompleted}, testTask(task1, task.StatusCompleted))
}

// TestWebhookSignature checks what a receiver checks: the signature covers
// the delivery ID, the timestamp and the body, so a captured request
// replayed later, or with a fresh timestamp, is refused.
func TestWebhookSignature(t *testing.T) {
	secret := []byte("webhook-secret")
	body := []byte(`{"event":"task.completed"}`)
	at := time.Date(2026, 1, 29, 10, 0, 0, 0, time.UTC)
	signed := func(id string, ts time.Time, b []byte) http.Header {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
		h.Set("webhook-signature", webhook.Sign(secret, id, ts, b))
		return h
	}
	good := signed("msg_1", at, body)
	for _, tc := range []struct {
		name   string
		header http.Header
		body   []byte
		now    time.Time
		ok     bool
	}{
		{"fresh", good, body, at.Add(time.Minute), true},
		{"replayed after the tolerance", good, body, at.Add(6 * time.Minute), false},
		{"from the future", good, body, at.Add(-6 * time.Minute), false},
		{"fresh timestamp, old signature", func() http.Header {
			h := good.Clone()
			h.Set("webhook-timestamp", strconv.FormatInt(at.Add(10*time.Minute).Unix(), 10))
			return h
		}(), body, at.Add(10 * time.Minute), false},
		{"other ID", func() http.Header { h := good.Clone(); h.Set("webhook-id", "msg_2"); return h }(), body, at, false},
		{"other body", good, []byte(`{"event":"task.failed"}`), at, false},
		{"other secret", func() http.Header {
			h := good.Clone()
			h.Set("webhook-signature", webhook.Sign([]byte("other"), "msg_1", at, body))
			return h
		}(), body, at, false},
		{"one of several signatures", func() http.Header {
			h := good.Clone()
			h.Set("webhook-signature", "v1,AAAA "+good.Get("webhook-signature"))
			return h
		}(), body, at, true},
		{"no timestamp", func() http.Header { h := good.Clone(); h.Del("webhook-timestamp"); return h }(), body, at, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := webhook.Verify(secret, tc.header, tc.body, tc.now, 0)
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, webhook.ErrBadSignature)
			}
		})
	}
	// The reference vector of the Standard Webhooks libraries (their
	// secret whsec_MfKQ… is the base64 of the key used here).
	key, err := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	require.NoError(t, err)
	assert.Equal(t, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		webhook.Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`)))
}

// A delivery that gives up is recorded once in the dead-letter list, by
// the replica that claimed it, with its URL stripped of credentials.
func TestDeadDeliveries(t *testing.T) {
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "go away", http.StatusBadRequest)
	}))
	defer refusing.Close()
	failing := &receiver{}
	failing.fail.Store(1000)
	failingSrv := httptest.NewServer(failing)
	defer failingSrv.Close()
	good := &receiver{}
	goodSrv := httptest.NewServer(good)
	defer goodSrv.Close()

	st := memStore(t)
	secretURL := "http://hook:s3cret@" + strings.TrimPrefix(refusing.URL, "http://") + "/in?token=abc#x"
	cfg := func(replica string) webhook.Config {
		return webhook.Config{
			URLs:   []string{secretURL, failingSrv.URL, goodSrv.URL},
			Secret: []byte("s"), InitialBackoff: 10 * time.Millisecond, MaxAttempts: 3,
			Store: st, ReplicaID: replica,
		}
	}
	replicas := []*webhook.Notifier{start(t, cfg("a")), start(t, cfg("b"))}
	for _, n := range replicas {
		n.Handle(task.Change{TaskID: task1, Revision: 7, Status: task.StatusCompleted}, testTask(task1, task.StatusCompleted))
	}
	ctx := context.Background()
	var dead []webhook.DeadDelivery
	require.Eventually(t, func() bool {
		res, err := st.List(ctx, task.DLQKindPrefix(task.DLQWebhooks), store.ListOptions{})
		require.NoError(t, err)
		dead = dead[:0]
		for _, kv := range res.KVs {
			var d webhook.DeadDelivery
			require.NoError(t, json.Unmarshal(kv.Value, &d))
			kind, id, ok := task.ParseDLQKey(kv.Key)
			require.True(t, ok)
			assert.Equal(t, task.DLQWebhooks, kind)
			assert.Equal(t, d.ID, id)
			assert.True(t, webhook.DeliveryIDValid(id), id)
			assert.NotZero(t, kv.Lease, "dead letters of webhooks expire")
			dead = append(dead, d)
		}
		return len(dead) == 2 && len(good.events()) == 1
	}, 30*time.Second, 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond) // room for a duplicate to show up
	res, err := st.List(ctx, task.DLQKindPrefix(task.DLQWebhooks), store.ListOptions{})
	require.NoError(t, err)
	assert.Len(t, res.KVs, 2, "one record per endpoint that gave up, across two replicas")
	byURL := map[string]webhook.DeadDelivery{}
	for _, d := range dead {
		byURL[d.URL] = d
		assert.Equal(t, task1, d.TaskID)
		assert.Equal(t, "task.completed", d.Event)
		assert.Equal(t, task.StatusCompleted, d.Status)
		assert.Equal(t, int64(7), d.Revision)
		assert.Contains(t, []string{"a", "b"}, d.ReplicaID)
		assert.False(t, d.GaveUpAt.Before(d.FirstAt))
	}
	refused, ok := byURL[refusing.URL+"/in"]
	require.True(t, ok, "credentials, query and fragment are not recorded: %v", byURL)
	assert.Equal(t, 1, refused.Attempts, "a refusal is not retried")
	assert.Contains(t, refused.Error, "400")
	assert.Equal(t, 3, byURL[failingSrv.URL].Attempts)
}

func TestDeliveryIDValid(t *testing.T) {
	assert.True(t, webhook.DeliveryIDValid("msg_0123456789abcdef01234567"))
	for _, id := range []string{"", "msg_", "msg_0123456789ABCDEF01234567", "msg_0123456789abcdef0123456", "xyz_0123456789abcdef01234567", "msg_0123456789abcdef0123456g"} {
		assert.False(t, webhook.DeliveryIDValid(id), id)
	}
	assert.Equal(t, "https://example.com/hook", webhook.RedactURL("https://u:p@example.com/hook?k=v#f"))
}
