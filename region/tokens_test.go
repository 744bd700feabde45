package region_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/netns"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// The token-theft tests talk to the region (listening on 127.0.0.1) from
// two source addresses on loopback: the machine at 127.0.0.1 and someone
// else at 127.0.0.2, with real HTTP clients.
const (
	machineAddr  = "127.0.0.1"
	attackerAddr = "127.0.0.2"
)

// peer is an HTTP client of the region from one source address, and the
// region's URL as that client reaches it.
type peer struct {
	c    *http.Client
	base string
}

// clientFrom is a peer whose connections come from addr on loopback.
func (l *lab) clientFrom(addr string) peer {
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}).DialContext}
	l.t.Cleanup(tr.CloseIdleConnections)
	return peer{c: &http.Client{Transport: tr, Timeout: 30 * time.Second}, base: l.ts.URL}
}

// fetchScript fetches mac's boot script as iPXE does, from c, waiting out
// the region's 503 while it learns of the task; it returns the status,
// the script and the token in it ("" if none).
func (l *lab) fetchScript(p peer, mac string) (int, string, string) {
	l.t.Helper()
	var body []byte
	var code int
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := p.c.Get(p.base + "/boot/" + mac + ".ipxe")
		require.NoError(l.t, err)
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if code = resp.StatusCode; code != http.StatusServiceUnavailable || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	tok := ""
	if m := tokenRe.FindStringSubmatch(string(body)); m != nil {
		tok = m[1]
	}
	return code, string(body), tok
}

// callFrom makes an agent API request from p and decodes the answer (a
// string body is sent as is, anything else as JSON).
func (l *lab) callFrom(p peer, method, path, token string, body any) (int, map[string]any) {
	l.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, p.base+path, rd)
	require.NoError(l.t, err)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := p.c.Do(req)
	require.NoError(l.t, err)
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if len(data) > 0 {
		require.NoError(l.t, json.Unmarshal(data, &out), "%s", data)
	}
	return resp.StatusCode, out
}

// refusals returns the task's refused timeline entries.
func (l *lab) refusals(id string) []task.TimelineEntry {
	l.t.Helper()
	tk, err := l.svc.Get(context.Background(), id)
	require.NoError(l.t, err)
	var out []task.TimelineEntry
	for _, e := range tk.Timeline {
		if e.Event == task.TimelineRefused {
			out = append(out, e)
		}
	}
	return out
}

func pollApproval(mac string) string { return agent.PathApproval + mac + "?wait=0" }

// TestScriptFetchCannotStealTheToken is the attack of issue 15: with only
// the MAC and curl, someone else fetches the machine's script to cut off
// its agent and take over the install.
func TestScriptFetchCannotStealTheToken(t *testing.T) {
	l := startRegion(t, memStore(t))
	theft(t, l, l.clientFrom(machineAddr), machineAddr, l.clientFrom(attackerAddr), attackerAddr)
}

// TestScriptFetchCannotStealTheTokenAcrossNamespaces is the same attack
// over a network: the region, the machine and the attacker each in a
// network namespace of their own, the region connected to the others by
// veth pairs.
func TestScriptFetchCannotStealTheTokenAcrossNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("uses network namespaces (root); not in -short mode (TestScriptFetchCannotStealTheToken runs the same attack on loopback)")
	}
	netns.Require(t)
	srv, mach, att := netns.New(t), netns.New(t), netns.New(t)
	netns.Veth(t, srv, "10.15.1.1/24", mach, "10.15.1.2/24")
	netns.Veth(t, srv, "10.15.2.1/24", att, "10.15.2.2/24")
	ln, err := srv.Listen("tcp", "0.0.0.0:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	l := startRegionOn(t, memStore(t), ln)
	from := func(ns *netns.NS, regionIP string) peer {
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}
		t.Cleanup(tr.CloseIdleConnections)
		return peer{c: &http.Client{Transport: tr, Timeout: 30 * time.Second}, base: fmt.Sprintf("http://%s:%d", regionIP, port)}
	}
	theft(t, l, from(mach, "10.15.1.1"), "10.15.1.2", from(att, "10.15.2.1"), "10.15.2.2")
}

