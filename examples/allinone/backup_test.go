package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store/etcd"
)

// The README's backup and restore, with the real binary: an allinone on
// the embedded etcd snapshots into --etcd-snapshot-dir; a new allinone
// started with --etcd-restore on a new data directory has every task.
func TestBackupAndRestore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const token = "0123456789abcdef0123456789abcdef"
	start := func(data string, extra ...string) (api func(method, path, body string) (int, map[string]any), stop func()) {
		cp, rp := freePort(t), freePort(t)
		args := append([]string{"--data-dir", data, "--boot-dir", filepath.Join(data, "boot"),
			"--listen-addr", fmt.Sprintf("127.0.0.1:%d", cp), "--tftp-listen", "",
			"--region-listen", fmt.Sprintf("127.0.0.1:%d", rp), "--region-url", fmt.Sprintf("http://127.0.0.1:%d", rp),
			"--etcd-client-url", fmt.Sprintf("https://127.0.0.1:%d", freePort(t)),
			"--etcd-peer-url", fmt.Sprintf("http://127.0.0.1:%d", freePort(t))}, extra...)
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(os.Environ(), "LPMOS_ADMIN_TOKEN="+token)
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.WaitDelay = 10 * time.Second
		require.NoError(t, cmd.Start())
		base := fmt.Sprintf("http://127.0.0.1:%d", cp)
		api = func(method, path, body string) (int, map[string]any) {
			req, _ := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			if body != "" {
				req.Header.Set("Content-Type", "application/json")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return 0, nil
			}
			defer resp.Body.Close()
			var m map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&m)
			return resp.StatusCode, m
		}
		stopped := false
		stop = func() {
			if stopped {
				return
			}
			stopped = true
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("allinone output:\n%s", out)
			}
		}
		t.Cleanup(stop)
		require.Eventually(t, func() bool {
			code, body := api("GET", "/api/v1/regions", "")
			regions, _ := body["regions"].([]any)
			return code == http.StatusOK && len(regions) == 1
		}, 60*time.Second, 100*time.Millisecond, "allinone never came up:\n%s", out)
		return api, stop
	}

	snapshots := filepath.Join(t.TempDir(), "snapshots")
	api, stop := start(t.TempDir(), "--etcd-snapshot-dir", snapshots, "--etcd-snapshot-interval", "200ms", "--etcd-snapshot-keep", "3")
	var ids []string
	for i := range 3 {
		code, body := api("POST", "/api/v1/tasks", fmt.Sprintf(`{"region_id":"dc1","target_mac":"52:54:00:73:00:%02x","os_type":"debian","os_version":"12"}`, i+1))
		require.Equal(t, http.StatusCreated, code, "%v", body)
		ids = append(ids, body["task_id"].(string))
	}
	// A snapshot named after a time past the creates was begun after them
	// (the name is the time it was started).
	after := "lpmos-" + time.Now().UTC().Format("20060102T150405.000Z")
	var latest string
	require.Eventually(t, func() bool {
		all, err := etcd.Snapshots(snapshots)
		if err != nil || len(all) == 0 {
			return false
		}
		latest = all[len(all)-1]
		return filepath.Base(latest) > after
	}, 30*time.Second, 50*time.Millisecond)
	all, err := etcd.Snapshots(snapshots)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(all), 3, "kept at most --etcd-snapshot-keep")
	stop()

	api2, _ := start(t.TempDir(), "--etcd-restore", latest)
	for _, id := range ids {
		code, body := api2("GET", "/api/v1/tasks/"+id, "")
		require.Equal(t, http.StatusOK, code, "task %s after the restore: %v", id, body)
		assert.Equal(t, id, body["task_id"])
	}

	// Restoring over an existing store is refused (exit 1, named).
	data := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(data, "etcd"), 0o700))
	out, err := exec.CommandContext(ctx, bin, "--data-dir", data, "--etcd-restore", latest, "--tftp-listen", "",
		"--listen-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--region-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		"--region-url", "http://127.0.0.1:1").CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(out), "exists")
}
