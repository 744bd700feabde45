package cmdutil

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBMCKeyFlag(t *testing.T) {
	dir := t.TempDir()

	s, err := (&BMCKeyFlag{}).Sealer("")
	require.NoError(t, err)
	assert.Nil(t, s, "no file and nothing to generate: no passwords")

	gen := filepath.Join(dir, "data", "bmc.key")
	s1, err := (&BMCKeyFlag{}).Sealer(gen)
	require.NoError(t, err)
	require.NotNil(t, s1)
	fi, err := os.Stat(gen)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	s2, err := (&BMCKeyFlag{File: gen}).Sealer("")
	require.NoError(t, err, "the generated file is what a separate region loads")
	assert.Equal(t, s1.KeyID(), s2.KeyID())

	open := filepath.Join(dir, "open.key")
	require.NoError(t, os.WriteFile(open, make([]byte, 32), 0o644))
	_, err = (&BMCKeyFlag{File: open}).Sealer(gen)
	require.ErrorContains(t, err, "chmod 600", "an explicit file wins over the generated one, and must be private")
}
