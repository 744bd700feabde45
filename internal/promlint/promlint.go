// Package promlint reads the Prometheus text exposition a /metrics
// endpoint serves and checks it against the naming conventions LPMOS
// follows (those of Prometheus client_golang): snake_case names, counters
// ending in _total, durations in seconds and sizes in bytes (base units),
// HELP and TYPE for every family. Tests of the binaries and of the
// region use it; it is not part of any server.
package promlint

import (
	"bufio"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Family is one metric family of an exposition.
type Family struct {
	Name, Help, Type string
	// Samples maps a sample's name and labels, exactly as exposed
	// (`name{a="b"}`), to its value.
	Samples map[string]float64
}

// Parse reads the text format. It is strict about what LPMOS needs and
// no more: comments other than HELP and TYPE are ignored.
func Parse(text string) (map[string]*Family, error) {
	fams := map[string]*Family{}
	get := func(name string) *Family {
		f := fams[name]
		if f == nil {
			f = &Family{Name: name, Samples: map[string]float64{}}
			fams[name] = f
		}
		return f
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case line == "":
		case strings.HasPrefix(line, "# HELP "):
			name, help, _ := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
			get(name).Help = help
		case strings.HasPrefix(line, "# TYPE "):
			name, typ, _ := strings.Cut(strings.TrimPrefix(line, "# TYPE "), " ")
			get(name).Type = typ
		case strings.HasPrefix(line, "#"):
		default:
			i := strings.LastIndexByte(line, ' ')
			if i < 0 {
				return nil, fmt.Errorf("line %d: no value: %q", n, line)
			}
			v, err := strconv.ParseFloat(line[i+1:], 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			series := line[:i]
			name, _, _ := strings.Cut(series, "{")
			get(familyOf(name, fams)).Samples[series] = v
		}
	}
	return fams, sc.Err()
}

// familyOf maps a sample name to its family: histogram and summary
// samples carry a suffix.
func familyOf(sample string, fams map[string]*Family) string {
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(sample, suf); ok {
			if f := fams[base]; f != nil && (f.Type == "histogram" || f.Type == "summary") {
				return base
			}
		}
	}
	return sample
}

var (
	snakeName  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	labelName  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	timeWords  = regexp.MustCompile(`(^|_)(duration|latency|lag|age|idle|uptime|delay|timeout|wait)(_|$)`)
	smallUnits = regexp.MustCompile(`(^|_)(ms|us|ns|millis|milliseconds|microseconds|nanoseconds|minutes|hours|days|kb|mb|gb|kib|mib|gib|kilobytes|megabytes|percent)(_|$)`)
)

// Lint checks the families whose names start with prefix (e.g. "lpmos_")
// against the conventions and returns every violation. Families from
// client_golang's own collectors (go_, process_) follow them already.
func Lint(fams map[string]*Family, prefix string) []error {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...)))
	}
	for name, f := range fams {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		if !snakeName.MatchString(name) {
			bad(name, "not snake_case (lower case, digits and _)")
		}
		if f.Help == "" {
			bad(name, "no HELP")
		}
		if f.Type == "" {
			bad(name, "no TYPE")
		}
		if len(f.Samples) == 0 {
			bad(name, "no samples")
		}
		base := strings.TrimSuffix(name, "_total")
		switch f.Type {
		case "counter":
			if !strings.HasSuffix(name, "_total") {
				bad(name, "a counter's name ends in _total")
			}
		case "gauge":
			if strings.HasSuffix(name, "_total") {
				bad(name, "a gauge's name must not end in _total (that says counter)")
			}
		case "histogram", "summary":
			if !strings.HasSuffix(name, "_seconds") && !strings.HasSuffix(name, "_bytes") {
				bad(name, "a %s here measures seconds or bytes, and its name ends in the unit", f.Type)
			}
		}
		if timeWords.MatchString(base) && !strings.HasSuffix(base, "_seconds") {
			bad(name, "a duration is in seconds and its name ends in _seconds (or _seconds_total)")
		}
		if smallUnits.MatchString(name) {
			bad(name, "not in a base unit (seconds, bytes, ratios)")
		}
		if strings.HasSuffix(name, "_info") && f.Type != "gauge" {
			bad(name, "an _info metric is a gauge of value 1")
		}
		for series := range f.Samples {
			for _, m := range labelName.FindAllStringSubmatch(series, -1) {
				if l := m[1]; l != "le" && l != "quantile" && !snakeName.MatchString(l) {
					bad(name, "label %q is not snake_case", l)
				}
			}
		}
	}
	return errs
}

// Value is the value of one sample, `name` or `name{a="b",...}` with the
// labels in the exposition's (sorted) order, and whether it exists.
func Value(fams map[string]*Family, series string) (float64, bool) {
	name, _, _ := strings.Cut(series, "{")
	f := fams[familyOf(name, fams)]
	if f == nil {
		return 0, false
	}
	v, ok := f.Samples[series]
	return v, ok
}

// Sum adds the samples of a family whose series contain every one of
// the given label pairs (`a="b"`), e.g. all outcomes of one message type.
func Sum(fams map[string]*Family, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return 0
	}
	var sum float64
next:
	for series, v := range f.Samples {
		if s, _, _ := strings.Cut(series, "{"); s != name {
			continue // a histogram's _bucket, _sum and _count
		}
		for _, l := range labels {
			if !strings.Contains(series, l) {
				continue next
			}
		}
		sum += v
	}
	return sum
}
