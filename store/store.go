// Package store defines the one storage contract LPMOS is built on: a
// revisioned key-value store with prefix listing, compare-and-swap
// transactions, prefix watches that resume from a revision, and leases.
//
// It is deliberately domain-agnostic (it knows nothing of tasks or regions):
// the control plane, the regions and the task service all speak to it, and
// it is the only channel between them. Two implementations ship with LPMOS:
// store/etcd (a real etcd, embedded or external; the default) and
// store/memory (in-process, for tests, demos and embedders that do not need
// durability). Both pass the same conformance suite, store/storetest, so code
// written against this interface behaves the same on either.
//
// The semantics follow etcd's: every successful write gets a new, strictly
// increasing store revision; each key records the revision that created it
// and the one that last modified it; a watch started at revision R replays
// every change from R on, or reports ErrCompacted if history before R has
// been discarded.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Limits shared by both implementations so that a write accepted by the
// memory store is also accepted by a default etcd (whose request limit is
// 1.5 MiB and whose transaction limit is 128 operations).
const (
	MaxValueSize = 1 << 20 // bytes in one value
	MaxTxnOps    = 128     // operations in one branch of a transaction
	MaxKeySize   = 1024    // bytes in one key
)

// Sentinel errors. Implementations wrap them with context; callers branch
// with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: key not found")
	// ErrCompacted: the requested revision has been compacted away; a
	// watcher must re-list and watch again from the list's revision.
	ErrCompacted = errors.New("store: revision compacted")
	// ErrFutureRevision: the requested revision is newer than the store.
	ErrFutureRevision = errors.New("store: revision is in the future")
	// ErrLeaseNotFound: the lease expired or was revoked.
	ErrLeaseNotFound = errors.New("store: lease not found")
	// ErrTooLarge: a key, value or transaction exceeds the limits above.
	ErrTooLarge = errors.New("store: request too large")
	// ErrInvalid: a malformed request (empty key, bad TTL, ...).
	ErrInvalid = errors.New("store: invalid request")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrUnavailable: the store cannot answer now (an etcd cluster without
	// a leader, electing one, or out of reach); the same request may
	// succeed later. For a write the outcome is unknown: it may have been
	// applied before the error, so a caller that retries must make the
	// retry safe (a compare in the transaction, an idempotent request).
	ErrUnavailable = errors.New("store: unavailable")
)

// LeaseID identifies a lease. The zero value means "no lease".
type LeaseID int64

// NoLease is the zero LeaseID.
const NoLease LeaseID = 0

// KV is one key with its value and revision metadata.
type KV struct {
	Key   string
	Value []byte
	// CreateRevision is the revision that created the key (0 if absent).
	CreateRevision int64
	// ModRevision is the revision of the last write to the key.
	ModRevision int64
	// Version counts writes to the key since its creation (1 after create).
	Version int64
	// Lease is the lease the key is attached to, or NoLease.
	Lease LeaseID
}

// ListOptions narrow a List.
type ListOptions struct {
	// Limit caps the number of returned keys; 0 means no limit.
	Limit int64
	// StartKey, when set, starts the listing at this key (inclusive)
	// instead of at the prefix itself; it must lie within the prefix.
	// Paging: pass the last key of the previous page + "\x00".
	StartKey string
}

// ListResult is a consistent snapshot of the keys under a prefix.
type ListResult struct {
	KVs []KV // sorted by key
	// More reports that Limit cut the listing short.
	More bool
	// Revision is the store revision the listing was read at: watch from
	// Revision+1 to follow changes without missing or repeating any.
	Revision int64
}

// Target is the key attribute a Compare looks at.
type Target int

// Compare targets.
const (
	TargetValue Target = iota + 1
	TargetModRevision
	TargetCreateRevision
	TargetVersion
)

// Result is a Compare's relation.
type Result int

// Compare relations.
const (
	Equal Result = iota + 1
	NotEqual
	Less
	Greater
)

