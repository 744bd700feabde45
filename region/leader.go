package region

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// Active-passive regions. Any number of processes may run one region
// (the same RegionID on one store); they elect a leader on a lease, and
// only the leader acts: it answers DHCP, serves boot scripts and the agent
// API, prepares tasks, enforces timeouts and heartbeats. A standby keeps
// its task view warm, answers /health and returns 503 with Retry-After to
// machines (which retry); it sends nothing on DHCP.
//
// The election is a key, /lpmos/regions/{r}/client/leader, created only if
// missing and attached to the leader's lease (TTL Config.LeaderTTL). The
// leader renews the lease every TTL/3. Its term is identified by the key's
// create revision, and two things keep a deposed leader (stopped with
// SIGSTOP, cut off from etcd, or slow) from acting as one:
//
//   - Fencing: every store write of the region's task service compares the
//     key's create revision with the term's (task.Config.Fence), so a
//     write made after the key expired or was taken over fails in etcd
//     itself, whatever the process believes.
//   - A deadline: the process counts itself leader only until its last
//     successful renewal (timed from before it was sent) plus the TTL.
//     etcd expires the lease no earlier than that, and a standby can only
//     take over after the expiry, so the old leader stops answering DHCP
//     and machines before the new one starts. The clock is Go's monotonic
//     clock, which keeps running while a process is stopped: a process
//     continued after SIGSTOP finds its deadline passed at once.

// ErrNotLeader is why a region process that is not (or no longer) its
// region's leader refuses to act: its writes are fenced with it
// (task.ErrFenced wraps it).
var ErrNotLeader = errors.New("region: this process is not its region's leader")

// Roles of a region process, as /health reports them.
const (
	RoleLeader  = "leader"
	RoleStandby = "standby"
)

// leadership runs the election of one region process.
type leadership struct {
	st       store.Store
	key      string
	instance string
	ttl      time.Duration
	poll     time.Duration // how often a standby tries to take over
	now      func() time.Time
	onChange func(leading bool)
	// beforeResign, if set, runs before a clean stop resigns (the
	// heartbeat's goodbye, which needs the term).
	beforeResign func()
	// campaigned is closed after the first campaign (won or not).
	campaigned chan struct{}

	mu        sync.Mutex
	term      int64 // the key's create revision while this process leads, else 0
	lease     store.LeaseID
	validTill time.Time // monotonic; leading only before it
	// lapsed: the last term ended at its deadline, its renewals
	// unanswered, with no answer from the store since saying that it
	// ended (the key expired, or another process holds it); unreachable:
	// the election's last store call failed. Both together are a leader
	// cut off from the store (see cutOff).
	lapsed, unreachable bool
}

func newLeadership(st store.Store, region, instance string, ttl time.Duration, onChange func(bool)) *leadership {
	return &leadership{
		st: st, key: task.RegionLeaderKey(region), instance: instance, ttl: ttl,
		poll: min(ttl/5, time.Second), now: time.Now, onChange: onChange,
		campaigned: make(chan struct{}),
	}
}

// leading reports whether this process may act as its region's leader now.
func (l *leadership) leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term != 0 && l.now().Before(l.validTill)
}

// Compares implements task.Fence: the leadership key is still the one this
// term created. Outside a term it compares with an impossible revision, so
// every write fails.
func (l *leadership) Compares() []store.Compare {
	l.mu.Lock()
	term := l.term
	l.mu.Unlock()
	if term == 0 {
		term = -1
	}
	return []store.Compare{store.CreateRevisionIs(l.key, term)}
}

// Check implements task.Fence.
func (l *leadership) Check(ctx context.Context) error {
	l.mu.Lock()
	term := l.term
	l.mu.Unlock()
	if term == 0 {
		return ErrNotLeader
	}
	kv, err := l.st.Get(ctx, l.key)
	if errors.Is(err, store.ErrNotFound) || err == nil && kv.CreateRevision != term {
		return fmt.Errorf("%w: its term %d ended", ErrNotLeader, term)
	}
	return nil // the fence held: another compare failed
}

// run campaigns, leads and renews until ctx ends; then it resigns, so that
// a standby takes over at once instead of after the TTL.
func (l *leadership) run(ctx context.Context) error {
	for {
		wait := l.poll
		if l.leading() {
			wait = l.ttl / 3
			l.renew(ctx)
		} else {
			l.lapse()
			l.campaign(ctx)
			if l.leading() {
				wait = l.ttl / 3
			}
		}
		select {
		case <-l.campaigned:
		default:
			close(l.campaigned)
		}
		select {
		case <-ctx.Done():
			if l.beforeResign != nil {
				l.beforeResign()
			}
			l.resign()
			return nil
		case <-time.After(wait):
		}
	}
}

