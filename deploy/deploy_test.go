// Package deploy_test checks the deployment files under deploy/ with the
// tools that read them: systemd's own analyzer for the units, etcd's
// config loader for the members, haproxy's checker for the load balancer,
// our binaries for their --config files, and a reading of the
// Dockerfiles (no image builder runs here: base images come from a
// registry this machine cannot reach).
package deploy_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/server/v3/embed"
)

func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err, "%s (Debian package %s; scripts/test.sh installs it)", name, pkg)
	return p
}

// TestSystemdUnits: systemd-analyze verify accepts every unit, and its
// security analysis rates each at most at the exposure it was written
// for (0 is a fully locked-down service, 10 an unprotected one).
func TestSystemdUnits(t *testing.T) {
	if testing.Short() {
		t.Skip("runs systemd-analyze")
	}
	analyze := tool(t, "systemd-analyze", "systemd")
	// In tenths, as --threshold counts.
	maxExposure := map[string]int{
		"lpmos-control-plane.service": 20,
		"lpmos-region.service":        25, // two capabilities, netlink
	}
	units, err := filepath.Glob("systemd/*.service")
	require.NoError(t, err)
	require.Len(t, units, len(maxExposure))
	dir := t.TempDir()
	for _, u := range units {
		name := filepath.Base(u)
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(u)
			require.NoError(t, err)
			// verify wants ExecStart's program to exist: point it at a
			// stand-in in the temporary directory.
			bin := regexp.MustCompile(`ExecStart=(/usr/local/bin/(\S+))`).FindStringSubmatch(string(data))
			require.NotNil(t, bin, "ExecStart names /usr/local/bin/lpmos-...")
			stand := filepath.Join(dir, bin[2])
			require.NoError(t, os.WriteFile(stand, []byte("#!/bin/sh\n"), 0o755))
			unit := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(unit, []byte(strings.ReplaceAll(string(data), bin[1], stand)), 0o644))

			out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
			assert.NoError(t, err, "systemd-analyze verify:\n%s", out)
			// Exits non-zero above the threshold.
			out, err = exec.Command(analyze, "security", "--offline=true", "--threshold="+strconv.Itoa(maxExposure[name]), unit).CombinedOutput()
			require.NoError(t, err, "exposure above %d/100:\n%s", maxExposure[name], out)
			m := regexp.MustCompile(`Overall exposure level for \S+: (\d+)\.(\d)`).FindStringSubmatch(string(out))
			require.NotNil(t, m, "%s", out)
			whole, _ := strconv.Atoi(m[1])
			tenth, _ := strconv.Atoi(m[2])
			assert.LessOrEqual(t, whole*10+tenth, maxExposure[name], "exposure of %s", name)
		})
	}
}

// TestEtcdMemberConfigs: etcd's own loader reads each member's file, and
// the three form one cluster with TLS for clients (certificates required)
// and peers.
func TestEtcdMemberConfigs(t *testing.T) {
	files, err := filepath.Glob("production/etcd-*.yaml")
	require.NoError(t, err)
	require.Len(t, files, 3)
	names := map[string]bool{}
	var cluster string
	for _, f := range files {
		cfg, err := embed.ConfigFromFile(f)
		require.NoError(t, err, f)
		names[cfg.Name] = true
		assert.True(t, cfg.ClientTLSInfo.ClientCertAuth, "%s: clients need a certificate", f)
		assert.True(t, cfg.PeerTLSInfo.ClientCertAuth, "%s: peers need a certificate", f)
		for _, u := range append(append(cfg.ListenClientUrls, cfg.AdvertiseClientUrls...), cfg.ListenPeerUrls...) {
			assert.Equal(t, "https", u.Scheme, "%s: %s", f, u.String())
		}
		if cluster == "" {
			cluster = cfg.InitialCluster
		}
		assert.Equal(t, cluster, cfg.InitialCluster, "%s: one cluster", f)
		assert.Contains(t, cfg.InitialCluster, cfg.Name+"="+cfg.AdvertisePeerUrls[0].String(), f)
	}
	assert.Len(t, names, 3)
}

// TestHAProxyConfig: haproxy -c accepts the load balancer's file (with a
// throwaway certificate where it names one).
func TestHAProxyConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("runs haproxy -c")
	}
	haproxy := tool(t, "haproxy", "haproxy")
	data, err := os.ReadFile("production/haproxy.cfg")
	require.NoError(t, err)
	pemFile := filepath.Join(t.TempDir(), "lpmos.pem")
	require.NoError(t, os.WriteFile(pemFile, selfSigned(t), 0o600))
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	require.NoError(t, os.WriteFile(cfg, []byte(strings.ReplaceAll(string(data), "/etc/haproxy/lpmos.pem", pemFile)), 0o600))
	out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "Configuration file is valid")
	assert.Contains(t, string(data), "option httpchk GET /readyz", "replicas are checked on /readyz")
}

