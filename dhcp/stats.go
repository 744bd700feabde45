package dhcp

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Outcome is what became of one received packet: answered, or why not.
// The values are stable strings, fit for a metrics label.
type Outcome string

// The outcomes of a packet, as Server.Packets counts them.
const (
	OutcomeAnswered        Outcome = "answered"         // a reply was sent (or its sending failed: see Stats.SendErrors)
	OutcomeHandled         Outcome = "handled"          // RELEASE or DECLINE processed; these get no reply
	OutcomePolicyIgnored   Outcome = "policy_ignored"   // the BootPolicy said Ignore (for a region: the machine has no task)
	OutcomeNotBootClient   Outcome = "not_boot_client"  // proxy mode: not a network-boot client, or no boot file for it
	OutcomeNotForUs        Outcome = "not_for_us"       // addressed to another DHCP server
	OutcomeNoAddress       Outcome = "no_address"       // full mode: no address for this client (other than pool exhaustion)
	OutcomeIgnored         Outcome = "ignored"          // nothing to say (an INFORM without address or pool)
	OutcomeUnsupportedArch Outcome = "unsupported_arch" // network-boot client of an architecture LPMOS cannot boot
	OutcomeNoPool          Outcome = "no_pool"          // from a subnet without a pool
	OutcomePoolExhausted   Outcome = "pool_exhausted"   // no free address to offer
	OutcomePolicyError     Outcome = "policy_error"     // the BootPolicy failed
	OutcomeMalformed       Outcome = "malformed"        // not a valid DHCP client message
)

var outcomes = [...]Outcome{OutcomeAnswered, OutcomeHandled, OutcomePolicyIgnored, OutcomeNotBootClient,
	OutcomeNotForUs, OutcomeNoAddress, OutcomeIgnored, OutcomeUnsupportedArch,
	OutcomeNoPool, OutcomePoolExhausted, OutcomePolicyError, OutcomeMalformed}

// The message types Packets tells apart; "other" is anything else,
// including a packet too broken to have a type.
var packetTypes = [...]string{"discover", "request", "release", "decline", "inform", "other"}

func typeIndex(mt dhcpv4.MessageType) int {
	switch mt {
	case dhcpv4.MessageTypeDiscover:
		return 0
	case dhcpv4.MessageTypeRequest:
		return 1
	case dhcpv4.MessageTypeRelease:
		return 2
	case dhcpv4.MessageTypeDecline:
		return 3
	case dhcpv4.MessageTypeInform:
		return 4
	}
	return len(packetTypes) - 1
}

func outcomeIndex(o Outcome) int { return slices.Index(outcomes[:], o) }

// PacketCount is how many packets of one message type had one outcome.
type PacketCount struct {
	Type    string // discover, request, release, decline, inform or other
	Outcome Outcome
	Count   uint64
}

// packetCounters count handled packets by type and outcome.
type packetCounters [len(packetTypes)][len(outcomes)]atomic.Uint64

// Packets returns, for every message type and outcome, how many packets
// the server handled since New (zero counts included, so that the set of
// series is fixed). Packets dropped before they were read into the queue
// are in Stats.QueueFull only.
func (s *Server) Packets() []PacketCount {
	out := make([]PacketCount, 0, len(packetTypes)*len(outcomes))
	for ti, t := range packetTypes {
		for oi, o := range outcomes {
			out = append(out, PacketCount{Type: t, Outcome: o, Count: s.stats.packets[ti][oi].Load()})
		}
	}
	return out
}

// LatencyBuckets are the upper bounds, in seconds, of the buckets of
// Server.DecisionLatency: from 50 µs (a proxy answer from a warm cache)
// to 1 s (DefaultPolicyTimeout).
var LatencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

// latency is a fixed-bucket histogram of durations, lock-free.
type latency struct {
	buckets [15]atomic.Uint64 // len(LatencyBuckets)+1: the last is +Inf
	sumNs   atomic.Uint64
}

func (l *latency) observe(d time.Duration) {
	sec := d.Seconds()
	i, _ := slices.BinarySearch(LatencyBuckets, sec)
	l.buckets[i].Add(1)
	l.sumNs.Add(uint64(max(d, 0)))
}

// Histogram is a snapshot of a latency histogram: Buckets[i] counts the
// observations of at most LatencyBuckets[i] seconds (cumulative, as
// Prometheus wants them), Count all of them, Sum their total in seconds.
type Histogram struct {
	Buckets []uint64
	Count   uint64
	Sum     float64
}

// DecisionLatency is the time the server took to decide what to answer
// to each packet it handled (parsing, the policy, the lease table), not
// counting the time it waited in the queue or the sending.
func (s *Server) DecisionLatency() Histogram {
	l := &s.stats.latency
	h := Histogram{Buckets: make([]uint64, len(LatencyBuckets))}
	var cum uint64
	for i := range LatencyBuckets {
		cum += l.buckets[i].Load()
		h.Buckets[i] = cum
	}
	h.Count = cum + l.buckets[len(LatencyBuckets)].Load()
	h.Sum = time.Duration(l.sumNs.Load()).Seconds()
	return h
}

// PoolUsage is how full one address pool is.
type PoolUsage struct {
	Subnet string // e.g. 10.0.0.0/24
	Size   int    // addresses the pool can hand out (its range, less the router and server addresses)
	InUse  int    // addresses offered, bound or declined and not expired
}

// PoolUsage reports every pool's size and use (full mode; nil in proxy
// mode).
func (s *Server) PoolUsage() []PoolUsage {
	if s.leases == nil {
		return nil
	}
	return s.leases.usage(s.now())
}

func (t *leaseTable) usage(now time.Time) []PoolUsage {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]PoolUsage, len(t.pools))
	for i, p := range t.pools {
		out[i] = PoolUsage{Subnet: p.cidr(), Size: int(p.size()) - len(p.excluded)}
	}
	for a, l := range t.byIP {
		if !l.holds(now) {
			continue
		}
		for i, p := range t.pools {
			if p.inRange(a) { // a reservation outside the range takes nothing from it
				out[i].InUse++
				break
			}
		}
	}
	return out
}
