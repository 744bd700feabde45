package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/httpc"
)

// tlsRegion is a real TLS server with a self-signed certificate of its
// own (httptest's is shared by every test server) that counts the agent
// calls reaching its handler.
func tlsRegion(t *testing.T, h http.Handler) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		h.ServeHTTP(w, r)
	}))
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	ts.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	ts.StartTLS()
	t.Cleanup(ts.Close)
	return ts, &calls
}

func selfSigned(t *testing.T) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "region"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	})
}

func TestClientCertificatePin(t *testing.T) {
	ts, calls := tlsRegion(t, okHandler())
	right := agent.CertSHA256(ts.Certificate().Raw)
	wrong := strings.Repeat("00", 32)
	tests := []struct {
		name      string
		url, pin  string
		wantErr   error  // nil: the call goes through
		wantText  string // in the error
		wantCalls int32  // calls that reached the handler
	}{
		{"right pin", ts.URL, right, nil, "", 1},
		{"wrong pin is refused before any request", ts.URL, wrong, agent.ErrCertificatePin, "pinned " + wrong, 0},
		{"no pin: system roots refuse a self-signed region", ts.URL, "", nil, "certificate", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls.Store(0)
			cfg := testConfig(ts.URL)
			cfg.RegionCertSHA256 = tt.pin
			c, err := agent.NewClient(cfg)
			require.NoError(t, err)
			t.Cleanup(c.Close)
			err = c.Progress(context.Background(), "writing", 10, "", nil)
			switch {
			case tt.wantText == "":
				require.NoError(t, err)
			case tt.wantErr != nil:
				require.ErrorIs(t, err, tt.wantErr)
				assert.ErrorContains(t, err, tt.wantText)
				assert.NotContains(t, err.Error(), "giving up after", "a wrong certificate is final, not retried")
			default:
				require.Error(t, err)
				assert.ErrorContains(t, err, tt.wantText)
			}
			assert.Equal(t, tt.wantCalls, calls.Load())
		})
	}
}

// With a pin the agent never speaks plain HTTP: not as its region URL,
// and not when the region (or someone in its place) redirects it there.
func TestClientPinRefusesPlainHTTP(t *testing.T) {
	plain := httptest.NewServer(okHandler())
	t.Cleanup(plain.Close)
	var plainCalls atomic.Int32
	plain.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { plainCalls.Add(1) })

	cfg := testConfig(plain.URL)
	cfg.RegionCertSHA256 = strings.Repeat("ab", 32)
	_, err := agent.NewClient(cfg)
	require.ErrorIs(t, err, agent.ErrInvalidConfig)
	assert.ErrorContains(t, err, "refusing plain HTTP")

	ts, _ := tlsRegion(t, http.RedirectHandler(plain.URL+agent.PathProgress, http.StatusTemporaryRedirect))
	cfg = testConfig(ts.URL)
	cfg.RegionCertSHA256 = agent.CertSHA256(ts.Certificate().Raw)
	c, err := agent.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	err = c.Progress(context.Background(), "writing", 10, "", nil)
	require.ErrorIs(t, err, agent.ErrCertificatePin)
	assert.ErrorContains(t, err, "only https")
	assert.Zero(t, plainCalls.Load(), "the token never went out in the clear")
}

// The client's HTTPClient (what the image installer downloads with)
// carries the same pin.
func TestClientHTTPClientIsPinned(t *testing.T) {
	ts, _ := tlsRegion(t, okHandler())
	other, _ := tlsRegion(t, okHandler())
	cfg := testConfig(ts.URL)
	cfg.RegionCertSHA256 = agent.CertSHA256(ts.Certificate().Raw)
	c, err := agent.NewClient(cfg)
	require.NoError(t, err)
	t.Cleanup(c.Close)

	ctx := context.Background()
	resp, err := c.HTTPClient().Do(ctx, &httpc.Request{URL: ts.URL + "/boot/files/image.raw"})
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	_, err = c.HTTPClient().Do(ctx, &httpc.Request{URL: other.URL + "/boot/files/image.raw"}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, agent.ErrCertificatePin, "another server's certificate")
}
