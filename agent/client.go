package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lpmos/lpmos/agent/httpc"
	"github.com/lpmos/lpmos/hardware"
)

// Errors a caller branches on. Other refusals are *APIError.
var (
	// ErrUnauthorized: the region refused the token (401). The task ended
	// or moved on, or the token is wrong; retrying cannot help.
	ErrUnauthorized = errors.New("agent token refused by the region")
	// ErrConflict: the task is not in a state that accepts the call (409),
	// typically because it was cancelled or failed meanwhile.
	ErrConflict = errors.New("task moved on")
	// ErrRejected: the operator rejected or cancelled the task; the agent
	// reports nothing more and the machine should power off.
	ErrRejected = errors.New("task rejected: power off")
	// ErrInventoried: an inventory agent's report was recorded; the
	// machine should power off.
	ErrInventoried = errors.New("hardware inventoried: power off")
)

// APIError is a final (4xx) refusal by the region. It unwraps to
// ErrUnauthorized for 401 and ErrConflict for 409.
type APIError struct {
	Method, Path string
	StatusCode   int
	Code         string
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, e.Code, e.Message)
}

func (e *APIError) Unwrap() error {
	switch e.StatusCode {
	case httpc.StatusUnauthorized:
		return ErrUnauthorized
	case httpc.StatusConflict:
		return ErrConflict
	}
	return nil
}

// Client calls the region's agent API. It is safe for concurrent use.
type Client struct {
	cfg Config
	// urls are RegionURL then OtherRegionURLs; cur indexes the one calls
	// go to, moved on when it stops answering or answers as a standby.
	urls []string
	cur  atomic.Int32
}

// base returns the region URL calls go to now and its index.
func (c *Client) base() (string, int) {
	i := int(c.cur.Load())
	return c.urls[i], i
}

// turnFrom moves calls on from the region URL at index i to the next
// one (round and round), unless another call already did.
func (c *Client) turnFrom(i int, why error) {
	if len(c.urls) < 2 {
		return
	}
	next := (i + 1) % len(c.urls)
	if c.cur.CompareAndSwap(int32(i), int32(next)) {
		c.cfg.Logger.Warn("region process not serving the agent, turning to the next", "from", c.urls[i], "to", c.urls[next], "err", why)
	}
}

// NewClient checks cfg and returns a client.
func NewClient(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Client{cfg: cfg, urls: append([]string{cfg.RegionURL}, cfg.OtherRegionURLs...)}, nil
}

// HTTPClient is the client the agent's calls use (pinned to the region's
// certificate when the configuration has a pin): installers download the
// region's images with it.
func (c *Client) HTTPClient() httpc.Doer { return c.cfg.HTTPClient }

// Close releases the client's idle connections (and their goroutines).
func (c *Client) Close() { c.cfg.HTTPClient.CloseIdleConnections() }

// Report sends the hardware report.
func (c *Client) Report(ctx context.Context, hw hardware.Info) (ReportResponse, error) {
	var out ReportResponse
	err := c.do(ctx, "POST", PathReport, ReportRequest{MACAddress: c.cfg.MAC.String(), TaskID: c.cfg.TaskID, Hardware: hw}, &out, c.cfg.RequestTimeout)
	return out, err
}

// Inventory sends the hardware report of a machine without a task
// (ModeInventory).
func (c *Client) Inventory(ctx context.Context, hw hardware.Info) (ReportResponse, error) {
	var out ReportResponse
	err := c.do(ctx, "POST", PathInventory, ReportRequest{MACAddress: c.cfg.MAC.String(), Hardware: hw}, &out, c.cfg.RequestTimeout)
	return out, err
}

// Progress reports install progress; stage "completed" at 100 completes
// the task.
func (c *Client) Progress(ctx context.Context, stage string, pct int, msg string, details map[string]any) error {
	return c.do(ctx, "POST", PathProgress, ProgressRequest{MACAddress: c.cfg.MAC.String(), TaskID: c.cfg.TaskID,
		Stage: stage, Percentage: pct, Message: msg, Details: details}, nil, c.cfg.RequestTimeout)
}

// Fail reports the task failed at stage with an error code.
func (c *Client) Fail(ctx context.Context, stage, code, msg string) error {
	return c.Status(ctx, StatusRequest{Status: "failed", Stage: stage, Code: code, Message: msg})
}

// Status posts an outcome; MAC and task ID are filled in.
func (c *Client) Status(ctx context.Context, s StatusRequest) error {
	s.MACAddress, s.TaskID = c.cfg.MAC.String(), c.cfg.TaskID
	return c.do(ctx, "POST", PathStatus, s, nil, c.cfg.RequestTimeout)
}

