package lpmos_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const rulesDir = "deploy/prometheus"

// The alerting rules are valid, their unit tests with synthetic series
// pass (promtool, Debian package prometheus), and the configuration
// example parses. promtool missing fails the test, except under -short.
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if testing.Short() {
			t.Skip("promtool (Debian package prometheus) is not installed")
		}
		t.Fatal("promtool is missing: apt-get install prometheus (scripts/test.sh installs it)")
	}
	for _, args := range [][]string{
		{"check", "rules", "lpmos-rules.yml"},
		{"test", "rules", "lpmos-rules_test.yml"},
		{"check", "config", "--syntax-only", "prometheus-example.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = rulesDir
		out, err := cmd.CombinedOutput()
		assert.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	}
}

// Every LPMOS metric the rules use is one the code exports: a rule on a
// name nobody exports would never fire. (The unit tests cannot tell: they
// make up their own series.)
func TestPrometheusRulesUseExportedMetrics(t *testing.T) {
	rules, err := os.ReadFile(filepath.Join(rulesDir, "lpmos-rules.yml"))
	require.NoError(t, err)
	name := regexp.MustCompile(`\blpmos_[a-z0-9_]+`)
	used := name.FindAllString(string(rules), -1)
	require.NotEmpty(t, used)

	exported := map[string]bool{}
	literal := regexp.MustCompile(`"(lpmos_[a-z0-9_]+)"`)
	err = filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bench") && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range literal.FindAllStringSubmatch(string(src), -1) {
			exported[m[1]] = true
		}
		return nil
	})
	require.NoError(t, err)
	for _, n := range slices.Compact(slices.Sorted(slices.Values(used))) {
		base := n
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(n, suf); ok && exported[b] {
				base = b
			}
		}
		assert.True(t, exported[base], "lpmos-rules.yml uses %s, which no Go code exports", n)
	}
}
