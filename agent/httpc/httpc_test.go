package httpc_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent/httpc"
)

// server is a net/http test server that counts the connections it accepted.
func server(t *testing.T, h http.Handler, tlsToo bool) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	ts := httptest.NewUnstartedServer(h)
	ts.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	if tlsToo {
		ts.StartTLS()
	} else {
		ts.Start()
	}
	t.Cleanup(ts.Close)
	return ts, &conns
}

func get(t *testing.T, c httpc.Doer, u string) (*httpc.Response, string) {
	t.Helper()
	resp, err := c.Do(context.Background(), &httpc.Request{URL: u})
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(b)
}

// The bodies net/http sends: sized, chunked (flushed as it goes), empty,
// and HEAD; each read to its end hands the connection back, so all of them
// go over one connection.
func TestBodiesAndKeepAlive(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/sized", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"v1"`)
		io.WriteString(w, "hello")
	})
	mux.HandleFunc("/chunked", func(w http.ResponseWriter, r *http.Request) {
		for i := range 3 {
			io.WriteString(w, strings.Repeat(string(rune('a'+i)), 5000))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/empty", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		io.WriteString(w, r.Method+" "+r.Header.Get("Authorization")+" "+string(b)+" "+r.UserAgent())
	})
	for _, tlsToo := range []bool{false, true} {
		t.Run(map[bool]string{false: "http", true: "https"}[tlsToo], func(t *testing.T) {
			ts, conns := server(t, mux, tlsToo)
			c := &httpc.Client{}
			if tlsToo {
				c.TLSConfig = &tls.Config{RootCAs: ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
			}
			t.Cleanup(c.CloseIdleConnections)

			resp, body := get(t, c, ts.URL+"/sized")
			assert.Equal(t, httpc.StatusOK, resp.StatusCode)
			assert.Equal(t, "200 OK", resp.Status)
			assert.Equal(t, int64(5), resp.ContentLength)
			assert.Equal(t, `"v1"`, resp.Header.Get("Etag"))
			assert.Equal(t, "hello", body)

			resp, body = get(t, c, ts.URL+"/chunked")
			assert.Equal(t, int64(-1), resp.ContentLength)
			assert.Equal(t, strings.Repeat("a", 5000)+strings.Repeat("b", 5000)+strings.Repeat("c", 5000), body)

			resp, body = get(t, c, ts.URL+"/empty")
			assert.Equal(t, http.StatusNoContent, resp.StatusCode)
			assert.Empty(t, body)

			resp, err := c.Do(context.Background(), &httpc.Request{Method: "HEAD", URL: ts.URL + "/sized"})
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, httpc.StatusOK, resp.StatusCode)

			h := textproto.MIMEHeader{}
			h.Set("authorization", "Bearer x")
			h.Set("Content-Type", "application/json")
			resp, err = c.Do(context.Background(), &httpc.Request{Method: "POST", URL: ts.URL + "/echo", Header: h, Body: []byte(`{"a":1}`)})
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, `POST Bearer x {"a":1} lpmos-agent`, string(b))
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))

			assert.Equal(t, int32(1), conns.Load(), "one kept-alive connection for all requests")
		})
	}
}

// A kept-alive connection the server closed meanwhile is replaced, and the
// request (with its body) goes out again on a new one.
func TestStaleConnectionIsReplaced(t *testing.T) {
	ts, conns := server(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	}), false)
	c := &httpc.Client{}
	t.Cleanup(c.CloseIdleConnections)
	_, body := get(t, c, ts.URL)
	assert.Empty(t, body)
	ts.CloseClientConnections()
	resp, err := c.Do(context.Background(), &httpc.Request{Method: "PUT", URL: ts.URL, Body: []byte("again")})
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "again", string(b))
	assert.Equal(t, int32(2), conns.Load())
}

