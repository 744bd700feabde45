// Package testimage makes disk images for tests of the image path (agent
// installer, agent against a region, end-to-end VMs): compressed the way
// a region's catalogue serves them.
package testimage

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compress returns raw compressed as format: "raw" (raw itself), "gzip"
// or "gz", "xz", "zstd" or "zst". An unknown format fails the test.
func Compress(tb testing.TB, format string, raw []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch format {
	case "raw":
		return raw
	case "gzip", "gz":
		w = gzip.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd", "zst":
		w, err = zstd.NewWriter(&buf)
	default:
		tb.Fatalf("testimage: unknown format %q", format)
	}
	if err == nil {
		_, err = w.Write(raw)
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		tb.Fatalf("testimage: %s: %v", format, err)
	}
	return buf.Bytes()
}
