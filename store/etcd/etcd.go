// Package etcd implements store.Store on a real etcd cluster, LPMOS's
// default and production store: the client side only (dialing, mutual TLS,
// snapshots taken from a serving member, etcd's logs into slog). It links
// etcd's client, not its server, so a binary that dials an external cluster
// stays small; package store/etcd/embedded runs a member inside the process
// for set-ups without an external cluster.
//
// It translates between LPMOS's store contract and the etcd v3 client and
// nothing more: no retries beyond what the etcd client does itself, no
// caching, no knowledge of tasks. Errors are mapped onto the store package's
// sentinels so that callers branch the same way on either implementation.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/lpmos/lpmos/store"
)

// Store is a store.Store backed by an etcd client.
type Store struct {
	c          *clientv3.Client
	ownsClient bool
}

var _ store.Store = (*Store)(nil)

// New wraps an existing client; Close does not close it.
func New(c *clientv3.Client) *Store { return &Store{c: c} }

// Config says how to reach an etcd cluster.
type Config struct {
	// Endpoints are the cluster's client URLs, e.g. "http://10.0.0.1:2379".
	Endpoints []string
	// TLS, when set, is used for every connection (see TLSConfig).
	TLS *tls.Config
	// DialTimeout bounds the first connection (default 5 s).
	DialTimeout time.Duration
	// Username and Password for etcd's own authentication, if enabled.
	Username, Password string
}

// Dial connects to a cluster; the returned Store owns the client and closes
// it on Close.
func Dial(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no etcd endpoints", store.ErrInvalid)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Context:     context.WithoutCancel(ctx),
		// Keep-alives notice a dead member on an idle connection so the
		// client fails over to another endpoint.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, err)
	}
	// clientv3.New does not wait for a connection; check one now so that a
	// wrong address fails at start-up, not on the first request.
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := c.Get(sctx, "/lpmos/", clientv3.WithCountOnly()); err != nil {
		c.Close()
		return nil, fmt.Errorf("reach etcd %v: %w", cfg.Endpoints, err)
	}
	return &Store{c: c, ownsClient: true}, nil
}

// TLSConfig builds a mutual-TLS client configuration from PEM files, as
// given by the --etcd-ca, --etcd-cert and --etcd-key flags. Empty cert and
// key mean server verification only.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA %s: no PEM certificates", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("etcd client certificate and key must be given together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Client returns the underlying etcd client, for what the store contract
// does not cover (elections, cluster membership).
func (s *Store) Client() *clientv3.Client { return s.c }

// Close closes the client if the Store owns it.
func (s *Store) Close() error {
	if s.ownsClient {
		return s.c.Close()
	}
	return nil
}

// defaultQuotaBytes is etcd's quota when a member does not report its own
// (members before 3.6 leave StatusResponse.DbSizeQuota zero).
const defaultQuotaBytes = 2 << 30

// DBSize reports how full the cluster's storage is: the largest database
// file of its members (each member refuses writes once its own reaches
// the quota) and the smallest quota. Every endpoint must answer, so that
// a member left behind is not overlooked.
func (s *Store) DBSize(ctx context.Context) (used, quota int64, err error) {
	for _, ep := range s.c.Endpoints() {
		st, err := s.c.Status(ctx, ep)
		if err != nil {
			return 0, 0, mapErr("status of "+ep, err)
		}
		q := st.DbSizeQuota
		if q <= 0 {
			q = defaultQuotaBytes
		}
		used = max(used, st.DbSize)
		if quota == 0 || q < quota {
			quota = q
		}
	}
	return used, quota, nil
}