// campaign takes the leadership if nobody holds it. A key this instance
// holds from before (a process of the same instance ID that died without
// resigning: this one's predecessor) is deleted first, so that a restart
// does not wait for the old lease to expire, and the new term still gets
// a create revision of its own (the old term's writes stay fenced).
func (l *leadership) campaign(ctx context.Context) {
	// Bounded as a whole: a store out of reach must not hold the
	// election (and its view of being cut off) up.
	ctx, cancel := context.WithTimeout(ctx, l.ttl/2)
	defer cancel()
	if kv, err := l.st.Get(ctx, l.key); err == nil && string(kv.Value) == l.instance {
		_, _ = l.st.Txn(ctx, store.Txn{
			If:   []store.Compare{store.ModRevisionIs(l.key, kv.ModRevision)},
			Then: []store.Op{store.OpDelete(l.key)},
		})
	}
	start := l.now()
	lease, err := l.st.Grant(ctx, l.ttl)
	if err != nil {
		l.answered(false)
		return
	}
	res, err := l.st.Txn(ctx, store.Txn{
		If:   []store.Compare{store.Missing(l.key)},
		Then: []store.Op{store.OpPut(l.key, []byte(l.instance), store.WithLease(lease))},
	})
	if err != nil || !res.Succeeded {
		l.answered(err == nil) // another process leads
		_ = l.st.Revoke(context.WithoutCancel(ctx), lease)
		return
	}
	l.mu.Lock()
	l.term, l.lease, l.validTill = res.Revision, lease, start.Add(l.ttl)
	l.lapsed, l.unreachable = false, false
	l.mu.Unlock()
	l.onChange(true)
}

// renew extends the term by a lease renewal; a term whose lease or key is
// gone ends at once, one whose renewals fail ends at its deadline.
func (l *leadership) renew(ctx context.Context) {
	l.mu.Lock()
	lease, term := l.lease, l.term
	l.mu.Unlock()
	// A renewal that takes longer than the rest of the term is useless:
	// the term ends at its deadline anyway.
	ctx, cancel := context.WithTimeout(ctx, l.ttl/2)
	defer cancel()
	start := l.now()
	err := l.st.KeepAliveOnce(ctx, lease)
	if err == nil {
		var kv store.KV
		if kv, err = l.st.Get(ctx, l.key); err == nil && kv.CreateRevision != term {
			err = store.ErrLeaseNotFound // taken over: our key went away
		}
	}
	switch {
	case err == nil:
		l.mu.Lock()
		if l.term == term {
			l.validTill = start.Add(l.ttl)
		}
		l.unreachable = false
		l.mu.Unlock()
	case errors.Is(err, store.ErrLeaseNotFound), errors.Is(err, store.ErrNotFound):
		l.lose()
	default:
		l.answered(false)
	}
}

// answered records the outcome of an election call to the store: ok, the
// store answered (and ended any lapsed term's claim), or it did not.
func (l *leadership) answered(ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unreachable = !ok
	if ok {
		l.lapsed = false
	}
}

// lapse ends a term whose deadline passed without the store saying it
// ended: the process may be cut off from the store (see cutOff).
func (l *leadership) lapse() {
	l.mu.Lock()
	had := l.term != 0
	l.mu.Unlock()
	l.lose()
	if had {
		l.mu.Lock()
		l.lapsed = true
		l.mu.Unlock()
	}
}

// cutOff reports whether this process led its region until the store
// stopped answering it, and nothing the store said since shows another
// term: its last term lapsed (its deadline passed, renewals unanswered)
// and the election's latest call to the store failed too. Such a process
// keeps serving the agents of its tasks in flight from its journal (see
// offline.go); it does not count as leading otherwise. A process stopped
// (SIGSTOP) and continued is not cut off: its last call was answered, and
// its next one finds who leads now.
func (l *leadership) cutOff() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term == 0 && l.lapsed && l.unreachable
}

// lose ends the current term, if any.
func (l *leadership) lose() {
	l.mu.Lock()
	had := l.term != 0
	l.term, l.lease = 0, store.NoLease
	l.lapsed = false // lapse sets it again for a term that lapsed
	l.mu.Unlock()
	if had {
		l.onChange(false)
	}
}

// resign ends a term on a clean stop: the key goes with the lease.
func (l *leadership) resign() {
	l.mu.Lock()
	lease := l.lease
	l.mu.Unlock()
	if lease != store.NoLease {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = l.st.Revoke(ctx, lease)
	}
	l.lose()
}

// leader is the instance that leads the region now, or "".
func (l *leadership) leader(ctx context.Context) string {
	kv, err := l.st.Get(ctx, l.key)
	if err != nil {
		return ""
	}
	return string(kv.Value)
}
