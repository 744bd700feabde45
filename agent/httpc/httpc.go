// Package httpc is the agent's HTTP/1.1 client: what the agent needs of
// HTTP (JSON calls, a long-poll, a resumable image download, over http or
// TLS), without linking net/http.
//
// Importing net/http costs a static binary about 0.35 MB before any of it
// is used, and its client (Transport, HTTP/2, cookies, proxies, multipart,
// IDNA) about 1.2 MB; the agent runs from RAM on every machine, so its
// binary stays small. This client speaks HTTP/1.1 only: keep-alive on a
// few idle connections, Content-Length and chunked bodies, redirects as
// net/http follows them (the token is not sent on to another host), no
// proxy, no compression, no cookies. Anything else that needs HTTP uses
// net/http; Doer lets a net/http client stand in (see agent/sim).
package httpc

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status codes the agent branches on.
const (
	StatusOK                 = 200
	StatusPartialContent     = 206
	StatusUnauthorized       = 401
	StatusConflict           = 409
	StatusTooManyRequests    = 429
	StatusServiceUnavailable = 503
)

// Errors of a broken exchange.
var (
	// ErrMalformed: the server's answer is not HTTP/1.x.
	ErrMalformed = errors.New("httpc: malformed response")
	// ErrTooManyRedirects: more than 10 redirects.
	ErrTooManyRedirects = errors.New("httpc: stopped after 10 redirects")
)

// Request is one request. Header names are canonicalised when sent.
type Request struct {
	Method string // default GET
	URL    string
	Header textproto.MIMEHeader
	Body   []byte // sent with a Content-Length; kept whole so a retry can resend it
}

// Response is the answer to a Request. The caller closes Body.
type Response struct {
	StatusCode int
	Status     string // "404 Not Found"
	Header     textproto.MIMEHeader
	// ContentLength is the length of Body, -1 when unknown (chunked, or
	// read until the server closes).
	ContentLength int64
	Body          io.ReadCloser
}

// Doer sends requests: *Client, or an adapter of another client.
type Doer interface {
	// Do sends r and returns the answer, whatever its status; ctx bounds
	// the exchange, the reading of the body included.
	Do(ctx context.Context, r *Request) (*Response, error)
	// CloseIdleConnections closes kept-alive connections.
	CloseIdleConnections()
}

// Client is an HTTP/1.1 client. The zero value works: plain dial with a
// 10 s timeout, TLS checked against the system's roots. It is safe for
// concurrent use and starts no goroutine of its own.
type Client struct {
	// TLSConfig is used for https (cloned; ServerName set from the URL when
	// empty). Nil: the default configuration.
	TLSConfig *tls.Config
	// DialContext dials TCP; nil: a net.Dialer with a 10 s timeout.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// CheckURL, if set, is asked about every URL before it is fetched, the
	// targets of redirects included; its error ends the request.
	CheckURL func(*url.URL) error
	// MaxIdle is how many connections are kept alive (default 4; a negative
	// value keeps none). IdleTimeout drops older ones (default 90 s).
	MaxIdle     int
	IdleTimeout time.Duration
	// UserAgent is sent with every request (default "lpmos-agent").
	UserAgent string

	mu   sync.Mutex
	idle []*conn
}

// conn is one connection with its buffers.
type conn struct {
	key   string // scheme://host:port
	nc    net.Conn
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time // idle since
}

const maxRedirects = 10

// Do implements Doer.
func (c *Client) Do(ctx context.Context, r *Request) (*Response, error) {
	method := r.Method
	if method == "" {
		method = "GET"
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return nil, fmt.Errorf("httpc: %w", err)
	}
	for redirects := 0; ; redirects++ {
		resp, err := c.roundTrip(ctx, method, u, r)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
		}
		loc := resp.Header.Get("Location")
		if !isRedirect(resp.StatusCode) || loc == "" {
			return resp, nil
		}
		resp.Body.Close()
		// As net/http: 307 and 308 repeat the request, body and all; the
		// others turn it into a GET.
		if resp.StatusCode != 307 && resp.StatusCode != 308 && method != "HEAD" {
			method = "GET"
			r = &Request{Method: method, URL: r.URL, Header: r.Header}
		}
		if redirects == maxRedirects {
			return nil, fmt.Errorf("%s %s: %w", method, u.Redacted(), ErrTooManyRedirects)
		}
		next, err := u.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("%s %s: redirect to %q: %w", method, u.Redacted(), loc, err)
		}
		if next.Host != u.Host && r.Header.Get("Authorization") != "" {
			h := textproto.MIMEHeader{}
			for k, v := range r.Header {
				h[k] = v
			}
			h.Del("Authorization")
			r = &Request{Method: r.Method, URL: r.URL, Header: h, Body: r.Body}
		}
		u = next
	}
}

