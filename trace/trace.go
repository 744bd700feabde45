// Package trace keeps a per-machine boot trace: the last events of a
// machine's boot as its region saw them (DHCP packets and why one was
// ignored, TFTP and HTTP fetches, the iPXE script it was served and why,
// agent API calls, power actions, refused tokens), so that an operator can
// answer "why didn't my machine boot" from the dashboard or the API.
//
// A region owns a Recorder: the boot path hands it events without waiting
// (Record never blocks; when its queue is full the event is dropped and
// counted), and one goroutine writes each machine's trace to the store at
// most once per FlushInterval, one Put per machine, keeping the last Max
// events. Only the region's leader writes, fenced like its other writes.
// Every control-plane replica reads the same keys (Read).
//
// The package knows the store and the shared vocabulary only: it knows no
// DHCP, HTTP, tasks or regions beyond the region's ID in its keys.
package trace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// Prefix is where traces live: /lpmos/trace/{mac}/{region}, one key per
// machine and region that saw it, so that one range read returns a
// machine's whole trace and two regions never overwrite each other's. The
// traces are kept out of /lpmos/machines/ and /lpmos/regions/ on purpose:
// the control plane follows those prefixes with watches, and a trace
// changes up to once a second per booting machine.
const Prefix = "/lpmos/trace/"

// Max is how many events a region keeps per machine.
const Max = 200

// MachinePrefix holds the traces of one machine, one key per region.
func MachinePrefix(mac lpmos.MAC) string { return Prefix + mac.String() + "/" }

// Key is the trace of one machine kept by one region.
func Key(mac lpmos.MAC, region string) string { return MachinePrefix(mac) + region }

// Kind is where an event comes from.
type Kind string

// The kinds of events.
const (
	KindDHCP   Kind = "dhcp"   // a DHCP packet from the machine and what became of it
	KindTFTP   Kind = "tftp"   // a TFTP transfer
	KindHTTP   Kind = "http"   // a boot file fetched over HTTP
	KindScript Kind = "script" // the iPXE script served
	KindAgent  Kind = "agent"  // an agent API call
	KindPower  Kind = "power"  // a power action on the machine's BMC
	KindToken  Kind = "token"  // a request refused for its token
)

// Outcome is what became of the event's request.
type Outcome string

// The outcomes.
const (
	OutcomeOK      Outcome = "ok"      // answered, served, done
	OutcomeIgnored Outcome = "ignored" // deliberately not answered (Reason says why)
	OutcomeRefused Outcome = "refused" // answered with a refusal (a bad or misplaced token, not ready)
	OutcomeError   Outcome = "error"   // failed
)

// Event is one step of a machine's boot.
type Event struct {
	Time time.Time `json:"time"`
	// Region is the region that saw the event; Read fills it from the key.
	Region  string  `json:"region,omitempty"`
	Kind    Kind    `json:"kind"`
	Outcome Outcome `json:"outcome"`
	// Message says what happened in a line, e.g. "DISCOVER → OFFER undionly.kpxe".
	Message string `json:"message"`
	// Reason says why, for an ignored, refused or failed request (and for
	// the choice of iPXE script).
	Reason string `json:"reason,omitempty"`
	// Detail holds the event's particulars: arch, vendor_class,
	// user_class, relay, file, bytes, duration_ms, route, code, script...
	Detail map[string]string `json:"detail,omitempty"`
	// Count is how many times the event happened in a row (a firmware
	// retransmitting its DISCOVER, an agent reporting progress), when more
	// than once: the Recorder folds a repeat into the event before it,
	// whose Time becomes the repeat's.
	Count int `json:"count,omitempty"`
}

// repeats reports whether e is the same event as prev, but for its time.
func (e Event) repeats(prev Event) bool {
	return e.Kind == prev.Kind && e.Outcome == prev.Outcome && e.Message == prev.Message &&
		e.Reason == prev.Reason && maps.Equal(e.Detail, prev.Detail)
}

// Bounds on one event, so that a trace stays a few tens of KiB.
const (
	maxText    = 256
	maxDetails = 16
)

// clip bounds an event's text; it never modifies the caller's map.
func (e Event) clip() Event {
	e.Message, e.Reason = clipText(e.Message), clipText(e.Reason)
	switch {
	case len(e.Detail) == 0:
	case len(e.Detail) <= maxDetails:
		// The common case, on every boot request: no key to choose, so
		// no sorting.
		d := make(map[string]string, len(e.Detail))
		for k, v := range e.Detail {
			d[clipText(k)] = clipText(v)
		}
		e.Detail = d
	default:
		d := make(map[string]string, maxDetails)
		keys := slices.Sorted(maps.Keys(e.Detail))
		for _, k := range keys[:maxDetails] {
			d[clipText(k)] = clipText(e.Detail[k])
		}
		e.Detail = d
	}
	return e
}

func clipText(s string) string {
	if len(s) <= maxText {
		return s
	}
	cut := maxText
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// record is a trace as stored.
type record struct {
	Events []Event `json:"events"`
}

// ErrCorrupt is wrapped by Read for a stored trace that is not JSON.
var ErrCorrupt = errors.New("trace: stored trace is unreadable")

// Read returns a machine's trace from every region that keeps one, oldest
// first (newest last). A machine no region has seen has an empty trace, not
// an error.
func Read(ctx context.Context, st store.Store, mac lpmos.MAC) ([]Event, error) {
	res, err := st.List(ctx, MachinePrefix(mac), store.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("trace: read %s: %w", mac, err)
	}
	events := []Event{}
	for _, kv := range res.KVs {
		region := strings.TrimPrefix(kv.Key, MachinePrefix(mac))
		evs, err := decode(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, kv.Key, err)
		}
		for _, e := range evs {
			e.Region = region
			events = append(events, e)
		}
	}
	// Stable: events of one region keep their order when times tie.
	slices.SortStableFunc(events, func(a, b Event) int { return a.Time.Compare(b.Time) })
	return events, nil
}

func decode(b []byte) ([]Event, error) {
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	return rec.Events, nil
}
