package pxe

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
)

// FileServerConfig configures a FileServer.
type FileServerConfig struct {
	// Root is the directory of boot files (kernels, initramfs, OS images),
	// served through Dir: no symbolic links out of it. Required.
	Root string
	// Prefix is stripped from the URL path before the rest is looked up
	// under Root, e.g. "/boot/files/"; a request outside it is 404. A
	// trailing "/" is added if missing. Empty serves Root at "/".
	Prefix string
	// Logger receives refused requests; slog.Default() if nil.
	Logger *slog.Logger
	// RefusalLogLimit is how many refused requests are logged per minute
	// (20 if zero; negative: all); the others are counted and the count
	// logged with the next line.
	RefusalLogLimit int
}

// FileServer is an http.Handler serving the regular files under a root
// directory, read-only. See the package documentation.
type FileServer struct {
	dir    Dir
	prefix string
	log    *slog.Logger
	refuse *logLimiter
}

// NewFileServer checks that the root is a directory.
func NewFileServer(cfg FileServerConfig) (*FileServer, error) {
	if cfg.Root == "" {
		return nil, errors.New("pxe: file server: a root directory is required")
	}
	fi, err := os.Stat(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("pxe: file server root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("pxe: file server root %s is not a directory", cfg.Root)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	prefix := cfg.Prefix
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &FileServer{dir: Dir(cfg.Root), prefix: prefix, log: cfg.Logger.With("component", "bootfiles"),
		refuse: newLogLimiter(cfg.RefusalLogLimit)}, nil
}

// Stat returns the file info of name (relative to the root, same rules as
// requests: CleanPath, no links out, regular files only), for the region to
// check that the boot files a script will reference exist.
func (s *FileServer) Stat(name string) (fs.FileInfo, error) {
	clean, err := CleanPath(name)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return s.dir.Stat(clean)
}

// Exists reports whether Stat finds name.
func (s *FileServer) Exists(name string) bool {
	_, err := s.Stat(name)
	return err == nil
}

// ServeHTTP serves GET and HEAD; http.ServeContent does the ranges,
// conditional requests and sendfile.
func (s *FileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name := r.URL.Path
	if s.prefix != "" {
		rest, ok := strings.CutPrefix(name, s.prefix)
		if !ok {
			http.NotFound(w, r)
			return
		}
		name = rest
	}
	clean, err := CleanPath(name)
	if err != nil {
		s.refuse.warn(s.log, "boot file request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
		http.NotFound(w, r)
		return
	}
	f, fi, err := s.dir.open(clean)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.refuse.warn(s.log, "boot file request refused", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
		}
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", contentType(clean))
	h.Set("X-Content-Type-Options", "nosniff")
	// Size and modification time identify a version of a boot file well
	// enough for caches and for If-Range on a resumed image download; a
	// content hash would mean reading gigabytes per request.
	h.Set("ETag", `"`+strconv.FormatInt(fi.Size(), 16)+"-"+strconv.FormatInt(fi.ModTime().UnixNano(), 16)+`"`)
	if fi.Size() <= smallFile {
		// A small file (a script, a checksum list, an installer
		// configuration) is read and written with the headers in one
		// write: sendfile would cost two lseeks, a read and a write of
		// the first 512 bytes and then the sendfile itself.
		http.ServeContent(bufferedWriter{w}, r, clean, fi.ModTime(), io.NewSectionReader(f, 0, fi.Size()))
		return
	}
	http.ServeContent(w, r, clean, fi.ModTime(), f)
}

// smallFile is the size up to which FileServer copies a file through
// memory rather than with sendfile.
const smallFile = 16 << 10

// bufferedWriter hides a ResponseWriter's ReadFrom, so that io.Copy goes
// through the response's buffer instead of the connection's sendfile path.
type bufferedWriter struct{ w http.ResponseWriter }

func (b bufferedWriter) Header() http.Header         { return b.w.Header() }
func (b bufferedWriter) Write(p []byte) (int, error) { return b.w.Write(p) }
func (b bufferedWriter) WriteHeader(code int)        { b.w.WriteHeader(code) }

// Unwrap lets http.ResponseController reach the connection.
func (b bufferedWriter) Unwrap() http.ResponseWriter { return b.w }

// contentType is application/octet-stream for everything but the few text
// files a boot directory holds (checksums, scripts, installer configs), so
// that nothing is sniffed and browsers download images rather than show them.
func contentType(name string) string {
	base := path.Base(name)
	switch {
	case strings.HasSuffix(base, "SUMS"), strings.HasSuffix(base, ".sha256"), strings.HasSuffix(base, ".txt"),
		strings.HasSuffix(base, ".ipxe"), strings.HasSuffix(base, ".cfg"), strings.HasSuffix(base, ".ks"):
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}
