package install

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteChunkFallback: an O_DIRECT write refused with EINVAL (here:
// from misaligned memory) is redone buffered, and later writes stay
// buffered.
func TestWriteChunkFallback(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	direct, err := openDirect(path)
	if err != nil {
		t.Fatalf("the test directory does not support O_DIRECT (tmpfs?): %v", err)
	}
	defer direct.Close()
	w := newChunkWriter(f, direct, 4096, slog.New(slog.NewTextHandler(io.Discard, nil)))
	buf := alignedBuffer(3 * 4096)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	p := buf[1 : 1+2*4096] // misaligned memory: O_DIRECT says EINVAL
	if err := w.writeChunk(p, 0); err != nil {
		t.Fatal(err)
	}
	if w.direct != nil || w.directUsed {
		t.Fatalf("still direct after EINVAL: direct=%v used=%v", w.direct != nil, w.directUsed)
	}
	if err := w.writeChunk(buf[:4096], 2*4096); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(bytes.Clone(p), buf[:4096]...); !bytes.Equal(got, want) {
		t.Fatalf("file has %d bytes, want %d (content differs)", len(got), len(want))
	}
}
