package main_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/internal/etcdtest"
)

var bin string // built once by TestMain

func TestMain(m *testing.M) { os.Exit(cmdtest.Main(m, &bin)) }

// The binary as an operator runs it, against a real etcd: it fails loudly
// when it cannot listen, stops cleanly on SIGTERM and refuses arguments it
// does not take.
func TestRegionBinary(t *testing.T) {
	etcd := etcdtest.StartMember(t).ClientURL()
	args := func(listen string) []string {
		return []string{"--etcd-endpoints", etcd, "--region-listen", listen, "--region-url", "http://" + listen,
			"--tftp-listen", "", "--boot-dir", t.TempDir()}
	}

	t.Run("busy address", func(t *testing.T) {
		busy := cmdtest.Occupied(t)
		code, out := cmdtest.Run(t, 10*time.Second, bin, args(busy)...)
		assert.Equal(t, 1, code, out)
		assert.Contains(t, out, busy, "the error names the address")
	})

	t.Run("SIGTERM", func(t *testing.T) {
		addr := cmdtest.FreeAddr(t)
		tokenFile := filepath.Join(t.TempDir(), "metrics-token")
		require.NoError(t, os.WriteFile(tokenFile, []byte("scrape-me\n"), 0o600))
		p := cmdtest.Start(t, bin, nil, append(args(addr), "--metrics-token-file", tokenFile)...)
		p.WaitOK("http://" + addr + "/health")
		fams := cmdtest.CheckMetrics(t, "http://"+addr+"/metrics", "scrape-me")
		assert.Contains(t, fams, "lpmos_region_tasks")
		p.Signal(syscall.SIGTERM)
		assert.Equal(t, 0, p.Wait(30*time.Second), p.Output())
	})

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"stray argument", append(args(cmdtest.FreeAddr(t)), "serve"), 2, `unexpected argument "serve"`},
		{"unknown flag", []string{"--no-such-flag"}, 2, "flag provided but not defined"},
		{"bad dhcp mode", []string{"--dhcp-iface", "lo", "--dhcp-mode", "relay", "--etcd-endpoints", etcd}, 2, "relay"},
		{"version", []string{"--version"}, 0, "region github.com/lpmos/lpmos "},
		{"metrics token file readable by others", []string{"--etcd-endpoints", etcd, "--metrics-token-file", worldReadable(t)}, 2, "chmod 600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := cmdtest.Run(t, 10*time.Second, bin, tc.args...)
			assert.Equal(t, tc.code, code, out)
			assert.Contains(t, out, tc.want)
		})
	}
}

func worldReadable(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
