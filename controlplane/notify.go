package controlplane

import (
	"bytes"
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// WebhookConfig sends a signed JSON POST to each URL when a task reaches
// one of Events. Deliveries are retried with exponential backoff; a slow or
// failing endpoint delays only its own deliveries, never the control plane.
// With several control-plane replicas, each event is delivered once: the
// replica that claims it in the store sends it.
type WebhookConfig struct {
	URLs []string
	// Secret signs each body: header X-LPMOS-Signature: sha256=<hex HMAC>.
	Secret []byte
	// Events are the statuses that notify (default pending_approval,
	// completed, failed).
	Events []task.Status
	// MaxAttempts per delivery (default 6), the first retry after
	// InitialBackoff (default 1 s), doubling up to 1 min, with jitter.
	MaxAttempts    int
	InitialBackoff time.Duration
	// Timeout per attempt (default 10 s).
	Timeout time.Duration
	// QueueSize bounds the deliveries waiting (default 1000); beyond it new
	// ones are dropped and counted, never blocking the watch.
	QueueSize int
	// Workers send in parallel (default 4).
	Workers int
	// Client sends the requests (default: a client with Timeout).
	Client *http.Client
}

// WebhookPayload is the JSON body of a notification.
type WebhookPayload struct {
	Event     string          `json:"event"` // "task.pending_approval", "task.completed", "task.failed"
	TaskID    string          `json:"task_id"`
	Status    task.Status     `json:"status"`
	Revision  int64           `json:"revision"`
	RegionID  string          `json:"region_id,omitempty"`
	TargetMAC string          `json:"target_mac,omitempty"`
	OSType    string          `json:"os_type,omitempty"`
	OSVersion string          `json:"os_version,omitempty"`
	Error     *task.ErrorInfo `json:"error,omitempty"`
	Timestamp time.Time       `json:"timestamp"`
}

// SignWebhook returns the X-LPMOS-Signature value of a body, for receivers
// to check with hmac.Equal.
func SignWebhook(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// notificationsPrefix holds delivery claims, one per task and status,
// on a lease so they expire after a day.
const notificationsPrefix = task.Root + "notifications/"

const claimTTL = 24 * time.Hour

type delivery struct {
	payload WebhookPayload
	body    []byte
}

type notifier struct {
	cfg     WebhookConfig
	st      store.Store
	replica string
	log     *slog.Logger
	metrics *metrics
	queue   chan delivery

	leaseMu      sync.Mutex
	lease        store.LeaseID
	leaseGranted time.Time
}

func newNotifier(cfg WebhookConfig, st store.Store, replica string, log *slog.Logger, m *metrics) (*notifier, error) {
	for _, u := range cfg.URLs {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, fmt.Errorf("webhook URL %q: must be an absolute http(s) URL", u)
		}
	}
	if len(cfg.URLs) > 0 && len(cfg.Secret) == 0 {
		return nil, errors.New("webhooks need a secret to sign their bodies")
	}
	if len(cfg.Events) == 0 {
		cfg.Events = []task.Status{task.StatusPendingApproval, task.StatusCompleted, task.StatusFailed}
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 6
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1000
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout}
	}
	return &notifier{cfg: cfg, st: st, replica: replica, log: log, metrics: m, queue: make(chan delivery, cfg.QueueSize)}, nil
}

// handle is called in the watch loop: it only enqueues.
func (n *notifier) handle(ch task.Change, t *task.Task) {
	if len(n.cfg.URLs) == 0 || ch.Status == "" || t == nil || !slices.Contains(n.cfg.Events, ch.Status) {
		return
	}
	p := WebhookPayload{
		Event: "task." + string(ch.Status), TaskID: t.ID, Status: ch.Status, Revision: ch.Revision,
		RegionID: t.Metadata.RegionID, OSType: t.Metadata.OSType, OSVersion: t.Metadata.OSVersion,
		Error: t.Error, Timestamp: time.Now().UTC(),
	}
	if !t.Metadata.TargetMAC.IsZero() {
		p.TargetMAC = t.Metadata.TargetMAC.String()
	}
	body, err := json.Marshal(p)
	if err != nil {
		n.log.Error("webhook payload", "err", err)
		return
	}
	select {
	case n.queue <- delivery{payload: p, body: body}:
	default:
		n.metrics.webhookFailures.WithLabelValues("queue_full").Inc()
		n.log.Warn("webhook queue full; dropping notification", "task_id", t.ID, "event", p.Event)
	}
}

