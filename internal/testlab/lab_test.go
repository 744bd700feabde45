package testlab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos/ndp"
)

func nsExists(name string) bool {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return true
		}
	}
	return false
}

// The lab's topology is up while the test runs (bridge and tap in the VM
// namespace, IPv6 off there, servers reachable through HTTPClient), the
// link has no IPv6 router unless the region answers (so the e2e tests see
// the boot times of users without one), and all is gone afterwards.
func TestLabUpAndDown(t *testing.T) {
	Require(t)
	var srvName, vmName string
	t.Run("up", func(t *testing.T) {
		l := New(t)
		srvName, vmName = l.Server.Name, l.VM.Name

		links := l.VM.MustRun(t, "ip", "-o", "link", "show", "master", l.Bridge)
		if !strings.Contains(links, l.Tap) || strings.Count(links, "\n") != 2 {
			t.Errorf("bridge %s should hold the tap and the veth:\n%s", l.Bridge, links)
		}
		if v := strings.TrimSpace(l.VM.MustRun(t, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6")); v != "1" {
			t.Errorf("IPv6 is on in the VM namespace (disable_ipv6=%s)", v)
		}
		addrs := l.Server.MustRun(t, "ip", "-o", "addr", "show", "dev", l.ServerIf)
		for _, want := range []string{ServerCIDR, "inet6 fe80::"} {
			if !strings.Contains(addrs, want) {
				t.Errorf("%s lacks %s:\n%s", l.ServerIf, want, addrs)
			}
		}
		if global := l.Server.MustRun(t, "ip", "-6", "-o", "addr", "show", "scope", "global"); strings.TrimSpace(global) != "" {
			t.Errorf("%s has a global IPv6 address: the lab is IPv4-only, like most provisioning networks:\n%s", l.ServerIf, global)
		}

		// No IPv6 router on the link: a solicitation goes unanswered.
		if out, ok := l.SolicitRouter(2); ok {
			t.Errorf("something advertises on the lab's link:\n%s", out)
		}
		// The region's responder on the server interface answers a machine
		// on the bridge.
		ctx, cancel := context.WithCancel(context.Background())
		var conn *ndp.Conn
		if err := l.Server.Do(func() (err error) {
			conn, err = ndp.Listen(ctx, l.ServerIf)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		ra, err := ndp.New(ndp.Config{Conn: conn, Unsolicited: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- ra.Serve(ctx) }()
		<-ra.Ready()
		if out, ok := l.SolicitRouter(3); !ok || !strings.Contains(out, "Stateful other conf.      :           No") {
			t.Errorf("no advertisement through the bridge from the region's responder:\n%s", out)
		}
		cancel()
		if err := <-served; err != nil {
			t.Errorf("responder: %v", err)
		}

		// A site's IPv6 router, for comparisons: its RAs carry a prefix.
		router := l.StartIPv6Router()
		if out, ok := l.SolicitRouter(3); !ok || !strings.Contains(out, "fd99::") {
			t.Errorf("no advertisement of fd99::/64 from the IPv6 router:\n%s\ndnsmasq:\n%s", out, router.Output())
		}

		// A server on the link address in the server namespace is reachable
		// from this (root namespace) process through HTTPClient only.
		ln, err := l.Server.Listen("tcp", ServerIP+":8081")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "hello from the lab")
		})}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		url := "http://" + ServerIP + ":8081/"
		l.WaitHTTP(url, 5*time.Second, nil)
		resp, err := l.HTTPClient().Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello from the lab" {
			t.Errorf("got %q", b)
		}
	})
	if srvName == "" {
		t.Fatal("the lab did not come up")
	}
	for _, name := range []string{srvName, vmName} {
		if nsExists(name) {
			t.Errorf("namespace %s is left over", name)
		}
	}
}

func TestDisk(t *testing.T) {
	d := Disk(t, 8<<20)
	fi, err := os.Stat(d)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 8<<20 {
		t.Errorf("size %d", fi.Size())
	}
	b, _ := os.ReadFile(d)
	if !bytes.Equal(b, make([]byte, 8<<20)) {
		t.Error("a fresh disk must be zeros")
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"-m", "512", "file:/a b", "it's", ""})
	want := `-m 512 'file:/a b' 'it'\''s' ''`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