// theft runs the attack: machine (at machineIP) boots, someone else (at
// attackerIP) tries to take over its install.
func theft(t *testing.T, l *lab, machine peer, machineIP string, attacker peer, attackerIP string) {
	const mac = "52:54:00:15:00:01"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)

	code, _, token := l.fetchScript(machine, mac)
	require.Equal(t, http.StatusOK, code)
	require.NotEmpty(t, token)
	l.waitStatus(tk.ID, task.StatusBooting)
	code, body := l.callFrom(machine, "POST", agent.PathReport, token, agent.ReportRequest{MACAddress: mac, TaskID: tk.ID, Hardware: hardware.Info{CPU: hardware.CPU{Cores: 8}}})
	require.Equal(t, http.StatusOK, code, "%v", body)
	l.waitStatus(tk.ID, task.StatusPendingApproval)

	// The attacker fetches the script: no token, the machine's still works.
	code, script, stolen := l.fetchScript(attacker, mac)
	require.Equal(t, http.StatusOK, code)
	assert.Empty(t, stolen, "another address gets no token once the agent used its own")
	assert.Contains(t, script, "already booting")
	code, body = l.callFrom(machine, "GET", pollApproval(mac), token, nil)
	assert.Equal(t, http.StatusOK, code, "the machine's token still works: %v", body)
	refused := l.refusals(tk.ID)
	require.Len(t, refused, 1, "the fetch is recorded")
	assert.Equal(t, attackerIP, refused[0].Source)
	assert.Contains(t, refused[0].Message, "boot script")

	// Even with the machine's token in hand, another address is refused,
	// and that too is recorded.
	code, body = l.callFrom(attacker, "POST", agent.PathStatus, token, agent.StatusRequest{MACAddress: mac, TaskID: tk.ID, Status: "failed", Message: "pwned"})
	assert.Equal(t, http.StatusForbidden, code, "%v", body)
	code, _ = l.callFrom(attacker, "GET", pollApproval(mac), token, nil)
	assert.Equal(t, http.StatusForbidden, code)
	refused = l.refusals(tk.ID)
	require.Len(t, refused, 3)
	assert.Equal(t, attackerIP, refused[1].Source)
	assert.Contains(t, refused[1].Message, agent.PathStatus)
	got, err := l.svc.Get(context.Background(), tk.ID)
	require.NoError(t, err)
	assert.Equal(t, task.StatusPendingApproval, got.Status, "the attacker failed nothing")

	// The hardware report's timeline entry names where it came from (the
	// approval page shows it).
	var reported *task.TimelineEntry
	for i, e := range got.Timeline {
		if e.Event == string(task.EventHardwareReported) {
			reported = &got.Timeline[i]
		}
	}
	require.NotNil(t, reported)
	assert.Equal(t, machineIP, reported.Source)

	// The machine reboots and fetches again from its address: it gets its
	// own token back, which keeps working.
	code, _, again := l.fetchScript(machine, mac)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, token, again)

	// Approved, the attacker still cannot complete the install.
	_, err = l.svc.Approve(context.Background(), tk.ID, "ops", "")
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusApproved)
	code, _, stolen = l.fetchScript(attacker, mac)
	require.Equal(t, http.StatusOK, code)
	assert.Empty(t, stolen)
	code, _ = l.callFrom(attacker, "POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "completed", Percentage: 100})
	assert.Equal(t, http.StatusForbidden, code)
	// The region learns of the approval through its watch, a moment after
	// the store: until then it answers 409, and the agent retries.
	require.Eventually(t, func() bool {
		code, _ := l.callFrom(machine, "POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "completed", Percentage: 100, Message: "done"})
		return code == http.StatusOK
	}, 10*time.Second, 10*time.Millisecond, "the machine completes its install")
	l.waitStatus(tk.ID, task.StatusCompleted)
}

// TestTokenBoundToTheFetchingAddress: without our DHCP's lease (proxy
// mode), the address that fetched the script binds the token; before the
// agent used it, a fetch from another address replaces it.
func TestTokenBoundToTheFetchingAddress(t *testing.T) {
	l := startRegion(t, memStore(t))
	machine, other := l.clientFrom(machineAddr), l.clientFrom(attackerAddr)
	const mac = "52:54:00:15:00:02"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)

	_, _, first := l.fetchScript(other, mac)
	require.NotEmpty(t, first)
	l.waitStatus(tk.ID, task.StatusBooting)
	code, _ := l.callFrom(machine, "GET", pollApproval(mac), first, nil)
	assert.Equal(t, http.StatusForbidden, code, "the token works only from the address that fetched it")

	// Not used yet: the machine, coming back from its own address, gets a
	// token of its own, and the first one is void.
	_, _, mine := l.fetchScript(machine, mac)
	require.NotEmpty(t, mine)
	assert.NotEqual(t, first, mine)
	code, _ = l.callFrom(other, "GET", pollApproval(mac), first, nil)
	assert.Equal(t, http.StatusUnauthorized, code)
	code, body := l.callFrom(machine, "GET", pollApproval(mac), mine, nil)
	assert.Equal(t, http.StatusOK, code, "%v", body)
}