func (n *notifier) run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range n.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case d := <-n.queue:
					n.deliver(ctx, d)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	wg.Wait()
	return nil
}

// claim makes this replica the one that sends an event; false means
// another replica has (or an earlier run of this one did).
func (n *notifier) claim(ctx context.Context, p WebhookPayload) (bool, error) {
	lease, err := n.claimLease(ctx)
	if err != nil {
		return false, err
	}
	key := notificationsPrefix + p.TaskID + "/" + string(p.Status)
	res, err := n.st.Txn(ctx, store.Txn{
		If:   []store.Compare{store.Missing(key)},
		Then: []store.Op{store.OpPut(key, []byte(n.replica), store.WithLease(lease))},
	})
	if err != nil {
		return false, err
	}
	return res.Succeeded, nil
}

// claimLease returns a lease for claims, granting a new one every hour so
// that claims live about a day without keep-alives.
func (n *notifier) claimLease(ctx context.Context) (store.LeaseID, error) {
	n.leaseMu.Lock()
	defer n.leaseMu.Unlock()
	if n.lease != store.NoLease && time.Since(n.leaseGranted) < time.Hour {
		return n.lease, nil
	}
	id, err := n.st.Grant(ctx, claimTTL)
	if err != nil {
		return store.NoLease, fmt.Errorf("grant webhook claim lease: %w", err)
	}
	n.lease, n.leaseGranted = id, time.Now()
	return id, nil
}

func (n *notifier) deliver(ctx context.Context, d delivery) {
	ok, err := n.claim(ctx, d.payload)
	if err != nil {
		if ctx.Err() == nil {
			n.metrics.webhookFailures.WithLabelValues("claim").Inc()
			n.log.Warn("webhook claim failed", "task_id", d.payload.TaskID, "err", err)
		}
		return
	}
	if !ok {
		return
	}
	var wg sync.WaitGroup
	for _, u := range n.cfg.URLs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.deliverTo(ctx, u, d)
		}()
	}
	wg.Wait()
}

func (n *notifier) deliverTo(ctx context.Context, u string, d delivery) {
	id := deliveryID()
	backoff := n.cfg.InitialBackoff
	for attempt := 1; ; attempt++ {
		retry, err := n.post(ctx, u, id, d)
		if err == nil {
			n.metrics.webhookSent.Inc()
			return
		}
		n.metrics.webhookFailures.WithLabelValues("attempt").Inc()
		if !retry || attempt == n.cfg.MaxAttempts || ctx.Err() != nil {
			n.metrics.webhookFailures.WithLabelValues("gave_up").Inc()
			n.log.Warn("webhook delivery failed", "url", u, "event", d.payload.Event, "task_id", d.payload.TaskID, "attempts", attempt, "err", err)
			return
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// post makes one attempt; retry says whether another may succeed.
func (n *notifier) post(ctx context.Context, u, id string, d delivery) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(d.body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "lpmos-webhook/1")
	req.Header.Set("X-LPMOS-Event", d.payload.Event)
	req.Header.Set("X-LPMOS-Delivery", id)
	req.Header.Set("X-LPMOS-Signature", SignWebhook(n.cfg.Secret, d.body))
	resp, err := n.cfg.Client.Do(req)
	if err != nil {
		return true, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout:
		return true, fmt.Errorf("endpoint answered %s", resp.Status)
	default:
		return false, fmt.Errorf("endpoint refused: %s", resp.Status)
	}
}

func deliveryID() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}
