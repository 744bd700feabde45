package main_test

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// balancer is a TCP load balancer on loopback for the failover test, as
// haproxy in front of control-plane replicas would be: each new connection
// goes to the first backend that accepts it, and a connection whose backend
// goes away is closed on the client's side too. Hold makes new connections
// wait at the balancer (accepted, not yet forwarded) until Release, so that
// the test decides when clients can reach a replica again.
type balancer struct {
	t        testing.TB
	ln       net.Listener
	backends []string

	mu     sync.Mutex
	gate   chan struct{} // closed while connections may pass
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// startBalancer listens on a loopback port and forwards to backends (in
// order of preference) until the test ends.
func startBalancer(t testing.TB, backends ...string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &balancer{t: t, ln: ln, backends: backends, gate: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(b.gate)
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(b.close)
	return b
}

// Addr is where clients connect.
func (b *balancer) Addr() string { return b.ln.Addr().String() }

// Hold makes the connections accepted from now on wait until Release.
func (b *balancer) Hold() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.gate:
		b.gate = make(chan struct{})
	default: // already held
	}
}

// Release lets the waiting connections and every later one through.
func (b *balancer) Release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.gate:
	default:
		close(b.gate)
	}
}

func (b *balancer) close() {
	b.ln.Close()
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	select {
	case <-b.gate:
	default:
		close(b.gate)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// track registers a connection to be closed with the balancer; false if
// the balancer is closing.
func (b *balancer) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.conns[c] = struct{}{}
	return true
}

func (b *balancer) untrack(c net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.conns, c)
}

func (b *balancer) accept() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				b.t.Logf("balancer: accept: %v", err)
			}
			return
		}
		if !b.track(c) {
			c.Close()
			return
		}
		b.wg.Add(1)
		go b.serve(c)
	}
}

// serve forwards one client connection to the first backend that takes it.
func (b *balancer) serve(client net.Conn) {
	defer b.wg.Done()
	defer b.untrack(client)
	defer client.Close()
	b.mu.Lock()
	gate := b.gate
	b.mu.Unlock()
	<-gate
	var backend net.Conn
	for _, addr := range b.backends {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil && b.track(c) {
			backend = c
			break
		}
		if c != nil {
			c.Close()
		}
	}
	if backend == nil {
		return // no backend answers: the client sees its connection closed
	}
	defer b.untrack(backend)
	defer backend.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(backend, client)
	go pipe(client, backend)
	<-done // either side ended: end both, as a backend that died ends its clients'
	client.Close()
	backend.Close()
	<-done
}
