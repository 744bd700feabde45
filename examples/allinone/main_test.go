package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/store/etcd"
)

var bin string // built once by TestMain

func TestMain(m *testing.M) { os.Exit(cmdtest.Main(m, &bin)) }

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// The README's main command, run as a real process on the embedded etcd:
// it prints the dashboard URL and a generated token, serves the API, and
// its region picks up a task created through it.
func TestAllInOneRuns(t *testing.T) {
	data := t.TempDir()
	cp, rp := freePort(t), freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// An http:// loopback URL, as command lines before client certificates
	// had: the member serves it as https:// with client authentication.
	etcdPort := freePort(t)
	cmd := exec.CommandContext(ctx, bin,
		"--data-dir", data, "--boot-dir", filepath.Join(data, "boot"),
		"--listen-addr", fmt.Sprintf("127.0.0.1:%d", cp),
		"--region-listen", fmt.Sprintf("127.0.0.1:%d", rp), "--region-url", fmt.Sprintf("http://127.0.0.1:%d", rp),
		"--tftp-listen", "", "--simulate", "1", "--simulate-speed", "50",
		"--etcd-client-url", fmt.Sprintf("http://127.0.0.1:%d", etcdPort),
		"--etcd-peer-url", fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
	cmd.Env = append(os.Environ(), "LPMOS_ADMIN_TOKEN=")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = 10 * time.Second
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("allinone stderr:\n%s", stderr.String())
		}
	}()

	// It announces the dashboard and the generated admin token.
	var dashboard, token, simulated string
	sc := bufio.NewScanner(stdout)
	for (dashboard == "" || token == "" || simulated == "") && sc.Scan() {
		line := sc.Text()
		if m := regexp.MustCompile(`^simulated machine: (\S+)`).FindStringSubmatch(line); m != nil {
			simulated = m[1]
		}
		if u, ok := strings.CutPrefix(line, "LPMOS dashboard: "); ok {
			dashboard = u
		}
		if m := regexp.MustCompile(`admin token .*: ([0-9a-f]+)$`).FindStringSubmatch(line); m != nil {
			token = m[1]
		}
	}
	require.Equal(t, fmt.Sprintf("http://127.0.0.1:%d/", cp), dashboard)
	require.NotEmpty(t, token)
	require.Equal(t, "02:00:00:00:00:01", simulated)
	go func() { _, _ = io.Copy(io.Discard, stdout) }()

	api := func(method, path, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, dashboard+strings.TrimPrefix(path, "/"), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	// The region heartbeats its capabilities; a task for it is prepared.
	require.Eventually(t, func() bool {
		code, body := api("GET", "/api/v1/regions", "")
		regions, _ := body["regions"].([]any)
		return code == 200 && len(regions) == 1 && regions[0].(map[string]any)["status"] == "online"
	}, 30*time.Second, 100*time.Millisecond)
	// The simulated machine boots through the region once it has a task,
	// reports its hardware, and installs once approved.
	code, body := api("POST", "/api/v1/tasks", `{"region_id":"dc1","target_mac":"`+simulated+`","os_type":"debian","os_version":"12"}`)
	require.Equal(t, http.StatusCreated, code, "%v", body)
	id := body["task_id"].(string)
	waitFor := func(status string) map[string]any {
		var got map[string]any
		require.Eventually(t, func() bool {
			_, got = api("GET", "/api/v1/tasks/"+id, "")
			return got["status"] == status
		}, 60*time.Second, 100*time.Millisecond, "task never reached %s: %v", status, got)
		return got
	}
	got := waitFor("pending_approval")
	assert.Equal(t, "Simulated Xeon", got["hardware"].(map[string]any)["cpu"].(map[string]any)["model"])
	code, body = api("PUT", "/api/v1/tasks/"+id+"/approve", `{"approved":true,"notes":"simulated"}`)
	require.Equal(t, http.StatusOK, code, "%v", body)
	waitFor("completed")

	// The boot traces, written by the region, served by the control plane:
	// the simulated machine's agent calls, and why a machine without a task
	// was sent away.
	hasEvent := func(mac string, match func(e map[string]any) bool) bool {
		code, body := api("GET", "/api/v1/machines/"+mac+"/trace", "")
		events, _ := body["events"].([]any)
		return code == http.StatusOK && slices.ContainsFunc(events, func(e any) bool {
			m, _ := e.(map[string]any)
			return m != nil && match(m)
		})
	}
	require.Eventually(t, func() bool {
		return hasEvent(simulated, func(e map[string]any) bool {
			d, _ := e["detail"].(map[string]any)
			return e["kind"] == "agent" && d["route"] == "POST /api/v1/agent/report" && d["code"] == "200" && e["region"] == "dc1"
		})
	}, 30*time.Second, 100*time.Millisecond, "the simulated machine's trace has no report")
	const stranger = "02:00:00:00:00:99"
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/boot/%s.ipxe", rp, stranger))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Eventually(t, func() bool {
		return hasEvent(stranger, func(e map[string]any) bool {
			return e["kind"] == "script" && e["outcome"] == "ignored" && e["reason"] == "no active task for this machine in region dc1"
		})
	}, 30*time.Second, 100*time.Millisecond, "the stranger's trace does not say why it was sent away")

	// One registry for the process: the control plane's /metrics has the
	// region's series and the process figures.
	fams := cmdtest.CheckMetrics(t, dashboard+"metrics", token)
	for _, name := range []string{"lpmos_tasks", "lpmos_region_tasks", "lpmos_region_agent_requests_total", "lpmos_http_requests_total"} {
		assert.Contains(t, fams, name)
	}

	resp, err = http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", rp))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// The embedded etcd answers a real etcd client only with the client
	// certificate generated into the data directory (README, "Inspecting
	// the embedded etcd").
	pki := filepath.Join(data, "etcd-pki")
	withCert, err := etcd.TLSConfig(filepath.Join(pki, "ca.crt"), filepath.Join(pki, "client.crt"), filepath.Join(pki, "client.key"))
	require.NoError(t, err)
	withoutCert, err := etcd.TLSConfig(filepath.Join(pki, "ca.crt"), "", "")
	require.NoError(t, err)
	count := func(endpoint string, tlsCfg *tls.Config) (int64, error) {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		require.NoError(t, err)
		defer c.Close()
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		r, err := c.Get(ctx, "/lpmos/tasks/"+id+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, err
		}
		return r.Count, nil
	}
	n, err := count(fmt.Sprintf("https://127.0.0.1:%d", etcdPort), withCert)
	require.NoError(t, err)
	assert.Positive(t, n, "the task's keys")
	_, err = count(fmt.Sprintf("https://127.0.0.1:%d", etcdPort), withoutCert)
	assert.Error(t, err, "TLS without the client certificate")
	_, err = count(fmt.Sprintf("http://127.0.0.1:%d", etcdPort), nil)
	assert.Error(t, err, "plain HTTP")

	// The README's etcdctl command works as written (paths relative to the
	// data directory's parent); without the client certificate it fails.
	etcdctl, err := exec.LookPath("etcdctl")
	require.NoError(t, err, "etcdctl (Debian etcd-client) is installed by ./scripts/test.sh")
	run := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, etcdctl, append([]string{"--endpoints", fmt.Sprintf("https://127.0.0.1:%d", etcdPort),
			"--dial-timeout", "3s", "--command-timeout", "5s"}, args...)...)
		cmd.Dir = filepath.Dir(data)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	rel := filepath.Join(filepath.Base(data), "etcd-pki")
	out, err := run("--cacert", filepath.Join(rel, "ca.crt"), "--cert", filepath.Join(rel, "client.crt"),
		"--key", filepath.Join(rel, "client.key"), "get", "--prefix", "--keys-only", "/lpmos/")
	require.NoError(t, err, out)
	assert.Contains(t, out, "/lpmos/tasks/"+id+"/status")
	out, err = run("--cacert", filepath.Join(rel, "ca.crt"), "get", "--prefix", "--keys-only", "/lpmos/")
	assert.Error(t, err, "etcdctl without the client certificate: %s", out)
	assert.NotContains(t, out, "/lpmos/tasks/")
}

