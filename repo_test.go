package lpmos_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestNoBuildOutputsTracked: compiled programs do not belong in the
// repository (two were committed by mistake, 10 and 35 MB, from `go
// build` at its root). Every tracked file is read for an executable's
// magic number.
func TestNoBuildOutputsTracked(t *testing.T) {
	_, err := exec.LookPath("git")
	require.NoError(t, err, "git (Debian package git) lists the tracked files")
	out, err := exec.Command("git", "ls-files", "-z").Output()
	require.NoError(t, err, "git ls-files (the tests run in a clone)")
	magics := [][]byte{[]byte("\x7fELF"), []byte("MZ"), {0xcf, 0xfa, 0xed, 0xfe}} // ELF, PE, Mach-O
	var found []string
	for name := range strings.SplitSeq(strings.TrimRight(string(out), "\x00"), "\x00") {
		f, err := os.Open(name)
		if err != nil {
			continue // deleted in the work tree
		}
		head := make([]byte, 4)
		n, _ := f.Read(head)
		f.Close()
		for _, m := range magics {
			if bytes.HasPrefix(head[:n], m) {
				found = append(found, name)
			}
		}
	}
	require.Empty(t, found, "executables tracked in git: git rm --cached them and add them to .gitignore")
}
