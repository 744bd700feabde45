package sim_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/httpc"
	"github.com/lpmos/lpmos/agent/sim"
)

// PinClient pins a client of the caller's (a load test's, with its own
// source address) and refuses transports it cannot pin; NetHTTP hands it
// to the agent.
func TestPinClient(t *testing.T) {
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.Header.Get("Authorization"))
	}))
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	ts.StartTLS()
	t.Cleanup(ts.Close)
	plain := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plain.Close)

	base := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}).DialContext}}
	c, err := sim.PinClient(base, agent.CertSHA256(ts.Certificate().Raw))
	require.NoError(t, err)
	assert.Nil(t, base.Transport.(*http.Transport).TLSClientConfig, "the caller's client is left alone")
	d := sim.NetHTTP{Client: c}
	ctx := context.Background()
	resp, err := d.Do(ctx, &httpc.Request{Method: "POST", URL: ts.URL, Header: map[string][]string{"Authorization": {"Bearer t"}}, Body: []byte("{}")})
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "POST Bearer t", string(b))
	_, err = d.Do(ctx, &httpc.Request{URL: plain.URL}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, agent.ErrCertificatePin, "no plain http under a pin")

	c, err = sim.PinClient(base, strings.Repeat("00", 32))
	require.NoError(t, err)
	_, err = sim.NetHTTP{Client: c}.Do(ctx, &httpc.Request{URL: ts.URL}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, agent.ErrCertificatePin)

	_, err = sim.PinClient(&http.Client{Transport: http.NewFileTransport(http.Dir("."))}, strings.Repeat("00", 32))
	require.ErrorIs(t, err, agent.ErrInvalidConfig)
}
