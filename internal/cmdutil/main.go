package cmdutil

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// ErrUsage marks an error in how a binary was called (a stray argument, a
// flag that does not parse, a configuration that cannot work); ExitCode
// turns it into status 2.
var ErrUsage = errors.New("usage")

// Usagef returns an error wrapping ErrUsage.
func Usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// Usage wraps err, if not nil, as a usage error.
func Usage(err error) error {
	if err == nil || errors.Is(err, ErrUsage) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUsage, err)
}

// ExitCode is the process status for run's error: 0 for none, 2 for a
// usage error, 1 for anything else.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	}
	return 1
}

// NoArgs is the usage error for positional arguments to a binary that
// takes only flags (so that `allinone version` does not start a server).
func NoArgs(fs *flag.FlagSet) error {
	if fs.NArg() == 0 {
		return nil
	}
	return Usagef("unexpected argument %q (this command takes only flags; see -help)", fs.Arg(0))
}

// PrintVersion writes the binary's name, the module version and the VCS
// revision it was built from (as `go build` stamps them) and the Go
// version.
func PrintVersion(w io.Writer, name string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintf(w, "%s (no build information)\n", name)
		return
	}
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	line := []string{name, bi.Main.Path, version}
	var rev, modified, when string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		case "vcs.time":
			when = s.Value
		}
	}
	if rev != "" {
		if modified == "true" {
			rev += "+modified"
		}
		line = append(line, "revision "+rev)
	}
	if when != "" {
		line = append(line, "committed "+when)
	}
	line = append(line, bi.GoVersion)
	fmt.Fprintln(w, strings.Join(line, " "))
}

// Stopped is the error a binary's parts ended with, once they all have:
// parts that gave up with context.Canceled because the process was told
// to stop (ctx, the signal context, is done) did not fail.
func Stopped(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