// Compare is one guard of a transaction. For an absent key, the revisions
// and the version are 0 (Exists/Missing build on that) and any value compare
// fails, whatever its relation, as in etcd.
type Compare struct {
	Key    string
	Target Target
	Result Result
	Value  []byte // for TargetValue
	Rev    int64  // for the revision and version targets
}

// ValueEquals guards on a key's current value.
func ValueEquals(key string, value []byte) Compare {
	return Compare{Key: key, Target: TargetValue, Result: Equal, Value: value}
}

// ModRevisionIs guards on the revision of a key's last write (0: absent).
func ModRevisionIs(key string, rev int64) Compare {
	return Compare{Key: key, Target: TargetModRevision, Result: Equal, Rev: rev}
}

// CreateRevisionIs guards on the revision that created a key (0: absent).
func CreateRevisionIs(key string, rev int64) Compare {
	return Compare{Key: key, Target: TargetCreateRevision, Result: Equal, Rev: rev}
}

// Missing guards on a key not existing.
func Missing(key string) Compare { return CreateRevisionIs(key, 0) }

// Exists guards on a key existing.
func Exists(key string) Compare {
	return Compare{Key: key, Target: TargetCreateRevision, Result: Greater, Rev: 0}
}

// OpKind says what an Op does.
type OpKind int

// Op kinds.
const (
	OpKindPut OpKind = iota + 1
	OpKindDelete
	OpKindDeletePrefix
)

// Op is one write of a transaction.
type Op struct {
	Kind  OpKind
	Key   string // the key, or the prefix for OpKindDeletePrefix
	Value []byte
	Lease LeaseID
}

// PutOption modifies a put.
type PutOption func(*Op)

// WithLease attaches the key to a lease: the key is deleted when the lease
// expires or is revoked.
func WithLease(id LeaseID) PutOption { return func(o *Op) { o.Lease = id } }

// OpPut writes value at key.
func OpPut(key string, value []byte, opts ...PutOption) Op {
	op := Op{Kind: OpKindPut, Key: key, Value: value}
	for _, o := range opts {
		o(&op)
	}
	return op
}

// OpDelete deletes key (a no-op if it is absent).
func OpDelete(key string) Op { return Op{Kind: OpKindDelete, Key: key} }

// OpDeletePrefix deletes every key under prefix.
func OpDeletePrefix(prefix string) Op { return Op{Kind: OpKindDeletePrefix, Key: prefix} }

// Txn is an atomic compare-and-swap: if every Compare in If holds, the Then
// ops are applied, otherwise the Else ops; either way as one revision.
type Txn struct {
	If   []Compare
	Then []Op
	Else []Op
}

// TxnResult says which branch ran.
type TxnResult struct {
	Succeeded bool
	// Revision is the store revision after the transaction (unchanged if
	// the chosen branch wrote nothing).
	Revision int64
}

// EventType says whether a watched key was written or deleted.
type EventType int

// Event types.
const (
	EventPut EventType = iota + 1
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventPut:
		return "PUT"
	case EventDelete:
		return "DELETE"
	}
	return "UNKNOWN"
}

// Event is one change seen by a watch. For a delete, KV.Value is empty and
// KV.ModRevision is the revision of the delete.
type Event struct {
	Type EventType
	KV   KV
}

// WatchResponse carries the events of one or more revisions, in order.
// A response with Err set is the last one: the channel closes after it.
type WatchResponse struct {
	Events []Event
	// Err is set when the watch ends abnormally: ErrCompacted (then
	// CompactRevision says from where history is available) or ErrClosed.
	Err error
	// CompactRevision is set with ErrCompacted.
	CompactRevision int64
}

