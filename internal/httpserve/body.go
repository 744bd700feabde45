package httpserve

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// bodyDeadline gives a request that carries a body d to deliver it. The
// deadline is on the connection, so a client trickling its body is cut off
// whatever the handler does; it is lifted once the body has been read, so
// a handler may take its time answering (an expiring read deadline would
// cancel the request's context).
func bodyDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(d)); err != nil {
			// Not a connection of ours (a test recorder): nothing to bound.
			h.ServeHTTP(w, r)
			return
		}
		r.Body = &deadlineBody{ReadCloser: r.Body, lift: func() { _ = rc.SetReadDeadline(time.Time{}) }}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the read deadline when the body has been read to its
// end. A body read that failed (the deadline expired) keeps it, so the
// server closes the connection instead of reading on.
type deadlineBody struct {
	io.ReadCloser
	lift   func()
	lifted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.lifted {
		b.lifted = true
		b.lift()
	}
	return n, err
}
