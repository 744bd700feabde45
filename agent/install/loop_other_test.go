//go:build !linux

package install_test

import (
	"testing"
	"time"
)

func loopDevice(tb testing.TB, _ int64, _ []byte) string {
	tb.Skip("loop device: Linux only")
	return ""
}

func loopDeviceOpts(tb testing.TB, _ int64, _ []byte, _ bool) string {
	tb.Skip("loop device: Linux only")
	return ""
}

func throttleWrites(tb testing.TB, _ string, _ int64) { tb.Skip("throttle: Linux only") }

// processCPU: measured on Linux only (the benchmark's targets are too).
func processCPU(testing.TB) time.Duration { return 0 }
