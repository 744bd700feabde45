package region

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/pxe"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

// The boot trace. The region records each machine's boot events (DHCP,
// TFTP, HTTP boot files, the iPXE script it was served and why, agent API
// calls, power actions, refused tokens) in its trace.Recorder, which
// writes them to /lpmos/trace/{mac}/{region} at most once a second per
// machine, only while this process leads, fenced like its other writes.
// Nothing here waits on the store: recording is a non-blocking enqueue,
// and the DHCP and TFTP servers call it from their hot paths.
//
// TFTP and HTTP boot file requests carry no MAC, only the client's
// address; addrBook maps the addresses DHCP and the script fetches saw
// back to machines. A request from an address it does not know is not
// traced.

// FlushTrace writes the boot trace recorded so far to the store now, and
// waits for it: for tests and tools; the region writes it by itself
// within a second.
func (r *Region) FlushTrace(ctx context.Context) error { return r.trace.Flush(ctx) }

// TraceStats are the boot trace recorder's counters (drops among them).
func (r *Region) TraceStats() trace.Stats { return r.trace.Stats() }

// addrBookMax bounds the address book; when full it starts afresh (a
// machine that boots again is learnt again from its DHCP).
const addrBookMax = 65536

// addrBook remembers which machine last used an address.
type addrBook struct {
	mu sync.Mutex
	m  map[netip.Addr]lpmos.MAC
}

func (b *addrBook) note(a netip.Addr, mac lpmos.MAC) {
	if !a.IsValid() || a.IsUnspecified() || mac.IsZero() {
		return
	}
	a = a.Unmap()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil || len(b.m) >= addrBookMax {
		b.m = map[netip.Addr]lpmos.MAC{}
	}
	b.m[a] = mac
}

func (b *addrBook) lookup(a netip.Addr) (lpmos.MAC, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	mac, ok := b.m[a.Unmap()]
	return mac, ok
}

func netipOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// DHCPTrace is the dhcp.Config.Trace hook that keeps DHCP packets in the
// machines' boot traces; Server sets it.
func (r *Region) DHCPTrace(tr dhcp.Trace) {
	if tr.Reply != "" {
		// Only a machine the region answers fetches from it: learn its
		// address (ignored machines cannot take an address over).
		if tr.Request.RelayAddr == nil {
			r.addrs.note(netipOf(tr.Src), tr.MAC) // a client with an address (0.0.0.0 is not noted)
		}
		r.addrs.note(netipOf(tr.YourIP), tr.MAC)
	}

	msg := strings.ToUpper(tr.Type)
	if tr.OnProxyPort {
		msg += " (port 4011)"
	}
	out := trace.OutcomeIgnored
	switch {
	case tr.Reply == "nak":
		out = trace.OutcomeRefused
		msg += " → NAK"
	case tr.Reply != "":
		out = trace.OutcomeOK
		msg += " → " + strings.ToUpper(tr.Reply)
		if tr.BootFile != "" {
			msg += " " + tr.BootFile
		}
	case tr.Outcome == dhcp.OutcomeHandled:
		out = trace.OutcomeOK
	case tr.Outcome == dhcp.OutcomePolicyError:
		out = trace.OutcomeError
		msg += " not answered"
	default:
		msg += " ignored"
	}
	d := map[string]string{"outcome": string(tr.Outcome)}
	req := tr.Request
	if req.HasArch || req.Boot() {
		d["arch"] = strconv.Itoa(int(req.Arch))
	}
	if req.Firmware != "" {
		d["firmware"] = string(req.Firmware)
	}
	set := func(k, v string) {
		if v != "" {
			d[k] = v
		}
	}
	set("vendor_class", req.VendorClass)
	set("user_class", tr.UserClass)
	if req.RelayAddr != nil {
		d["relay"] = req.RelayAddr.String()
	}
	set("file", tr.BootFile)
	if tr.YourIP != nil {
		d["yiaddr"] = tr.YourIP.String()
	}
	r.trace.Record(tr.MAC, trace.Event{Kind: trace.KindDHCP, Outcome: out, Message: msg, Reason: tr.Reason, Detail: d})
}

// TFTPTrace is the pxe.TFTPConfig.Trace hook; Server sets it.
func (r *Region) TFTPTrace(tr pxe.TFTPTrace) {
	mac, ok := r.addrs.lookup(netipOf(tr.Client))
	if !ok {
		return
	}
	out := trace.OutcomeOK
	switch tr.Outcome {
	case pxe.TFTPComplete, pxe.TFTPProbe:
	case pxe.TFTPRefused, pxe.TFTPBusy:
		out = trace.OutcomeRefused
	default:
		out = trace.OutcomeError
	}
	ev := trace.Event{Kind: trace.KindTFTP, Outcome: out, Message: fmt.Sprintf("TFTP %s: %s", tr.File, tr.Outcome),
		Detail: map[string]string{"file": tr.File, "client": tr.Client.String(), "outcome": string(tr.Outcome)}}
	if tr.Outcome != pxe.TFTPProbe {
		ev.Detail["bytes"] = strconv.FormatInt(tr.Bytes, 10)
		ev.Detail["duration_ms"] = strconv.FormatInt(tr.Duration.Milliseconds(), 10)
	}
	if tr.Err != nil {
		ev.Reason = tr.Err.Error()
	}
	r.trace.Record(mac, ev)
}

