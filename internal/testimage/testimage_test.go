package testimage_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/require"
	"github.com/ulikunitz/xz"

	"github.com/lpmos/lpmos/internal/testimage"
)

func TestCompressRoundTrips(t *testing.T) {
	raw := bytes.Repeat([]byte("LPMOS image "), 10000)
	for _, tc := range []struct {
		format string
		open   func(io.Reader) (io.Reader, error)
	}{
		{"raw", func(r io.Reader) (io.Reader, error) { return r, nil }},
		{"gz", func(r io.Reader) (io.Reader, error) { return gzip.NewReader(r) }},
		{"xz", func(r io.Reader) (io.Reader, error) { return xz.NewReader(r) }},
		{"zst", func(r io.Reader) (io.Reader, error) { return zstd.NewReader(r) }},
	} {
		data := testimage.Compress(t, tc.format, raw)
		r, err := tc.open(bytes.NewReader(data))
		require.NoError(t, err, tc.format)
		got, err := io.ReadAll(r)
		require.NoError(t, err, tc.format)
		require.Equal(t, raw, got, tc.format)
		if tc.format != "raw" {
			require.Less(t, len(data), len(raw)/10, "%s compresses", tc.format)
		}
	}
}
