package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Default limits on what the client reads of an answer.
const (
	// DefaultMaxResponseBytes bounds a successful answer's body: a page of
	// 1,000 list entries or one task with its hardware, timeline and logs
	// fit many times over.
	DefaultMaxResponseBytes = 32 << 20
	// maxErrorBytes bounds an error body; the API's are a few hundred bytes.
	maxErrorBytes = 64 << 10
)

// DefaultUserAgent is sent unless WithUserAgent says otherwise.
const DefaultUserAgent = "lpmos-client/1"

// Client talks to one control plane (or a load balancer in front of its
// replicas). It is safe for concurrent use.
type Client struct {
	base       *url.URL // scheme, host and path prefix, without a trailing slash
	http       *http.Client
	token      string
	userAgent  string
	maxBody    int64
	log        *slog.Logger
	minBackoff time.Duration
	maxBackoff time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithToken authenticates every request with "Authorization: Bearer
// <token>", the WebSocket handshake included.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithHTTPClient sends requests through hc (default: a client of its own
// with a 60 s timeout per request). Watch dials its WebSocket with the TLS
// configuration, proxy and dialer of hc's transport when that is an
// *http.Transport.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithUserAgent sets the User-Agent header (default DefaultUserAgent).
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// WithMaxResponseBytes bounds the body of a successful answer (default
// DefaultMaxResponseBytes); a longer one fails the call.
func WithMaxResponseBytes(n int64) Option { return func(c *Client) { c.maxBody = n } }

// WithLogger receives what the client does not return: Watch's failed
// reconnection attempts (default: discarded).
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// WithReconnectBackoff bounds Watch's wait between reconnection attempts:
// it starts at min, doubles per failed attempt up to max, and each wait is
// drawn at random from its upper half so that many watchers dropped at
// once do not come back at once (default 250 ms and 30 s).
func WithReconnectBackoff(min, max time.Duration) Option {
	return func(c *Client) { c.minBackoff, c.maxBackoff = min, max }
}

// New returns a client of the control plane at baseURL, e.g.
// "https://lpmos.example.net" (a path prefix is kept, for a control plane
// behind a reverse proxy).
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("client: base URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("client: base URL %q: scheme must be http or https", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q has no host", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("client: base URL %q: no query or fragment allowed", baseURL)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	c := &Client{
		base:       u,
		userAgent:  DefaultUserAgent,
		maxBody:    DefaultMaxResponseBytes,
		minBackoff: 250 * time.Millisecond,
		maxBackoff: 30 * time.Second,
	}
	for _, o := range opts {
		o(c)
	}
	if c.http == nil {
		c.http = &http.Client{Timeout: 60 * time.Second}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxResponseBytes
	}
	if c.minBackoff <= 0 {
		c.minBackoff = 250 * time.Millisecond
	}
	if c.maxBackoff < c.minBackoff {
		c.maxBackoff = max(c.minBackoff, 30*time.Second)
	}
	return c, nil
}

// url returns the absolute URL of an API path ("/api/v1/tasks") with query.
func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path += path
	u.RawQuery = q.Encode()
	return u.String()
}

// call is one request: the body (nil for none) is sent as JSON, and a 2xx
// answer's JSON body is decoded into out (nil: discarded). A non-2xx answer
// is an *Error. header, if set, adds request headers.
func (c *Client) call(ctx context.Context, method, path string, q url.Values, header http.Header, body, out any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	c.authorize(req.Header)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp, readError(method, path, resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, c.maxBody)) // lets the connection be reused
		return resp, nil
	}
	lr := &io.LimitedReader{R: resp.Body, N: c.maxBody + 1}
	if err := json.NewDecoder(lr).Decode(out); err != nil {
		if lr.N <= 0 {
			return resp, fmt.Errorf("%s %s: answer larger than %d bytes", method, path, c.maxBody)
		}
		return resp, fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return resp, nil
}

// authorize adds the client's credentials and User-Agent to a request.
func (c *Client) authorize(h http.Header) {
	if c.token != "" {
		h.Set("Authorization", "Bearer "+c.token)
	}
	if c.userAgent != "" {
		h.Set("User-Agent", c.userAgent)
	}
}

// Principal is who the control plane takes the caller for.
type Principal struct {
	// Subject says how the caller signed in and who it is:
	// "token:<name>", "hashed:<name>" or "jwt:<sub>". It is what the API
	// records as created_by, approved_by and the audit log's actor.
	Subject string `json:"subject"`
	// Role is "viewer", "operator" or "admin".
	Role string `json:"role"`
}

// WhoAmI returns the caller as the control plane authenticated it.
func (c *Client) WhoAmI(ctx context.Context) (*Principal, error) {
	var p Principal
	if _, err := c.call(ctx, http.MethodGet, "/api/v1/whoami", nil, nil, nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// Ready checks that the control plane can serve (GET /readyz, which needs
// no token): its store answers and its task view is loaded. Until then it
// fails with an *Error matching ErrUnavailable, whose Message says what is
// missing.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.call(ctx, http.MethodGet, "/readyz", nil, nil, nil, nil)
	if e, ok := AsError(err); ok && e.StatusCode == http.StatusServiceUnavailable && e.Code == "" {
		// /readyz answers {"status": ...}, not the API's error body.
		e.Code = CodeUnavailable
	}
	return err
}

// errNoBody marks an answer that lacked what the API always sends.
var errNoBody = errors.New("answer without the expected body")
