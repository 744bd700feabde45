package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/agent/httpc"
)

// downloadError is a download that could not be carried on.
type downloadError struct{ err error }

func (e *downloadError) Error() string { return e.err.Error() }
func (e *downloadError) Unwrap() error { return e.err }

// resumingBody reads an HTTP resource and, when the connection breaks,
// asks for the rest with "Range: bytes=N-" guarded by If-Range (the ETag
// or Last-Modified of the first answer), so the reader sees one unbroken
// stream. An outage is retried for at most resumeFor.
type resumingBody struct {
	ctx       context.Context
	client    httpc.Doer
	url       string
	resumeFor time.Duration
	log       *slog.Logger

	body      io.ReadCloser
	validator string // ETag or Last-Modified
	total     int64  // -1 when unknown
	offset    int64
	resumes   int
}

// open makes the first request; 4xx fail at once, network errors and 5xx
// are retried like a resume.
func (b *resumingBody) open() error {
	b.total = -1
	return b.retry(func() error { return b.request() })
}

func (b *resumingBody) request() error {
	req := &httpc.Request{URL: b.url, Header: textproto.MIMEHeader{}}
	req.Header.Set("Accept-Encoding", "identity") // hash the bytes as stored
	if b.offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(b.offset, 10)+"-")
		if b.validator != "" {
			req.Header.Set("If-Range", b.validator)
		}
	}
	resp, err := b.client.Do(b.ctx, req)
	if err != nil {
		return err // retryable
	}
	switch {
	case b.offset == 0 && resp.StatusCode == httpc.StatusOK:
		b.total = resp.ContentLength
		b.validator = resp.Header.Get("ETag")
		if b.validator == "" || strings.HasPrefix(b.validator, "W/") {
			b.validator = resp.Header.Get("Last-Modified")
		}
	case b.offset > 0 && resp.StatusCode == httpc.StatusPartialContent:
		if start := contentRangeStart(resp.Header.Get("Content-Range")); start != b.offset {
			resp.Body.Close()
			return &downloadError{fmt.Errorf("GET %s: resumed at %d, the server answered from %d", b.url, b.offset, start)}
		}
	case b.offset > 0 && resp.StatusCode == httpc.StatusOK:
		resp.Body.Close()
		return &downloadError{fmt.Errorf("GET %s: cannot resume at byte %d: the image changed on the server or it does not serve ranges", b.url, b.offset)}
	case resp.StatusCode >= 500 || resp.StatusCode == httpc.StatusTooManyRequests:
		resp.Body.Close()
		return fmt.Errorf("GET %s: %s", b.url, resp.Status) // retryable
	default:
		resp.Body.Close()
		return &downloadError{fmt.Errorf("GET %s: %s", b.url, resp.Status)}
	}
	b.body = resp.Body
	return nil
}

func contentRangeStart(h string) int64 {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return -1
	}
	first, _, _ := strings.Cut(rest, "-")
	n, err := strconv.ParseInt(first, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// retry runs f until it succeeds, fails finally (*downloadError), ctx
// ends, or resumeFor is over.
func (b *resumingBody) retry(f func() error) error {
	start := time.Now()
	backoff := 200 * time.Millisecond
	for {
		err := f()
		var de *downloadError
		if err == nil || errors.As(err, &de) {
			return err
		}
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
		if time.Since(start) > b.resumeFor {
			return &downloadError{fmt.Errorf("image server unreachable for %s: %w", b.resumeFor, err)}
		}
		b.log.Warn("image download interrupted, retrying", "url", b.url, "offset", b.offset, "err", err)
		t := time.NewTimer(time.Duration(rand.Int64N(int64(backoff))) + backoff/2)
		select {
		case <-b.ctx.Done():
			t.Stop()
			return b.ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (b *resumingBody) Read(p []byte) (int, error) {
	for {
		if b.body == nil {
			if err := b.retry(b.request); err != nil {
				return 0, err
			}
			b.resumes++
		}
		n, err := b.body.Read(p)
		b.offset += int64(n)
		if err == nil || (err == io.EOF && (b.total < 0 || b.offset >= b.total)) {
			return n, err
		}
		if b.ctx.Err() != nil {
			return n, b.ctx.Err()
		}
		// Broken (or short) stream: resume on the next read.
		b.log.Warn("image download broke, resuming", "url", b.url, "offset", b.offset, "err", err)
		b.body.Close()
		b.body = nil
		if n > 0 {
			return n, nil
		}
	}
}

func (b *resumingBody) Close() error {
	if b.body != nil {
		return b.body.Close()
	}
	return nil
}