func isRedirect(code int) bool {
	switch code {
	case 301, 302, 303, 307, 308:
		return true
	}
	return false
}

// roundTrip sends one request on a kept-alive connection or a new one. A
// kept-alive connection the server closed meanwhile fails before any byte
// of an answer; the request is then sent again on a new connection.
func (c *Client) roundTrip(ctx context.Context, method string, u *url.URL, r *Request) (*Response, error) {
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("httpc: unsupported scheme %q", u.Scheme)
	}
	if c.CheckURL != nil {
		if err := c.CheckURL(u); err != nil {
			return nil, err
		}
	}
	key := u.Scheme + "://" + hostPort(u)
	if cn := c.getIdle(key); cn != nil {
		resp, sent, err := c.exchange(ctx, cn, method, u, r)
		if err == nil || sent || ctx.Err() != nil {
			return resp, err
		}
	}
	cn, err := c.dial(ctx, u, key)
	if err != nil {
		return nil, err
	}
	resp, _, err := c.exchange(ctx, cn, method, u, r)
	return resp, err
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

func (c *Client) dial(ctx context.Context, u *url.URL, key string) (*conn, error) {
	dial := c.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	nc, err := dial(ctx, "tcp", hostPort(u))
	if err != nil {
		return nil, err
	}
	if u.Scheme == "https" {
		cfg := &tls.Config{}
		if c.TLSConfig != nil {
			cfg = c.TLSConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	return &conn{key: key, nc: nc, br: bufio.NewReaderSize(nc, 32<<10), bw: bufio.NewWriterSize(nc, 4<<10)}, nil
}

// exchange writes the request and reads the answer's head. sent reports
// whether any byte of an answer arrived (then a failure is not retried on
// a new connection).
func (c *Client) exchange(ctx context.Context, cn *conn, method string, u *url.URL, r *Request) (resp *Response, sent bool, err error) {
	// ctx ending interrupts any read or write on the connection.
	stop := context.AfterFunc(ctx, func() { cn.nc.SetDeadline(time.Unix(1, 0)) })
	fail := func(e error) (*Response, bool, error) {
		stop()
		cn.nc.Close()
		if ctx.Err() != nil && errors.Is(e, os.ErrDeadlineExceeded) {
			e = ctx.Err()
		}
		return nil, sent, e
	}
	if err := c.writeRequest(cn.bw, method, u, r); err != nil {
		return fail(err)
	}
	tp := textproto.NewReader(cn.br)
	var code int
	var status, line string
	for {
		line, err = tp.ReadLine()
		if err != nil {
			return fail(err)
		}
		sent = true
		if code, status, err = parseStatusLine(line); err != nil {
			return fail(err)
		}
		hdr, err := tp.ReadMIMEHeader()
		if err != nil {
			return fail(fmt.Errorf("%w: %w", ErrMalformed, err))
		}
		if code >= 200 || code == 101 {
			resp = &Response{StatusCode: code, Status: status, Header: hdr, ContentLength: -1}
			break
		}
		// 1xx (100 Continue, 103 Early Hints): the answer follows.
	}
	reuse := !hasToken(resp.Header.Get("Connection"), "close") && !strings.HasPrefix(line, "HTTP/1.0")
	b := &body{c: c, cn: cn, stop: stop, ctx: ctx}
	switch {
	case method == "HEAD" || code == 204 || code == 304:
		resp.ContentLength = 0
		b.r = eofReader{}
	case hasToken(resp.Header.Get("Transfer-Encoding"), "chunked"):
		b.r = &chunkedReader{r: cn.br}
	case resp.Header.Get("Content-Length") != "":
		n, err := strconv.ParseInt(strings.TrimSpace(resp.Header.Get("Content-Length")), 10, 64)
		if err != nil || n < 0 {
			return fail(fmt.Errorf("%w: Content-Length %q", ErrMalformed, resp.Header.Get("Content-Length")))
		}
		resp.ContentLength = n
		b.r = &exactReader{r: cn.br, n: n}
	default:
		b.r = cn.br // until the server closes
		reuse = false
	}
	b.reuse = reuse
	if resp.ContentLength == 0 {
		b.finish(true)
	}
	resp.Body = b
	return resp, true, nil
}

func (c *Client) writeRequest(w *bufio.Writer, method string, u *url.URL, r *Request) error {
	ua := c.UserAgent
	if ua == "" {
		ua = "lpmos-agent"
	}
	fmt.Fprintf(w, "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n", method, u.RequestURI(), u.Host, ua)
	if r.Body != nil || method == "POST" || method == "PUT" {
		fmt.Fprintf(w, "Content-Length: %d\r\n", len(r.Body))
	}
	for k, vs := range r.Header {
		k = textproto.CanonicalMIMEHeaderKey(k)
		if k == "Host" || k == "Content-Length" || k == "User-Agent" || k == "Connection" {
			continue
		}
		for _, v := range vs {
			if strings.ContainsAny(k+v, "\r\n") {
				return fmt.Errorf("httpc: header %s has a line break", k)
			}
			fmt.Fprintf(w, "%s: %s\r\n", k, v)
		}
	}
	w.WriteString("\r\n")
	w.Write(r.Body)
	return w.Flush()
}

// parseStatusLine parses "HTTP/1.1 200 OK".
func parseStatusLine(line string) (int, string, error) {
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return 0, "", fmt.Errorf("%w: status line %q", ErrMalformed, line)
	}
	codeStr, _, _ := strings.Cut(status, " ")
	code, err := strconv.Atoi(codeStr)
	if err != nil || len(codeStr) != 3 || code < 100 {
		return 0, "", fmt.Errorf("%w: status line %q", ErrMalformed, line)
	}
	return code, status, nil
}

// hasToken reports whether the comma-separated header value v holds tok.
func hasToken(v, tok string) bool {
	for f := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(f), tok) {
			return true
		}
	}
	return false
}

