package pxe

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func BenchmarkDirOpen(b *testing.B) {
	dir := b.TempDir()
	require := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	require(os.MkdirAll(filepath.Join(dir, "images/debian/12"), 0o755))
	require(os.WriteFile(filepath.Join(dir, "images/debian/12/image.raw"), []byte("x"), 0o644))
	d := Dir(dir)
	b.ReportAllocs()
	for b.Loop() {
		f, err := d.OpenFile("images/debian/12/image.raw")
		require(err)
		f.Close()
	}
}

func BenchmarkFileServerRange(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "image.raw"), make([]byte, 1<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	fs, err := NewFileServer(FileServerConfig{Root: dir, Logger: quietLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/image.raw", nil)
	req.Header.Set("Range", "bytes=0-4095")
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		fs.ServeHTTP(w, req)
		if w.Code != http.StatusPartialContent {
			b.Fatal(w.Code)
		}
	}
}
