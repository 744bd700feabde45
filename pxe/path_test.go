package pxe

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

func TestCleanPath(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means refused
	}{
		{"undionly.kpxe", "undionly.kpxe"},
		{"/undionly.kpxe", "undionly.kpxe"},
		{"//undionly.kpxe", "undionly.kpxe"},
		{"images/debian/12/image.raw", "images/debian/12/image.raw"},
		{"a//b/", "a/b"},
		{"with space.efi", "with space.efi"},
		{"ünïcode", "ünïcode"},
		{"a..b", "a..b"},
		{"..%2fetc%2fpasswd", ""},
		{"..", ""},
		{".", ""},
		{"./a", ""},
		{"a/./b", ""},
		{"../etc/passwd", ""},
		{"/../../etc/passwd", ""},
		{"a/../../x", ""},
		{"a/..", ""},
		{".hidden", ""},
		{"dir/.git/config", ""},
		{"..\\..\\windows", ""},
		{"a\\b", ""},
		{"a\x00b", ""},
		{"a\nb", ""},
		{"a\x7fb", ""},
		{"\xff\xfe", ""},
		{"", ""},
		{"/", ""},
		{"///", ""},
		{strings.Repeat("a", maxPathLen+1), ""},
	}
	for _, tt := range tests {
		got, err := CleanPath(tt.in)
		if tt.want == "" {
			assert.ErrorIs(t, err, ErrInvalidPath, "%q", tt.in)
			continue
		}
		require.NoError(t, err, "%q", tt.in)
		assert.Equal(t, tt.want, got, "%q", tt.in)
	}
}

// FuzzCleanPath: whatever the input, the result is refused or a relative
// path that stays inside the root, lexically, with no dotfile components.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"undionly.kpxe", "/a/b", "../x", "a/../../x", "..%2f", "a\x00b", "\\..\\", ".x", "//", "a/./b", "C:\\x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := CleanPath(in)
		if err != nil {
			if !strings.Contains(err.Error(), ErrInvalidPath.Error()) {
				t.Fatalf("error %v does not wrap ErrInvalidPath", err)
			}
			return
		}
		if out == "" || !fs.ValidPath(out) || !filepath.IsLocal(out) || filepath.IsAbs(out) {
			t.Fatalf("CleanPath(%q) = %q: not a local path", in, out)
		}
		if filepath.Join("/root", out) != "/root/"+out {
			t.Fatalf("CleanPath(%q) = %q: not clean", in, out)
		}
		if !utf8.ValidString(out) || strings.ContainsAny(out, "\\\x00") {
			t.Fatalf("CleanPath(%q) = %q: bad bytes", in, out)
		}
		for _, part := range strings.Split(out, "/") {
			if part == "" || part[0] == '.' {
				t.Fatalf("CleanPath(%q) = %q: component %q", in, out, part)
			}
		}
		if again, err := CleanPath(out); err != nil || again != out {
			t.Fatalf("CleanPath is not idempotent on %q: %q, %v", out, again, err)
		}
	})
}

