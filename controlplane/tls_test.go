package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/internal/etcdtest"
)

// selfSigned writes a certificate and key for 127.0.0.1 and returns their
// paths and a pool trusting the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lpmos-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	return certFile, keyFile, pool
}

// With a certificate the control plane serves HTTPS and WSS with TLS 1.3
// only, and shuts down cleanly when its context ends.
func TestTLS13(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	srv, err := controlplane.New(controlplane.Config{
		Store: etcdtest.NewStore(t),
		Auth:  auth.Config{Tokens: []auth.StaticToken{{Token: adminToken, Subject: "ada", Role: auth.RoleAdmin}}},
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 2)
	go func() { done <- srv.Run(ctx) }()
	go func() {
		done <- srv.ListenAndServe(ctx, controlplane.ServeOptions{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile,
			Ready: func(a net.Addr) { addrc <- a }})
	}()
	addr := (<-addrc).String()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest("GET", "https://"+addr+"/api/v1/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, uint16(tls.VersionTLS13), resp.TLS.Version)
	// Browsers are told to stay on HTTPS, on every path: the API, the
	// dashboard, health checks and refusals alike.
	for _, path := range []string{"/api/v1/whoami", "/", "/healthz", "/api/v1/tasks"} {
		resp, err := client.Get("https://" + addr + path)
		require.NoError(t, err, path)
		resp.Body.Close()
		assert.Equal(t, "max-age=31536000", resp.Header.Get("Strict-Transport-Security"), path)
	}

	// The certificate's expiry is exported, for an alert before it.
	req, _ = http.NewRequest("GET", "https://"+addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err = client.Do(req)
	require.NoError(t, err)
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	leaf, err := tls.LoadX509KeyPair(certFile, keyFile)
	require.NoError(t, err)
	assert.Contains(t, string(metrics), fmt.Sprintf("lpmos_tls_certificate_expiry_timestamp_seconds{file=%q} %g\n", certFile, float64(leaf.Leaf.NotAfter.Unix())))

	// TLS 1.2 is refused.
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12}}}
	_, err = old.Get("https://" + addr + "/healthz")
	require.Error(t, err)

	// The WebSocket is WSS.
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: pool}, Subprotocols: []string{"lpmos.v1", "bearer." + adminToken}}
	conn, _, err := d.Dial("wss://"+addr+"/ws", nil)
	require.NoError(t, err)
	conn.Close()
	_, _, err = (&websocket.Dialer{}).Dial("ws://"+addr+"/ws", nil)
	require.Error(t, err, "no plain-text WebSocket on a TLS port")

	cancel()
	for range 2 {
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(30 * time.Second):
			t.Fatal("server did not stop")
		}
	}
}

// Over plain HTTP there is no Strict-Transport-Security header: RFC 6797
// has browsers ignore it there, and it would promise HTTPS where none is.
func TestNoHSTSWithoutTLS(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t))
	for _, path := range []string{"/", "/healthz", "/api/v1/whoami"} {
		resp, err := http.Get(cp.ts.URL + path)
		require.NoError(t, err, path)
		resp.Body.Close()
		assert.Empty(t, resp.Header.Get("Strict-Transport-Security"), path)
	}
}
