package pxe

import (
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newTestFileServer(t *testing.T, prefix string) (*FileServer, string, map[string]string) {
	t.Helper()
	root, sums := testRoot(t)
	require.NoError(t, os.WriteFile(filepath.Join(root, "SHA256SUMS"), []byte("abc  image.raw\n"), 0o644))
	fs, err := NewFileServer(FileServerConfig{Root: root, Prefix: prefix, Logger: quietLogger(t)})
	require.NoError(t, err)
	return fs, root, sums
}

func TestNewFileServer(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	for name, cfg := range map[string]FileServerConfig{
		"no root":      {},
		"missing root": {Root: filepath.Join(t.TempDir(), "nope")},
		"file root":    {Root: file},
	} {
		_, err := NewFileServer(cfg)
		assert.Error(t, err, name)
	}
}

func TestFileServer(t *testing.T) {
	fsrv, root, sums := newTestFileServer(t, "/boot/files")
	srv := httptest.NewServer(fsrv)
	defer srv.Close()
	big, err := os.ReadFile(filepath.Join(root, "big.img"))
	require.NoError(t, err)
	fi, err := os.Stat(filepath.Join(root, "big.img"))
	require.NoError(t, err)
	// Small files are copied through memory, big ones with sendfile: both
	// answer ranges and conditions the same way.
	tiny, err := os.ReadFile(filepath.Join(root, "tiny.txt"))
	require.NoError(t, err)
	tinyFI, err := os.Stat(filepath.Join(root, "tiny.txt"))
	require.NoError(t, err)

	tests := []struct {
		name       string
		method     string
		path       string // raw, sent as is
		header     map[string]string
		wantStatus int
		wantLen    int64  // Content-Length, -1 to skip
		wantBody   string // sha256 of the body, or "" to skip
		wantType   string
		wantRange  string
	}{
		{"get", "GET", "/boot/files/big.img", nil, 200, sizeBig, sums["big.img"], "application/octet-stream", ""},
		{"head", "HEAD", "/boot/files/big.img", nil, 200, sizeBig, sha(nil), "application/octet-stream", ""},
		{"nested", "GET", "/boot/files/sub/dir/vmlinuz", nil, 200, 100_000, sums["sub/dir/vmlinuz"], "", ""},
		{"double slash", "GET", "/boot/files//tiny.txt", nil, 200, 5, sums["tiny.txt"], "text/plain; charset=utf-8", ""},
		{"checksums are text", "GET", "/boot/files/SHA256SUMS", nil, 200, -1, "", "text/plain; charset=utf-8", ""},
		{"range", "GET", "/boot/files/big.img", map[string]string{"Range": "bytes=0-99"}, 206, 100, sha(big[:100]), "", "bytes 0-99/" + strconv.Itoa(sizeBig)},
		{"range from the end", "GET", "/boot/files/big.img", map[string]string{"Range": "bytes=-10"}, 206, 10, sha(big[sizeBig-10:]), "", ""},
		{"open range", "GET", "/boot/files/big.img", map[string]string{"Range": "bytes=20971000-"}, 206, 520, sha(big[20971000:]), "", ""},
		{"unsatisfiable range", "GET", "/boot/files/big.img", map[string]string{"Range": "bytes=30000000-30000010"}, 416, -1, "", "", "bytes */" + strconv.Itoa(sizeBig)},
		{"if-none-match", "GET", "/boot/files/big.img", map[string]string{"If-None-Match": etagOf(fi)}, 304, -1, "", "", ""},
		{"if-range stale", "GET", "/boot/files/big.img", map[string]string{"Range": "bytes=0-9", "If-Range": `"other"`}, 200, sizeBig, "", "", ""},
		{"if-range current", "GET", "/boot/files/big.img", map[string]string{"Range": "bytes=0-9", "If-Range": etagOf(fi)}, 206, 10, sha(big[:10]), "", ""},
		{"small file head", "HEAD", "/boot/files/tiny.txt", nil, 200, 5, sha(nil), "text/plain; charset=utf-8", ""},
		{"small file range", "GET", "/boot/files/tiny.txt", map[string]string{"Range": "bytes=1-3"}, 206, 3, sha(tiny[1:4]), "", "bytes 1-3/5"},
		{"small file unsatisfiable range", "GET", "/boot/files/tiny.txt", map[string]string{"Range": "bytes=10-20"}, 416, -1, "", "", "bytes */5"},
		{"small file if-none-match", "GET", "/boot/files/tiny.txt", map[string]string{"If-None-Match": etagOf(tinyFI)}, 304, -1, "", "", ""},
		{"small file if-range current", "GET", "/boot/files/tiny.txt", map[string]string{"Range": "bytes=0-1", "If-Range": etagOf(tinyFI)}, 206, 2, sha(tiny[:2]), "", ""},
		{"link inside", "GET", "/boot/files/rel-link", nil, 200, 5, sums["tiny.txt"], "", ""},
		{"post", "POST", "/boot/files/big.img", nil, 405, -1, "", "", ""},
		{"put", "PUT", "/boot/files/new", nil, 405, -1, "", "", ""},
		{"delete", "DELETE", "/boot/files/tiny.txt", nil, 405, -1, "", "", ""},
		{"outside prefix", "GET", "/big.img", nil, 404, -1, "", "", ""},
		{"prefix without slash", "GET", "/boot/filesbig.img", nil, 404, -1, "", "", ""},
		{"missing", "GET", "/boot/files/nope", nil, 404, -1, "", "", ""},
		{"directory", "GET", "/boot/files/sub", nil, 404, -1, "", "", ""},
		{"directory slash", "GET", "/boot/files/sub/", nil, 404, -1, "", "", ""},
		{"prefix itself", "GET", "/boot/files/", nil, 404, -1, "", "", ""},
		{"dotfile", "GET", "/boot/files/.hidden", nil, 404, -1, "", "", ""},
		{"dot-dot", "GET", "/boot/files/../../etc/passwd", nil, 404, -1, "", "", ""},
		{"encoded dot-dot", "GET", "/boot/files/..%2f..%2fetc%2fpasswd", nil, 404, -1, "", "", ""},
		{"encoded dots", "GET", "/boot/files/%2e%2e/%2e%2e/etc/passwd", nil, 404, -1, "", "", ""},
		{"dot-dot inside", "GET", "/boot/files/sub/../tiny.txt", nil, 404, -1, "", "", ""},
		{"backslash", "GET", "/boot/files/..%5c..%5cetc%5cpasswd", nil, 404, -1, "", "", ""},
		{"NUL", "GET", "/boot/files/tiny.txt%00.img", nil, 404, -1, "", "", ""},
		{"link out", "GET", "/boot/files/escape-abs", nil, 404, -1, "", "", ""},
		{"linked dir out", "GET", "/boot/files/etcdir/passwd", nil, 404, -1, "", "", ""},
		{"FIFO", "GET", "/boot/files/fifo", nil, 404, -1, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, srv.URL, nil)
			require.NoError(t, err)
			req.URL.Opaque = tt.path // send the path exactly as written
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, tt.wantStatus, resp.StatusCode, string(body))
			if tt.wantLen >= 0 {
				assert.Equal(t, tt.wantLen, resp.ContentLength)
			}
			if tt.wantBody != "" {
				assert.Equal(t, tt.wantBody, sha(body))
			}
			if tt.wantType != "" {
				assert.Equal(t, tt.wantType, resp.Header.Get("Content-Type"))
			}
			if tt.wantRange != "" {
				assert.Equal(t, tt.wantRange, resp.Header.Get("Content-Range"))
			}
			switch resp.StatusCode {
			case 200, 206:
				assert.NotEmpty(t, resp.Header.Get("ETag"))
				assert.NotEmpty(t, resp.Header.Get("Last-Modified"))
				assert.Equal(t, "bytes", resp.Header.Get("Accept-Ranges"))
			case 405:
				assert.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
			case 404:
				assert.NotContains(t, string(body), "root:", "leaked /etc/passwd")
			}
		})
	}

	t.Run("multiple ranges", func(t *testing.T) {
		req, _ := http.NewRequest("GET", srv.URL+"/boot/files/big.img", nil)
		req.Header.Set("Range", "bytes=0-9,1000-1019,-5")
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, 206, resp.StatusCode)
		mt, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		require.NoError(t, err)
		require.Equal(t, "multipart/byteranges", mt)
		mr := multipart.NewReader(resp.Body, params["boundary"])
		want := [][]byte{big[:10], big[1000:1020], big[sizeBig-5:]}
		for i, w := range want {
			p, err := mr.NextPart()
			require.NoError(t, err, "part %d", i)
			assert.Equal(t, "application/octet-stream", p.Header.Get("Content-Type"))
			got, err := io.ReadAll(p)
			require.NoError(t, err)
			assert.Equal(t, w, got, "part %d", i)
		}
		_, err = mr.NextPart()
		assert.ErrorIs(t, err, io.EOF)
	})
}

