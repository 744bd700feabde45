package install

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFATShortAlias(t *testing.T) {
	tests := []struct {
		long string
		n    int
		want string
	}{
		{"meta-data", 1, "META-D~1   "},
		{"user-data", 2, "USER-D~2   "},
		{"network-config", 3, "NETWOR~3   "},
		{"a.b.txt", 1, "AB~1    TXT"},
		{"x+y;z.json", 1, "X_Y_Z~1 JSO"},
		{".hidden", 1, "HIDDEN~1   "},
	}
	for _, tt := range tests {
		t.Run(tt.long, func(t *testing.T) {
			got := shortAlias(tt.long, tt.n)
			require.Equal(t, tt.want, string(got[:]))
		})
	}
}

func TestFATLFNChecksum(t *testing.T) {
	// Reference: the VFAT algorithm written out as in Microsoft's FAT spec.
	ref := func(name [11]byte) byte {
		var sum byte
		for i := 0; i < 11; i++ {
			var hi byte
			if sum&1 != 0 {
				hi = 0x80
			}
			sum = hi + (sum >> 1) + name[i]
		}
		return sum
	}
	for _, s := range []string{"META-D~1   ", "USER-D~2   ", "ABCDEFGHTXT", "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"} {
		require.Equal(t, ref([11]byte([]byte(s))), lfnChecksum([11]byte([]byte(s))), s)
	}
}

func TestFATBootSector(t *testing.T) {
	img, err := buildFAT12(fatParams{Label: "CIDATA", VolumeID: 0x12345678, HiddenSectors: 10240, ModTime: time.Now()}, nil)
	require.NoError(t, err)
	require.Len(t, img, 2048*512)
	le := binary.LittleEndian
	require.Equal(t, []byte{0x55, 0xAA}, img[510:512])
	require.Equal(t, uint16(512), le.Uint16(img[0x0B:]))
	require.Equal(t, byte(2), img[0x10])
	require.Equal(t, byte(0xF8), img[0x15])
	require.Equal(t, uint32(10240), le.Uint32(img[0x1C:]))
	require.Equal(t, "CIDATA     ", string(img[0x2B:0x36]))
	require.Equal(t, "FAT12   ", string(img[0x36:0x3E]))
	l := newFATLayout()
	require.Less(t, l.clusters, 4085, "must be FAT12")
	root := img[l.dataStart*512-l.rootSectors*512:]
	require.Equal(t, "CIDATA     ", string(root[:11]))
	require.Equal(t, byte(0x08), root[11])
	// Both FATs start with the media byte and the end-of-chain marker.
	for i := range 2 {
		fat := img[(1+i*l.fatSectors)*512:]
		require.Equal(t, []byte{0xF8, 0xFF, 0xFF}, fat[:3])
	}
}

func TestFATErrors(t *testing.T) {
	p := fatParams{Label: "CIDATA", ModTime: time.Now()}
	_, err := buildFAT12(p, []fatFile{{Name: "big", Data: make([]byte, 2*1024*1024)}})
	require.ErrorIs(t, err, errFATFull)
	_, err = buildFAT12(p, []fatFile{{Name: "a"}, {Name: "A"}})
	require.ErrorContains(t, err, "duplicate")
	_, err = buildFAT12(p, []fatFile{{Name: "a/b"}})
	require.ErrorContains(t, err, "file name")
	_, err = buildFAT12(fatParams{Label: "lower"}, nil)
	require.ErrorContains(t, err, "volume label")
	_, err = buildFAT12(fatParams{Label: "TWELVE_CHARS"}, nil)
	require.ErrorContains(t, err, "volume label")
}

// TestFATWithTools checks a seed with awkward names (exactly 13 characters:
// one LFN entry without terminator; 26+: several entries; empty and
// multi-cluster files) with fsck.fat and mtools.
func TestFATWithTools(t *testing.T) {
	for _, tool := range []string{"fsck.fat", "mtype", "mdir"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run ./scripts/test.sh, which installs scripts/test-packages.txt (dosfstools, mtools)", tool)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80000 bytes, 157 clusters
	files := []fatFile{
		{Name: "meta-data", Data: []byte("instance-id: \"x\"\n")},
		{Name: "user-data", Data: []byte("#cloud-config\n")},
		{Name: "thirteen-char", Data: []byte("13")},
		{Name: "a-name-longer-than-twenty-six.yaml", Data: big},
		{Name: "empty", Data: nil},
		{Name: "network-config", Data: []byte("version: 2\n")},
	}
	img, err := buildFAT12(fatParams{Label: "CIDATA", VolumeID: 1, ModTime: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}, files)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "fat.img")
	require.NoError(t, os.WriteFile(path, img, 0o644))

	out, err := exec.Command("fsck.fat", "-n", path).CombinedOutput()
	require.NoError(t, err, "%s", out)
	// Whether fsck.fat counts the volume label entry as a file differs
	// between versions.
	require.Regexp(t, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(path)+fmt.Sprintf(`: (%d|%d) files, \d+/\d+ clusters$`, len(files), len(files)+1)), string(out))
	for _, line := range strings.Split(string(out), "\n") {
		require.False(t, strings.HasPrefix(line, " "), "fsck.fat reported a problem:\n%s", out)
	}

	env := append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	for _, f := range files {
		cmd := exec.Command("mtype", "-i", path, "::"+f.Name)
		cmd.Env = env
		got, err := cmd.Output()
		require.NoError(t, err, f.Name)
		require.True(t, bytes.Equal(f.Data, got), "%s: got %d bytes", f.Name, len(got))
	}
	cmd := exec.Command("mdir", "-i", path, "::")
	cmd.Env = env
	dir, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", dir)
	require.Contains(t, string(dir), "Volume in drive : is CIDATA")
	for _, f := range files {
		require.True(t, strings.Contains(string(dir), " "+f.Name+"\n"), "mdir lacks %s:\n%s", f.Name, dir)
	}
}
