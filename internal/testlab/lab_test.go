package testlab

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos/internal/netns"
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
// namespace, IPv6 off there, the RA daemon advertising on the server side,
// servers reachable through HTTPClient) and all gone afterwards.
func TestLabUpAndDown(t *testing.T) {
	Require(t)
	var srvName, vmName, art string
	var ra *netns.Proc
	t.Run("up", func(t *testing.T) {
		l := New(t)
		srvName, vmName, ra, art = l.Server.Name, l.VM.Name, l.ra, ArtifactDir(t)

		links := l.VM.MustRun(t, "ip", "-o", "link", "show", "master", l.Bridge)
		if !strings.Contains(links, l.Tap) || strings.Count(links, "\n") != 2 {
			t.Errorf("bridge %s should hold the tap and the veth:\n%s", l.Bridge, links)
		}
		if v := strings.TrimSpace(l.VM.MustRun(t, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6")); v != "1" {
			t.Errorf("IPv6 is on in the VM namespace (disable_ipv6=%s)", v)
		}
		addrs := l.Server.MustRun(t, "ip", "-o", "addr", "show", "dev", l.ServerIf)
		for _, want := range []string{ServerCIDR, serverIPv6} {
			if !strings.Contains(addrs, want) {
				t.Errorf("%s lacks %s:\n%s", l.ServerIf, want, addrs)
			}
		}
		if !netns.WaitFor(5*time.Second, func() bool { return strings.Contains(ra.Output(), "router advertisement on") }) {
			t.Errorf("dnsmasq does not advertise:\n%s", ra.Output())
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
	select {
	case <-ra.Done():
	default:
		t.Error("dnsmasq still runs after the test")
	}
	if _, err := os.Stat(filepath.Join(art, "dnsmasq-ra.log")); err != nil {
		t.Errorf("the RA daemon's log was not kept: %v", err)
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
