package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
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

// expected reports whether a non-2xx answer is a normal one: a bulk
// approval whose filter matched nothing is answered 404.
func expected(op string, status int) bool {
	return op == opApprove && status == http.StatusNotFound
}

// apiError is a non-2xx answer of the control plane.
type apiError struct {
	Op, Method, Path string
	Status           int
	Body             string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.Path, e.Status, e.Body)
}

// controlPlane calls one control-plane process's REST API as the operator.
type controlPlane struct {
	base, token string
	hc          *http.Client
	lat         *latencies
}

// call sends in as JSON (nil: no body), decodes a 2xx answer into out (nil:
// discarded) and records the latency under op ("" records nothing).
func (c *controlPlane) call(ctx context.Context, op, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		if op != "" {
			c.lat.add(op, time.Since(start), true)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if op != "" {
		c.lat.add(op, time.Since(start), err != nil || (resp.StatusCode >= 300 && !expected(op, resp.StatusCode)))
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return &apiError{Op: op, Method: method, Path: path, Status: resp.StatusCode, Body: string(bytes.TrimSpace(data))}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode: %w", method, path, err)
		}
	}
	return nil
}