// leases is a DHCP server's lease table in full mode.
type leases map[lpmos.MAC]net.IP

func (ls leases) LeasedAddr(mac lpmos.MAC) (net.IP, bool) {
	ip, ok := ls[mac]
	return ip, ok
}

// TestTokenBoundToTheLeasedAddress: in full mode the address our DHCP
// leased to the MAC binds the token, whoever fetched the script.
func TestTokenBoundToTheLeasedAddress(t *testing.T) {
	const mac = "52:54:00:15:00:03"
	m, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	leased := leases{m: net.ParseIP(machineAddr).To4()}
	l := startRegion(t, memStore(t), func(c *region.Config) { c.Leases = leased })
	machine, other := l.clientFrom(machineAddr), l.clientFrom(attackerAddr)
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)

	// Someone else fetches first: the token they get works only from the
	// leased address, and a second fetch of theirs voids nothing.
	_, _, theirs := l.fetchScript(other, mac)
	require.NotEmpty(t, theirs)
	l.waitStatus(tk.ID, task.StatusBooting)
	code, _ := l.callFrom(other, "GET", pollApproval(mac), theirs, nil)
	assert.Equal(t, http.StatusForbidden, code)
	code, script, again := l.fetchScript(other, mac)
	require.Equal(t, http.StatusOK, code)
	assert.Empty(t, again)
	assert.Contains(t, script, "already booting")

	// The machine at its leased address gets the token and it works.
	_, _, mine := l.fetchScript(machine, mac)
	assert.Equal(t, theirs, mine, "the token is the leased address's; fetching it from elsewhere did not replace it")
	code, body := l.callFrom(machine, "GET", pollApproval(mac), mine, nil)
	assert.Equal(t, http.StatusOK, code, "%v", body)
	refused := l.refusals(tk.ID)
	require.NotEmpty(t, refused)
	for _, e := range refused {
		assert.Equal(t, attackerAddr, e.Source)
	}
}

// TestRelayedMachineBindsTheFetchingAddress: a machine whose DHCP came
// through a relay gets a token bound to the address that fetched its
// script, even with a lease of ours.
func TestRelayedMachineBindsTheFetchingAddress(t *testing.T) {
	const mac = "52:54:00:15:00:05"
	m, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	leased := leases{m: net.ParseIP("10.9.9.9").To4()}
	l := startRegion(t, memStore(t), func(c *region.Config) { c.Leases = leased })
	machine := l.clientFrom(machineAddr)
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, err = l.reg.DHCPPolicy().Boot(context.Background(), dhcp.Request{MAC: m, IsIPXE: true, IsPXE: true,
		Firmware: lpmos.FirmwareBIOS, RelayAddr: net.ParseIP("10.8.0.1")})
	require.NoError(t, err)

	_, _, token := l.fetchScript(machine, mac)
	require.NotEmpty(t, token)
	l.waitStatus(tk.ID, task.StatusBooting)
	code, body := l.callFrom(machine, "GET", pollApproval(mac), token, nil)
	assert.Equal(t, http.StatusOK, code, "%v", body)
}

