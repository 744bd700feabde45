package netns

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// skipShort keeps the README's inner loop (go test -short) free of root.
func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("creates network namespaces (root); not in -short mode")
	}
}

func TestVethAndDo(t *testing.T) {
	skipShort(t)
	a, b := New(t), New(t)
	assert.True(t, strings.HasPrefix(a.Name, Prefix))
	assert.NotEqual(t, a.Name, b.Name)
	aIf, bIf := Veth(t, a, "10.123.0.1/24", b, "10.123.0.2/24")

	out := a.MustRun(t, "ip", "-o", "addr", "show", "dev", aIf)
	assert.Contains(t, out, "10.123.0.1/24")
	out = b.MustRun(t, "ip", "-o", "addr", "show")
	assert.Contains(t, out, "10.123.0.2/24")
	assert.NotContains(t, out, "10.123.0.1/24", "interfaces live in their own namespace")
	assert.Contains(t, b.MustRun(t, "ip", "-o", "link", "show", "dev", bIf), "state UP")

	// A socket opened inside a namespace is served from an ordinary
	// goroutine; a client in the other namespace reaches it over the veth.
	ln, err := a.Listen("tcp4", "10.123.0.1:0")
	require.NoError(t, err, "binding an address of the namespace works only inside it")
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hello from a"))
			c.Close()
		}
	}()
	var got []byte
	require.NoError(t, b.Do(func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		got = buf[:n]
		return err
	}))
	assert.Equal(t, "hello from a", string(got))

	// The root namespace does not have the address.
	_, err = net.Listen("tcp4", "10.123.0.1:0")
	assert.Error(t, err)
}

func TestBridgeAndProcesses(t *testing.T) {
	skipShort(t)
	br := NewBridge(t)
	hosts := []*NS{New(t), New(t), New(t)}
	for i, h := range hosts {
		br.Attach(t, h, []string{"10.124.0.1/24", "10.124.0.2/24", "10.124.0.3/24"}[i])
	}
	for i, target := range []string{"10.124.0.2:7000", "10.124.0.3:7000"} {
		ln, err := hosts[i+1].Listen("tcp4", target)
		require.NoError(t, err)
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Close()
			}
		}()
		require.NoError(t, hosts[0].Do(func() error {
			c, err := net.DialTimeout("tcp4", target, 5*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		}), "the bridge forwards between its ports at once")
	}

	p, err := hosts[1].Start(context.Background(), "sleep", "600")
	require.NoError(t, err)
	pid := p.Cmd.Process.Pid
	require.NoError(t, syscall.Kill(pid, 0), "process runs")
	p.Stop()
	p.Stop() // idempotent
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned before the process exited")
	}

	ctx, cancel := context.WithCancel(context.Background())
	q, err := hosts[2].Start(ctx, "sh", "-c", "echo started; exec sleep 600")
	require.NoError(t, err)
	require.True(t, WaitFor(5*time.Second, func() bool { return strings.Contains(q.Output(), "started") }))
	cancel()
	assert.Error(t, q.Wait(), "killed when its context ends")
}

func TestCleanupDeletesNamespace(t *testing.T) {
	skipShort(t)
	var name string
	var pid int
	t.Run("inner", func(t *testing.T) {
		ns := New(t)
		name = ns.Name
		p, err := ns.Start(context.Background(), "sleep", "600")
		require.NoError(t, err)
		pid = p.Cmd.Process.Pid
	})
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	assert.NotContains(t, string(out), name)
	assert.Error(t, syscall.Kill(pid, 0), "the process started in the namespace is gone")
}
