package embedded_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// secureConfig is an embedded member as the binaries run it: no Insecure,
// certificates generated next to the data.
func secureConfig(t *testing.T, scheme string) embedded.Config {
	dir := t.TempDir()
	return embedded.Config{
		Dir:               filepath.Join(dir, "etcd"),
		ClientURL:         fmt.Sprintf("%s://127.0.0.1:%d", scheme, freePort(t)),
		PeerURL:           fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		HeartbeatInterval: 50 * time.Millisecond,
		ElectionTimeout:   500 * time.Millisecond,
		UnsafeNoFsync:     true,
	}
}

// rawGet reads a key with a plain etcd client, as any other process on the
// host could try to.
func rawGet(t *testing.T, endpoint string, tlsCfg *tls.Config, key string) (string, error) {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{endpoint}, TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
	})
	require.NoError(t, err)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, key)
	if err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// The embedded member only talks to holders of its client certificate:
// a plain client, a TLS client without a certificate and one with a
// certificate from another CA all fail to read, ours and a real etcd client
// with the generated files succeed.
func TestEmbeddedRequiresClientCertificate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := embedded.Start(ctx, secureConfig(t, "https"))
	require.NoError(t, err)
	defer m.Close()
	s, err := m.Store(ctx)
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Put(ctx, "/lpmos/test/secret", []byte("token-hash"))
	require.NoError(t, err)

	pki, ok := m.PKI()
	require.True(t, ok)
	url := m.ClientURL()
	require.True(t, strings.HasPrefix(url, "https://"), url)
	plainURL := "http://" + strings.TrimPrefix(url, "https://")

	caPEM, err := os.ReadFile(pki.CAFile)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(caPEM))
	foreign, err := embedded.EnsurePKI(filepath.Join(t.TempDir(), "other"), "127.0.0.1")
	require.NoError(t, err)
	foreignCert, err := tls.LoadX509KeyPair(foreign.ClientCertFile, foreign.ClientKeyFile)
	require.NoError(t, err)
	ours, err := pki.ClientTLS()
	require.NoError(t, err)

	for _, tc := range []struct {
		name     string
		endpoint string
		tls      *tls.Config
	}{
		{"plain http, no TLS", plainURL, nil},
		{"https, no client certificate", url, &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}},
		{"https, no verification, no client certificate", url, &tls.Config{InsecureSkipVerify: true}},
		{"https, certificate of another CA", url, &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{foreignCert}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := rawGet(t, tc.endpoint, tc.tls, "/lpmos/test/secret")
			require.Error(t, err)
			require.Empty(t, v)
		})
	}
	t.Run("real client with the generated certificate", func(t *testing.T) {
		v, err := rawGet(t, url, ours, "/lpmos/test/secret")
		require.NoError(t, err)
		require.Equal(t, "token-hash", v)
	})
}

// The certificates are private files, generated once: a restart keeps the
// CA and client certificate (copies handed to other processes keep working)
// and upgrades an http:// loopback URL to https.
func TestEmbeddedPKIPersistsAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := secureConfig(t, "http")
	m, err := embedded.Start(ctx, cfg)
	require.NoError(t, err)
	require.Equal(t, "https://"+strings.TrimPrefix(cfg.ClientURL, "http://"), m.ClientURL())
	pki, ok := m.PKI()
	require.True(t, ok)
	require.Equal(t, cfg.Dir+"-pki", pki.Dir)

	st, err := os.Stat(pki.Dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	entries, err := os.ReadDir(pki.Dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		info, err := e.Info()
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), e.Name())
	}
	require.ElementsMatch(t, []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"}, names)

	read := func(name string) string {
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		return string(b)
	}
	ca, client, server := read(pki.CAFile), read(pki.ClientCertFile), read(pki.ServerCertFile)
	s, err := m.Store(ctx)
	require.NoError(t, err)
	_, err = s.Put(ctx, "/lpmos/test/persist", []byte("kept"))
	require.NoError(t, err)
	s.Close()
	m.Close()

	m2, err := embedded.Start(ctx, m.Config())
	require.NoError(t, err)
	defer m2.Close()
	require.Equal(t, ca, read(pki.CAFile))
	require.Equal(t, client, read(pki.ClientCertFile))
	require.Equal(t, server, read(pki.ServerCertFile))
	tlsCfg, err := pki.ClientTLS()
	require.NoError(t, err)
	v, err := rawGet(t, m2.ClientURL(), tlsCfg, "/lpmos/test/persist")
	require.NoError(t, err)
	require.Equal(t, "kept", v)
}

