package region

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// agentInfo is what the region keeps under /lpmos/agents/{mac}/info: the
// machine's current agent token, only as a hash, bound to one task and
// to one source address.
type agentInfo struct {
	TaskID      string    `json:"task_id"`
	TokenSHA256 string    `json:"token_sha256"`
	IssuedAt    time.Time `json:"issued_at"`
	Firmware    string    `json:"firmware,omitempty"`
	// RemoteAddr is the address that fetched the script carrying the
	// token (host:port, as the region saw it).
	RemoteAddr string `json:"remote_addr,omitempty"`
	// BoundAddr is the only source address the token is accepted from
	// (see Region.bindAddr). Empty in records written before tokens were
	// bound: such a token is accepted from anywhere until it is replaced.
	BoundAddr string `json:"bound_addr,omitempty"`
	// UsedAt is when the token was first accepted. From then on the
	// machine's agent holds it, and a script fetch from another address
	// neither replaces it nor gets another token.
	UsedAt *time.Time `json:"used_at,omitempty"`
}

// tokens issues and checks per-task agent tokens. A token is random,
// stored only hashed, bound to one task, MAC and source address, and dead
// once the task ends (the check requires the task to be active).
//
// The clear text of the tokens this process issued is kept in memory, so
// that a machine that reboots and fetches its script again from the
// token's address gets its own token back without a store write. After a
// restart of the region it is gone, and such a fetch gets a fresh token
// bound to the same address.
type tokens struct {
	st  store.Store
	now func() time.Time
	// fence guards the token writes as task.Config.Fence guards the
	// task writes: a deposed leader issues no token.
	fence func() []store.Compare
	// offline, if set, reports that the store is out of reach (the region
	// journals its agents' calls): cached records are used however old.
	offline func() bool
	// readTimeout, if positive, bounds a read of a record; a read that
	// fails then uses the record cached, however old.
	readTimeout time.Duration

	mu    sync.Mutex
	clear map[lpmos.MAC]string // the clear token this process issued, per machine
	used  map[lpmos.MAC]string // the hash of the token known to be used, per machine
	// records caches the token records this process read or wrote: every
	// agent call checks its token, and reading the record from the store
	// each time was a store round trip per call (most of an install's
	// reads, at fleet scale). An entry is trusted for recordTTL, so that
	// a record another process wrote (a region taking over) is seen soon.
	records map[lpmos.MAC]cachedRecord
}

type cachedRecord struct {
	info agentInfo
	rev  int64
	at   time.Time
}

// recordTTL bounds how long a cached token record is used without reading
// the store again.
const recordTTL = 30 * time.Second

// maxClearTokens bounds tokens.clear; one entry per machine that fetched
// a script for an active task, so it is reached only by a huge region.
const maxClearTokens = 100_000

var (
	errBadToken = errors.New("invalid agent token")
	// errWrongAddress: a valid token presented from an address it is not
	// bound to.
	errWrongAddress = errors.New("agent token used from an address it is not bound to")
)

func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// current returns the machine's token record and its store revision, or
// nil if the machine has none (no record, or a discovered-machine
// record).
func (tk *tokens) current(ctx context.Context, mac lpmos.MAC) (*agentInfo, int64, error) {
	now := tk.now()
	tk.mu.Lock()
	c, ok := tk.records[mac]
	tk.mu.Unlock()
	fresh := ok && now.Sub(c.at) < recordTTL && now.Sub(c.at) >= 0
	if fresh || ok && tk.offline != nil && tk.offline() {
		info := c.info // the caller's copy
		return &info, c.rev, nil
	}
	rctx := ctx
	if tk.readTimeout > 0 {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, tk.readTimeout)
		defer cancel()
	}
	kv, err := tk.st.Get(rctx, task.AgentKey(mac, task.AgentFieldInfo))
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil && ok && tk.readTimeout > 0 && ctx.Err() == nil {
		// The store is out of reach: the region's memory of the record
		// stands (a token it issued stays valid while its task is
		// active in the view).
		info := c.info
		return &info, c.rev, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read agent token: %w", err)
	}
	var info agentInfo
	if err := json.Unmarshal(kv.Value, &info); err != nil || info.TokenSHA256 == "" {
		return nil, 0, nil
	}
	tk.remember(mac, info, kv.ModRevision, now)
	return &info, kv.ModRevision, nil
}

// remember caches a token record read or written at revision rev.
func (tk *tokens) remember(mac lpmos.MAC, info agentInfo, rev int64, now time.Time) {
	tk.mu.Lock()
	defer tk.mu.Unlock()
	if c, ok := tk.records[mac]; ok && c.rev > rev {
		return // a newer record is known
	}
	if tk.records == nil || len(tk.records) >= maxClearTokens {
		tk.records = map[lpmos.MAC]cachedRecord{}
	}
	tk.records[mac] = cachedRecord{info: info, rev: rev, at: now}
}

