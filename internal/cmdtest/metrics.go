package cmdtest

import (
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/promlint"
)

// CheckMetrics scrapes a binary's /metrics at url with a bearer token,
// checks that the LPMOS series follow the naming conventions (promlint)
// and that the process figures every binary exports are there: the build
// information, goroutines, heap, resident memory, CPU seconds and open
// file descriptors. It returns the families for further checks.
func CheckMetrics(t testing.TB, url, token string) map[string]*promlint.Family {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	fams, err := promlint.Parse(string(body))
	require.NoError(t, err)
	for _, err := range promlint.Lint(fams, "lpmos_") {
		t.Error(err)
	}
	assert.Equal(t, 1.0, promlint.Sum(fams, "lpmos_build_info"), "lpmos_build_info")
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes",
		"process_cpu_seconds_total", "process_open_fds"} {
		assert.Contains(t, fams, name)
	}
	return fams
}