// Approval makes one long-poll of at most wait.
func (c *Client) Approval(ctx context.Context, wait time.Duration) (ApprovalResponse, error) {
	var out ApprovalResponse
	path := PathApproval + c.cfg.MAC.String() + "?wait=" + strconv.Itoa(int(wait/time.Second))
	err := c.do(ctx, "GET", path, nil, &out, wait+c.cfg.RequestTimeout)
	return out, err
}

// WaitApproval long-polls until the task is decided: it returns the
// response with a plan when approved, and ErrRejected (with the response,
// whose Reason says why) when the region says power off.
func (c *Client) WaitApproval(ctx context.Context) (ApprovalResponse, error) {
	for {
		resp, err := c.Approval(ctx, c.cfg.ApprovalWait)
		if err != nil {
			return resp, err
		}
		switch {
		case resp.Approved && resp.Plan != nil:
			return resp, nil
		case resp.NextAction == ActionPowerOff:
			return resp, fmt.Errorf("%w: task %s is %s: %s", ErrRejected, resp.TaskID, resp.Status, resp.Reason)
		}
		if err := ctx.Err(); err != nil {
			return resp, err
		}
	}
}

// Health asks the region for /health once (no retries: it is a probe). A
// degraded region (503) still returns its answer.
func (c *Client) Health(ctx context.Context) (Health, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	base, _ := c.base()
	resp, err := c.cfg.HTTPClient.Do(ctx, &httpc.Request{URL: base + PathHealth})
	if err != nil {
		return Health{}, fmt.Errorf("region health: %w", err)
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(io.LimitReader(resp.Body, MaxBodyBytes)).Decode(&h); err != nil {
		return Health{}, fmt.Errorf("region health: %d: %w", resp.StatusCode, err)
	}
	return h, nil
}

// retryableError marks an attempt worth repeating.
type retryableError struct {
	err        error
	retryAfter time.Duration
}

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// do runs one API call with retries on network errors, 5xx and 429.
func (c *Client) do(ctx context.Context, method, path string, in, out any, timeout time.Duration) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	p := c.cfg.Retry
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := c.once(ctx, method, path, body, out, timeout)
		var re *retryableError
		if err == nil || !errors.As(err, &re) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		}
		backoff := min(p.Max, p.Initial<<min(attempt-1, 30))
		sleep := max(time.Duration(rand.Int64N(int64(backoff))+1), re.retryAfter)
		if attempt >= p.Attempts || time.Since(start)+sleep > p.MaxElapsed {
			return fmt.Errorf("%s %s: giving up after %d attempts in %s: %w", method, path, attempt, time.Since(start).Round(time.Millisecond), re.err)
		}
		c.cfg.Logger.Debug("agent API call failed, retrying", "path", path, "attempt", attempt, "in", sleep, "err", re.err)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s %s: %w", method, path, ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	base, at := c.base()
	req := &httpc.Request{Method: method, URL: base + path, Body: body, Header: textproto.MIMEHeader{}}
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	req.Header.Set("Accept", "application/json")
	if c.cfg.TraceParent != "" {
		req.Header.Set("Traceparent", c.cfg.TraceParent)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.cfg.HTTPClient.Do(ctx, req)
	if errors.Is(err, ErrCertificatePin) {
		// Not the region we were told about: no retry can fix that.
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if err != nil {
		// Network errors and our own per-attempt timeout are worth a retry
		// (at the region's next process, if it has others); the caller's
		// cancellation is checked by do.
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			c.turnFrom(at, err)
		}
		return &retryableError{err: fmt.Errorf("%s %s: %w", method, path, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes))
	if err != nil {
		return &retryableError{err: fmt.Errorf("%s %s: reading answer: %w", method, path, err)}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
		}
		return nil
	}
	apiErr := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, Message: statusText(resp.Status)}
	var e Error
	if json.Unmarshal(data, &e) == nil && e.Error.Code != "" {
		apiErr.Code, apiErr.Message = e.Error.Code, e.Error.Message
	}
	if resp.StatusCode >= 500 || resp.StatusCode == httpc.StatusTooManyRequests {
		if resp.StatusCode == httpc.StatusServiceUnavailable && apiErr.Code == CodeStandby {
			c.turnFrom(at, apiErr) // the leader is another process
		}
		var after time.Duration
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			after = min(time.Duration(s)*time.Second, time.Minute)
		}
		return &retryableError{err: apiErr, retryAfter: after}
	}
	return apiErr
}

// statusText is the reason phrase of a status ("Not Found" of "404 Not
// Found"), or the whole status when it has none.
func statusText(status string) string {
	if _, text, ok := strings.Cut(status, " "); ok && text != "" {
		return text
	}
	return status
}
