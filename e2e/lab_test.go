// Package e2e_test holds the end-to-end tests: a QEMU virtual machine
// network-boots from a real LPMOS process (examples/allinone) in a lab
// network (internal/testlab), and the tests drive and check it through the
// REST API, the VM's serial console and its disk.
//
// They need root, QEMU, the iPXE ROMs, dnsmasq, rdisc6, OpenIPMI's ipmi_sim
// and a Debian mirror (the agent kernel, downloaded once and cached): run
// them with ./scripts/test.sh.
// They fail, never skip, when something is missing, except with -short.
package e2e_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos/internal/netns"
	"github.com/lpmos/lpmos/internal/testlab"
)

func TestMain(m *testing.M) { os.Exit(testlab.Main(m)) }

const (
	adminToken = "e2e-admin-token-0123456789abcdef"
	regionID   = "dc1"
	// controlPlane is where allinone's REST API listens: the server
	// namespace's loopback, reached through the lab's HTTP client.
	controlPlane = "http://127.0.0.1:8080"
	regionURL    = "http://" + testlab.ServerIP + ":8081"
)

// regionRA reports whether the region answers IPv6 router solicitations
// (its default). LPMOS_E2E_REGION_RA=off turns that off, so bench/e2e can
// measure what a network without any IPv6 router costs a boot without it.
func regionRA() bool { return os.Getenv("LPMOS_E2E_REGION_RA") != "off" }

// ipv6Router reports whether the lab plays a site's IPv6 router
// (LPMOS_E2E_IPV6_ROUTER=dnsmasq; see testlab.StartIPv6Router), for
// bench/e2e's comparison.
func ipv6Router() bool { return os.Getenv("LPMOS_E2E_IPV6_ROUTER") == "dnsmasq" }

// server is an allinone process in the lab's server namespace.
type server struct {
	t    *testing.T
	lab  *testlab.Lab
	proc *netns.Proc
}

// startAllinone runs examples/allinone in the server namespace with its
// embedded etcd, full-mode DHCP on the VM link and bootDir as its boot directory,
// and waits until its control plane and region answer.
// extra flags come last, so they override the defaults.
func startAllinone(t *testing.T, lab *testlab.Lab, bootDir string, extra ...string) *server {
	t.Helper()
	bin := testlab.Binary(t, "./examples/allinone")
	data := t.TempDir()
	args := []string{"--store", "etcd", "--data-dir", data, "--log-level", "debug",
		"--listen-addr", "127.0.0.1:8080",
		"--region", regionID, "--region-listen", testlab.ServerIP + ":8081", "--region-url", regionURL,
		"--tftp-listen", testlab.ServerIP + ":69",
		"--dhcp-iface", lab.ServerIf, "--dhcp-mode", "full", "--dhcp-range", testlab.DHCPRange,
		"--dhcp-lease-file", filepath.Join(data, "dhcp-leases.json"),
		"--boot-dir", bootDir}
	if !regionRA() {
		args = append(args, "--ipv6-ra=false")
	}
	p := lab.Start("allinone", []string{"LPMOS_ADMIN_TOKEN=" + adminToken}, bin, append(args, extra...)...)
	s := &server{t: t, lab: lab, proc: p}
	lab.WaitHTTP(controlPlane+"/healthz", 30*time.Second, p)
	lab.WaitHTTP(regionURL+"/health", 30*time.Second, p)
	// The region must have announced itself before a task for it is accepted.
	s.eventually(30*time.Second, "region "+regionID+" online", func() bool {
		code, body := s.api("GET", "/api/v1/regions", "")
		regions, _ := body["regions"].([]any)
		for _, r := range regions {
			if m, _ := r.(map[string]any); m["region_id"] == regionID || m["id"] == regionID {
				return code == 200 && m["status"] == "online"
			}
		}
		return false
	})
	return s
}

// api calls the REST API as admin and decodes a JSON object answer.
func (s *server) api(method, path, body string) (int, map[string]any) {
	s.t.Helper()
	req, err := http.NewRequest(method, controlPlane+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.lab.HTTPClient().Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	if out == nil {
		out = map[string]any{"_raw": string(b)}
	}
	return resp.StatusCode, out
}

// createTask creates a task for mac and returns its ID.
func (s *server) createTask(mac, osType, osVersion string, tags map[string]string) string {
	s.t.Helper()
	return s.createTaskWith(mac, osType, osVersion, map[string]any{"tags": tags})
}

// createTaskWith creates a task for mac with more fields of the create
// request (tags, network, hostname, ...) and returns its ID.
func (s *server) createTaskWith(mac, osType, osVersion string, fields map[string]any) string {
	s.t.Helper()
	body := map[string]any{"region_id": regionID, "target_mac": mac, "os_type": osType, "os_version": osVersion}
	for k, v := range fields {
		body[k] = v
	}
	req, _ := json.Marshal(body)
	code, body := s.api("POST", "/api/v1/tasks", string(req))
	if code != http.StatusCreated {
		s.t.Fatalf("creating a task: %d %v", code, body)
	}
	id, _ := body["task_id"].(string)
	if id == "" {
		s.t.Fatalf("creating a task: no task_id in %v", body)
	}
	return id
}

// task returns the task's JSON.
func (s *server) task(id string) map[string]any {
	s.t.Helper()
	code, body := s.api("GET", "/api/v1/tasks/"+id, "")
	if code != http.StatusOK {
		s.t.Fatalf("GET task %s: %d %v", id, code, body)
	}
	return body
}

// statuses returns the statuses the task's timeline went through, in order.
func statuses(task map[string]any) []string {
	var out []string
	tl, _ := task["timeline"].([]any)
	for _, e := range tl {
		if m, _ := e.(map[string]any); m != nil {
			if st, _ := m["status"].(string); st != "" && (len(out) == 0 || out[len(out)-1] != st) {
				out = append(out, st)
			}
		}
	}
	return out
}

// waitStatus waits until the task has status want, failing early if it
// ends in another final status.
func (s *server) waitStatus(id, want string, timeout time.Duration) map[string]any {
	s.t.Helper()
	var last map[string]any
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		last = s.task(id)
		st, _ := last["status"].(string)
		if st == want {
			return last
		}
		switch st {
		case "failed", "rejected", "cancelled", "completed":
			s.t.Fatalf("task %s ended %s while waiting for %s: error %v, timeline %v", id, st, want, last["error"], statuses(last))
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("task %s did not reach %s within %s: status %v, timeline %v", id, want, timeout, last["status"], statuses(last))
	return nil
}

func (s *server) eventually(timeout time.Duration, what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("timed out after %s waiting for %s\nallinone:\n%s", timeout, what, testlab.Tail(s.proc.Output(), 40))
}
