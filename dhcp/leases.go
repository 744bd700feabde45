package dhcp

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
)

// LeaseState is where an address stands with a client.
type LeaseState string

// The lease states. Only an offered, bound or declined lease that has not
// expired holds its address; released and expired leases are remembered so
// that the machine gets the same address back if nobody else took it.
const (
	LeaseOffered  LeaseState = "offered"
	LeaseBound    LeaseState = "bound"
	LeaseReleased LeaseState = "released"
	// LeaseDeclined marks an address a client found in use (DHCPDECLINE);
	// it has no MAC and leaves the pool until it expires.
	LeaseDeclined LeaseState = "declined"
)

// Lease is a snapshot of one address binding, as returned by Server.Leases
// and stored in the lease file.
type Lease struct {
	MAC     lpmos.MAC  `json:"mac,omitzero"`
	IP      net.IP     `json:"ip"`
	Expires time.Time  `json:"expires"`
	State   LeaseState `json:"state"`
}

// Lease table errors; the handler maps them to a NAK or a silent drop.
var (
	errExhausted   = errors.New("address pool exhausted")
	errUnavailable = errors.New("address unavailable")
)

// lease is the table's record. Records are keyed both by MAC (a machine
// has at most one) and by address (an address has at most one).
type lease struct {
	mac     lpmos.MAC
	ip      uint32
	expires time.Time
	state   LeaseState
}

// holds reports whether the record keeps its address from other machines.
func (l *lease) holds(now time.Time) bool {
	return l.state != LeaseReleased && now.Before(l.expires)
}

// leaseTable is the full-mode address state. Leases are keyed by MAC rather
// than by client identifier (option 61) on purpose: firmware PXE, iPXE and
// the installed OS send different client identifiers (or none) from the
// same NIC, and a machine should keep one address through its boot chain.
type leaseTable struct {
	mu          sync.Mutex
	pools       []*pool
	byMAC       map[lpmos.MAC]*lease
	byIP        map[uint32]*lease
	reservedIP  map[uint32]lpmos.MAC
	reservation map[lpmos.MAC]uint32
	offerTime   time.Duration
	declineTime time.Duration
	dirty       bool // changed since the last successful save
}

func newLeaseTable(pools []*pool, reservations map[lpmos.MAC]net.IP, offerTime, declineTime time.Duration) *leaseTable {
	t := &leaseTable{
		pools:       pools,
		byMAC:       make(map[lpmos.MAC]*lease),
		byIP:        make(map[uint32]*lease),
		reservedIP:  make(map[uint32]lpmos.MAC),
		reservation: make(map[lpmos.MAC]uint32),
		offerTime:   offerTime,
		declineTime: declineTime,
	}
	for mac, ip := range reservations {
		a := ipToU32(ip)
		t.reservedIP[a] = mac
		t.reservation[mac] = a
	}
	return t
}

// assignable reports whether mac may be given a in p: a usable address of
// the pool's range (or mac's reservation), not excluded, not reserved for
// another machine, and not held by another machine.
func (t *leaseTable) assignable(p *pool, mac lpmos.MAC, a uint32, now time.Time) bool {
	if !p.usable(a) || p.excluded[a] {
		return false
	}
	if owner, ok := t.reservedIP[a]; ok {
		if owner != mac {
			return false
		}
	} else if !p.inRange(a) {
		return false
	}
	l := t.byIP[a]
	return l == nil || l.mac == mac || !l.holds(now)
}

// set records that mac has a, replacing mac's previous record and any
// record another machine had left on a.
func (t *leaseTable) set(mac lpmos.MAC, a uint32, state LeaseState, expires time.Time) {
	if old := t.byIP[a]; old != nil && old.mac != mac {
		if t.byMAC[old.mac] == old {
			delete(t.byMAC, old.mac)
		}
	}
	if old := t.byMAC[mac]; old != nil && old.ip != a {
		delete(t.byIP, old.ip)
	}
	l := &lease{mac: mac, ip: a, state: state, expires: expires}
	t.byMAC[mac] = l
	t.byIP[a] = l
	t.dirty = true
}

