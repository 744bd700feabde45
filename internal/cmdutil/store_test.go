package cmdutil_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/internal/cmdutil/embedetcd"
	"github.com/lpmos/lpmos/store/etcd/embedded"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// The default store is an embedded etcd that requires the client
// certificate it generates into <data-dir>/etcd-pki; another binary reaches
// it with --etcd-endpoints and --etcd-ca/--etcd-cert/--etcd-key pointed at
// those files, and not without them.
func TestStoreFlagsEmbeddedRequiresClientCertificate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	data := t.TempDir()
	port := freePort(t)
	f := cmdutil.StoreFlags{Kind: "etcd", DataDir: data, Embed: embedetcd.Open,
		ClientURL: fmt.Sprintf("https://127.0.0.1:%d", port), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}
	st, closeFn, err := f.Open(ctx, log)
	require.NoError(t, err)
	defer closeFn()
	_, err = st.Put(ctx, "/lpmos/test/k", []byte("v"))
	require.NoError(t, err)

	pki := filepath.Join(data, "etcd-pki")
	for _, name := range []string{"ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key"} {
		info, err := os.Stat(filepath.Join(pki, name))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm(), name)
	}

	endpoint := fmt.Sprintf("https://127.0.0.1:%d", port)
	other := cmdutil.StoreFlags{Kind: "etcd", Endpoints: endpoint,
		CA: filepath.Join(pki, "ca.crt"), Cert: filepath.Join(pki, "client.crt"), Key: filepath.Join(pki, "client.key")}
	st2, close2, err := other.Open(ctx, log)
	require.NoError(t, err)
	defer close2()
	kv, err := st2.Get(ctx, "/lpmos/test/k")
	require.NoError(t, err)
	require.Equal(t, "v", string(kv.Value))

	for name, f := range map[string]cmdutil.StoreFlags{
		"no certificates": {Kind: "etcd", Endpoints: endpoint},
		"CA only":         {Kind: "etcd", Endpoints: endpoint, CA: filepath.Join(pki, "ca.crt")},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := f.Open(ctx, log)
			require.Error(t, err)
		})
	}
}

func TestStoreFlagsRefusePlainClientURLOffLoopback(t *testing.T) {
	data := t.TempDir()
	f := cmdutil.StoreFlags{Kind: "etcd", DataDir: data, Embed: embedetcd.Open, ClientURL: "http://192.0.2.1:2379", PeerURL: "http://127.0.0.1:2380"}
	_, _, err := f.Open(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.ErrorIs(t, err, embedded.ErrInsecureURL)
	require.ErrorContains(t, err, "use https://192.0.2.1:2379")
}

// A binary registered without an embedder (region, control-plane) only
// connects: without --etcd-endpoints it says so instead of starting a
// member, and its flag set has no embedded-member flags.
func TestStoreFlagsWithoutEmbedderNeedEndpoints(t *testing.T) {
	var f cmdutil.StoreFlags
	fs := flag.NewFlagSet("region", flag.ContinueOnError)
	f.Register(fs, nil)
	require.Nil(t, fs.Lookup("data-dir"))
	require.Nil(t, fs.Lookup("etcd-restore"))
	require.NotNil(t, fs.Lookup("etcd-endpoints"))
	f.DataDir = t.TempDir()
	_, _, err := f.Open(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.ErrorContains(t, err, "--etcd-endpoints is required")

	var withEmbed cmdutil.StoreFlags
	fs = flag.NewFlagSet("allinone", flag.ContinueOnError)
	withEmbed.Register(fs, embedetcd.Open)
	require.NotNil(t, fs.Lookup("data-dir"))
	require.NotNil(t, withEmbed.Embed)
}
