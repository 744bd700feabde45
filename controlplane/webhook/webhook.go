// Package webhook notifies external systems when tasks reach chosen
// statuses (by default pending_approval, completed and failed): a JSON POST
// signed with HMAC-SHA256 as Standard Webhooks do (the signature covers a
// delivery ID and a timestamp, so a captured request cannot be replayed
// once the receiver's tolerance has passed), retried with backoff. It is fed by the control
// plane's task watch (Handle) and never blocks it: deliveries wait in a
// bounded queue and a slow or failing endpoint delays only its own. With
// several control-plane replicas, each event is sent once: the replica that
// claims it in the store sends it. A delivery that gives up is recorded in
// the dead-letter list (DeadDelivery, under /lpmos/dlq/webhooks/) by the
// replica that made it.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// Config sends a signed JSON POST to each URL when a task reaches one of
// Events. With no URLs the Notifier does nothing.
type Config struct {
	URLs []string
	// Secret signs each request the Standard Webhooks way: headers
	// webhook-id, webhook-timestamp (Unix seconds) and webhook-signature:
	// v1,<base64 HMAC-SHA256 of "id.timestamp.body">. The secret is used
	// as given (not base64-decoded, no whsec_ prefix).
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

	// Store holds the delivery claims that make each event go out once
	// across replicas; required with URLs. The control plane fills it in,
	// with ReplicaID, Logger and Registerer.
	Store store.Store
	// ReplicaID names this replica in its claims (default hostname:pid).
	ReplicaID string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the webhook metrics; nil means no metrics.
	Registerer prometheus.Registerer
	// Now is the clock of payload timestamps and of the claim lease's age
	// (default time.Now).
	Now func() time.Time
	// DeadLetterTTL is how long the dead-letter record of a delivery that
	// gave up is kept unless acknowledged first (default 7 days, on a
	// lease): an endpoint down for good must not fill the store.
	DeadLetterTTL time.Duration
}

// DeadDelivery is the dead-letter record of a delivery that gave up, under
// task.DLQKey(task.DLQWebhooks, ID).
type DeadDelivery struct {
	// ID is the delivery's webhook-id.
	ID string `json:"id"`
	// URL is the endpoint without user information, query or fragment
	// (they may hold credentials; viewers read the dead-letter list).
	URL      string      `json:"url"`
	Event    string      `json:"event"`
	TaskID   string      `json:"task_id"`
	Status   task.Status `json:"status"`
	Revision int64       `json:"revision"`
	Attempts int         `json:"attempts"`
	// Error is the last attempt's.
	Error     string    `json:"error"`
	FirstAt   time.Time `json:"first_attempt_at"`
	GaveUpAt  time.Time `json:"gave_up_at"`
	ReplicaID string    `json:"replica_id"`
}

// RedactURL is u without user information, query and fragment.
func RedactURL(u string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return ""
	}
	pu.User, pu.RawQuery, pu.ForceQuery, pu.Fragment, pu.RawFragment = nil, "", false, "", ""
	return pu.String()
}

// DeliveryIDValid reports whether id has the form of a delivery ID
// ("msg_" and 24 lowercase hex digits).
func DeliveryIDValid(id string) bool {
	hexPart, ok := strings.CutPrefix(id, "msg_")
	if !ok || len(hexPart) != 24 {
		return false
	}
	_, err := hex.DecodeString(hexPart)
	return err == nil && strings.ToLower(hexPart) == hexPart
}

