// Package relay joins connections for tests: every connection a listener
// accepts is copied both ways to a connection a dial function makes. The
// tests use it to cross network namespaces (a process in a namespace
// reaching the etcd member on the test's own loopback) and to hand a
// virtual machine's BMC socket to a simulator. It is test support, not API.
package relay

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Serve accepts connections on ln until the test ends and joins each to
// the connection dial returns (dial runs once per accepted connection;
// when it fails, the accepted connection is closed). Either side ending
// ends both. When the test ends, ln and every open connection are closed
// and Serve's goroutines have returned.
func Serve(t testing.TB, ln net.Listener, dial func() (net.Conn, error)) {
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		open   = map[net.Conn]struct{}{}
		closed bool
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return false
		}
		open[c] = struct{}{}
		return true
	}
	untrack := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			delete(open, c)
		}
	}
	join := func(c net.Conn) {
		defer wg.Done()
		defer c.Close()
		up, err := dial()
		if err != nil {
			untrack(c)
			return
		}
		defer up.Close()
		if !track(up) {
			return
		}
		defer untrack(c, up)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.Copy(up, c)
			up.Close()
		}()
		_, _ = io.Copy(c, up)
		c.Close()
		<-done
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(c) {
				c.Close()
				return
			}
			wg.Add(1)
			go join(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}
