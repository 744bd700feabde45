package machine_test

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/machine"
)

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	mac := mustMAC(t, "52:54:00:12:34:56")

	path := filepath.Join(dir, "bmc.key")
	s1, err := machine.EnsureKeyFile(path)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	sealed, err := s1.Seal(mac, "pw")
	require.NoError(t, err)
	s2, err := machine.EnsureKeyFile(path) // exists: loaded, not replaced
	require.NoError(t, err)
	got, err := s2.Open(mac, sealed)
	require.NoError(t, err)
	assert.Equal(t, "pw", got)
	assert.Equal(t, s1.KeyID(), s2.KeyID())

	key := []byte(strings.Repeat("k", machine.KeySize))
	cases := []struct {
		name    string
		content []byte
		mode    os.FileMode
		wantErr string
	}{
		{"raw", key, 0o600, ""},
		{"hex", []byte(hex.EncodeToString(key) + "\n"), 0o400, ""},
		{"base64", []byte("a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=\n"), 0o600, ""},
		{"short", []byte("abc"), 0o600, "want 32 bytes"},
		{"readable by others", key, 0o644, "chmod 600"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			require.NoError(t, os.WriteFile(p, tc.content, tc.mode))
			require.NoError(t, os.Chmod(p, tc.mode))
			s, err := machine.LoadKeyFile(p)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			ref, err := machine.NewSealer(key)
			require.NoError(t, err)
			assert.Equal(t, ref.KeyID(), s.KeyID())
		})
	}
	_, err = machine.LoadKeyFile(filepath.Join(dir, "missing"))
	require.Error(t, err)

	var none *machine.Sealer
	_, err = none.Seal(mac, "pw")
	require.ErrorIs(t, err, machine.ErrNoKey)
}