// selfSigned returns a certificate and its key in one PEM file, as
// haproxy's crt wants.
func selfSigned(t *testing.T) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lpmos.example.net"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"lpmos.example.net"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})...)
}

// TestProductionConfigsLoad: each binary reads its production --config
// file (every key a flag, every value one it accepts) and, given
// --version, exits 0 without starting.
func TestProductionConfigsLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	dir := t.TempDir()
	for _, tc := range []struct{ bin, config string }{
		{"control-plane", "production/control-plane.yaml"},
		{"region", "production/region-dc1-a.yaml"},
		{"region", "production/region-dc1-b.yaml"},
	} {
		t.Run(filepath.Base(tc.config), func(t *testing.T) {
			bin := filepath.Join(dir, tc.bin)
			if _, err := os.Stat(bin); err != nil {
				out, err := exec.Command("go", "build", "-o", bin, "../examples/"+tc.bin).CombinedOutput()
				require.NoError(t, err, "%s", out)
			}
			cmd := exec.Command(bin, "--config", tc.config, "--version")
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no LPMOS_ variables from the caller
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Contains(t, string(out), tc.bin+" github.com/lpmos/lpmos")
		})
	}
}

// TestDockerfiles reads each Dockerfile: a builder stage that builds one of
// our commands statically, a final stage that copies only from stages it
// defines, runs as a non-root user, and starts the binary it copied in
// exec form.
func TestDockerfiles(t *testing.T) {
	files, err := filepath.Glob("docker/Dockerfile.*")
	require.NoError(t, err)
	require.Len(t, files, 3)
	known := map[string]bool{"FROM": true, "ARG": true, "RUN": true, "COPY": true, "WORKDIR": true, "USER": true,
		"EXPOSE": true, "ENTRYPOINT": true, "CMD": true, "VOLUME": true, "ENV": true, "LABEL": true}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cmd := strings.TrimPrefix(filepath.Ext(f), ".")
			lines := instructions(t, f)
			require.NotEmpty(t, lines)
			stages := map[string]bool{}
			var last []string // the final stage's instructions
			for i, l := range lines {
				word, rest, _ := strings.Cut(l, " ")
				require.True(t, known[word], "%s: unknown or unexpected instruction %q", f, word)
				if i == 0 {
					require.Contains(t, []string{"ARG", "FROM"}, word, "%s starts with ARG or FROM", f)
				}
				if word == "FROM" {
					if m := regexp.MustCompile(`(?i)\sAS\s+(\S+)$`).FindStringSubmatch(rest); m != nil {
						stages[m[1]] = true
					}
					last = nil
				}
				if word == "COPY" {
					if m := regexp.MustCompile(`--from=(\S+)`).FindStringSubmatch(rest); m != nil {
						assert.True(t, stages[m[1]], "%s: COPY --from=%s: no such stage before it", f, m[1])
					}
				}
				last = append(last, l)
			}
			all := strings.Join(lines, "\n")
			assert.Regexp(t, `CGO_ENABLED=0 go build .*-o /out/lpmos-`+cmd+` \./examples/`+cmd, all, "a static build of examples/%s", cmd)
			_, err := os.Stat(filepath.Join("..", "examples", cmd, "main.go"))
			require.NoError(t, err, "examples/%s exists", cmd)
			final := strings.Join(last, "\n")
			assert.Contains(t, final, "COPY --from=build /out/lpmos-"+cmd+" /usr/local/bin/lpmos-"+cmd)
			assert.Regexp(t, `(?m)^USER [1-9][0-9]*:[1-9][0-9]*$`, final, "the final stage runs as a non-root user")
			assert.Regexp(t, `(?m)^ENTRYPOINT \["/usr/local/bin/lpmos-`+cmd+`"\]$`, final, "exec form, the binary copied in")
		})
	}
}

// instructions returns a Dockerfile's instructions, comments dropped and
// continuation lines joined.
func instructions(t *testing.T, path string) []string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cont := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSpace(strings.TrimSuffix(line, "\\")))
		if cont {
			cur.WriteString(" ")
			continue
		}
		out = append(out, cur.String())
		cur.Reset()
	}
	require.NoError(t, sc.Err())
	require.Zero(t, cur.Len(), "%s ends in a continuation", path)
	return out
}