// offer picks an address for mac in p and holds it for the REQUEST:
// mac's reservation; else the address mac had (even if expired, when still
// free); else the address the client asked for (option 50); else the next
// free address after the pool's cursor, which hands out the address that
// was freed longest ago and so keeps recently used ones for their machines.
func (t *leaseTable) offer(p *pool, mac lpmos.MAC, requested uint32, now time.Time) (uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	hold := func(a uint32) (uint32, error) {
		if l := t.byMAC[mac]; l != nil && l.ip == a && l.state == LeaseBound && l.holds(now) {
			return a, nil // a bound client rebooting: keep its lease as is
		}
		expires := now.Add(t.offerTime)
		if l := t.byMAC[mac]; l != nil && l.ip == a && l.state == LeaseOffered && l.expires.After(expires) {
			expires = l.expires
		}
		t.set(mac, a, LeaseOffered, expires)
		return a, nil
	}
	if r, ok := t.reservation[mac]; ok && p.contains(r) {
		if !t.assignable(p, mac, r, now) {
			return 0, fmt.Errorf("%w: reserved address %v is declined", errUnavailable, u32ToIP(r))
		}
		return hold(r)
	}
	if l := t.byMAC[mac]; l != nil && p.contains(l.ip) && t.assignable(p, mac, l.ip, now) {
		return hold(l.ip)
	}
	if requested != 0 && p.contains(requested) && t.assignable(p, mac, requested, now) {
		return hold(requested)
	}
	n := p.size()
	for i := uint32(0); i < n; i++ {
		a := p.start + (p.next-p.start+i)%n
		if t.assignable(p, mac, a, now) {
			p.next = a + 1
			if p.next > p.end || p.next < p.start {
				p.next = p.start
			}
			return hold(a)
		}
	}
	return 0, errExhausted
}

// request binds a to mac for the pool's lease time if mac may have it, or
// returns errUnavailable (the caller NAKs). It implements RFC 2131 §4.3.2
// for all REQUEST states: the address must be on the subnet and in the range
// (or mac's reservation), not held by another machine, and not contradict a
// binding mac currently holds elsewhere. A request for a free address the
// server has no record of is granted, as an authoritative server does, so
// clients keep their address across a lost lease file.
func (t *leaseTable) request(p *pool, mac lpmos.MAC, a uint32, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r, ok := t.reservation[mac]; ok && p.contains(r) && r != a {
		return fmt.Errorf("%w: %v is reserved for this machine", errUnavailable, u32ToIP(r))
	}
	if !t.assignable(p, mac, a, now) {
		return fmt.Errorf("%w: %v is not in the pool or is in use", errUnavailable, u32ToIP(a))
	}
	if l := t.byMAC[mac]; l != nil && l.ip != a && l.holds(now) {
		return fmt.Errorf("%w: this machine holds %v", errUnavailable, u32ToIP(l.ip))
	}
	t.set(mac, a, LeaseBound, now.Add(p.leaseTime))
	return nil
}

// release frees mac's address but remembers it for mac.
func (t *leaseTable) release(mac lpmos.MAC, a uint32, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byMAC[mac]
	if l == nil || l.ip != a || l.state == LeaseReleased {
		return false
	}
	l.state, l.expires = LeaseReleased, now
	t.dirty = true
	return true
}

// forget ends an offer the client turned down by choosing another server.
func (t *leaseTable) forget(mac lpmos.MAC, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l := t.byMAC[mac]; l != nil && l.state == LeaseOffered {
		l.state, l.expires = LeaseReleased, now
	}
}

// decline takes a out of the pool for the decline time, if mac held it.
func (t *leaseTable) decline(mac lpmos.MAC, a uint32, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byIP[a]
	if l == nil || l.mac != mac {
		return false
	}
	delete(t.byMAC, mac)
	l.mac, l.state, l.expires = lpmos.MAC{}, LeaseDeclined, now.Add(t.declineTime)
	t.dirty = true
	return true
}

// snapshot returns every record, sorted by address.
func (t *leaseTable) snapshot() []Lease {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Lease, 0, len(t.byIP))
	for _, l := range t.byIP {
		out = append(out, Lease{MAC: l.mac, IP: u32ToIP(l.ip), Expires: l.expires, State: l.state})
	}
	slices.SortFunc(out, func(a, b Lease) int { return cmp.Compare(ipToU32(a.IP), ipToU32(b.IP)) })
	return out
}

