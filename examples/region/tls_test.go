package main_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/internal/testpki"
)

// With --region-tls-cert/--region-tls-key the binary serves its API over
// HTTPS (checked with Go's client and with curl, a TLS client of another
// process) and keeps plain HTTP for firmware and iPXE.
func TestRegionBinaryHTTPS(t *testing.T) {
	etcd := etcdtest.StartMember(t).ClientURL()
	ca := testpki.NewCA(t, "lpmos test CA")
	leaf := ca.Issue(t, "region", "127.0.0.1")
	plain, secure := cmdtest.FreeAddr(t), cmdtest.FreeAddr(t)
	p := cmdtest.Start(t, bin, nil, "--etcd-endpoints", etcd, "--tftp-listen", "", "--boot-dir", t.TempDir(),
		"--region-listen", plain, "--region-tls-listen", secure, "--region-url", "https://"+secure,
		"--region-tls-cert", leaf.CertFile, "--region-tls-key", leaf.KeyFile)
	p.WaitOK("http://" + plain + "/health")

	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	t.Cleanup(c.CloseIdleConnections)
	resp, err := c.Get("https://" + secure + agent.PathHealth)
	require.NoError(t, err)
	var h agent.Health
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&h))
	resp.Body.Close()
	assert.Equal(t, "running", h.Services["https"])

	out, err := exec.Command("curl", "-sS", "--fail", "--cacert", ca.CertFile, "--tlsv1.2", "https://"+secure+agent.PathHealth).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), `"https":"running"`)
	out, err = exec.Command("curl", "-sS", "--fail", "https://"+secure+agent.PathHealth).CombinedOutput()
	require.Error(t, err, "curl without the CA refuses the certificate: %s", out)

	p.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, p.Wait(30*time.Second), p.Output())
}
