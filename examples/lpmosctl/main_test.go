package main_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/cmdtest"
)

// bin is lpmosctl, allinone the server it drives; both built by TestMain.
var bin, allinone string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lpmosctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	allinone = filepath.Join(dir, "allinone")
	if out, err := exec.Command("go", "build", "-o", allinone, "../allinone").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ../allinone: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := cmdtest.Main(m, &bin)
	os.RemoveAll(dir)
	os.Exit(code)
}

const (
	adminToken  = "admin-token-0123456789abcdef"
	viewerToken = "viewer-token-0123456789abcdef"
	// noSuchTask is a well-formed task ID no task has.
	noSuchTask = "11111111-1111-4111-8111-111111111111"
)

// server is a real allinone process on a memory store, with simulated
// machines 02:00:00:00:00:01... that boot through its real region.
type server struct {
	url string
	p   *cmdtest.Process
}

// startServer runs an allinone with n simulated machines, fast, and waits
// until its region is online. The admin token is adminToken; viewerToken
// signs in as a viewer.
func startServer(t *testing.T, n int, extra ...string) *server {
	t.Helper()
	dir := t.TempDir()
	sum := sha256.Sum256([]byte(viewerToken))
	tokenFile := filepath.Join(dir, "tokens")
	require.NoError(t, os.WriteFile(tokenFile, []byte(hex.EncodeToString(sum[:])+" viewer vera\n"), 0o600))
	cp, region := cmdtest.FreeAddr(t), cmdtest.FreeAddr(t)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bmc.key"), []byte(strings.Repeat("5a", 32)), 0o600))
	args := []string{"--store", "memory", "--tftp-listen", "", "--boot-dir", filepath.Join(dir, "boot"),
		"--listen-addr", cp, "--region-listen", region, "--region-url", "http://" + region,
		"--token-file", tokenFile, "--simulate", strconv.Itoa(n), "--simulate-speed", "50",
		"--bmc-key-file", filepath.Join(dir, "bmc.key")}
	p := cmdtest.Start(t, allinone, []string{"LPMOS_ADMIN_TOKEN=" + adminToken}, append(args, extra...)...)
	s := &server{url: "http://" + cp, p: p}
	p.WaitOK(s.url + "/readyz")
	require.Eventually(t, func() bool {
		code, out, _ := s.ctl(t, "regions", "list")
		return code == 0 && regexp.MustCompile(`(?m)^dc1\s+online\s`).MatchString(out)
	}, 30*time.Second, 100*time.Millisecond, "the region never came online")
	return s
}

// ctl runs lpmosctl against the server with the admin token in the
// environment, and returns its exit status, stdout and stderr.
func (s *server) ctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return run(t, []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=" + adminToken}, args...)
}

// run runs lpmosctl with env added to an environment without LPMOS_*.
func run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stdout.String(), stderr.String()
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LPMOS_") {
			env = append(env, kv)
		}
	}
	return env
}