// quick are the flags of an allinone that starts in a moment: nothing
// embedded, no TFTP.
func quick(t *testing.T, cp, region string) []string {
	return []string{"--store", "memory", "--tftp-listen", "", "--boot-dir", t.TempDir(),
		"--listen-addr", cp, "--region-listen", region, "--region-url", "http://" + region}
}

// A server that cannot listen makes the process fail, loudly, instead of
// exiting 0 in silence.
func TestBusyAddressFailsTheProcess(t *testing.T) {
	for _, tc := range []struct {
		name string
		args func(busy string) []string
	}{
		{"control plane", func(busy string) []string { return quick(t, busy, cmdtest.FreeAddr(t)) }},
		{"region", func(busy string) []string { return quick(t, cmdtest.FreeAddr(t), busy) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			busy := cmdtest.Occupied(t)
			code, out := cmdtest.Run(t, 10*time.Second, bin, tc.args(busy)...)
			assert.Equal(t, 1, code, out)
			assert.Contains(t, out, busy, "the error names the address")
			assert.Contains(t, out, "address already in use")
		})
	}
}

func TestSIGTERMStopsCleanly(t *testing.T) {
	cp, region := cmdtest.FreeAddr(t), cmdtest.FreeAddr(t)
	p := cmdtest.Start(t, bin, []string{"LPMOS_ADMIN_TOKEN=0123456789abcdef0123"}, quick(t, cp, region)...)
	p.WaitOK("http://" + cp + "/healthz")
	p.WaitOK("http://" + region + "/health")
	p.Signal(syscall.SIGTERM)
	assert.Equal(t, 0, p.Wait(30*time.Second))
}

