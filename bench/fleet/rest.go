package main

import (
	"errors"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/lpmos/lpmos/client"
)

// The REST operations whose latency the fleet reports.
const (
	opCreate  = "create"
	opApprove = "approve" // one bulk approve call
	opList    = "list"    // one page of a region's tasks
	opGet     = "get"     // one task, as a dashboard loads it after subscribing
)

// latencies collects durations per operation.
type latencies struct {
	mu   sync.Mutex
	by   map[string][]time.Duration
	errs map[string]int
}

func newLatencies() *latencies {
	return &latencies{by: map[string][]time.Duration{}, errs: map[string]int{}}
}

func (l *latencies) add(op string, d time.Duration, failed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.by[op] = append(l.by[op], d)
	if failed {
		l.errs[op]++
	}
}

func (l *latencies) get(op string) (ds []time.Duration, errs int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.by[op]), l.errs[op]
}

// quantile returns the q-quantile of ds (nearest rank), 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// controlPlane is one control-plane process as one caller sees it: the
// typed client (client package), timing every call it makes.
type controlPlane struct {
	base, token string
	c           *client.Client
	lat         *latencies
}

func newControlPlane(base, token string, hc *http.Client, lat *latencies) (*controlPlane, error) {
	c, err := client.New(base, client.WithToken(token), client.WithHTTPClient(hc), client.WithUserAgent("lpmos-fleet"))
	if err != nil {
		return nil, err
	}
	return &controlPlane{base: base, token: token, c: c, lat: lat}, nil
}

// timed runs one call and records its latency under op, as an error
// unless the error is a normal answer (see expected).
func (cp *controlPlane) timed(op string, call func() error) error {
	start := time.Now()
	err := call()
	cp.lat.add(op, time.Since(start), err != nil && !expected(op, err))
	return err
}

// expected reports whether an error is a normal answer: a bulk approval
// whose filter matched nothing is answered 404.
func expected(op string, err error) bool {
	return op == opApprove && errors.Is(err, client.ErrNotFound)
}