// Payload is the JSON body of a notification.
type Payload struct {
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

// Headers of a signed request (Standard Webhooks). The ID stays the same
// across the retries of one delivery, so receivers can drop duplicates;
// the timestamp is that of the attempt.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// DefaultTolerance is how far a request's timestamp may be from the
// receiver's clock in Verify: Standard Webhooks suggest five minutes.
const DefaultTolerance = 5 * time.Minute

// ErrBadSignature is returned by Verify for a request that is not signed
// with the secret, or is too old or too new to be accepted.
var ErrBadSignature = errors.New("webhook signature invalid")

// Sign returns the webhook-signature value of a request: "v1," and the
// base64 HMAC-SHA256 of "id.timestamp.body", timestamp in Unix seconds.
func Sign(secret []byte, id string, timestamp time.Time, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	fmt.Fprintf(mac, "%s.%d.", id, timestamp.Unix())
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// Verify checks a received request's headers and body against the secret,
// as a receiver would: the signature must match (any of the
// space-separated v1 signatures) and the timestamp be within tolerance of
// now (DefaultTolerance when tolerance is 0).
func Verify(secret []byte, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	id, ts := h.Get(HeaderID), h.Get(HeaderTimestamp)
	if id == "" || ts == "" {
		return fmt.Errorf("%w: missing %s or %s", ErrBadSignature, HeaderID, HeaderTimestamp)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: bad timestamp", ErrBadSignature)
	}
	at := time.Unix(sec, 0)
	if d := now.Sub(at); d > tolerance || d < -tolerance {
		return fmt.Errorf("%w: timestamp outside tolerance", ErrBadSignature)
	}
	want := Sign(secret, id, at, body)
	for _, sig := range strings.Fields(h.Get(HeaderSignature)) {
		if hmac.Equal([]byte(sig), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}

// notificationsPrefix holds delivery claims, one per task and status,
// on a lease so they expire after a day.
const notificationsPrefix = task.Root + "notifications/"

const claimTTL = 24 * time.Hour

type delivery struct {
	payload Payload
	body    []byte
}

// Notifier sends the notifications of one replica. Handle feeds it; Run
// sends until its context ends.
type Notifier struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	queue   chan delivery

	leaseMu      sync.Mutex
	lease        store.LeaseID
	leaseGranted time.Time
	dead         leaseCache
}

// leaseCache hands out one lease of a TTL, granting a new one every
// refresh, so that keys put on it live between TTL-refresh and TTL
// without keep-alives.
type leaseCache struct {
	id      store.LeaseID
	granted time.Time
}

// New checks cfg and returns a Notifier; start it with Run.
func New(cfg Config) (*Notifier, error) {
	for _, u := range cfg.URLs {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return nil, fmt.Errorf("webhook URL %q: must be an absolute http(s) URL", u)
		}
	}
	if len(cfg.URLs) > 0 && len(cfg.Secret) == 0 {
		return nil, errors.New("webhooks need a secret to sign their bodies")
	}
	if len(cfg.URLs) > 0 && cfg.Store == nil {
		return nil, errors.New("webhooks need a store to claim their deliveries in")
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
	if cfg.ReplicaID == "" {
		host, _ := os.Hostname()
		cfg.ReplicaID = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DeadLetterTTL <= 0 {
		cfg.DeadLetterTTL = 7 * 24 * time.Hour
	}
	return &Notifier{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registerer), queue: make(chan delivery, cfg.QueueSize)}, nil
}

// Handle notes a change and the task after it (nil if deleted), queueing
// a notification if the change reached one of the Events. It is called in
// the watch loop and only enqueues: when the queue is full the
// notification is dropped and counted.
func (n *Notifier) Handle(ch task.Change, t *task.Task) {
	if len(n.cfg.URLs) == 0 || ch.Status == "" || t == nil || !slices.Contains(n.cfg.Events, ch.Status) {
		return
	}
	p := Payload{
		Event: "task." + string(ch.Status), TaskID: t.ID, Status: ch.Status, Revision: ch.Revision,
		RegionID: t.Metadata.RegionID, OSType: t.Metadata.OSType, OSVersion: t.Metadata.OSVersion,
		Error: t.Error, Timestamp: n.cfg.Now().UTC(),
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
		n.metrics.failed(failQueueFull)
		n.log.Warn("webhook queue full; dropping notification", "task_id", t.ID, "event", p.Event)
	}
}

// Run sends queued notifications until ctx ends, then returns once every
// worker has stopped. Deliveries still queued are dropped.
func (n *Notifier) Run(ctx context.Context) error {
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
func (n *Notifier) claim(ctx context.Context, p Payload) (bool, error) {
	lease, err := n.claimLease(ctx)
	if err != nil {
		return false, err
	}
	key := notificationsPrefix + p.TaskID + "/" + string(p.Status)
	res, err := n.cfg.Store.Txn(ctx, store.Txn{
		If:   []store.Compare{store.Missing(key)},
		Then: []store.Op{store.OpPut(key, []byte(n.cfg.ReplicaID), store.WithLease(lease))},
	})
	if err != nil {
		return false, err
	}
	return res.Succeeded, nil
}

// claimLease returns a lease for claims, granting a new one every hour so
// that claims live about a day without keep-alives.
func (n *Notifier) claimLease(ctx context.Context) (store.LeaseID, error) {
	n.leaseMu.Lock()
	defer n.leaseMu.Unlock()
	now := n.cfg.Now()
	if n.lease != store.NoLease && now.Sub(n.leaseGranted) < time.Hour {
		return n.lease, nil
	}
	id, err := n.cfg.Store.Grant(ctx, claimTTL)
	if err != nil {
		return store.NoLease, fmt.Errorf("grant webhook claim lease: %w", err)
	}
	n.lease, n.leaseGranted = id, now
	return id, nil
}

func (n *Notifier) deliver(ctx context.Context, d delivery) {
	ok, err := n.claim(ctx, d.payload)
	if err != nil {
		if ctx.Err() == nil {
			n.metrics.failed(failClaim)
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

func (n *Notifier) deliverTo(ctx context.Context, u string, d delivery) {
	id := deliveryID()
	backoff := n.cfg.InitialBackoff
	first := n.cfg.Now()
	for attempt := 1; ; attempt++ {
		retry, err := n.post(ctx, u, id, d)
		if err == nil {
			n.metrics.delivered()
			return
		}
		n.metrics.failed(failAttempt)
		if !retry || attempt == n.cfg.MaxAttempts || ctx.Err() != nil {
			n.metrics.failed(failGaveUp)
			n.log.Warn("webhook delivery failed", "url", RedactURL(u), "event", d.payload.Event, "task_id", d.payload.TaskID, "attempts", attempt, "err", err)
			if ctx.Err() == nil {
				n.recordDead(ctx, DeadDelivery{
					ID: id, URL: RedactURL(u), Event: d.payload.Event, TaskID: d.payload.TaskID,
					Status: d.payload.Status, Revision: d.payload.Revision, Attempts: attempt,
					Error: truncate(err.Error(), 1024), FirstAt: first.UTC(), GaveUpAt: n.cfg.Now().UTC(), ReplicaID: n.cfg.ReplicaID,
				})
			}
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

// recordDead writes a delivery that gave up into the dead-letter list.
// Only the replica that claimed the event delivers it, so each record is
// written once; the compare keeps a record from being overwritten.
func (n *Notifier) recordDead(ctx context.Context, dd DeadDelivery) {
	err := func() error {
		lease, err := n.deadLease(ctx)
		if err != nil {
			return err
		}
		body, err := json.Marshal(dd)
		if err != nil {
			return err
		}
		key := task.DLQKey(task.DLQWebhooks, dd.ID)
		_, err = n.cfg.Store.Txn(ctx, store.Txn{
			If:   []store.Compare{store.Missing(key)},
			Then: []store.Op{store.OpPut(key, body, store.WithLease(lease))},
		})
		return err
	}()
	if err != nil && ctx.Err() == nil {
		n.log.Warn("cannot record a webhook delivery that gave up", "task_id", dd.TaskID, "err", err)
	}
}

// deadLease returns the lease dead letters go on, granting a new one once
// a tenth of DeadLetterTTL has passed.
func (n *Notifier) deadLease(ctx context.Context) (store.LeaseID, error) {
	n.leaseMu.Lock()
	defer n.leaseMu.Unlock()
	now := n.cfg.Now()
	if n.dead.id != store.NoLease && now.Sub(n.dead.granted) < n.cfg.DeadLetterTTL/10 {
		return n.dead.id, nil
	}
	id, err := n.cfg.Store.Grant(ctx, n.cfg.DeadLetterTTL)
	if err != nil {
		return store.NoLease, fmt.Errorf("grant webhook dead-letter lease: %w", err)
	}
	n.dead = leaseCache{id: id, granted: now}
	return id, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// post makes one attempt; retry says whether another may succeed.
func (n *Notifier) post(ctx context.Context, u, id string, d delivery) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(d.body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "lpmos-webhook/1")
	req.Header.Set("X-LPMOS-Event", d.payload.Event)
	now := n.cfg.Now()
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(HeaderSignature, Sign(n.cfg.Secret, id, now, d.body))
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
	return "msg_" + hex.EncodeToString(b[:])
}

// Reasons for lpmos_webhook_failures_total.
const (
	failAttempt   = "attempt"    // one attempt failed
	failGaveUp    = "gave_up"    // a delivery failed for good
	failQueueFull = "queue_full" // a notification was dropped at once
	failClaim     = "claim"      // the store refused or failed the claim
)

// metrics are the notifier's; a nil *metrics records nothing.
type metrics struct {
	failures *prometheus.CounterVec
	sent     prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lpmos_webhook_failures_total", Help: "Webhook delivery failures (attempts that failed, and deliveries given up or dropped).",
		}, []string{"reason"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lpmos_webhook_deliveries_total", Help: "Webhook deliveries accepted by their endpoint.",
		}),
	}
	reg.MustRegister(m.failures, m.sent)
	for _, reason := range []string{failAttempt, failGaveUp, failQueueFull, failClaim} {
		m.failures.WithLabelValues(reason) // export zeros, not absence
	}
	return m
}

func (m *metrics) failed(reason string) {
	if m != nil {
		m.failures.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) delivered() {
	if m != nil {
		m.sent.Inc()
	}
}
