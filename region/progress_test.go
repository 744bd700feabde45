package region

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store/memory"
)

// Each task's progress interval grows with the installs at once, so that
// their percentages together stay within ProgressWriteRate.
func TestProgressIntervalSpreadsWithLoad(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	r, err := New(Config{RegionID: "dc1", Store: st, PublicURL: "http://region.example", BootDir: t.TempDir(),
		ProgressInterval: time.Second, ProgressWriteRate: 50, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	for _, tc := range []struct {
		installing int
		want       time.Duration
	}{
		{0, time.Second},
		{10, time.Second},
		{50, time.Second},
		{100, 2 * time.Second},
		{1000, 20 * time.Second},
	} {
		t.Run(fmt.Sprint(tc.installing), func(t *testing.T) {
			r.progressMu.Lock()
			defer r.progressMu.Unlock()
			r.progress = map[string]*progressState{}
			for i := range tc.installing {
				r.progress[fmt.Sprint(i)] = &progressState{}
			}
			assert.Equal(t, tc.want, r.progressIntervalLocked())
		})
	}
}