// traceFiles wraps the boot file routes (agent kernel and initramfs, OS
// files, iPXE binaries over HTTP) to trace each fetch.
func (r *Region) traceFiles(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		rec := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, req)
		from := sourceAddr(req)
		mac, ok := r.addrs.lookup(from)
		if !ok {
			return
		}
		out := trace.OutcomeOK
		switch {
		case rec.status >= 500:
			out = trace.OutcomeError
		case rec.status >= 400:
			out = trace.OutcomeRefused
		}
		ev := trace.Event{Kind: trace.KindHTTP, Outcome: out,
			Message: fmt.Sprintf("GET %s → %d", req.URL.Path, rec.status),
			Detail: map[string]string{"file": req.URL.Path, "code": strconv.Itoa(rec.status), "client": from.String(),
				"bytes": strconv.FormatInt(rec.bytes, 10), "duration_ms": strconv.FormatInt(time.Since(start).Milliseconds(), 10)}}
		if rg := req.Header.Get("Range"); rg != "" {
			ev.Detail["range"] = rg
		}
		if out != trace.OutcomeOK {
			ev.Reason = http.StatusText(rec.status)
		}
		r.trace.Record(mac, ev)
	})
}

// The kinds of iPXE scripts, as the trace names them.
const (
	scriptAgent          = "agent"
	scriptInstaller      = "installer"
	scriptLocalBoot      = "local-boot"
	scriptStop           = "stop"
	scriptAlreadyBooting = "already-booting"
	scriptUnknown        = "unknown-machine"
	scriptInventory      = "inventory"
	scriptNotReady       = "not-ready"
)

// scriptNote is what renderScript chose, and why, for the trace.
type scriptNote struct {
	kind, why, taskID string
}

// traceScript records the script a machine was served, or why none was.
func (r *Region) traceScript(req *http.Request, mac lpmos.MAC, n scriptNote, err error) {
	from := sourceAddr(req)
	r.addrs.note(from, mac)
	d := make(map[string]string, 5)
	d["client"] = from.String()
	if n.kind != "" {
		d["script"] = n.kind
	}
	if n.taskID != "" {
		d["task_id"] = n.taskID
	}
	if p := req.URL.Query().Get("platform"); p != "" {
		d["platform"] = p
	}
	ev := trace.Event{Kind: trace.KindScript, Outcome: trace.OutcomeOK, Reason: n.why, Detail: d,
		Message: "iPXE script: " + n.kind}
	switch {
	case err != nil:
		ev.Outcome = trace.OutcomeError
		ev.Message = "iPXE script not served"
		var he *httpjson.Error
		if errors.As(err, &he) {
			d["code"] = strconv.Itoa(he.Status)
			ev.Reason = he.Message
			if he.Status < 500 {
				ev.Outcome = trace.OutcomeRefused
			}
		} else {
			ev.Reason = err.Error()
		}
	case n.kind == scriptAlreadyBooting:
		ev.Outcome = trace.OutcomeRefused
	case n.kind == scriptUnknown:
		ev.Outcome = trace.OutcomeIgnored
	}
	r.trace.Record(mac, ev)
}

// traceAgent records an agent API call of a machine: its route and result.
func (r *Region) traceAgent(req *http.Request, who *caller, status int, err error) {
	if who.mac.IsZero() {
		return
	}
	r.addrs.note(sourceAddr(req), who.mac)
	route := req.Pattern
	if route == "" {
		route = req.Method + " " + req.URL.Path
	}
	d := map[string]string{"route": route, "code": strconv.Itoa(status)}
	if who.taskID != "" {
		d["task_id"] = who.taskID
	}
	ev := trace.Event{Kind: trace.KindAgent, Outcome: trace.OutcomeOK, Message: fmt.Sprintf("%s → %d", route, status), Detail: d}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		ev.Kind, ev.Outcome = trace.KindToken, trace.OutcomeRefused
	case status >= 500:
		ev.Outcome = trace.OutcomeError
	case status >= 400:
		ev.Outcome = trace.OutcomeRefused
	}
	if err != nil {
		var he *httpjson.Error
		if errors.As(err, &he) {
			ev.Reason = he.Message
		} else {
			ev.Reason = err.Error()
		}
	}
	r.trace.Record(who.mac, ev)
}

// traceAnswerFile records a refused fetch of task t's answer file (its URL
// carries the token, which the trace never holds).
func (r *Region) traceAnswerFile(t *task.Task, name string, from netip.Addr, status int, why string) {
	r.trace.Record(t.Metadata.TargetMAC, trace.Event{Kind: trace.KindToken, Outcome: trace.OutcomeRefused,
		Message: fmt.Sprintf("answer file %s → %d", name, status), Reason: why,
		Detail: map[string]string{"task_id": t.ID, "client": from.String(), "code": strconv.Itoa(status)}})
}
