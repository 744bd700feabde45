package lpmos_test

import (
	"encoding/json"
	"fmt"
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

// The Grafana dashboard is valid JSON and every query in it is valid
// PromQL: promtool checks them as recording rules of a generated file.
func TestGrafanaDashboard(t *testing.T) {
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	data, err := os.ReadFile(filepath.Join(rulesDir, dashboardFile))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &dash))
	require.NotEmpty(t, dash.Panels)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, p.Title)
		for j, q := range p.Targets {
			exprJSON, err := json.Marshal(q.Expr) // a JSON string is a YAML string
			require.NoError(t, err)
			fmt.Fprintf(&rules, "      - record: dashboard:panel%d_%d\n        expr: %s\n", i, j, exprJSON)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if testing.Short() {
			t.Skip("promtool (Debian package prometheus) is not installed")
		}
		t.Fatal("promtool is missing: apt-get install prometheus (scripts/test.sh installs it)")
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	require.NoError(t, os.WriteFile(file, []byte(rules.String()), 0o644))
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	assert.NoError(t, err, "a dashboard query is not valid PromQL:\n%s\n%s", out, rules.String())
}

const dashboardFile = "grafana-lpmos-fleet.json"

// Every LPMOS metric the rules and the dashboard use is one the code
// exports: a rule on a name nobody exports would never fire. (The unit
// tests cannot tell: they make up their own series.)
func TestPrometheusRulesUseExportedMetrics(t *testing.T) {
	name := regexp.MustCompile(`\blpmos_[a-z0-9_]+`)
	var used []string
	for _, f := range []string{"lpmos-rules.yml", dashboardFile} {
		data, err := os.ReadFile(filepath.Join(rulesDir, f))
		require.NoError(t, err)
		names := name.FindAllString(string(data), -1)
		require.NotEmpty(t, names, f)
		used = append(used, names...)
	}

	exported := map[string]bool{}
	literal := regexp.MustCompile(`"(lpmos_[a-z0-9_]+)"`)
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
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
		assert.True(t, exported[base], "deploy/prometheus uses %s, which no Go code exports", n)
	}
}
