package sim

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/textproto"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/httpc"
)

// NetHTTP adapts a net/http client to the agent's httpc.Doer, so a
// simulated agent's requests go through a client the caller set up (a load
// test's source addresses, transport limits).
type NetHTTP struct{ Client *http.Client }

var _ httpc.Doer = NetHTTP{}

// Do implements httpc.Doer.
func (d NetHTTP) Do(ctx context.Context, r *httpc.Request) (*httpc.Response, error) {
	method := r.Method
	if method == "" {
		method = http.MethodGet
	}
	var body *bytes.Reader
	if r.Body != nil {
		body = bytes.NewReader(r.Body)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL, nil)
	if body != nil {
		req, err = http.NewRequestWithContext(ctx, method, r.URL, body)
	}
	if err != nil {
		return nil, err
	}
	for k, vs := range r.Header {
		req.Header[textproto.CanonicalMIMEHeaderKey(k)] = vs
	}
	resp, err := d.Client.Do(req)
	if err != nil {
		return nil, err
	}
	return &httpc.Response{StatusCode: resp.StatusCode, Status: resp.Status, Header: textproto.MIMEHeader(resp.Header),
		ContentLength: resp.ContentLength, Body: resp.Body}, nil
}

// CloseIdleConnections implements httpc.Doer.
func (d NetHTTP) CloseIdleConnections() { d.Client.CloseIdleConnections() }

// PinClient returns a copy of c that accepts only the certificate whose
// SHA-256 is pin and only https, redirects included, keeping the rest of
// c's transport (such as a dialer bound to a source address). c's
// Transport must be an *http.Transport or nil.
func PinClient(c *http.Client, pin string) (*http.Client, error) {
	var tr *http.Transport
	switch t := c.Transport.(type) {
	case nil:
		tr = http.DefaultTransport.(*http.Transport).Clone()
	case *http.Transport:
		tr = t.Clone()
	default:
		return nil, fmt.Errorf("%w: cannot pin a client whose transport is %T", agent.ErrInvalidConfig, c.Transport)
	}
	tr.Proxy = nil
	tr.TLSClientConfig = agent.PinnedTLSConfig(pin)
	pinned := *c
	pinned.Transport = httpsOnly{tr}
	return &pinned, nil
}

// httpsOnly refuses any request (a redirect included) that is not https,
// so that a pinned agent never sends its token in the clear.
type httpsOnly struct{ *http.Transport }

func (t httpsOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	if err := agent.HTTPSOnly(r.URL); err != nil {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, err
	}
	return t.Transport.RoundTrip(r)
}