// boundAddr is mac's address if it holds a bound lease at now.
func (t *leaseTable) boundAddr(mac lpmos.MAC, now time.Time) (net.IP, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.byMAC[mac]
	if l == nil || l.state != LeaseBound || !l.holds(now) {
		return nil, false
	}
	return u32ToIP(l.ip), true
}

// leaseFile is the on-disk format: versioned so it can evolve.
type leaseFile struct {
	Version int     `json:"version"`
	Leases  []Lease `json:"leases"`
}

const leaseFileVersion = 1

// load reads the lease file, if it exists, into the (empty) table. Leases
// that no longer fit the configuration (address off every pool's range,
// excluded, or reserved for another machine) are skipped and returned for logging.
func (t *leaseTable) load(path string) (skipped []Lease, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading lease file: %w", err)
	}
	leases, err := DecodeLeases(b)
	if err != nil {
		return nil, fmt.Errorf("lease file %s: %w", path, err)
	}
	return t.replace(leases), nil
}

// DecodeLeases reads leases in the lease file's format (EncodeLeases).
func DecodeLeases(b []byte) ([]Lease, error) {
	var f leaseFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	if f.Version != leaseFileVersion {
		return nil, fmt.Errorf("version %d, want %d", f.Version, leaseFileVersion)
	}
	return f.Leases, nil
}

// EncodeLeases writes leases in the lease file's format, which a
// LeaseStore may use too.
func EncodeLeases(leases []Lease) ([]byte, error) {
	if leases == nil {
		leases = []Lease{}
	}
	return json.Marshal(leaseFile{Version: leaseFileVersion, Leases: leases})
}

// replace empties the table and fills it with leases; those that no longer
// fit the configuration (address off every pool's range, excluded, or
// reserved for another machine) are skipped and returned for logging.
func (t *leaseTable) replace(leases []Lease) (skipped []Lease) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.byIP)
	clear(t.byMAC)
	for _, l := range leases {
		a := ipToU32(l.IP)
		p := poolContaining(t.pools, a)
		ok := p != nil && l.IP.To4() != nil && p.usable(a) && !p.excluded[a] && t.byIP[a] == nil
		switch l.State {
		case LeaseBound, LeaseReleased, LeaseOffered:
			if owner, reserved := t.reservedIP[a]; ok && (reserved && owner != l.MAC || !reserved && !p.inRange(a)) {
				ok = false
			}
			if ok && (l.MAC.IsZero() || t.byMAC[l.MAC] != nil) {
				ok = false
			}
		case LeaseDeclined:
			l.MAC = lpmos.MAC{}
		default:
			ok = false
		}
		if !ok {
			skipped = append(skipped, l)
			continue
		}
		rec := &lease{mac: l.MAC, ip: a, expires: l.Expires, state: l.State}
		t.byIP[a] = rec
		if !l.MAC.IsZero() {
			t.byMAC[l.MAC] = rec
		}
	}
	return skipped
}

// persisted returns the leases worth keeping if the table changed since
// the last call that was not followed by failed(): offers are short-lived
// and not worth a write.
func (t *leaseTable) persisted() ([]Lease, bool) {
	t.mu.Lock()
	if !t.dirty {
		t.mu.Unlock()
		return nil, false
	}
	t.dirty = false
	t.mu.Unlock()
	var out []Lease
	for _, l := range t.snapshot() {
		if l.State != LeaseOffered {
			out = append(out, l)
		}
	}
	return out, true
}

// failed marks the table for another write at the next flush.
func (t *leaseTable) failed() {
	t.mu.Lock()
	t.dirty = true
	t.mu.Unlock()
}

// save writes the table to path atomically if it changed since the last
// save: a crash leaves either the old file or the new one, never a torn one.
func (t *leaseTable) save(path string) error {
	leases, changed := t.persisted()
	if !changed {
		return nil
	}
	b, err := EncodeLeases(leases)
	if err == nil {
		err = writeFileAtomic(path, b)
	}
	if err != nil {
		t.failed() // try again at the next flush
	}
	return err
}

func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing lease file: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing lease file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing lease file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing lease file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing lease file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename itself durable
		d.Close()
	}
	return nil
}
