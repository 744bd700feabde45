package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestStormSmoke runs bench/storm/run.sh at CI size: 50 simulated PXE
// machines power on within a second, served by LPMOS and then by dnsmasq,
// in network namespaces the script creates. Every machine must get its
// script from LPMOS (failures are counted, not timed); dnsmasq's run must
// complete with a result for all 50. A missing tool (root, ip, dnsmasq,
// iPXE) fails the test with the script's message.
func TestStormSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds allinone and runs network namespaces (run without -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "run.sh")
	cmd.Env = append(os.Environ(), "CLIENTS=50", "RAMP=1s", "SERVERS=lpmos dnsmasq")
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Log(out.String())
	require.NoError(t, err, "bench/storm/run.sh failed")

	results := map[string][]int{} // server: clients, failures
	for _, m := range regexp.MustCompile(`(?m)^RESULT (\S+) (\d+) (\d+) `).FindAllStringSubmatch(out.String(), -1) {
		clients, _ := strconv.Atoi(m[2])
		failed, _ := strconv.Atoi(m[3])
		results[m[1]] = []int{clients, failed}
	}
	require.Contains(t, results, "lpmos")
	require.Contains(t, results, "dnsmasq")
	assert.Equal(t, []int{50, 0}, results["lpmos"], "clients and failures against LPMOS")
	assert.Equal(t, 50, results["dnsmasq"][0], "clients against dnsmasq")
	assert.Regexp(t, `(?m)^lpmos +50 +0 `, out.String(), "the side-by-side table")
}

// TestPercentiles checks the nearest-rank percentiles the report prints.
func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		name string
		in   []time.Duration
		want Percentiles
	}{
		{"none", nil, Percentiles{}},
		{"one", []time.Duration{time.Second}, Percentiles{N: 1, P50: time.Second, P95: time.Second, P99: time.Second, Max: time.Second}},
		{"1..100 ms", d, Percentiles{N: 100, P50: 50 * time.Millisecond, P95: 95 * time.Millisecond, P99: 99 * time.Millisecond, Max: 100 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, percentiles(tt.in))
		})
	}
}
