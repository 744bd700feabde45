package cmdutil_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/internal/testpki"
)

// An external etcd that requires client certificates, running in another
// process with the operator's own CA: --etcd-endpoints with
// --etcd-ca/--etcd-cert/--etcd-key reaches it; without a certificate,
// with one from another CA, or in clear text it refuses.
func TestStoreFlagsExternalEtcdMutualTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := etcdtest.StartTLSMember(t)
	require.NotEqual(t, os.Getpid(), m.PID, "the member runs in another process")

	f := cmdutil.StoreFlags{Kind: "etcd", Endpoints: m.Endpoint, CA: m.CA.CertFile, Cert: m.Client.CertFile, Key: m.Client.KeyFile}
	st, closeFn, err := f.Open(ctx, log)
	require.NoError(t, err)
	defer closeFn()
	_, err = st.Put(ctx, "/lpmos/test/mtls", []byte("v"))
	require.NoError(t, err)
	kv, err := st.Get(ctx, "/lpmos/test/mtls")
	require.NoError(t, err)
	assert.Equal(t, "v", string(kv.Value))

	// The refusal is the member's: a TLS client that trusts it but has
	// no certificate is told so by the server.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(m.Endpoint, "https://"), &tls.Config{RootCAs: m.CA.Pool(), NextProtos: []string{"h2"}})
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	_, _ = conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	_, err = conn.Read(make([]byte, 1))
	require.ErrorContains(t, err, "certificate required")

	stranger := testpki.NewCA(t, "another CA").Issue(t, "stranger")
	for name, f := range map[string]cmdutil.StoreFlags{
		"CA only, no client certificate": {Kind: "etcd", Endpoints: m.Endpoint, CA: m.CA.CertFile},
		"certificate from another CA":    {Kind: "etcd", Endpoints: m.Endpoint, CA: m.CA.CertFile, Cert: stranger.CertFile, Key: stranger.KeyFile},
		"no TLS at all":                  {Kind: "etcd", Endpoints: strings.Replace(m.Endpoint, "https://", "http://", 1)},
		"server not trusted":             {Kind: "etcd", Endpoints: m.Endpoint, Cert: m.Client.CertFile, Key: m.Client.KeyFile},
	} {
		t.Run(name, func(t *testing.T) {
			st, closeFn, err := f.Open(ctx, log)
			if err == nil {
				closeFn()
			}
			require.Error(t, err, "opened %v", st)
		})
	}
}
