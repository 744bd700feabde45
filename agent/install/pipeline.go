package install

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"
)

// The image is written by a pipeline of goroutines that pass blocks of a
// fixed pool from one to the next, without copying them:
//
//	raw:        fetch ─┬─ hash (one SHA-256: downloaded = written)
//	                   └─ write
//	compressed: fetch ─┬─ hash (SHA-256 of the download)
//	                   └─ decompress ─┬─ hash (SHA-256 of the bytes written)
//	                                  └─ write
//
// Each block is handed to its two consumers at once (they read it
// concurrently, neither writes it) and goes back to its pool when both
// are done with it. The stage the progress comes from (fetch for raw,
// decompress otherwise) runs in the calling goroutine; the others are
// goroutines owned by a stages value: the first error of any stage
// cancels the rest, and the pipeline returns only after all have ended.

const (
	// outBlocks is how many blocks of the write size (ChunkSize) are in
	// flight between the producer, the hash and the writer.
	outBlocks = 4
	// inBlocks × inBlockSize: compressed download in flight between the
	// fetcher, the download hash and the decompressor.
	inBlocks    = 4
	inBlockSize = 1 << 20
)

// block is a buffer of a blockPool and what it holds.
type block struct {
	buf  []byte // directAlign-aligned, full size
	n    int    // bytes held
	off  int64  // offset of buf[0] in its stream
	refs atomic.Int32
	home *blockPool
}

func (b *block) data() []byte { return b.buf[:b.n] }

// release gives up one consumer's hold; the last one returns the block to
// its pool (whose channel has room for all its blocks: never blocks).
func (b *block) release() {
	if b.refs.Add(-1) == 0 {
		b.home.free <- b
	}
}

// blockPool is a fixed set of equal, directAlign-aligned buffers.
type blockPool struct{ free chan *block }

func newBlockPool(count, size int) *blockPool {
	p := &blockPool{free: make(chan *block, count)}
	for range count {
		p.free <- &block{buf: alignedBuffer(size), home: p}
	}
	return p
}

func (p *blockPool) get(ctx context.Context) (*block, error) {
	select {
	case b := <-p.free:
		b.n, b.off = 0, 0
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stages owns the pipeline's goroutines: the first error (of a goroutine,
// or given to fail) is kept and cancels ctx, which every stage watches.
type stages struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
}

func newStages(parent context.Context) *stages {
	ctx, cancel := context.WithCancel(parent)
	return &stages{ctx: ctx, cancel: cancel}
}

func (s *stages) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.cancel()
}

// spawn runs f in a goroutine that wait waits for.
func (s *stages) spawn(f func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(); err != nil {
			s.fail(err)
		}
	}()
}