// ok runs lpmosctl and requires exit status 0; it returns stdout.
func (s *server) ok(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := s.ctl(t, args...)
	require.Equal(t, 0, code, "lpmosctl %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), out, errOut)
	return out
}

// jsonOut runs lpmosctl with -o json and decodes its stdout into v.
func (s *server) jsonOut(t *testing.T, v any, args ...string) {
	t.Helper()
	out := s.ok(t, append(args, "-o", "json")...)
	require.NoError(t, json.Unmarshal([]byte(out), v), out)
}

type listed struct {
	Tasks []struct {
		TaskID    string `json:"task_id"`
		Status    string `json:"status"`
		Revision  int64  `json:"revision"`
		TargetMAC string `json:"target_mac"`
		CreatedBy string `json:"created_by"`
	} `json:"tasks"`
	Total int `json:"total"`
}

type gotTask struct {
	TaskID   string `json:"task_id"`
	Status   string `json:"status"`
	Revision int64  `json:"revision"`
	Metadata struct {
		TargetMAC string `json:"target_mac"`
	} `json:"metadata"`
	Approval *struct {
		Status     string `json:"status"`
		Notes      string `json:"notes"`
		Reason     string `json:"reason"`
		ApprovedBy string `json:"approved_by"`
	} `json:"approval"`
}

// waitStatus waits until the task has the status and returns it.
func (s *server) waitStatus(t *testing.T, id, status string) gotTask {
	t.Helper()
	var got gotTask
	require.Eventually(t, func() bool {
		got = gotTask{}
		s.jsonOut(t, &got, "tasks", "get", id)
		return got.Status == status
	}, 60*time.Second, 50*time.Millisecond, "task %s never reached %s", id, status)
	return got
}

// createOne creates a task for mac and returns its ID, read from the
// table.
func (s *server) createOne(t *testing.T, mac string) string {
	t.Helper()
	out := s.ok(t, "tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12", mac)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	require.Regexp(t, `^TASK ID\s+MAC\s+STATUS\s+REVISION$`, lines[0])
	f := strings.Fields(lines[1])
	require.Len(t, f, 4, out)
	assert.Equal(t, mac, f[1])
	assert.Equal(t, "pending", f[2])
	return f[0]
}

// The command line alone: usage errors exit 2 and say why, help and
// version exit 0, and a control plane nobody answers for exits 6.
func TestCommandLine(t *testing.T) {
	dead := "http://" + cmdtest.FreeAddr(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string // in stdout or stderr
	}{
		{"no command", nil, 2, "Usage: lpmosctl"},
		{"help", []string{"-h"}, 0, "Exit status:"},
		{"help lists the images commands", []string{"help"}, 0, "images register ID"},
		{"command help", []string{"tasks", "approve", "-h"}, 0, "-revision"},
		{"unknown command", []string{"nodes"}, 2, `unknown command "nodes"`},
		{"missing subcommand", []string{"tasks"}, 2, "a subcommand is needed: create, list"},
		{"unknown subcommand", []string{"tasks", "delete"}, 2, `unknown subcommand "delete"`},
		{"power without an action", []string{"machines", "power", "02:00:00:00:00:01"}, 2, "give a MAC and on, off, cycle or status"},
		{"update without a change", []string{"machines", "update", "02:00:00:00:00:01"}, 2, "nothing to change"},
		{"expectation and its removal", []string{"machines", "update", "--expect-cores", "8", "--no-expected", "02:00:00:00:00:01"}, 2, "--no-expected together"},
		{"rule without a file", []string{"rules", "put", "small"}, 2, "-f FILE is required"},
		{"image without an ID", []string{"images", "register", "--image-url", "http://x/y.raw"}, 2, "give the image's ID"},
		{"unknown flag", []string{"tasks", "list", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{"bad output", []string{"tasks", "list", "-o", "yaml"}, 2, `-o "yaml": table or json`},
		{"bad status", []string{"tasks", "list", "--status", "done"}, 2, `--status "done": not a status`},
		{"get without an ID", []string{"tasks", "get"}, 2, "give one task ID"},
		{"create without a MAC", []string{"tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12"}, 2, "give the MAC"},
		{"hostname of two machines", []string{"tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12", "--hostname", "web1", "02:00:00:00:00:01", "02:00:00:00:00:02"}, 2, "--hostname names one machine"},
		{"bad tag", []string{"tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12", "--tag", "rack", "02:00:00:00:00:01"}, 2, `--tag "rack": KEY=VALUE`},
		{"watch as JSON", []string{"tasks", "watch", "-o", "json"}, 2, "tasks watch draws progress for people"},
		{"create without an OS", []string{"tasks", "create", "--region", "dc1", "02:00:00:00:00:01"}, 2, "--os and --os-version are required"},
		{"reject without a reason", []string{"tasks", "reject", noSuchTask}, 2, "--reason is required"},
		{"approve without a selection", []string{"tasks", "approve"}, 2, "give task IDs, or filter flags"},
		{"revision with two IDs", []string{"tasks", "approve", "--revision", "3", noSuchTask, noSuchTask}, 2, "--revision applies to one task ID"},
		{"bad URL", []string{"--url", "ftp://example.net", "tasks", "list"}, 2, "scheme must be http or https"},
		{"bad completion shell", []string{"completion", "fish"}, 2, `completion "fish": bash or zsh`},
		{"version", []string{"version"}, 0, "lpmosctl github.com/lpmos/lpmos "},
		{"unreachable list", []string{"--url", dead, "tasks", "list"}, 6, "connection refused"},
		{"unreachable watch", []string{"--url", dead, "tasks", "watch", noSuchTask}, 6, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, nil, tc.args...)
			assert.Equal(t, tc.code, code, "stdout:\n%s\nstderr:\n%s", out, errOut)
			assert.Contains(t, out+errOut, tc.want)
		})
	}
}

// Every command against a real allinone whose simulated machines boot
// through its real region: tables for people, JSON for scripts, and the
// exit statuses of refusals.
func TestAgainstAllInOne(t *testing.T) {
	s := startServer(t, 3)
	mac1, mac2, mac3 := "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"

	// Regions and the caller.
	var regions struct {
		Regions []struct {
			ID           string `json:"region_id"`
			Status       string `json:"status"`
			Capabilities struct {
				OS []struct {
					Type    string `json:"os_type"`
					Version string `json:"os_version"`
				} `json:"os"`
			} `json:"capabilities"`
			ActiveTasks map[string]int `json:"active_tasks"`
		} `json:"regions"`
	}
	s.jsonOut(t, &regions, "regions", "list")
	require.Len(t, regions.Regions, 1)
	assert.Equal(t, "online", regions.Regions[0].Status)
	assert.Contains(t, regions.Regions[0].Capabilities.OS, struct {
		Type    string `json:"os_type"`
		Version string `json:"os_version"`
	}{"debian", "12"})
	assert.Regexp(t, `(?m)^SUBJECT\s+ROLE\n^token:admin\s+admin$`, s.ok(t, "whoami"))

	// Create: one MAC, then a batch whose repeated MAC fails alone.
	id1 := s.createOne(t, mac1)
	var batch struct {
		Created, Failed int
		Results         []struct {
			Index     int    `json:"index"`
			TargetMAC string `json:"target_mac"`
			Task      *struct {
				TaskID string `json:"task_id"`
				Status string `json:"status"`
			} `json:"task"`
			Error *struct {
				Code  string `json:"code"`
				Field string `json:"field"`
			} `json:"error"`
		} `json:"results"`
	}
	code, out, errOut := s.ctl(t, "tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12", "--tag", "rack=r1", "-o", "json", mac2, mac3, mac2)
	assert.Equal(t, 2, code, "the repeated MAC is invalid input: %s", errOut)
	assert.Contains(t, errOut, "1 of 3 creates failed")
	require.NoError(t, json.Unmarshal([]byte(out), &batch), out)
	assert.Equal(t, 2, batch.Created)
	assert.Equal(t, 1, batch.Failed)
	require.Len(t, batch.Results, 3)
	require.NotNil(t, batch.Results[0].Task)
	require.NotNil(t, batch.Results[1].Task)
	require.NotNil(t, batch.Results[2].Error)
	assert.Equal(t, "target_mac", batch.Results[2].Error.Field)
	assert.Equal(t, mac3, batch.Results[1].TargetMAC)
	id2, id3 := batch.Results[0].Task.TaskID, batch.Results[1].Task.TaskID

	// A second task for a busy machine is a conflict; a bad MAC is
	// refused as invalid input.
	code, _, errOut = s.ctl(t, "tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12", mac1)
	assert.Equal(t, 4, code, errOut)
	assert.Contains(t, errOut, "already has active task "+id1)
	code, _, errOut = s.ctl(t, "tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12", "not-a-mac")
	assert.Equal(t, 2, code, errOut)
	assert.Contains(t, errOut, "target_mac")

	// The simulated machines boot and report their hardware.
	for _, id := range []string{id1, id2, id3} {
		s.waitStatus(t, id, "pending_approval")
	}

	// List: a table for people, JSON for scripts, the API's filters.
	table := s.ok(t, "tasks", "list")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	require.Len(t, lines, 4, table)
	assert.Regexp(t, `^TASK ID\s+REGION\s+MAC\s+OS\s+STATUS\s+PROGRESS\s+AGE\s+CREATED BY$`, lines[0])
	for _, id := range []string{id1, id2, id3} {
		assert.Regexp(t, `(?m)^`+id+`\s+dc1\s+02:00:00:00:00:0\d\s+debian 12\s+pending_approval\s+-\s+\d+s\s+token:admin$`, table)
	}
	var l listed
	s.jsonOut(t, &l, "tasks", "list")
	assert.Equal(t, 3, l.Total)
	require.Len(t, l.Tasks, 3)
	assert.Equal(t, id1, l.Tasks[2].TaskID, "newest first (the batch's two share a creation time)")
	l = listed{}
	s.jsonOut(t, &l, "tasks", "list", "--mac", "02-00-00-00-00-01")
	require.Len(t, l.Tasks, 1)
	assert.Equal(t, id1, l.Tasks[0].TaskID)
	l = listed{}
	s.jsonOut(t, &l, "tasks", "list", "--tag", "rack=r1", "--sort", "created_at")
	require.Len(t, l.Tasks, 2)
	assert.ElementsMatch(t, []string{id2, id3}, []string{l.Tasks[0].TaskID, l.Tasks[1].TaskID})
	l = listed{}
	s.jsonOut(t, &l, "tasks", "list", "--status", "completed,failed")
	assert.Empty(t, l.Tasks)
	assert.Equal(t, 0, l.Total)
	_, _, errOut = s.ctl(t, "tasks", "list", "--limit", "1")
	assert.Contains(t, errOut, "(1-1 of 3 tasks: --offset 1 or --all for more)")
	l = listed{}
	s.jsonOut(t, &l, "tasks", "list", "--limit", "1", "--all")
	assert.Len(t, l.Tasks, 3, "--all pages through")
	code, _, errOut = s.ctl(t, "tasks", "list", "--sort", "sideways")
	assert.Equal(t, 2, code, "the API refuses the sort: %s", errOut)
	assert.Contains(t, errOut, "(sort)")

	// Get: the task for a person, and as the API has it.
	details := s.ok(t, "tasks", "get", id1)
	assert.Regexp(t, `(?m)^Status:\s+pending_approval \(revision \d+\)$`, details)
	assert.Regexp(t, `(?m)^Hardware:\s+Simulated Xeon, 16 cores/32 threads`, details)
	assert.Regexp(t, `(?m)^\s+\S+\s+hardware_reported\s+pending_approval\s+region:dc1`, details)
	got := s.waitStatus(t, id1, "pending_approval")
	assert.Equal(t, mac1, got.Metadata.TargetMAC)
	code, _, errOut = s.ctl(t, "tasks", "get", noSuchTask)
	assert.Equal(t, 3, code, errOut)

	// Who may do what: a bad token, a viewer, and the flag over the env.
	code, _, errOut = run(t, []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=wrong-token-0123456789"}, "tasks", "list")
	assert.Equal(t, 5, code, errOut)
	assert.Contains(t, errOut, "401 unauthorized")
	viewer := []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=" + viewerToken}
	code, out, errOut = run(t, viewer, "whoami")
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "hashed:vera")
	code, _, errOut = run(t, viewer, "tasks", "approve", id1)
	assert.Equal(t, 5, code, errOut)
	assert.Contains(t, errOut, "403 forbidden")
	code, out, errOut = run(t, []string{"LPMOS_URL=http://" + cmdtest.FreeAddr(t), "LPMOS_TOKEN=" + viewerToken}, "--url", s.url, "whoami", "--token", adminToken)
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "token:admin", "flags win over the environment")

	// Watch task 1 from before its approval to its completion: stdout is
	// not a terminal, so a line per change.
	watch := cmdtest.Start(t, bin, []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=" + adminToken}, "tasks", "watch", id1)
	require.Eventually(t, func() bool { return strings.Contains(watch.Output(), "pending_approval") },
		30*time.Second, 20*time.Millisecond, "the watch never showed the task: %s", watch.Output())

	// Approve with If-Match: a stale revision is a conflict, the current
	// one moves the task.
	code, _, errOut = s.ctl(t, "tasks", "approve", id1, "--revision", strconv.FormatInt(got.Revision-1, 10))
	assert.Equal(t, 4, code, errOut)
	assert.Contains(t, errOut, "409 conflict")
	out = s.ok(t, "tasks", "approve", id1, "--revision", strconv.FormatInt(got.Revision, 10), "--notes", "rack r1 ok")
	assert.Regexp(t, `(?m)^`+id1+`\s+approved\s+\d+$`, out)
	assert.Equal(t, 0, watch.Wait(60*time.Second), "the watch ends 0 once its task completed: %s", watch.Output())
	assert.Regexp(t, `(?m)^\d\d:\d\d:\d\d `+id1+`\s+02:00:00:00:00:01\s+completed\s+\[#{20}\] 100%$`, watch.Output())
	assert.NotContains(t, watch.Output(), "\x1b[", "no cursor movements off a terminal")
	done := s.waitStatus(t, id1, "completed")
	require.NotNil(t, done.Approval)
	assert.Equal(t, "rack r1 ok", done.Approval.Notes)
	code, _, errOut = s.ctl(t, "tasks", "approve", id1)
	assert.Equal(t, 4, code, "a completed task cannot be approved: %s", errOut)
	assert.Contains(t, errOut, "invalid_transition")

	// Reject task 2; cancel task 3, once.
	out = s.ok(t, "tasks", "reject", id2, "--reason", "wrong disks")
	assert.Regexp(t, `(?m)^`+id2+`\s+rejected\s+\d+$`, out)
	var decision struct {
		TaskID string `json:"task_id"`
		Status string `json:"status"`
	}
	s.jsonOut(t, &decision, "tasks", "cancel", id3, "--reason", "not needed")
	assert.Equal(t, "cancelled", decision.Status)
	code, _, errOut = s.ctl(t, "tasks", "cancel", id3)
	assert.Equal(t, 4, code, errOut)

	// Retry the cancelled task 3 once: a second attempt; again: conflict.
	var retried struct {
		TaskID  string `json:"task_id"`
		RetryOf string `json:"retry_of"`
		Attempt int    `json:"attempt"`
	}
	s.jsonOut(t, &retried, "tasks", "retry", id3)
	assert.Equal(t, id3, retried.RetryOf)
	assert.Equal(t, 2, retried.Attempt)
	code, _, errOut = s.ctl(t, "tasks", "retry", id3)
	assert.Equal(t, 4, code, errOut)
	assert.Contains(t, errOut, "already_retried")
	s.ok(t, "tasks", "cancel", retried.TaskID, "--reason", "not needed")

	// A watch of a task that ended other than completed fails.
	code, out, errOut = s.ctl(t, "tasks", "watch", id2, id3)
	assert.Equal(t, 1, code, errOut)
	assert.Contains(t, errOut, "2 of 2 tasks did not complete")
	assert.Contains(t, out, "rejected")
	code, _, errOut = s.ctl(t, "tasks", "watch", noSuchTask)
	assert.Equal(t, 3, code, errOut)

	// Bulk calls: by IDs (tasks no machine boots for are not awaiting
	// approval), then by filter, then a filter that selects nothing.
	var bulk struct {
		Matched int `json:"matched"`
		Moved   []struct {
			TaskID string `json:"task_id"`
			Status string `json:"status"`
		} `json:"moved"`
		Failed []struct {
			TaskID string `json:"task_id"`
			Error  struct {
				Code string `json:"code"`
			} `json:"error"`
		} `json:"failed"`
	}
	// (A watch of every task follows them, ended ones left out.)
	all := cmdtest.Start(t, bin, []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=" + adminToken}, "tasks", "watch")
	idA, idB := s.createOne(t, "52:54:00:00:00:0a"), s.createOne(t, "52:54:00:00:00:0b")
	code, out, errOut = s.ctl(t, "tasks", "approve", idA, idB, "-o", "json")
	assert.Equal(t, 4, code, errOut)
	assert.Contains(t, errOut, "2 of 2 tasks not approved")
	require.NoError(t, json.Unmarshal([]byte(out), &bulk), out)
	require.Len(t, bulk.Failed, 2)
	assert.Equal(t, "invalid_transition", bulk.Failed[0].Error.Code)
	out = s.ok(t, "tasks", "cancel", "--mac-prefix", "52:54:00", "--reason", "test over")
	assert.Regexp(t, `(?m)^`+idA+`\s+cancelled\s+\d+\s+-$`, out)
	assert.Regexp(t, `(?m)^`+idB+`\s+cancelled\s+\d+\s+-$`, out)
	code, _, errOut = s.ctl(t, "tasks", "cancel", "--mac-prefix", "52:54:00")
	assert.Equal(t, 3, code, "a filter that selects no task: %s", errOut)

	// The watch of every task saw both cancelled, showed none of the
	// tasks that had ended before it began, and ends 0 when interrupted.
	for _, id := range []string{idA, idB} {
		require.Eventually(t, func() bool {
			return regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d ` + id + `\s+52:54:00:00:00:0[ab]\s+cancelled\s`).MatchString(all.Output())
		}, 30*time.Second, 20*time.Millisecond, "the watch of every task never showed %s cancelled:\n%s", id, all.Output())
	}
	all.Signal(os.Interrupt)
	assert.Equal(t, 0, all.Wait(30*time.Second), all.Output())
	assert.NotContains(t, all.Output(), id1, "ended before the watch began")
}

// What a person sees: tasks watch in a real terminal (tmux) draws one line
// per task and redraws it in place, here from the approval to a full bar.
func TestWatchScreen(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: drives tmux")
	}
	tmux, err := exec.LookPath("tmux")
	require.NoError(t, err, "tmux (Debian tmux) is installed by ./scripts/test.sh")
	s := startServer(t, 1)
	id := s.createOne(t, "02:00:00:00:00:01")
	got := s.waitStatus(t, id, "pending_approval")

	sock := filepath.Join(t.TempDir(), "tmux.sock")
	tm := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(tmux, append([]string{"-S", sock}, args...)...)
		cmd.Env = append(cleanEnv(), "TERM=xterm-256color")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "tmux %s: %s", strings.Join(args, " "), out)
		return string(out)
	}
	// The shell stays after lpmosctl exits, so that its last screen and
	// exit status can be read.
	tm("new-session", "-d", "-x", "120", "-y", "30",
		fmt.Sprintf("LPMOS_URL=%s LPMOS_TOKEN=%s %s tasks watch %s; echo EXIT=$?; sleep 600", s.url, adminToken, bin, id))
	t.Cleanup(func() { _ = exec.Command(tmux, "-S", sock, "kill-server").Run() })
	var screen string
	require.Eventually(t, func() bool {
		screen = tm("capture-pane", "-p")
		return strings.Contains(screen, "watching 1 tasks: live")
	}, 30*time.Second, 50*time.Millisecond, "the watch never went live:\n%s", screen)
	assert.Regexp(t, `(?m)^`+id+`\s+02:00:00:00:00:01\s+pending_approval\s+\[\.{20}\]   0%$`, screen)

	s.ok(t, "tasks", "approve", id, "--revision", strconv.FormatInt(got.Revision, 10))
	require.Eventually(t, func() bool {
		screen = tm("capture-pane", "-p")
		return strings.Contains(screen, "EXIT=")
	}, 60*time.Second, 50*time.Millisecond, "the watch never ended:\n%s", screen)
	t.Logf("the screen:\n%s", strings.TrimRight(screen, "\n"))
	assert.Contains(t, screen, "EXIT=0")
	assert.Regexp(t, `(?m)^TASK ID\s+MAC\s+STATUS\s+PROGRESS$`, screen)
	assert.Regexp(t, `(?m)^`+id+`\s+02:00:00:00:00:01\s+completed\s+\[#{20}\] 100%$`, screen)
	assert.Equal(t, 1, strings.Count(screen, id), "the task's line is redrawn in place, not repeated")
	assert.Contains(t, screen, "watching 1 tasks: every task ended")
}

// The completion scripts complete commands, subcommands, flags and flag
// values in a real bash, and register with a real zsh.
func TestCompletion(t *testing.T) {
	code, script, errOut := run(t, nil, "completion", "bash")
	require.Equal(t, 0, code, errOut)
	path := filepath.Join(t.TempDir(), "lpmosctl.bash")
	require.NoError(t, os.WriteFile(path, []byte(script), 0o644))
	for _, tc := range []struct {
		line string // what was typed; the last word is completed
		want string
	}{
		{"lpmosctl ta", "tasks"},
		{"lpmosctl tasks ap", "approve"},
		{"lpmosctl tasks ", "create list get approve reject cancel retry watch"},
		{"lpmosctl regions ", "list"},
		{"lpmosctl completion ", "bash zsh"},
		{"lpmosctl tasks list --st", "--status"},
		{"lpmosctl tasks approve --rev", "--revision"},
		{"lpmosctl tasks list --status pending", "pending pending_approval"},
		{"lpmosctl -o j", "json"},
		{"lpmosctl --ur", "--url"},
		{"lpmosctl -o json ta", "tasks"},
		{"lpmosctl --url http://cp:8080 tasks wa", "watch"},
	} {
		t.Run(tc.line, func(t *testing.T) {
			words := strings.Fields(tc.line)
			if strings.HasSuffix(tc.line, " ") {
				words = append(words, "")
			}
			out, err := exec.Command("bash", append([]string{"-c",
				`source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _lpmosctl; echo "${COMPREPLY[*]}"`,
				"bash", path}, words...)...).CombinedOutput()
			require.NoError(t, err, "%s", out)
			assert.Equal(t, tc.want, strings.TrimSpace(string(out)))
		})
	}

	if testing.Short() {
		t.Skip("-short: runs zsh")
	}
	zsh, err := exec.LookPath("zsh")
	require.NoError(t, err, "zsh (Debian zsh) is installed by ./scripts/test.sh")
	code, script, errOut = run(t, nil, "completion", "zsh")
	require.Equal(t, 0, code, errOut)
	path = filepath.Join(t.TempDir(), "_lpmosctl")
	require.NoError(t, os.WriteFile(path, []byte(script), 0o644))
	out, err := exec.Command(zsh, "-f", "-c", `autoload -U compinit && compinit -u -D; source "$1"; print -r -- $_comps[lpmosctl]`, "zsh", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Equal(t, "_bash_complete -F _lpmosctl", strings.TrimSpace(string(out)))
}

// The per-machine configuration from the command line: a static address
// (which implies --network static), gateway, name servers, a VLAN, a
// hostname, several SSH keys, a root password hash and a user-data file;
// the API's refusal names the field.
func TestCreateMachineConfig(t *testing.T) {
	s := startServer(t, 0)
	const mac = "02:00:00:00:00:09"
	keys := []string{
		"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example.com",
		"ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= ops@bastion",
	}
	const hash = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
	userData := filepath.Join(t.TempDir(), "user-data")
	require.NoError(t, os.WriteFile(userData, []byte("#cloud-config\npackages: [nginx]\n"), 0o644))

	code, _, errOut := s.ctl(t, "tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12",
		"--address", "10.0.0.5/24", "--gateway", "10.0.1.1", mac)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "network.gateway")

	out := s.ok(t, "tasks", "create", "--region", "dc1", "--os", "debian", "--os-version", "12",
		"--address", "10.0.0.5/24", "--gateway", "10.0.0.1", "--dns", "1.1.1.1, 9.9.9.9", "--vlan", "100",
		"--hostname", "web-01", "--ssh-key", keys[0], "--ssh-key", keys[1],
		"--root-password-hash", hash, "--user-data", userData, mac)
	f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1])
	var got struct {
		Metadata struct {
			NetworkConfig    string         `json:"network_config"`
			Network          map[string]any `json:"network"`
			Hostname         string         `json:"hostname"`
			SSHKeys          []string       `json:"ssh_keys"`
			RootPasswordHash string         `json:"root_password_hash"`
			UserData         string         `json:"user_data"`
		} `json:"metadata"`
	}
	s.jsonOut(t, &got, "tasks", "get", f[0])
	assert.Equal(t, "static", got.Metadata.NetworkConfig)
	assert.Equal(t, map[string]any{"mode": "static", "address": "10.0.0.5/24", "gateway": "10.0.0.1",
		"dns": []any{"1.1.1.1", "9.9.9.9"}, "vlan_id": float64(100)}, got.Metadata.Network)
	assert.Equal(t, "web-01", got.Metadata.Hostname)
	assert.Equal(t, keys, got.Metadata.SSHKeys)
	assert.Equal(t, hash, got.Metadata.RootPasswordHash)
	assert.Equal(t, "#cloud-config\npackages: [nginx]\n", got.Metadata.UserData)

	details := s.ok(t, "tasks", "get", f[0])
	assert.Regexp(t, `(?m)^Network:\s+static 10\.0\.0\.5/24 via 10\.0\.0\.1 DNS 1\.1\.1\.1,9\.9\.9\.9 VLAN 100$`, details)
	assert.Regexp(t, `(?m)^SSH keys:\s+2$`, details)
	assert.Regexp(t, `(?m)^Root password:\s+set \(hashed\)$`, details)
	assert.NotContains(t, details, hash, "the hash is not printed")
}

// Machines and auto-approval rules against a real allinone: a rule from a
// file (and the API's refusal of a bad one, and of a viewer), a machine
// registered with its BMC and expected hardware, a simulated machine
// provisioned from its record and approved by the rule as expected.
func TestMachinesAndRules(t *testing.T) {
	s := startServer(t, 1)
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}

	// Rules: the admin puts them; the API refuses a bad one naming the
	// field; a typo in the file is refused before any call; viewers may
	// not.
	out := s.ok(t, "rules", "put", "asset-db", "-f", file("asset.json", `{"match_expected": true, "min_cores": 8, "notes": "as the asset DB says"}`))
	assert.Regexp(t, `(?m)^asset-db\s+every region\s+≥8 cores, as expected$`, out)
	code, _, errOut := s.ctl(t, "rules", "put", "bad", "-f", file("bad.json", `{"min_cores": 8, "max_cores": 4}`))
	assert.Equal(t, 2, code, errOut)
	assert.Contains(t, errOut, "max_cores")
	code, _, errOut = s.ctl(t, "rules", "put", "typo", "-f", file("typo.json", `{"min_core": 8}`))
	assert.Equal(t, 2, code, errOut)
	assert.Contains(t, errOut, `unknown field "min_core"`)
	viewer := []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=" + viewerToken}
	code, _, errOut = run(t, viewer, "rules", "put", "mine", "-f", file("mine.json", `{"min_cores": 1}`))
	assert.Equal(t, 5, code, errOut)
	code, out, errOut = run(t, viewer, "rules", "list")
	assert.Equal(t, 0, code, errOut)
	assert.Regexp(t, `(?m)^RULE\s+APPLIES TO\s+CONDITIONS\s+UPDATED BY\n^asset-db\s+every region\s+≥8 cores, as expected\s+token:admin$`, out)
	assert.Regexp(t, `(?m)^Notes:\s+as the asset DB says$`, s.ok(t, "rules", "get", "asset-db"))

	// Register a machine with a BMC (its password from a file, never a
	// flag) and expected hardware.
	out = s.ok(t, "machines", "register", "02:00:00:00:00:09", "--region", "dc1", "--tag", "rack=r9",
		"--bmc", "ipmi", "--bmc-address", "127.0.0.1:1623", "--bmc-user", "admin", "--bmc-password-file", file("pw", "bmc-secret\n"),
		"--expect-cores", "32", "--expect-serial", "SN9")
	assert.Regexp(t, `(?m)^02:00:00:00:00:09\s+dc1\s+ipmi 127.0.0.1:1623\s+32 cores, serial SN9\s+rack=r9$`, out)
	assert.NotContains(t, out, "bmc-secret")
	code, _, errOut = s.ctl(t, "machines", "register", "02:00:00:00:00:09")
	assert.Equal(t, 4, code, "registered twice: %s", errOut)
	code, _, errOut = s.ctl(t, "machines", "register", "02:00:00:00:00:0a", "--bmc", "telnet", "--bmc-address", "h")
	assert.Equal(t, 2, code, errOut)
	assert.Contains(t, errOut, "bmc.driver")

	// The simulated machine 1 (16 cores) is expected to be what it is:
	// provisioned from its record, it is approved by the rule.
	s.ok(t, "machines", "register", "02:00:00:00:00:01", "--region", "dc1", "--expect-cores", "16")
	var created struct {
		TaskID string `json:"task_id"`
	}
	s.jsonOut(t, &created, "machines", "provision", "02:00:00:00:00:01", "--os", "debian", "--os-version", "12")
	require.NotEmpty(t, created.TaskID)
	done := s.waitStatus(t, created.TaskID, "completed")
	require.NotNil(t, done.Approval)
	assert.Equal(t, "rule:asset-db", done.Approval.ApprovedBy)

	// The boot trace: what the region saw of machine 1's install, as a
	// table, as JSON, live with --follow; a MAC no region heard of says
	// so; a malformed one is refused.
	var tr struct {
		MAC    string `json:"mac"`
		Events []struct {
			Kind    string `json:"kind"`
			Outcome string `json:"outcome"`
			Region  string `json:"region"`
		} `json:"events"`
	}
	require.Eventually(t, func() bool {
		s.jsonOut(t, &tr, "machines", "trace", "02:00:00:00:00:01")
		return slices.ContainsFunc(tr.Events, func(e struct {
			Kind    string `json:"kind"`
			Outcome string `json:"outcome"`
			Region  string `json:"region"`
		}) bool {
			return e.Kind == "agent" && e.Outcome == "ok" && e.Region == "dc1"
		})
	}, 30*time.Second, 200*time.Millisecond, "the trace never showed the agent's calls: %+v", tr)
	out = s.ok(t, "machines", "trace", "02:00:00:00:00:01")
	assert.Regexp(t, `(?m)^TIME\s+REGION\s+KIND\s+OUTCOME\s+WHAT\s+WHY$`, out)
	assert.Regexp(t, `(?m)^\d\d:\d\d:\d\d\.\d{3}\s+dc1\s+agent\s+ok\s+\S`, out)
	assert.Contains(t, s.ok(t, "machines", "trace", "02:00:00:00:00:77"), "no region has heard from 02:00:00:00:00:77")
	code, _, errOut = s.ctl(t, "machines", "trace", "not-a-mac")
	assert.Equal(t, 2, code, errOut)
	follow := exec.Command(bin, "machines", "trace", "02:00:00:00:00:01", "--follow", "--interval", "200ms")
	follow.Env = append(cleanEnv(), "LPMOS_URL="+s.url, "LPMOS_TOKEN="+adminToken)
	followOut, err := follow.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, follow.Start())
	sc := bufio.NewScanner(followOut)
	sawAgent := false
	for !sawAgent && sc.Scan() {
		sawAgent = strings.Contains(sc.Text(), " agent ")
	}
	assert.True(t, sawAgent, "--follow printed no agent event")
	require.NoError(t, follow.Process.Signal(os.Interrupt))
	assert.NoError(t, follow.Wait(), "--follow ends with status 0 when interrupted")

	// List and get: the discovered hardware beside the expectation.
	out = s.ok(t, "machines", "list", "--mac-prefix", "02:00:00:00:00")
	assert.Regexp(t, `(?m)^MAC\s+REGION\s+HARDWARE\s+BMC\s+POWER\s+LAST SEEN\s+TAGS$`, out)
	assert.Regexp(t, `(?m)^02:00:00:00:00:01\s+dc1\s+.*16 cores, \d+ GB, \d+ disks.*\s+-\s+-\s+\d+s ago\s+-$`, out)
	assert.Regexp(t, `(?m)^02:00:00:00:00:09\s+dc1\s+-\s+ipmi 127.0.0.1:1623\s+-\s+never\s+rack=r9$`, out)
	var page struct {
		Machines []struct {
			MAC string `json:"mac"`
		} `json:"machines"`
		Total int `json:"total"`
	}
	s.jsonOut(t, &page, "machines", "list", "--tag", "rack=r9")
	require.Len(t, page.Machines, 1)
	assert.Equal(t, "02:00:00:00:00:09", page.Machines[0].MAC)
	page.Machines = nil
	s.jsonOut(t, &page, "machines", "list", "--limit", "1", "--all")
	assert.Len(t, page.Machines, 2, "--all pages through")
	details := s.ok(t, "machines", "get", "02:00:00:00:00:01")
	assert.Regexp(t, `(?m)^Expected:\s+16 cores$`, details)
	assert.Regexp(t, `(?m)^`+created.TaskID+`\s+completed\s+debian 12\s+\d+s$`, details)

	// Power is accepted for the region to carry out; an update removes
	// the BMC, after which power is refused.
	assert.Contains(t, s.ok(t, "machines", "power", "02:00:00:00:00:09", "on"), "on 02:00:00:00:00:09: requested (region dc1")
	s.ok(t, "machines", "update", "02:00:00:00:00:09", "--no-bmc", "--no-expected")
	code, _, errOut = s.ctl(t, "machines", "power", "02:00:00:00:00:09", "off")
	assert.Equal(t, 4, code, errOut)
	assert.Contains(t, errOut, "no_bmc")
	code, _, errOut = s.ctl(t, "machines", "power", "02:00:00:00:00:01", "explode")
	assert.Equal(t, 2, code, errOut)

	// Delete: once, then not found; a rule likewise.
	assert.Contains(t, s.ok(t, "machines", "delete", "02:00:00:00:00:09"), "deleted 02:00:00:00:00:09")
	code, _, errOut = s.ctl(t, "machines", "get", "02:00:00:00:00:09")
	assert.Equal(t, 3, code, errOut)
	s.ok(t, "rules", "delete", "asset-db")
	code, _, errOut = s.ctl(t, "rules", "delete", "asset-db")
	assert.Equal(t, 3, code, errOut)
}