func (c *Client) getIdle(key string) *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	timeout := c.IdleTimeout
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	for i := len(c.idle) - 1; i >= 0; i-- {
		cn := c.idle[i]
		if cn.key != key {
			continue
		}
		c.idle = append(c.idle[:i], c.idle[i+1:]...)
		if time.Since(cn.since) > timeout {
			cn.nc.Close()
			continue
		}
		return cn
	}
	return nil
}

func (c *Client) putIdle(cn *conn) {
	max := c.MaxIdle
	if max == 0 {
		max = 4
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if max < 0 {
		cn.nc.Close()
		return
	}
	cn.since = time.Now()
	c.idle = append(c.idle, cn)
	for len(c.idle) > max {
		c.idle[0].nc.Close()
		c.idle = c.idle[1:]
	}
}

// CloseIdleConnections implements Doer.
func (c *Client) CloseIdleConnections() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cn := range c.idle {
		cn.nc.Close()
	}
	c.idle = nil
}

// body is a Response.Body: it hands its connection back for reuse when the
// body was read to its end.
type body struct {
	c     *Client
	cn    *conn
	ctx   context.Context
	stop  func() bool
	r     io.Reader
	reuse bool

	mu   sync.Mutex
	done bool
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if done {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		if b.ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			err = b.ctx.Err()
		}
		b.finish(false)
	}
	return n, err
}

// Close implements io.Closer. A body not read to its end closes its
// connection.
func (b *body) Close() error {
	b.finish(false)
	return nil
}

func (b *body) finish(complete bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return
	}
	b.done = true
	// The deadline the context may have set is only undone if stop won.
	if b.stop() && complete && b.reuse {
		b.c.putIdle(b.cn)
		return
	}
	b.cn.nc.Close()
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// exactReader reads n bytes, and reports a short body as
// io.ErrUnexpectedEOF.
type exactReader struct {
	r io.Reader
	n int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.n {
		p = p[:e.n]
	}
	n, err := e.r.Read(p)
	e.n -= int64(n)
	if err == io.EOF && e.n > 0 {
		err = io.ErrUnexpectedEOF
	}
	if err == nil && e.n == 0 {
		err = io.EOF
	}
	return n, err
}

// chunkedReader decodes "Transfer-Encoding: chunked" (RFC 9112 7.1),
// skipping chunk extensions and trailers.
type chunkedReader struct {
	r    *bufio.Reader
	left int64 // bytes left in the current chunk
	eof  bool
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	if c.eof {
		return 0, io.EOF
	}
	if c.left == 0 {
		line, err := c.line()
		if err != nil {
			return 0, err
		}
		size, _, _ := strings.Cut(line, ";")
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%w: chunk size %q", ErrMalformed, line)
		}
		if n == 0 {
			for { // trailers up to the empty line
				l, err := c.line()
				if err != nil {
					return 0, err
				}
				if l == "" {
					break
				}
			}
			c.eof = true
			return 0, io.EOF
		}
		c.left = n
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	if err == io.EOF {
		return n, io.ErrUnexpectedEOF
	}
	if err == nil && c.left == 0 {
		if l, lerr := c.line(); lerr != nil || l != "" {
			return n, fmt.Errorf("%w: no CRLF after a chunk", ErrMalformed)
		}
	}
	return n, err
}

func (c *chunkedReader) line() (string, error) {
	l, err := c.r.ReadSlice('\n')
	if err == io.EOF {
		return "", io.ErrUnexpectedEOF
	}
	if err != nil {
		return "", err
	}
	return strings.TrimRight(string(l), "\r\n"), nil
}
