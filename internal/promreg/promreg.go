// Package promreg builds the Prometheus registry a binary serves: the
// process's Go runtime and process collectors (goroutines, heap, resident
// memory, CPU seconds, open file descriptors) and lpmos_build_info, to
// which the control plane and the region add their own metrics. Each
// binary builds one registry and hands it to the parts it runs; nothing
// here is global.
package promreg

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// New returns a registry with the Go and process collectors and
// lpmos_build_info registered.
func New() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		BuildInfo(),
	)
	return reg
}

// BuildInfo is lpmos_build_info{version,revision,goversion} 1: the module
// version and VCS revision `go build` stamped into the binary ("(devel)"
// and "unknown" when it did not), so that a dashboard can tell which
// build each process runs.
func BuildInfo() prometheus.Collector {
	version, revision := "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && revision != "unknown" {
			revision += "+modified"
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lpmos_build_info",
		Help: "Always 1; the labels say which build of LPMOS this process runs.",
		ConstLabels: prometheus.Labels{
			"version": version, "revision": revision, "goversion": runtime.Version(),
		},
	})
	g.Set(1)
	return g
}
