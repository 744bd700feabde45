package region

import (
	"context"
	"net/http"
	"net/netip"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/task"
)

// How a machine's agent token is protected. The boot script route cannot
// ask for credentials (iPXE has none), and a MAC is no secret, so:
//
//   - A token works only from one address (bindAddr): the address our DHCP
//     server leased to the MAC in full mode, else the address that fetched
//     the script (ProxyDHCP, relays, no lease). Behind NAT that is the
//     NAT's address: the binding is only as strong as the network between
//     machine and region.
//   - Once the agent has used its token, a script fetch from another
//     address neither replaces it nor gets another token: it gets a
//     script saying the machine is already booting, and the attempt is
//     recorded in the task's timeline with its source address. A fetch
//     from the token's own address (the machine rebooting) gets its token
//     back.
//   - Before the agent used it, a fetch from another address replaces the
//     token (the machine may have come back with another address), except
//     in full mode, where the binding would not change: that fetch cannot
//     be the machine and is refused.
//   - Fetches that reach the store are rate-limited per source address and,
//     when they would write, per MAC.

// errTooManyFetches answers a script fetch over its rate limit.
var errTooManyFetches = &httpjson.Error{Status: http.StatusTooManyRequests, Code: httpjson.CodeRateLimited,
	Message: "too many boot script fetches; retry later"}

// errWrongSource refuses an agent call with a valid token from an address
// the token is not bound to.
var errWrongSource = &httpjson.Error{Status: http.StatusForbidden, Code: httpjson.CodeForbidden,
	Message: "the agent token is not valid from this address"}

// bindAddr is the address a token issued now for mac, whose script from
// fetched, will work from: in full mode the address our DHCP server bound
// to mac, unless the machine's last DHCP request came through a relay
// (the issue's rule: behind relays, where address translation may sit
// between machine and region, the fetching address binds); otherwise the
// fetching address.
func (r *Region) bindAddr(mac lpmos.MAC, from netip.Addr) netip.Addr {
	if r.cfg.Leases == nil || r.relays.was(mac) {
		return from
	}
	ip, ok := r.cfg.Leases.LeasedAddr(mac)
	if !ok {
		return from
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return from
	}
	return a.Unmap()
}

// scriptToken returns the agent token for a script fetch of task t's
// machine, or refused when the fetch must get no token (see above).
func (r *Region) scriptToken(req *http.Request, mac lpmos.MAC, t *task.Task) (token string, refused bool, err error) {
	ctx := req.Context()
	from := sourceAddr(req)
	now := r.cfg.Now()
	if !r.fetches.perSource.allow(from, now) {
		return "", false, errTooManyFetches
	}
	info, _, err := r.tokens.current(ctx, mac)
	if err != nil {
		return "", false, err
	}
	mine := info != nil && info.TaskID == t.ID
	bind := r.bindAddr(mac, from)
	switch {
	case mine && info.BoundAddr == from.String():
		if tok, ok := r.tokens.own(mac, info); ok {
			return tok, false, nil
		}
		// The region restarted since it issued the token: a fresh one
		// for the same address, whose machine is the one booting.
	case mine && info.UsedAt != nil:
		r.refuse(ctx, t.ID, from, "boot script fetch refused: the machine is already booting from "+info.BoundAddr)
		return "", true, nil
	case mine && info.BoundAddr == bind.String():
		r.refuse(ctx, t.ID, from, "boot script fetch refused: the token is bound to the leased address "+info.BoundAddr)
		return "", true, nil
	}
	if !r.fetches.perMAC.allow(mac, now) {
		return "", false, errTooManyFetches
	}
	tok, err := r.tokens.issue(ctx, mac, t.ID, string(platform(req)), req.RemoteAddr, bind)
	return tok, false, err
}

// refuse records a refused request for task id in its timeline and the
// log, coalesced per task, source and kind (refusals), and bounded per
// task by the task service.
func (r *Region) refuse(ctx context.Context, id string, from netip.Addr, what string) {
	if !r.refusals.due(refusalKey{taskID: id, from: from, what: what}, r.cfg.Now()) {
		r.log.Debug("request refused", append(r.taskAttrs(id), "remote", from, "what", what)...)
		return
	}
	r.log.Warn("request refused", append(r.taskAttrs(id), "remote", from, "what", what)...)
	if _, err := r.svc.RecordRefusal(ctx, id, r.actor, from.String(), what); err != nil {
		r.log.Warn("record refused request", append(r.taskAttrs(id), "err", err)...)
	}
}
