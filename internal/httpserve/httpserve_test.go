package httpserve_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/httpserve"
)

// dialFrom connects to addr from the loopback address src (any 127.x
// address is a valid source on Linux).
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the other end closed c (or reset it)
// within a generous bound.
func closedByPeer(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestListenerCaps(t *testing.T) {
	for _, tc := range []struct {
		name             string
		max, perSource   int
		from             []string // the source of each connection, in order
		held             int      // how many the listener hands out
		refusedAfterward []string // sources whose next connection is refused
	}{
		{"per source", 0, 2, []string{"127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3"}, 3, []string{"127.0.0.2"}},
		{"total", 3, 0, []string{"127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.4"}, 3, []string{"127.0.0.5"}},
		{"both", 3, 2, []string{"127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4"}, 3, []string{"127.0.0.2", "127.0.0.5"}},
		{"no caps", -1, -1, []string{"127.0.0.2", "127.0.0.2", "127.0.0.2"}, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			ln := httpserve.NewListener(inner, tc.max, tc.perSource, nil)
			defer ln.Close()
			accepted := make(chan net.Conn, 16)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						close(accepted)
						return
					}
					accepted <- c
				}
			}()
			var clients []net.Conn
			for _, src := range tc.from {
				clients = append(clients, dialFrom(t, src, ln.Addr().String()))
			}
			var held []net.Conn
			for range tc.held {
				held = append(held, <-accepted)
			}
			total, _ := ln.Open(netip.Addr{})
			assert.Equal(t, tc.held, total)
			// The accept queue is first in, first out: the connections over
			// a cap are the last ones of their source, and they are closed.
			refused := 0
			for _, c := range clients {
				if !isHeld(c, held) {
					assert.True(t, closedByPeer(c), "a connection over the cap is closed")
					refused++
				}
			}
			assert.Equal(t, len(tc.from)-tc.held, refused)
			assert.EqualValues(t, refused, ln.Refused())
			for _, src := range tc.refusedAfterward {
				assert.True(t, closedByPeer(dialFrom(t, src, ln.Addr().String())), "%s is still over its cap", src)
			}

			// Closing a connection, however often, frees exactly one slot.
			src := netip.MustParseAddr(tc.from[0])
			_, before := ln.Open(src)
			require.NoError(t, held[0].Close())
			require.Error(t, held[0].Close())
			total, after := ln.Open(src)
			assert.Equal(t, tc.held-1, total)
			assert.Equal(t, before-1, after)
			c := dialFrom(t, tc.from[0], ln.Addr().String())
			got := <-accepted
			assert.Equal(t, c.LocalAddr().String(), got.RemoteAddr().String(), "the freed slot is taken by the next connection")
			got.Close()
			select {
			case c, ok := <-accepted:
				assert.False(t, ok, "unexpected connection from %v", c)
			default:
			}
		})
	}
}

func isHeld(client net.Conn, held []net.Conn) bool {
	for _, h := range held {
		if h.RemoteAddr().String() == client.LocalAddr().String() {
			return true
		}
	}
	return false
}

// serve runs Serve on a loopback port with lim until the test ends.
func serve(t *testing.T, h http.Handler, lim httpserve.Limits) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- httpserve.Serve(ctx, ln, h, httpserve.Config{Limits: lim, ShutdownTimeout: 5 * time.Second})
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done, "Serve returns nil once its context ends")
	})
	return ln.Addr().String()
}

// A client trickling its body is cut off instead of holding the
// connection (and a handler) for as long as it likes.
func TestTrickledBodyIsCutOff(t *testing.T) {
	handlerErr := make(chan error, 1)
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		handlerErr <- err
		if err != nil {
			http.Error(w, "slow body", http.StatusRequestTimeout)
		}
	}), httpserve.Limits{BodyReadTimeout: 300 * time.Millisecond})

	c := dialFrom(t, "127.0.0.1", addr)
	_, err := fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
	require.NoError(t, err)
	stop := make(chan struct{})
	defer close(stop)
	go func() { // one byte at a time, too slowly
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := c.Write([]byte("x")); err != nil {
					return
				}
			}
		}
	}()
	select {
	case err := <-handlerErr:
		require.Error(t, err, "the body read fails")
	case <-time.After(30 * time.Second):
		t.Fatal("the trickled body was never cut off")
	}
	// The connection ends with the handler's answer (or with a reset, the
	// client's bytes still coming).
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var answer bytes.Buffer
	_, err = io.Copy(&answer, c)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "the server held the connection")
	if answer.Len() > 0 {
		assert.Contains(t, answer.String(), "408")
	}
}

// Requests without a body (long-polls, WebSocket upgrades) and handlers
// that take their time after reading a body are not cut short by the body
// timeout.
func TestBodyTimeoutSparesSlowHandlers(t *testing.T) {
	const bodyTimeout = 100 * time.Millisecond
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(5 * bodyTimeout):
			fmt.Fprintf(w, "waited for %q", body)
		case <-r.Context().Done():
			// The client would see no answer; the test sees EOF.
		}
	}), httpserve.Limits{BodyReadTimeout: bodyTimeout})

	for _, tc := range []struct {
		method, body string
	}{
		{"GET", ""},
		{"POST", "hello"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, "http://"+addr+"/", strings.NewReader(tc.body))
			require.NoError(t, err)
			if tc.body == "" {
				req.Body = nil
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.Equal(t, fmt.Sprintf("waited for %q", tc.body), string(got))
		})
	}
}

// Headers must come in time, and no larger than allowed.
func TestHeaderLimits(t *testing.T) {
	addr := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		httpserve.Limits{ReadHeaderTimeout: 200 * time.Millisecond, MaxHeaderBytes: 1 << 10})

	c := dialFrom(t, "127.0.0.1", addr)
	_, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n") // and never the end of the headers
	require.NoError(t, err)
	assert.True(t, closedByPeer(c), "a client that never finishes its headers is dropped")

	c = dialFrom(t, "127.0.0.1", addr)
	_, err = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 8<<10))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
}

func TestLimitsOr(t *testing.T) {
	def := httpserve.Defaults()
	assert.Equal(t, def, httpserve.Limits{}.Or(def), "the zero value is the defaults")
	got := httpserve.Limits{MaxConns: 5, IdleTimeout: -1}.Or(def)
	assert.Equal(t, 5, got.MaxConns)
	assert.Equal(t, time.Duration(-1), got.IdleTimeout, "negative disables and is kept")
	assert.Equal(t, def.ReadHeaderTimeout, got.ReadHeaderTimeout)
}
