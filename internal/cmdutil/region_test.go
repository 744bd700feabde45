package cmdutil_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/cmdutil"
	"github.com/lpmos/lpmos/task"
)

func TestParseTimeouts(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[task.Status]time.Duration
		err  string
	}{
		{"", map[task.Status]time.Duration{}, ""},
		{"installing=20s", map[task.Status]time.Duration{task.StatusInstalling: 20 * time.Second}, ""},
		{" installing = 1h , booting=0 ", map[task.Status]time.Duration{task.StatusInstalling: time.Hour, task.StatusBooting: 0}, ""},
		{"completed=1h", nil, "want status=duration"},
		{"installing", nil, "want status=duration"},
		{"installing=soon", nil, "installing"},
	} {
		got, err := cmdutil.ParseTimeouts(tc.in)
		if tc.err != "" {
			require.ErrorContains(t, err, tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
}
