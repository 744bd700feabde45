package pxe

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TFTPConfig.Trace hears of each request: the file, the bytes sent and
// how it ended.
func TestTFTPTrace(t *testing.T) {
	root, sums := testRoot(t)
	traces := make(chan TFTPTrace, 16)
	_, addr := startTFTP(t, TFTPConfig{Root: root, Trace: func(tr TFTPTrace) { traces <- tr }})
	next := func() TFTPTrace {
		t.Helper()
		select {
		case tr := <-traces:
			return tr
		case <-time.After(10 * time.Second):
			require.FailNow(t, "no trace")
		}
		return TFTPTrace{}
	}

	res, err := tftpGet(addr, "undionly.kpxe", tftpGetOptions{})
	require.NoError(t, err)
	require.Equal(t, sums["undionly.kpxe"], sha(res.data))
	tr := next()
	assert.Equal(t, TFTPComplete, tr.Outcome)
	assert.Equal(t, "undionly.kpxe", tr.File)
	assert.Equal(t, int64(74213), tr.Bytes)
	assert.Equal(t, "127.0.0.1", tr.Client.String())
	assert.NoError(t, tr.Err)

	for _, tc := range []struct {
		file string
		raw  []byte
		want TFTPOutcome
	}{
		{file: "nope.efi", want: TFTPNotFound},
		{file: "../etc/passwd", want: TFTPRefused},
		{raw: []byte("\x00\x02upload.bin\x00octet\x00"), want: TFTPRefused},
	} {
		_, err := tftpGet(addr, tc.file, tftpGetOptions{raw: tc.raw})
		require.NoError(t, err)
		tr := next()
		assert.Equal(t, tc.want, tr.Outcome, tc.file)
		assert.Error(t, tr.Err, tc.file)
	}
}
