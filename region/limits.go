package region

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos"
)

// Script fetch limits. A machine fetches its script once per boot (and
// again while the region answers 503), so a MAC gets a burst of 10 and
// then one fetch every 2 s; a source address, which may be a NAT or a
// relay in front of many machines, a burst of 60 and then 5 a second.
// They are charged only by fetches that reach the store (an active task's
// token); the cheap answers (no task, ended task, region starting) read
// only memory.
const (
	scriptMACBurst    = 10
	scriptMACEvery    = 2 * time.Second
	scriptSourceBurst = 60
	scriptSourceRate  = 5
	// maxLimiterKeys bounds each limiter map: beyond it, keys whose
	// bucket is full again (idle) are dropped, and if that is not enough
	// the map starts over (a flood of distinct keys then resets its
	// own buckets, but each key still pays its burst).
	maxLimiterKeys = 10_000
)

// keyedLimiter is a token bucket per key.
type keyedLimiter[K comparable] struct {
	mu      sync.Mutex
	every   rate.Limit
	burst   int
	buckets map[K]*rate.Limiter
}

func newKeyedLimiter[K comparable](r rate.Limit, burst int) *keyedLimiter[K] {
	return &keyedLimiter[K]{every: r, burst: burst, buckets: map[K]*rate.Limiter{}}
}

// allow takes one token of k's bucket at now.
func (l *keyedLimiter[K]) allow(k K, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[k]
	if b == nil {
		if len(l.buckets) >= maxLimiterKeys {
			for key, old := range l.buckets {
				if old.TokensAt(now) >= float64(l.burst) {
					delete(l.buckets, key)
				}
			}
			if len(l.buckets) >= maxLimiterKeys {
				l.buckets = map[K]*rate.Limiter{}
			}
		}
		b = rate.NewLimiter(l.every, l.burst)
		l.buckets[k] = b
	}
	return b.AllowN(now, 1)
}

// FetchLimits are the script fetch rate limits (see binding.go): per
// MAC a burst and then one fetch every MACEvery, per source address a
// burst and then SourceRate a second. A zero field takes its value from
// DefaultFetchLimits. Only a benchmark or a lab raises them: the
// defaults are what protect a region on a provisioning network anyone
// can reach.
type FetchLimits struct {
	MACBurst    int
	MACEvery    time.Duration
	SourceBurst int
	SourceRate  float64
}

// DefaultFetchLimits are the region's script fetch limits: per MAC a burst
// of 10 and then one fetch every 2 s, per source a burst of 60 and then 5
// a second.
func DefaultFetchLimits() FetchLimits {
	return FetchLimits{MACBurst: scriptMACBurst, MACEvery: scriptMACEvery,
		SourceBurst: scriptSourceBurst, SourceRate: scriptSourceRate}
}

// or fills l's zero fields from def.
func (l FetchLimits) or(def FetchLimits) FetchLimits {
	if l.MACBurst <= 0 {
		l.MACBurst = def.MACBurst
	}
	if l.MACEvery <= 0 {
		l.MACEvery = def.MACEvery
	}
	if l.SourceBurst <= 0 {
		l.SourceBurst = def.SourceBurst
	}
	if l.SourceRate <= 0 {
		l.SourceRate = def.SourceRate
	}
	return l
}

// fetchLimits rate-limits script fetches per MAC and per source address.
type fetchLimits struct {
	perMAC    *keyedLimiter[lpmos.MAC]
	perSource *keyedLimiter[netip.Addr]
}

func newFetchLimits(l FetchLimits) *fetchLimits {
	return &fetchLimits{
		perMAC:    newKeyedLimiter[lpmos.MAC](rate.Every(l.MACEvery), l.MACBurst),
		perSource: newKeyedLimiter[netip.Addr](rate.Limit(l.SourceRate), l.SourceBurst),
	}
}

// refusalEvery is how often one kind of refusal, for one task and from one
// address, is written to the task's timeline (and logged at warning
// level); the task service bounds the entries per task on top.
const refusalEvery = time.Minute

type refusalKey struct {
	taskID string
	from   netip.Addr
	what   string
}

// refusals coalesces the recording of refused requests.
type refusals struct {
	mu   sync.Mutex
	last map[refusalKey]time.Time
}

// due reports whether the refusal k is to be recorded at now.
func (c *refusals) due(k refusalKey, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at, ok := c.last[k]; ok && now.Sub(at) < refusalEvery {
		return false
	}
	if c.last == nil || len(c.last) >= maxLimiterKeys {
		c.last = map[refusalKey]time.Time{}
	}
	c.last[k] = now
	return true
}

// relays remembers, per machine with a task, whether its last DHCP
// request came through a relay (see Region.bindAddr).
type relays struct {
	mu      sync.Mutex
	relayed map[lpmos.MAC]bool
}

func (r *relays) note(mac lpmos.MAC, relayed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.relayed == nil || len(r.relayed) >= maxLimiterKeys*10 {
		r.relayed = map[lpmos.MAC]bool{}
	}
	r.relayed[mac] = relayed
}

func (r *relays) was(mac lpmos.MAC) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.relayed[mac]
}