// A server certificate that no longer names the client URL's host is
// replaced; the CA and the client certificate stay.
func TestEnsurePKIRenewsServerCertificateForNewHost(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	p, err := embedded.EnsurePKI(dir, "127.0.0.1")
	require.NoError(t, err)
	read := func(name string) []byte {
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		return b
	}
	ca, client, server := read(p.CAFile), read(p.ClientCertFile), read(p.ServerCertFile)

	_, err = embedded.EnsurePKI(dir, "127.0.0.1")
	require.NoError(t, err)
	require.Equal(t, server, read(p.ServerCertFile), "unchanged host keeps the certificate")

	_, err = embedded.EnsurePKI(dir, "etcd.example.net")
	require.NoError(t, err)
	require.Equal(t, ca, read(p.CAFile))
	require.Equal(t, client, read(p.ClientCertFile))
	require.NotEqual(t, server, read(p.ServerCertFile))
	pair, err := tls.LoadX509KeyPair(p.ServerCertFile, p.ServerKeyFile)
	require.NoError(t, err)
	c, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	require.NoError(t, c.VerifyHostname("etcd.example.net"))
	require.NoError(t, c.VerifyHostname("127.0.0.1"))
}

// URLs that would expose the store to the network without authentication
// are refused before anything starts.
func TestEmbeddedRefusesInsecureURLs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		client    string
		peer      string
		insecure  bool
		errSubstr string
	}{
		{"plain client URL on a network address", "http://10.0.0.1:2379", "", false, "use https://10.0.0.1:2379"},
		{"plain client URL on every address", "http://0.0.0.0:2379", "", false, "use https://"},
		{"insecure member off loopback", "http://10.0.0.1:2379", "", true, "loopback only"},
		{"insecure member with https", "https://127.0.0.1:2379", "", true, "loopback only"},
		{"peer URL on a network address", "", "http://10.0.0.1:2380", false, "peer URL"},
		{"peer URL with TLS", "", "https://127.0.0.1:2380", false, "peer URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			_, err := embedded.Start(context.Background(), embedded.Config{
				Dir: filepath.Join(dir, "etcd"), ClientURL: tc.client, PeerURL: tc.peer, Insecure: tc.insecure,
			})
			require.ErrorIs(t, err, embedded.ErrInsecureURL)
			require.ErrorContains(t, err, tc.errSubstr)
			_, statErr := os.Stat(filepath.Join(dir, "etcd"))
			require.ErrorIs(t, statErr, os.ErrNotExist, "nothing started")
		})
	}
}

// Restarting an embedded member on the same directory keeps the data: the
// all-in-one binary's default store survives a restart.
func TestEmbeddedRestartKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := etcdtest.StartMember(t)
	s, err := m.Store(ctx)
	require.NoError(t, err)
	rev, err := s.Put(ctx, "/lpmos/test/persist", []byte("kept"))
	require.NoError(t, err)
	s.Close()
	cfg := m.Config()
	m.Close()

	m2, err := embedded.Start(ctx, cfg)
	require.NoError(t, err)
	defer m2.Close()
	s2, err := m2.Store(ctx)
	require.NoError(t, err)
	defer s2.Close()
	kv, err := s2.Get(ctx, "/lpmos/test/persist")
	require.NoError(t, err)
	require.Equal(t, "kept", string(kv.Value))
	require.Equal(t, rev, kv.ModRevision)
}
