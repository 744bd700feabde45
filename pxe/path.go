package pxe

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

var (
	// ErrInvalidPath is wrapped when a name a client asked for is refused
	// before the file system is consulted: "..", dotfiles, control bytes,
	// backslashes, invalid UTF-8, or nothing left after the leading "/".
	ErrInvalidPath = errors.New("invalid path")
	// ErrOutsideRoot is wrapped when a name resolves, through a symbolic
	// link, to a file outside the served root.
	ErrOutsideRoot = errors.New("path resolves outside the root")
)

// maxPathLen bounds the names clients may ask for; a TFTP request packet
// cannot carry more than a few hundred bytes anyway.
const maxPathLen = 1024

// CleanPath turns a name a client asked for into a slash-separated path
// relative to the served root, or refuses it with an error wrapping
// ErrInvalidPath. Leading slashes are stripped and empty components ("a//b")
// dropped; any component that starts with "." is refused, which covers "..",
// "." and dotfiles, rather than resolved, so that "a/../b" cannot be used to
// probe the tree. A name that is accepted satisfies fs.ValidPath and
// filepath.IsLocal: joined to the root it stays in the root, lexically.
// Symbolic links are the job of Dir.
func CleanPath(name string) (string, error) {
	refuse := func(why string) (string, error) {
		return "", fmt.Errorf("%w: %q: %s", ErrInvalidPath, name, why)
	}
	if len(name) > maxPathLen {
		return refuse("too long")
	}
	if !utf8.ValidString(name) {
		return refuse("not UTF-8")
	}
	for _, r := range name {
		switch {
		case r < 0x20 || r == 0x7f:
			return refuse("control character")
		case r == '\\':
			return refuse("backslash")
		}
	}
	parts := strings.Split(name, "/")
	kept := parts[:0]
	for _, p := range parts {
		if p == "" {
			continue
		}
		if p[0] == '.' {
			return refuse("component starts with a dot")
		}
		kept = append(kept, p)
	}
	if len(kept) == 0 {
		return refuse("no file name")
	}
	return strings.Join(kept, "/"), nil
}

// Dir is a read-only fs.FS over a directory of boot files that refuses to
// leave it, like http.Dir but stricter. Names must be clean (CleanPath's
// output). Symbolic links are followed only when their target, fully
// resolved, lies inside the directory's real path (the directory with its own
// symbolic links resolved); others are refused with ErrOutsideRoot. That
// allows relative links and absolute links into the tree, and refuses for
// instance Debian's /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi: copy such a
// file into the root (cp -L) instead. Only regular files can be opened;
// directories, devices and FIFOs are reported as not existing.
//
// The final open goes through os.Root on the resolved name, so a link swapped
// in between the check and the open still cannot escape. The directory is
// looked up afresh on every Open, so it may be replaced while serving.
type Dir string

// Open implements fs.FS. The file is an *os.File.
func (d Dir) Open(name string) (fs.File, error) {
	f, err := d.OpenFile(name)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Stat implements fs.StatFS with the same rules as Open.
func (d Dir) Stat(name string) (fs.FileInfo, error) {
	f, fi, err := d.open(name)
	if err != nil {
		return nil, err
	}
	f.Close()
	return fi, nil
}

// OpenFile opens the regular file name (a clean, slash-separated path) under
// the directory.
func (d Dir) OpenFile(name string) (*os.File, error) {
	f, _, err := d.open(name)
	return f, err
}

func (d Dir) open(name string) (*os.File, fs.FileInfo, error) {
	pathErr := func(err error) error { return &fs.PathError{Op: "open", Path: name, Err: err} }
	if !fs.ValidPath(name) {
		return nil, nil, pathErr(fs.ErrInvalid)
	}
	if clean, err := CleanPath(name); err != nil || clean != name {
		return nil, nil, pathErr(ErrInvalidPath)
	}
	// Fast path: os.Root follows relative links that stay inside and
	// refuses everything else, a subset of what is allowed here.
	f, err := openInRoot(string(d), name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// Maybe an absolute link, or one through the root's own name: resolve
		// it and open the result, if it is inside, without links.
		f, err = d.openResolved(name)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, pathErr(fs.ErrNotExist)
		}
		return nil, nil, pathErr(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, pathErr(err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, pathErr(fs.ErrNotExist)
	}
	return f, fi, nil
}

func (d Dir) openResolved(name string) (*os.File, error) {
	real, err := filepath.EvalSymlinks(string(d))
	if err != nil {
		return nil, err
	}
	resolved, err := filepath.EvalSymlinks(filepath.Join(real, filepath.FromSlash(name)))
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(real, resolved)
	if err != nil || !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("%w: %s", ErrOutsideRoot, resolved)
	}
	return openInRoot(real, rel)
}

// openInRoot opens name beneath dir through os.Root, which cannot escape
// dir even if links change under it. O_NONBLOCK (where the platform has it)
// keeps a FIFO from blocking the open; it is then refused as not a regular
// file.
func openInRoot(dir, name string) (*os.File, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return root.OpenFile(name, openFlags, 0)
}

// Overlay returns an fs.FS that opens a name from the first layer that has
// it: for instance Dir(copied) over Dir(lpmos.DefaultIPXEDir) to add ipxe.efi
// copied out of /boot. A layer that refuses a name (anything but "does not
// exist") ends the search, so a lower layer cannot be reached by a name an
// upper one rejected. Path safety is each layer's own: an os.DirFS layer
// follows symbolic links anywhere, a Dir layer does not.
func Overlay(layers ...fs.FS) fs.FS { return overlay(layers) }

type overlay []fs.FS

func (o overlay) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	for _, l := range o {
		f, err := l.Open(name)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return f, err
		}
	}
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}

// openRegular opens a clean name from fsys and returns it only if it is a
// regular file, with its size and modification time.
func openRegular(fsys fs.FS, name string) (fs.File, fs.FileInfo, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return f, fi, nil
}