// Store is LPMOS's storage contract. All methods are safe for concurrent use.
type Store interface {
	// Get reads one key; ErrNotFound if it does not exist.
	Get(ctx context.Context, key string) (KV, error)
	// List reads the keys under prefix, sorted, at one revision.
	List(ctx context.Context, prefix string, opts ListOptions) (ListResult, error)
	// Put writes one key and returns the new revision.
	Put(ctx context.Context, key string, value []byte, opts ...PutOption) (int64, error)
	// Delete removes one key; it returns the number of keys deleted (0 or
	// 1) and the revision after the call.
	Delete(ctx context.Context, key string) (deleted int64, rev int64, err error)
	// Txn runs a compare-and-swap transaction atomically.
	Txn(ctx context.Context, txn Txn) (TxnResult, error)
	// Watch streams the changes under prefix starting at revision rev
	// (inclusive); rev <= 0 means "from the next change". The channel is
	// closed when ctx ends or after a response carrying Err.
	Watch(ctx context.Context, prefix string, rev int64) <-chan WatchResponse
	// Compact discards history before rev; watches from older revisions
	// then fail with ErrCompacted.
	Compact(ctx context.Context, rev int64) error

	// Grant creates a lease that expires ttl after its last keep-alive.
	// The TTL is rounded up to whole seconds, as etcd does.
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAliveOnce renews a lease for its full TTL; ErrLeaseNotFound if it
	// has already expired.
	KeepAliveOnce(ctx context.Context, id LeaseID) error
	// Revoke ends a lease now, deleting its keys.
	Revoke(ctx context.Context, id LeaseID) error

	// Close releases the store's resources and ends its watches.
	Close() error
}

// PrefixEnd returns the smallest key greater than every key with the given
// prefix ("" if there is none), as used for range ends.
func PrefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}

// CheckKey validates a key as both implementations require it.
func CheckKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if len(key) > MaxKeySize {
		return fmt.Errorf("%w: key of %d bytes exceeds %d", ErrTooLarge, len(key), MaxKeySize)
	}
	return nil
}

// Validate checks a transaction against the shared limits, so both
// implementations refuse the same requests with the same errors.
func (t Txn) Validate() error {
	if len(t.Then) > MaxTxnOps || len(t.Else) > MaxTxnOps || len(t.If) > MaxTxnOps {
		return fmt.Errorf("%w: more than %d operations in a transaction", ErrTooLarge, MaxTxnOps)
	}
	for _, c := range t.If {
		if err := CheckKey(c.Key); err != nil {
			return err
		}
		if c.Target < TargetValue || c.Target > TargetVersion || c.Result < Equal || c.Result > Greater {
			return fmt.Errorf("%w: malformed compare on %q", ErrInvalid, c.Key)
		}
	}
	for _, ops := range [][]Op{t.Then, t.Else} {
		if err := validateOps(ops); err != nil {
			return err
		}
	}
	return nil
}

// validateOps also refuses two writes to one key in a branch, as etcd does
// ("duplicate key given in txn request"), so that the outcome never depends
// on the order of the ops.
func validateOps(ops []Op) error {
	seen := make(map[string]bool, len(ops))
	var prefixes []string
	for _, op := range ops {
		if err := op.validate(); err != nil {
			return err
		}
		if op.Kind == OpKindDeletePrefix {
			prefixes = append(prefixes, op.Key)
			continue
		}
		if seen[op.Key] {
			return fmt.Errorf("%w: key %q written twice in one transaction", ErrInvalid, op.Key)
		}
		seen[op.Key] = true
	}
	for _, p := range prefixes {
		for k := range seen {
			if strings.HasPrefix(k, p) {
				return fmt.Errorf("%w: key %q overlaps deleted prefix %q in one transaction", ErrInvalid, k, p)
			}
		}
	}
	return nil
}

func (op Op) validate() error {
	switch op.Kind {
	case OpKindPut:
		if err := CheckKey(op.Key); err != nil {
			return err
		}
		if len(op.Value) > MaxValueSize {
			return fmt.Errorf("%w: value of %d bytes for %q exceeds %d", ErrTooLarge, len(op.Value), op.Key, MaxValueSize)
		}
	case OpKindDelete, OpKindDeletePrefix:
		return CheckKey(op.Key)
	default:
		return fmt.Errorf("%w: unknown op kind %d", ErrInvalid, op.Kind)
	}
	return nil
}