func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"version as an argument", []string{"version"}, 2, `unexpected argument "version"`},
		{"stray argument", []string{"--store", "memory", "serve"}, 2, `unexpected argument "serve"`},
		{"unknown flag", []string{"--no-such-flag"}, 2, "flag provided but not defined"},
		{"bad log level", []string{"--store", "memory", "--log-level", "loud"}, 2, "--log-level"},
		{"version", []string{"--version"}, 0, "allinone github.com/lpmos/lpmos "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := cmdtest.Run(t, 10*time.Second, bin, tc.args...)
			assert.Equal(t, tc.code, code, out)
			assert.Contains(t, out, tc.want)
			if tc.code == 0 {
				assert.Regexp(t, `go1\.\d+`, out, "the version names the Go release")
			}
		})
	}
}

// Settings from a --config file and the environment, the command line over
// both: the region's ID comes from LPMOS_REGION over the file's, its
// addresses and store from the file. A file with a misspelt key stops the
// process with a usage error naming the line.
func TestConfigFileAndEnvironment(t *testing.T) {
	cp, region := cmdtest.FreeAddr(t), cmdtest.FreeAddr(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "lpmos.yaml")
	require.NoError(t, os.WriteFile(file, []byte(fmt.Sprintf(`# allinone, as an operator writes it
store: memory
tftp-listen: ""
boot-dir: %s
listen-addr: %s
region-listen: %s
region-url: http://%s
region: dc-file
log-level: info
`, filepath.Join(dir, "boot"), cp, region, region)), 0o600))
	const admin = "0123456789abcdef0123"
	p := cmdtest.Start(t, bin, []string{"LPMOS_ADMIN_TOKEN=" + admin, "LPMOS_REGION=dc-env", "LPMOS_LOG_LEVEL=loud"},
		"--config", file, "--log-level", "debug")
	p.WaitOK("http://" + cp + "/readyz")
	req, err := http.NewRequest(http.MethodGet, "http://"+region+"/health", nil)
	require.NoError(t, err)
	var health struct {
		RegionID string `json:"region_id"`
	}
	require.Eventually(t, func() bool {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(&health) == nil
	}, 30*time.Second, 50*time.Millisecond, "the region the file placed never answered")
	assert.Equal(t, "dc-env", health.RegionID, "the environment wins over the file")
	// LPMOS_LOG_LEVEL=loud would have stopped the process: the command
	// line's --log-level won.
	assert.NotContains(t, p.Output(), "log-level")

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("store: memory\nboot_dir: /srv\n"), 0o600))
	code, out := cmdtest.Run(t, 10*time.Second, bin, "--config", bad)
	assert.Equal(t, 2, code, out)
	assert.Contains(t, out, `line 2: "boot_dir" is not a flag of`)
	envBad := cmdtest.Start(t, bin, []string{"LPMOS_LEADER_TTL=soon"}, "--store", "memory")
	assert.Equal(t, 2, envBad.Wait(10*time.Second), envBad.Output())
	assert.Contains(t, envBad.Output(), "LPMOS_LEADER_TTL")
}