// mapErr translates etcd errors into the store package's sentinels, keeping
// the original text.
func mapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		sentinel = store.ErrCompacted
	case errors.Is(err, rpctypes.ErrFutureRev):
		sentinel = store.ErrFutureRevision
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		sentinel = store.ErrLeaseNotFound
	case errors.Is(err, rpctypes.ErrRequestTooLarge), errors.Is(err, rpctypes.ErrTooManyOps):
		sentinel = store.ErrTooLarge
	case errors.Is(err, rpctypes.ErrDuplicateKey), errors.Is(err, rpctypes.ErrEmptyKey), errors.Is(err, rpctypes.ErrLeaseTTLTooLarge):
		sentinel = store.ErrInvalid
	case unavailable(err):
		sentinel = store.ErrUnavailable
	case errors.Is(err, context.DeadlineExceeded):
		// The caller's deadline passed while etcd did not answer: to the
		// caller the store is unavailable, and it may still tell a timeout.
		return fmt.Errorf("%s: %w: %w", op, store.ErrUnavailable, err)
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%s: %w", op, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, sentinel, err)
}

// unavailable reports whether err says the cluster cannot answer now but
// may later: no leader, a leader change or election in progress, a proposal
// that timed out, or no connection to any member.
func unavailable(err error) bool {
	for _, e := range []error{
		rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged, rpctypes.ErrNotCapable, rpctypes.ErrStopped,
		rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost,
		rpctypes.ErrTimeoutWaitAppliedIndex, rpctypes.ErrUnhealthy, rpctypes.ErrTooManyRequests,
	} {
		if errors.Is(err, e) {
			return true
		}
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

func fromKV(kv *mvccpb.KeyValue) store.KV {
	return store.KV{
		Key:            string(kv.Key),
		Value:          kv.Value,
		CreateRevision: kv.CreateRevision,
		ModRevision:    kv.ModRevision,
		Version:        kv.Version,
		Lease:          store.LeaseID(kv.Lease),
	}
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := store.CheckKey(key); err != nil {
		return store.KV{}, err
	}
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return store.KV{}, mapErr("get "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	return fromKV(resp.Kvs[0]), nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, opts store.ListOptions) (store.ListResult, error) {
	if prefix == "" {
		return store.ListResult{}, fmt.Errorf("%w: empty prefix", store.ErrInvalid)
	}
	start := prefix
	if opts.StartKey != "" {
		if len(opts.StartKey) < len(prefix) || opts.StartKey[:len(prefix)] != prefix {
			return store.ListResult{}, fmt.Errorf("%w: start key %q outside prefix %q", store.ErrInvalid, opts.StartKey, prefix)
		}
		start = opts.StartKey
	}
	resp, err := s.c.Get(ctx, start,
		clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)),
		clientv3.WithLimit(opts.Limit),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return store.ListResult{}, mapErr("list "+prefix, err)
	}
	res := store.ListResult{More: resp.More, Revision: resp.Header.Revision}
	res.KVs = make([]store.KV, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		res.KVs = append(res.KVs, fromKV(kv))
	}
	return res, nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts ...store.PutOption) (int64, error) {
	res, err := s.Txn(ctx, store.Txn{Then: []store.Op{store.OpPut(key, value, opts...)}})
	return res.Revision, err
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string) (int64, int64, error) {
	if err := store.CheckKey(key); err != nil {
		return 0, 0, err
	}
	resp, err := s.c.Delete(ctx, key)
	if err != nil {
		return 0, 0, mapErr("delete "+key, err)
	}
	return resp.Deleted, resp.Header.Revision, nil
}

var results = map[store.Result]string{store.Equal: "=", store.NotEqual: "!=", store.Less: "<", store.Greater: ">"}

func toCmp(c store.Compare) clientv3.Cmp {
	r := results[c.Result]
	switch c.Target {
	case store.TargetValue:
		return clientv3.Compare(clientv3.Value(c.Key), r, string(c.Value))
	case store.TargetModRevision:
		return clientv3.Compare(clientv3.ModRevision(c.Key), r, c.Rev)
	case store.TargetCreateRevision:
		return clientv3.Compare(clientv3.CreateRevision(c.Key), r, c.Rev)
	default:
		return clientv3.Compare(clientv3.Version(c.Key), r, c.Rev)
	}
}

func toOps(ops []store.Op) []clientv3.Op {
	out := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		switch op.Kind {
		case store.OpKindPut:
			var o []clientv3.OpOption
			if op.Lease != store.NoLease {
				o = append(o, clientv3.WithLease(clientv3.LeaseID(op.Lease)))
			}
			out = append(out, clientv3.OpPut(op.Key, string(op.Value), o...))
		case store.OpKindDelete:
			out = append(out, clientv3.OpDelete(op.Key))
		case store.OpKindDeletePrefix:
			out = append(out, clientv3.OpDelete(op.Key, clientv3.WithPrefix()))
		}
	}
	return out
}