// GET follows redirects, relative ones included; CheckURL sees every URL
// and can stop the request before anything is sent.
func TestRedirectsAndCheckURL(t *testing.T) {
	var hits atomic.Int32
	mux := http.NewServeMux()
	mux.Handle("/a", http.RedirectHandler("/b", http.StatusFound))
	mux.Handle("/b", http.RedirectHandler("c", http.StatusTemporaryRedirect))
	mux.HandleFunc("/c", func(w http.ResponseWriter, r *http.Request) { hits.Add(1); io.WriteString(w, "here") })
	mux.Handle("/post307", http.RedirectHandler("/echo", http.StatusTemporaryRedirect))
	mux.Handle("/post303", http.RedirectHandler("/echo", http.StatusSeeOther))
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, r.Method+" "+string(b)+" "+r.Header.Get("Authorization"))
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	ts, _ := server(t, mux, false)

	c := &httpc.Client{}
	_, body := get(t, c, ts.URL+"/a")
	assert.Equal(t, "here", body)

	h := textproto.MIMEHeader{"Authorization": {"Bearer t"}}
	for path, want := range map[string]string{"/post307": "POST body Bearer t", "/post303": "GET  Bearer t"} {
		resp, err := c.Do(context.Background(), &httpc.Request{Method: "POST", URL: ts.URL + path, Header: h, Body: []byte("body")})
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, want, string(b), path)
	}
	other, _ := server(t, mux, false)
	mux.Handle("/away", http.RedirectHandler(other.URL+"/echo", http.StatusTemporaryRedirect))
	resp, err := c.Do(context.Background(), &httpc.Request{Method: "POST", URL: ts.URL + "/away", Header: h, Body: []byte("body")})
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, "POST body ", string(b), "the token stays with its host")

	_, err = c.Do(context.Background(), &httpc.Request{URL: ts.URL + "/loop"}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, httpc.ErrTooManyRedirects)

	errNo := errors.New("not c")
	var seen []string
	c.CheckURL = func(u *url.URL) error {
		seen = append(seen, u.Path)
		if u.Path == "/c" {
			return errNo
		}
		return nil
	}
	_, err = c.Do(context.Background(), &httpc.Request{URL: ts.URL + "/a"}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, errNo)
	assert.Equal(t, []string{"/a", "/b", "/c"}, seen)
	assert.Equal(t, int32(1), hits.Load(), "the refused URL was never fetched")
}

// The context ends a request waiting for its answer (a long-poll) and a
// body being read, with the context's error.
func TestContextEndsTheExchange(t *testing.T) {
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "start")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	ts, _ := server(t, mux, false)
	t.Cleanup(func() { close(release) })
	c := &httpc.Client{}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Do(ctx, &httpc.Request{URL: ts.URL + "/wait"}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, context.DeadlineExceeded)

	ctx2, cancel2 := context.WithCancel(context.Background())
	resp, err := c.Do(ctx2, &httpc.Request{URL: ts.URL + "/slow"})
	require.NoError(t, err)
	defer resp.Body.Close()
	buf := make([]byte, 5)
	_, err = io.ReadFull(resp.Body, buf)
	require.NoError(t, err)
	cancel2()
	_, err = io.ReadAll(resp.Body)
	require.ErrorIs(t, err, context.Canceled)
}

// rawServer answers every connection with a fixed byte string.
func rawServer(t *testing.T, answer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			for { // the request's head
				l, err := br.ReadString('\n')
				if err != nil || l == "\r\n" {
					break
				}
			}
			io.WriteString(c, answer)
			c.Close()
		}
	}()
	return "http://" + ln.Addr().String()
}

// Broken answers are errors, not bodies: a status line that is not HTTP, a
// body shorter than its Content-Length, a broken chunk; an answer with
// neither length nor chunks is read until the server closes, after a
// 100 Continue.
func TestBrokenAnswers(t *testing.T) {
	c := &httpc.Client{}
	ctx := context.Background()
	_, err := c.Do(ctx, &httpc.Request{URL: rawServer(t, "SSH-2.0-OpenSSH\r\n\r\n")}) //nolint:bodyclose // it fails
	require.ErrorIs(t, err, httpc.ErrMalformed)

	for name, tc := range map[string]struct {
		answer, body string
		err          error
	}{
		"short":      {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "abc", io.ErrUnexpectedEOF},
		"bad chunk":  {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "", httpc.ErrMalformed},
		"cut chunk":  {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "ab", io.ErrUnexpectedEOF},
		"chunks":     {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: 1\r\n\r\n", "abcde", nil},
		"until EOF":  {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nall of it", "all of it", nil},
		"not status": {"HTTP/1.1 2000 OK\r\n\r\n", "", httpc.ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := c.Do(ctx, &httpc.Request{URL: rawServer(t, tc.answer)})
			if err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			assert.Equal(t, tc.body, string(b))
			if tc.err == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.err)
			}
		})
	}
}

// A header value cannot smuggle a second header or request.
func TestHeaderInjectionRefused(t *testing.T) {
	ts, _ := server(t, http.NotFoundHandler(), false)
	h := textproto.MIMEHeader{"X-A": {"1\r\nX-B: 2"}}
	_, err := (&httpc.Client{}).Do(context.Background(), &httpc.Request{URL: ts.URL, Header: h}) //nolint:bodyclose // it fails
	require.ErrorContains(t, err, "line break")
}
