package promlint

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLint(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []string // substrings of the violations, in any order
	}{
		{"good", `# HELP lpmos_x_total Things.
# TYPE lpmos_x_total counter
lpmos_x_total{kind="a"} 3
# HELP lpmos_wait_seconds Waits.
# TYPE lpmos_wait_seconds histogram
lpmos_wait_seconds_bucket{le="+Inf"} 1
lpmos_wait_seconds_sum 0.5
lpmos_wait_seconds_count 1
# HELP lpmos_build_info Build.
# TYPE lpmos_build_info gauge
lpmos_build_info{version="v1"} 1
`, nil},
		{"counter without _total", "# HELP lpmos_x X.\n# TYPE lpmos_x counter\nlpmos_x 1\n", []string{"ends in _total"}},
		{"gauge with _total", "# HELP lpmos_x_total X.\n# TYPE lpmos_x_total gauge\nlpmos_x_total 1\n", []string{"must not end in _total"}},
		{"milliseconds", "# HELP lpmos_latency_ms X.\n# TYPE lpmos_latency_ms gauge\nlpmos_latency_ms 1\n", []string{"_seconds", "base unit"}},
		{"camelCase", "# HELP lpmos_fooBar X.\n# TYPE lpmos_fooBar gauge\nlpmos_fooBar{someLabel=\"x\"} 1\n", []string{"snake_case", "label \"someLabel\""}},
		{"no help nor type", "lpmos_x 1\n", []string{"no HELP", "no TYPE"}},
		{"histogram not in seconds", "# HELP lpmos_size X.\n# TYPE lpmos_size histogram\nlpmos_size_count 1\n", []string{"seconds or bytes"}},
		{"other prefixes are not ours", "go_whatever 1\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fams, err := Parse(tc.text)
			require.NoError(t, err)
			errs := Lint(fams, "lpmos_")
			if len(tc.want) == 0 {
				assert.Empty(t, errs)
			}
			var all string
			for _, e := range errs {
				all += e.Error() + "\n"
			}
			for _, w := range tc.want {
				assert.Contains(t, all, w)
			}
		})
	}
}

func TestValueAndSum(t *testing.T) {
	fams, err := Parse("# TYPE a_total counter\na_total{k=\"x\",o=\"1\"} 2\na_total{k=\"x\",o=\"2\"} 3\na_total{k=\"y\",o=\"1\"} 5\n# TYPE h_seconds histogram\nh_seconds_count 7\n")
	require.NoError(t, err)
	v, ok := Value(fams, `a_total{k="y",o="1"}`)
	assert.True(t, ok)
	assert.Equal(t, 5.0, v)
	assert.Equal(t, 5.0, Sum(fams, "a_total", `k="x"`))
	v, ok = Value(fams, "h_seconds_count")
	assert.True(t, ok)
	assert.Equal(t, 7.0, v)
	_, err = Parse("broken\n")
	assert.Error(t, err)
}