// wait waits for every stage and returns the first error.
func (s *stages) wait() error {
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// stop cancels the stages and waits for them (idempotent).
func (s *stages) stop() {
	s.cancel()
	s.wg.Wait()
}

// emit hands b to every channel in to (its consumers).
func emit(ctx context.Context, b *block, to ...chan<- *block) error {
	b.refs.Store(int32(len(to)))
	for _, ch := range to {
		select {
		case ch <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// hashBlocks hashes the blocks of ch until it is closed.
func hashBlocks(h hash.Hash, ch <-chan *block) error {
	for b := range ch {
		h.Write(b.data())
		b.release()
	}
	return nil
}

// writeBlocks writes the blocks of ch at their offsets until ch is closed
// or a write fails.
func (w *chunkWriter) writeBlocks(ch <-chan *block) error {
	for b := range ch {
		if err := w.writeChunk(b.data(), b.off); err != nil {
			return &writeError{fmt.Errorf("write %s at %d: %w", w.f.Name(), b.off, err)}
		}
		b.release()
	}
	return nil
}

// chanReader reads the blocks of a channel as one stream (the
// decompressor's input), releasing each once read. err is the producer's
// failure, set before it closes ch; failed is the error the reader last
// returned other than io.EOF (the reading goroutine's own copy).
type chanReader struct {
	ctx    context.Context
	ch     <-chan *block
	cur    *block
	pos    int
	err    error
	failed error
}

func (r *chanReader) next() error {
	err := r.advance()
	if err != nil && err != io.EOF {
		r.failed = err
	}
	return err
}

func (r *chanReader) advance() error {
	for r.cur == nil || r.pos == r.cur.n {
		if r.cur != nil {
			r.cur.release()
			r.cur = nil
		}
		select {
		case b, ok := <-r.ch:
			if !ok {
				if r.err != nil {
					return r.err
				}
				return io.EOF
			}
			r.cur, r.pos = b, 0
		case <-r.ctx.Done():
			return r.ctx.Err()
		}
	}
	return nil
}

func (r *chanReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := r.next(); err != nil {
		return 0, err
	}
	n := copy(p, r.cur.buf[r.pos:r.cur.n])
	r.pos += n
	return n, nil
}

// ReadByte lets gzip and xz read without a bufio.Reader of their own.
func (r *chanReader) ReadByte() (byte, error) {
	if err := r.next(); err != nil {
		return 0, err
	}
	c := r.cur.buf[r.pos]
	r.pos++
	return c, nil
}

// pipeline is one image stream from the download to the disk.
type pipeline struct {
	st     *stages
	body   io.Reader
	w      *chunkWriter
	out    *blockPool
	format string
	// dlHash is SHA-256 of the bytes downloaded, wHash of the bytes
	// written: the same hash for a raw image.
	dlHash, wHash hash.Hash

	first    *block // raw: the first block, read to detect the format
	firstEOF bool
	src      io.ReadCloser // compressed: the decompressor, reading in
	in       *chanReader

	downloaded atomic.Int64
	written    int64 // bytes handed to the writer (the calling goroutine's)
}

// startPipeline reads the image's first block, detects its format by its
// magic bytes and, for a compressed image, starts fetching and opens the
// decompressor. On error every stage is stopped.
func startPipeline(st *stages, body io.Reader, w *chunkWriter) (p *pipeline, err error) {
	p = &pipeline{st: st, body: body, w: w, out: newBlockPool(outBlocks, w.size)}
	first, err := p.out.get(st.ctx)
	if err != nil {
		return nil, err
	}
	n, err := fill(body, first.buf)
	first.n = n
	p.downloaded.Add(int64(n))
	if err != nil && err != io.EOF {
		return nil, err
	}
	eof := err == io.EOF
	p.format = formatOf(first.data())
	if p.format == "raw" {
		p.wHash = sha256.New()
		p.dlHash = p.wHash
		p.first, p.firstEOF = first, eof
		return p, nil
	}

	p.dlHash, p.wHash = sha256.New(), sha256.New()
	hashCh, decCh := make(chan *block, inBlocks+1), make(chan *block, inBlocks+1)
	p.in = &chanReader{ctx: st.ctx, ch: decCh}
	st.spawn(func() error { return hashBlocks(p.dlHash, hashCh) })
	in := newBlockPool(inBlocks, inBlockSize)
	st.spawn(func() error {
		defer close(hashCh)
		defer close(decCh)
		err := p.fetch(in, first, eof, nil, hashCh, decCh)
		p.in.err = err // before decCh is closed
		return err
	})
	p.src, err = openDecompressor(p.format, p.in, first.data())
	if err != nil {
		st.fail(err)
		st.stop()
		if p.in.err != nil {
			return nil, p.in.err
		}
		return nil, err
	}
	return p, nil
}

// fetch reads the download into blocks of pool (first is the block
// already read) and emits each to out. tick, if not nil, is called after
// each block.
func (p *pipeline) fetch(pool *blockPool, first *block, eof bool, tick func(), out ...chan<- *block) error {
	ctx := p.st.ctx
	b, off := first, int64(0)
	for {
		b.off = off
		off += int64(b.n)
		if b.n > 0 {
			if err := emit(ctx, b, out...); err != nil {
				return err
			}
			if tick != nil {
				tick()
			}
		} else {
			b.refs.Store(1)
			b.release()
		}
		if eof {
			return nil
		}
		var err error
		if b, err = pool.get(ctx); err != nil {
			return err
		}
		n, err := fill(p.body, b.buf)
		b.n = n
		p.downloaded.Add(int64(n))
		switch {
		case err == io.EOF:
			eof = true
		case err != nil:
			return err
		}
	}
}

// decompress reads the decompressor into blocks of the out pool and
// emits each to out.
func (p *pipeline) decompress(tick func(), out ...chan<- *block) error {
	ctx := p.st.ctx
	for {
		b, err := p.out.get(ctx)
		if err != nil {
			return err
		}
		n, err := fill(p.src, b.buf)
		b.n, b.off = n, p.written
		p.written += int64(n)
		if n > 0 {
			if err := emit(ctx, b, out...); err != nil {
				return err
			}
			tick()
		} else {
			b.refs.Store(1)
			b.release()
		}
		switch {
		case err == io.EOF:
			// Read what the decompressor did not need (trailing
			// padding): the download hash covers the whole file as
			// served, and the fetcher must reach its end.
			if _, err := io.Copy(io.Discard, p.in); err != nil {
				return err
			}
			return nil
		case err != nil:
			if p.in.failed != nil {
				return p.in.failed // the download's failure, not the image's
			}
			return &decodeError{fmt.Errorf("decompressing the %s image: %w", p.format, err)}
		}
	}
}

// decodeError is a compressed image that does not decompress.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

// run streams the image onto the disk and returns the first error of any
// stage; every stage has ended when it returns. tick is called after each
// block handed to the writer (for progress), in the calling goroutine.
func (p *pipeline) run(tick func()) error {
	st := p.st
	hashCh, writeCh := make(chan *block, outBlocks), make(chan *block, outBlocks)
	st.spawn(func() error { return hashBlocks(p.wHash, hashCh) })
	st.spawn(func() error { return p.w.writeBlocks(writeCh) })
	var err error
	if p.format == "raw" {
		err = p.fetch(p.out, p.first, p.firstEOF, tick, hashCh, writeCh)
		p.written = p.downloaded.Load()
	} else {
		err = p.decompress(tick, hashCh, writeCh)
	}
	if err != nil {
		st.fail(err)
	}
	close(hashCh)
	close(writeCh)
	err = st.wait()
	if p.src != nil {
		p.src.Close()
	}
	return err
}
