package main_test

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/internal/etcdtest"
)

var bin string // built once by TestMain

func TestMain(m *testing.M) { os.Exit(cmdtest.Main(m, &bin)) }

const adminToken = "LPMOS_ADMIN_TOKEN=0123456789abcdef0123"

// The binary as an operator runs it, against a real etcd: it fails loudly
// when it cannot listen, stops cleanly on SIGTERM and refuses arguments it
// does not take.
func TestControlPlaneBinary(t *testing.T) {
	etcd := etcdtest.StartMember(t).ClientURL()

	t.Run("busy address", func(t *testing.T) {
		busy := cmdtest.Occupied(t)
		p := cmdtest.Start(t, bin, []string{adminToken}, "--etcd-endpoints", etcd, "--listen-addr", busy)
		code := p.Wait(10 * time.Second)
		assert.Equal(t, 1, code, p.Output())
		assert.Contains(t, p.Output(), busy, "the error names the address")
	})

	t.Run("SIGTERM", func(t *testing.T) {
		addr := cmdtest.FreeAddr(t)
		p := cmdtest.Start(t, bin, []string{adminToken}, "--etcd-endpoints", etcd, "--listen-addr", addr)
		p.WaitOK("http://" + addr + "/healthz")
		fams := cmdtest.CheckMetrics(t, "http://"+addr+"/metrics", strings.TrimPrefix(adminToken, "LPMOS_ADMIN_TOKEN="))
		assert.Contains(t, fams, "lpmos_tasks")
		p.Signal(syscall.SIGTERM)
		assert.Equal(t, 0, p.Wait(30*time.Second), p.Output())
	})

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"stray argument", []string{"--etcd-endpoints", etcd, "serve"}, 2, `unexpected argument "serve"`},
		{"unknown flag", []string{"--no-such-flag"}, 2, "flag provided but not defined"},
		{"version", []string{"--version"}, 0, "control-plane github.com/lpmos/lpmos "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := cmdtest.Run(t, 10*time.Second, bin, tc.args...)
			assert.Equal(t, tc.code, code, out)
			assert.Contains(t, out, tc.want)
		})
	}
}