// Txn implements store.Store.
func (s *Store) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	if err := txn.Validate(); err != nil {
		return store.TxnResult{}, err
	}
	cmps := make([]clientv3.Cmp, 0, len(txn.If))
	for _, c := range txn.If {
		cmps = append(cmps, toCmp(c))
	}
	resp, err := s.c.Txn(ctx).If(cmps...).Then(toOps(txn.Then)...).Else(toOps(txn.Else)...).Commit()
	if err != nil {
		return store.TxnResult{}, mapErr("txn", err)
	}
	return store.TxnResult{Succeeded: resp.Succeeded, Revision: resp.Header.Revision}, nil
}

// Watch implements store.Store. One goroutine per watch translates etcd's
// responses; it ends when ctx ends or the etcd watch ends. The etcd client
// resumes a broken watch on another member from the last revision it
// delivered, so a member failure loses no events.
func (s *Store) Watch(ctx context.Context, prefix string, rev int64) <-chan store.WatchResponse {
	out := make(chan store.WatchResponse)
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	wctx, cancel := context.WithCancel(ctx)
	wch := s.c.Watch(wctx, prefix, opts...)
	go func() {
		defer close(out)
		defer cancel()
		send := func(r store.WatchResponse) bool {
			select {
			case out <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for resp := range wch {
			if resp.CompactRevision != 0 {
				send(store.WatchResponse{
					Err:             fmt.Errorf("watch %q from revision %d (compacted to %d): %w", prefix, rev, resp.CompactRevision, store.ErrCompacted),
					CompactRevision: resp.CompactRevision,
				})
				return
			}
			if err := resp.Err(); err != nil {
				send(store.WatchResponse{Err: mapErr("watch "+prefix, err)})
				return
			}
			if len(resp.Events) == 0 {
				continue // progress notification
			}
			evs := make([]store.Event, 0, len(resp.Events))
			for _, e := range resp.Events {
				ev := store.Event{Type: store.EventPut, KV: fromKV(e.Kv)}
				if e.Type == clientv3.EventTypeDelete {
					ev.Type = store.EventDelete
					ev.KV = store.KV{Key: string(e.Kv.Key), ModRevision: e.Kv.ModRevision}
				}
				evs = append(evs, ev)
			}
			if !send(store.WatchResponse{Events: evs}) {
				return
			}
		}
		if ctx.Err() == nil {
			// The client was closed under us.
			send(store.WatchResponse{Err: fmt.Errorf("watch %q: %w", prefix, store.ErrClosed)})
		}
	}()
	return out
}

// Compact implements store.Store.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	_, err := s.c.Compact(ctx, rev)
	return mapErr(fmt.Sprintf("compact to %d", rev), err)
}

// Grant implements store.Store.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.LeaseID, error) {
	if ttl <= 0 {
		return store.NoLease, fmt.Errorf("%w: lease TTL %v must be positive", store.ErrInvalid, ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := s.c.Grant(ctx, secs)
	if err != nil {
		return store.NoLease, mapErr("grant lease", err)
	}
	return store.LeaseID(resp.ID), nil
}

// KeepAliveOnce implements store.Store.
func (s *Store) KeepAliveOnce(ctx context.Context, id store.LeaseID) error {
	_, err := s.c.KeepAliveOnce(ctx, clientv3.LeaseID(id))
	return mapErr(fmt.Sprintf("keep lease %x alive", int64(id)), err)
}

// Revoke implements store.Store.
func (s *Store) Revoke(ctx context.Context, id store.LeaseID) error {
	_, err := s.c.Revoke(ctx, clientv3.LeaseID(id))
	return mapErr(fmt.Sprintf("revoke lease %x", int64(id)), err)
}
