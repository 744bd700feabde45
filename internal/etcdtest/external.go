package etcdtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/lpmos/lpmos/internal/syncbuf"
	"github.com/lpmos/lpmos/internal/testpki"
)

// externalEnv carries the member's configuration to the process that
// runs it (see RunExternalMember).
const externalEnv = "LPMOS_ETCDTEST_EXTERNAL_MEMBER"

// externalSpec is what the child process needs to run a TLS member.
type externalSpec struct {
	Dir, ClientURL, PeerURL string
	CertFile, KeyFile, CA   string
}

// TLSMember is an etcd member running in another process (the test
// binary started again) that serves clients over mutual TLS only, as an
// operator's external cluster does: its server certificate and the
// client certificate it accepts come from a CA of the test's own, not from
// the embedded member's generated PKI.
type TLSMember struct {
	// Endpoint is the member's client URL (https://127.0.0.1:PORT).
	Endpoint string
	// CA signed the server and client certificates; Client is the
	// certificate (and key) a client must present.
	CA     *testpki.CA
	Client testpki.Leaf
	// PID is the member's process.
	PID int
}

// RunExternalMember runs the member when the process was started by
// StartTLSMember, and never returns then; otherwise it returns at once.
// A test package that calls StartTLSMember calls it first in TestMain.
func RunExternalMember() {
	raw := os.Getenv(externalEnv)
	if raw == "" {
		return
	}
	if err := runExternal(raw); err != nil {
		fmt.Fprintln(os.Stderr, "etcdtest external member:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runExternal(raw string) error {
	var spec externalSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return err
	}
	curl, err := url.Parse(spec.ClientURL)
	if err != nil {
		return err
	}
	purl, err := url.Parse(spec.PeerURL)
	if err != nil {
		return err
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = "external", spec.Dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*curl}, []url.URL{*curl}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*purl}, []url.URL{*purl}
	cfg.InitialCluster = "external=" + spec.PeerURL
	cfg.ClientTLSInfo = transport.TLSInfo{CertFile: spec.CertFile, KeyFile: spec.KeyFile, TrustedCAFile: spec.CA, ClientCertAuth: true}
	cfg.TickMs, cfg.ElectionMs = 50, 500
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("not ready after 60 s")
	}
	fmt.Println("ready")
	// Run until the test closes stdin (or dies: then stdin closes too).
	stopped := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stopped)
	}()
	select {
	case <-stopped:
		return nil
	case err := <-e.Err():
		return err
	}
}

// StartTLSMember starts a single etcd member in another process serving
// clients on https with client certificates required, and stops it when
// the test ends. The test binary must call RunExternalMember in TestMain.
func StartTLSMember(t testing.TB) *TLSMember {
	t.Helper()
	ca := testpki.NewCA(t, "external etcd CA")
	server := ca.Issue(t, "etcd-server", "127.0.0.1", "localhost")
	m := &TLSMember{CA: ca, Client: ca.Issue(t, "etcd-client")}
	m.Endpoint = fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	spec, err := json.Marshal(externalSpec{
		Dir: filepath.Join(t.TempDir(), "etcd"), ClientURL: m.Endpoint, PeerURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		CertFile: server.CertFile, KeyFile: server.KeyFile, CA: ca.CertFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), externalEnv+"="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("etcdtest: start the external member: %v", err)
	}
	m.PID = cmd.Process.Pid
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("etcdtest: the external member did not start: %v\n%s", err, stderr.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("etcdtest: the external member is not ready after 90 s\n%s", stderr.String())
	}
	return m
}