func TestDir(t *testing.T) {
	root, sums := testRoot(t)
	// The root reached through a link of its own: links that name the
	// root by that path still resolve inside it.
	viaLink := filepath.Join(t.TempDir(), "boot")
	require.NoError(t, os.Symlink(root, viaLink))
	require.NoError(t, os.Symlink(filepath.Join(viaLink, "tiny.txt"), filepath.Join(root, "via-configured-name")))
	require.NoError(t, os.Symlink("sub", filepath.Join(root, "subdir-link")))
	require.NoError(t, os.Symlink("sub/dir/../../tiny.txt", filepath.Join(root, "dotdot-inside-link")))
	require.NoError(t, os.Symlink("loop", filepath.Join(root, "loop")))

	tests := []struct {
		name string
		want string // sha256, or an error to match with errors.Is
		err  error
	}{
		{"tiny.txt", sums["tiny.txt"], nil},
		{"sub/dir/vmlinuz", sums["sub/dir/vmlinuz"], nil},
		{"rel-link", sums["tiny.txt"], nil},
		{"abs-link", sums["sub/dir/vmlinuz"], nil},
		{"via-configured-name", sums["tiny.txt"], nil},
		{"subdir-link/dir/vmlinuz", sums["sub/dir/vmlinuz"], nil},
		{"dotdot-inside-link", sums["tiny.txt"], nil},
		{"escape-abs", "", ErrOutsideRoot},
		{"escape-rel", "", ErrOutsideRoot},
		{"etcdir/passwd", "", ErrOutsideRoot},
		{"sub", "", fs.ErrNotExist},
		{"fifo", "", fs.ErrNotExist},
		{"nope", "", fs.ErrNotExist},
		{"loop", "", nil}, // some error: too many links
		{".hidden", "", ErrInvalidPath},
		{"/tiny.txt", "", fs.ErrInvalid},
		{"../etc/passwd", "", fs.ErrInvalid},
	}
	for _, d := range []Dir{Dir(root), Dir(viaLink)} {
		for _, tt := range tests {
			t.Run(string(d)+"/"+tt.name, func(t *testing.T) {
				f, err := d.Open(tt.name)
				if tt.want == "" {
					require.Error(t, err)
					if tt.err != nil {
						assert.ErrorIs(t, err, tt.err)
					}
					return
				}
				require.NoError(t, err)
				defer f.Close()
				b, err := io.ReadAll(f)
				require.NoError(t, err)
				assert.Equal(t, tt.want, sha(b))
				_, ok := f.(*os.File)
				assert.True(t, ok, "Dir must hand out *os.File for sendfile")
			})
		}
	}
}

func TestOverlay(t *testing.T) {
	upper := fstest.MapFS{"ipxe.efi": {Data: []byte("upper")}}
	lowerDir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(lowerDir, "ipxe.efi"), []byte("lower"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(lowerDir, "snponly.efi"), []byte("snp"), 0o644))
	require.NoError(t, os.Symlink("/etc/passwd", filepath.Join(lowerDir, "out")))
	o := Overlay(upper, Dir(lowerDir))
	for name, want := range map[string]string{"ipxe.efi": "upper", "snponly.efi": "snp"} {
		b, err := fs.ReadFile(o, name)
		require.NoError(t, err)
		assert.Equal(t, want, string(b))
	}
	_, err := o.Open("missing")
	assert.ErrorIs(t, err, fs.ErrNotExist)
	_, err = o.Open("out")
	assert.ErrorIs(t, err, ErrOutsideRoot)
	_, err = o.Open("../x")
	assert.ErrorIs(t, err, fs.ErrInvalid)
	// A refusal in an upper layer is final.
	o = Overlay(Dir(lowerDir), fstest.MapFS{"out": {Data: []byte("shadow")}})
	_, err = o.Open("out")
	assert.ErrorIs(t, err, ErrOutsideRoot)
}

// checkIPXE decides whether NewTFTPServer accepts a root: only binaries it
// can actually serve count, and one that exists but is refused is reported.
func TestCheckIPXE(t *testing.T) {
	empty := t.TempDir()
	withOne := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(withOne, "snponly.efi"), []byte("x"), 0o644))
	linkOut := t.TempDir()
	require.NoError(t, os.Symlink("/etc/hostname", filepath.Join(linkOut, "ipxe.efi")))

	found, refused := checkIPXE(Dir(empty))
	assert.Empty(t, found)
	assert.Empty(t, refused)
	found, refused = checkIPXE(Dir(linkOut))
	assert.Empty(t, found)
	assert.ErrorIs(t, refused["ipxe.efi"], ErrOutsideRoot)
	found, refused = checkIPXE(Dir(withOne))
	assert.Equal(t, []string{"snponly.efi"}, found)
	assert.Empty(t, refused)

	// The Debian package on this machine (the tests install it).
	_, err := os.Stat(lpmos.DefaultIPXEDir)
	require.NoError(t, err, "apt-get install -y ipxe")
	found, refused = checkIPXE(Dir(lpmos.DefaultIPXEDir))
	assert.Contains(t, found, "undionly.kpxe")
	assert.Contains(t, found, "snponly.efi")
	// Debian's ipxe.efi links to /boot, outside the directory.
	if fi, err := os.Lstat(filepath.Join(lpmos.DefaultIPXEDir, "ipxe.efi")); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		assert.ErrorIs(t, refused["ipxe.efi"], ErrOutsideRoot)
	}
}