// writeCounter counts the writes to task and agent keys.
type writeCounter struct {
	store.Store
	n atomic.Int64
}

func counted(key string) bool {
	return strings.HasPrefix(key, task.TasksPrefix) || strings.HasPrefix(key, task.AgentsPrefix)
}

func (w *writeCounter) Put(ctx context.Context, key string, value []byte, opts ...store.PutOption) (int64, error) {
	if counted(key) {
		w.n.Add(1)
	}
	return w.Store.Put(ctx, key, value, opts...)
}

func (w *writeCounter) Txn(ctx context.Context, txn store.Txn) (store.TxnResult, error) {
	for _, op := range append(append([]store.Op(nil), txn.Then...), txn.Else...) {
		if counted(op.Key) {
			w.n.Add(1)
			break
		}
	}
	return w.Store.Txn(ctx, txn)
}

// TestScriptFetchesAreLimitedAndCheap: a flood of script fetches without
// credentials, for a booting machine whose agent has not reported yet
// (its token can still be replaced), writes to the store a bounded number
// of times and is answered 429 beyond the rate limits.
func TestScriptFetchesAreLimitedAndCheap(t *testing.T) {
	st := &writeCounter{Store: memStore(t)}
	l := startRegion(t, st)
	machine, attacker := l.clientFrom(machineAddr), l.clientFrom(attackerAddr)
	const mac = "52:54:00:15:00:04"
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, _, token := l.fetchScript(machine, mac)
	require.NotEmpty(t, token)
	l.waitStatus(tk.ID, task.StatusBooting)

	before := st.n.Load()
	codes := map[int]int{}
	for i := range 2000 {
		p := attacker
		if i%2 == 0 {
			p = machine
		}
		resp, err := p.c.Get(p.base + "/boot/" + mac + ".ipxe")
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes[resp.StatusCode]++
	}
	writes := st.n.Load() - before
	t.Logf("answers %v, %d writes", codes, writes)
	assert.Positive(t, codes[http.StatusTooManyRequests], "fetches beyond the limits are refused")
	assert.LessOrEqual(t, writes, int64(40), "2,000 fetches must not make 2,000 store writes")
}

// countingGets counts the store reads of one key.
type countingGets struct {
	store.Store
	key string
	n   atomic.Int64
}

func (c *countingGets) Get(ctx context.Context, key string) (store.KV, error) {
	if key == c.key {
		c.n.Add(1)
	}
	return c.Store.Get(ctx, key)
}

// An install's agent calls check the token against the record this
// region wrote, not by reading the store at every call.
func TestTokenRecordCached(t *testing.T) {
	mac := "52:54:00:aa:bb:21"
	hw, err := lpmos.ParseMAC(mac)
	require.NoError(t, err)
	st := &countingGets{Store: memStore(t), key: task.AgentKey(hw, task.AgentFieldInfo)}
	l := startRegion(t, st)
	tk := l.create(mac)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	require.NotEmpty(t, token)
	before := st.n.Load()
	l.report(tk.ID, mac, token)
	_, err = l.svc.Approve(context.Background(), tk.ID, "ops", "")
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusApproved)
	// The region learns of the approval through its watch, a moment
	// after the store: until then progress is refused (409, not installing).
	require.Eventually(t, func() bool {
		code, _ := l.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "writing", Percentage: 0})
		return code == http.StatusOK
	}, 10*time.Second, 10*time.Millisecond)
	for pct := range 10 {
		code, body := l.call("POST", agent.PathProgress, token, agent.ProgressRequest{MACAddress: mac, TaskID: tk.ID, Stage: "writing", Percentage: pct * 10})
		require.Equal(t, http.StatusOK, code, "%v", body)
	}
	assert.Zero(t, st.n.Load()-before, "agent calls read the token record from the store")
}