func etagOf(fi os.FileInfo) string {
	return `"` + strconv.FormatInt(fi.Size(), 16) + "-" + strconv.FormatInt(fi.ModTime().UnixNano(), 16) + `"`
}

func TestFileServerStat(t *testing.T) {
	fsrv, _, _ := newTestFileServer(t, "")
	fi, err := fsrv.Stat("/sub/dir/vmlinuz")
	require.NoError(t, err)
	assert.Equal(t, int64(100_000), fi.Size())
	assert.True(t, fsrv.Exists("big.img"))
	for _, name := range []string{"nope", "sub", ".hidden", "../etc/passwd", "escape-abs", "fifo", ""} {
		assert.False(t, fsrv.Exists(name), name)
	}
}

// TestFileServerCurl checks what a real client sees over a real socket:
// ranges, HEAD lengths, 416, 404 and 405.
func TestFileServerCurl(t *testing.T) {
	curl := needTool(t, "curl", "curl")
	fsrv, root, sums := newTestFileServer(t, "/boot/files/")
	srv := httptest.NewServer(fsrv)
	defer srv.Close()
	big, err := os.ReadFile(filepath.Join(root, "big.img"))
	require.NoError(t, err)
	run := func(args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, curl, append([]string{"-sS"}, args...)...).Output()
		require.NoError(t, err, "curl %v", args)
		return string(b)
	}
	base := srv.URL + "/boot/files/"

	assert.Equal(t, sha(big[:100]), sha([]byte(run("-r", "0-99", base+"big.img"))))
	assert.Equal(t, "206", run("-o", "/dev/null", "-w", "%{http_code}", "-r", "0-99", base+"big.img"))
	out := filepath.Join(t.TempDir(), "out")
	run("-o", out, base+"big.img")
	assert.Equal(t, sums["big.img"], shaFile(t, out))

	head := run("-I", base+"big.img")
	assert.Contains(t, head, "Content-Length: "+strconv.Itoa(sizeBig))
	assert.Contains(t, head, "Accept-Ranges: bytes")
	head = run("-I", base+"exact.bin")
	assert.Contains(t, head, "Content-Length: "+strconv.Itoa(sizeExact))

	status := func(args ...string) string {
		return run(append([]string{"-o", "/dev/null", "-w", "%{http_code}"}, args...)...)
	}
	assert.Equal(t, "416", status("-r", "99999999-", base+"big.img"))
	assert.Equal(t, "404", status(base+"sub/"))
	assert.Equal(t, "404", status(base+".hidden"))
	assert.Equal(t, "404", status("--path-as-is", base+"../../../etc/passwd"))
	assert.Equal(t, "404", status(base+"escape-abs"))
	assert.Equal(t, "405", status("-X", "POST", base+"big.img"))

	// Resuming an interrupted image download (what an agent does).
	require.NoError(t, os.WriteFile(out, big[:1234567], 0o644))
	run("-C", "-", "-o", out, base+"big.img")
	assert.Equal(t, sums["big.img"], shaFile(t, out))
}