// issue makes a token for a machine's task, bound to the address bound,
// and stores its hash. from is the address that fetched the script.
func (tk *tokens) issue(ctx context.Context, mac lpmos.MAC, taskID, firmware, from string, bound netip.Addr) (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	tok := hex.EncodeToString(b[:])
	rec := agentInfo{TaskID: taskID, TokenSHA256: hashToken(tok), IssuedAt: tk.now().UTC(),
		Firmware: firmware, RemoteAddr: from, BoundAddr: bound.String()}
	info, _ := json.Marshal(rec)
	res, err := tk.st.Txn(ctx, store.Txn{If: tk.fence(), Then: []store.Op{store.OpPut(task.AgentKey(mac, task.AgentFieldInfo), info)}})
	if err != nil {
		return "", fmt.Errorf("store agent token: %w", err)
	}
	if !res.Succeeded {
		return "", fmt.Errorf("store agent token: %w: %w", task.ErrFenced, ErrNotLeader)
	}
	tk.remember(mac, rec, res.Revision, tk.now())
	tk.mu.Lock()
	if tk.clear == nil || len(tk.clear) >= maxClearTokens {
		tk.clear = map[lpmos.MAC]string{}
	}
	tk.clear[mac] = tok
	tk.mu.Unlock()
	return tok, nil
}

// own returns the clear text of info's token if this process issued it.
func (tk *tokens) own(mac lpmos.MAC, info *agentInfo) (string, bool) {
	tk.mu.Lock()
	tok, ok := tk.clear[mac]
	tk.mu.Unlock()
	if !ok || subtle.ConstantTimeCompare([]byte(hashToken(tok)), []byte(info.TokenSHA256)) != 1 {
		return "", false
	}
	return tok, true
}

// check verifies a token for a machine, presented from the address from,
// and returns the task it is bound to. A valid token from another address
// than its bound one yields errWrongAddress, with the task it is bound to
// (the caller records the attempt there). The caller still checks the
// task is active, and calls markUsed once the request succeeded.
func (tk *tokens) check(ctx context.Context, mac lpmos.MAC, tok string, from netip.Addr) (string, error) {
	return tk.verify(ctx, mac, tok, from, true)
}

// checkAnywhere verifies a token without its address binding: for the
// installed system's phone-home, which comes from the installed OS's
// address (a static network configuration may differ from the boot
// address) and can do nothing but record one first boot.
func (tk *tokens) checkAnywhere(ctx context.Context, mac lpmos.MAC, tok string) (string, error) {
	return tk.verify(ctx, mac, tok, netip.Addr{}, false)
}

func (tk *tokens) verify(ctx context.Context, mac lpmos.MAC, tok string, from netip.Addr, bound bool) (string, error) {
	if tok == "" {
		return "", errBadToken
	}
	info, _, err := tk.current(ctx, mac)
	if err != nil {
		return "", err
	}
	if info == nil || subtle.ConstantTimeCompare([]byte(hashToken(tok)), []byte(info.TokenSHA256)) != 1 {
		return "", errBadToken
	}
	if !bound {
		return info.TaskID, nil
	}
	if info.BoundAddr != "" && info.BoundAddr != from.String() {
		return info.TaskID, errWrongAddress
	}
	return info.TaskID, nil
}

// markUsed records the first accepted use of a machine's token (UsedAt);
// callers call it once a request with the token succeeded, so that a
// refused request writes nothing. Uses already recorded cost no store
// access.
func (tk *tokens) markUsed(ctx context.Context, mac lpmos.MAC, tok string) {
	hash := hashToken(tok)
	tk.mu.Lock()
	done := tk.used[mac] == hash
	tk.mu.Unlock()
	if done {
		return
	}
	info, rev, err := tk.current(ctx, mac)
	if err != nil || info == nil || subtle.ConstantTimeCompare([]byte(hash), []byte(info.TokenSHA256)) != 1 {
		return
	}
	if info.UsedAt == nil {
		// Only if the record is still the one read: a token issued
		// meanwhile is not marked by the use of another.
		now := tk.now().UTC()
		info.UsedAt = &now
		b, _ := json.Marshal(info)
		key := task.AgentKey(mac, task.AgentFieldInfo)
		res, err := tk.st.Txn(ctx, store.Txn{If: append(tk.fence(), store.ModRevisionIs(key, rev)), Then: []store.Op{store.OpPut(key, b)}})
		if err != nil || !res.Succeeded {
			tk.forget(mac) // read it again next time
			return
		}
		tk.remember(mac, *info, res.Revision, tk.now())
	}
	tk.mu.Lock()
	if tk.used == nil || len(tk.used) >= maxClearTokens {
		tk.used = map[lpmos.MAC]string{}
	}
	tk.used[mac] = hash
	tk.mu.Unlock()
}

// seen records the agent's last contact (best effort).
func (tk *tokens) seen(ctx context.Context, mac lpmos.MAC) {
	_, _ = tk.st.Txn(ctx, store.Txn{If: tk.fence(), Then: []store.Op{
		store.OpPut(task.AgentKey(mac, task.AgentFieldLastSeen), []byte(tk.now().UTC().Format(time.RFC3339Nano)))}})
}

// sourceAddr is the address a request came from (IPv4-mapped IPv6
// addresses unmapped, so that both listeners' views compare equal). It is
// the TCP peer: the region does not trust X-Forwarded-For, which anyone
// can send.
func sourceAddr(req *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// forget drops a machine's cached token record.
func (tk *tokens) forget(mac lpmos.MAC) {
	tk.mu.Lock()
	delete(tk.records, mac)
	tk.mu.Unlock()
}
