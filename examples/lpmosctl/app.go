package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lpmos/lpmos/client"
)

// defaultURL is the allinone's control plane on this host.
const defaultURL = "http://localhost:8080"

// globals are the flags every command takes, before or after its name.
type globals struct {
	url     string
	token   string
	output  string
	timeout time.Duration
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.url, "url", g.url, "control plane URL (env LPMOS_URL)")
	fs.Var(secret{&g.token}, "token", "bearer token (env LPMOS_TOKEN, which other users cannot read in ps)")
	fs.StringVar(&g.output, "o", g.output, "output format: table or json")
	fs.StringVar(&g.output, "output", g.output, "same as -o")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "bound on each HTTP request")
}

// secret is a flag whose value -h never prints.
type secret struct{ p *string }

func (s secret) String() string     { return "" }
func (s secret) Set(v string) error { *s.p = v; return nil }

// app is one invocation: where it writes and what the global flags say.
type app struct {
	stdout, stderr io.Writer
	g              globals
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	a := &app{stdout: stdout, stderr: stderr, g: globals{url: getenv("LPMOS_URL"), token: getenv("LPMOS_TOKEN"), output: "table", timeout: 60 * time.Second}}
	if a.g.url == "" {
		a.g.url = defaultURL
	}
	return a
}

// command is one leaf of the command tree: setup registers its flags and
// returns what runs it with the positional arguments.
type command struct {
	path    string // "tasks list"
	args    string // what follows the flags in the usage line
	summary string
	setup   func(fs *flag.FlagSet) func(ctx context.Context, a *app, args []string) error
}

// commands is the command tree, in the order -h lists it.
func commands() []command {
	return []command{
		{"tasks create", "MAC...", "ask for installs: one task per MAC (several: one batch call)", tasksCreate},
		{"tasks list", "", "list tasks, filtered", tasksList},
		{"tasks get", "ID", "show one task: metadata, hardware, approval, progress, timeline", tasksGet},
		{"tasks approve", "[ID...]", "approve tasks' hardware (several IDs or filter flags: one bulk call)", tasksApprove},
		{"tasks reject", "[ID...]", "reject tasks' hardware (--reason is required)", tasksReject},
		{"tasks cancel", "[ID...]", "cancel tasks that have not ended", tasksCancel},
		{"tasks retry", "ID", "start a new attempt of a failed or cancelled task", tasksRetry},
		{"tasks watch", "[ID...]", "follow tasks live with progress bars (no ID: every task)", tasksWatch},
		{"machines list", "", "list machines (registered and discovered), filtered", machinesList},
		{"machines get", "MAC", "show a machine: hardware, expected hardware, BMC, power, tasks", machinesGet},
		{"machines register", "MAC", "register a machine: region, tags, BMC, expected hardware", machinesRegister},
		{"machines update", "MAC", "change a machine's region, tags, BMC or expected hardware", machinesUpdate},
		{"machines delete", "MAC", "delete a machine's record (not while it has an active task)", machinesDelete},
		{"machines power", "MAC on|off|cycle|status", "power a machine through its BMC, or read its power state (its region carries it out)", machinesPower},
		{"machines trace", "MAC", "show what the regions saw of a machine's boots: DHCP, TFTP, HTTP, scripts, agent calls, power (--follow: live)", machinesTrace},
		{"machines provision", "MAC", "ask for an install on a known machine (its region by default)", machinesProvision},
		{"rules list", "", "list the auto-approval rules", rulesList},
		{"rules get", "NAME", "show an auto-approval rule", rulesGet},
		{"rules put", "NAME", "create or replace a rule from a JSON file (admins)", rulesPut},
		{"rules delete", "NAME", "delete a rule (admins)", rulesDelete},
		{"images list", "", "list the image catalogue and each region's copy", imagesList},
		{"images get", "ID", "show a catalogue image and its state in each region", imagesGet},
		{"images register", "ID", "register an OS image for a region or all; the regions download and verify it (admins)", imagesRegister},
		{"images delete", "ID", "delete a catalogue image; the regions remove their copies (admins)", imagesDelete},
		{"regions list", "", "list regions, their status, OS offerings and active tasks", regionsList},
		{"whoami", "", "show who the token signs in as", whoami},
		{"version", "", "print lpmosctl's build", version},
		{"completion", "bash|zsh", "print a shell completion script", completion},
	}
}

func (a *app) usage(w io.Writer) {
	fmt.Fprint(w, `lpmosctl drives an LPMOS control plane.

Usage: lpmosctl [global flags] COMMAND [flags] [args]

Commands:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands() {
		fmt.Fprintf(tw, "  %s %s\t%s\n", c.path, c.args, c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, `
Global flags (also accepted after the command):
  --url URL        control plane URL (env LPMOS_URL, default `+defaultURL+`)
  --token TOKEN    bearer token (env LPMOS_TOKEN; a flag wins over the env)
  -o table|json    tables for people, JSON for scripts
  --timeout D      bound on each HTTP request (default 60s)

Run "lpmosctl COMMAND -h" for a command's flags.

`+exitCodesHelp)
}

// main dispatches the command line.
func (a *app) main(ctx context.Context, args []string) error {
	fs := a.flagSet("lpmosctl")
	fs.Usage = func() { a.usage(fs.Output()) }
	if err := fs.Parse(args); err != nil {
		return a.parseError(err)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		a.usage(a.stderr)
		return &usageError{err: errors.New("no command"), reported: true}
	}
	if rest[0] == "help" {
		a.usage(a.stdout)
		return nil
	}
	var cmd *command
	all := commands()
	for i, c := range all {
		words := strings.Fields(c.path)
		if len(rest) >= len(words) && slices.Equal(rest[:len(words)], words) {
			cmd, rest = &all[i], rest[len(words):]
			break
		}
	}
	if cmd == nil {
		var subs []string
		for _, c := range all {
			if w, sub, ok := strings.Cut(c.path, " "); ok && w == rest[0] {
				subs = append(subs, sub)
			}
		}
		if len(subs) > 0 {
			if len(rest) == 1 {
				return usagef("%s: a subcommand is needed: %s", rest[0], strings.Join(subs, ", "))
			}
			return usagef("%s: unknown subcommand %q (%s)", rest[0], rest[1], strings.Join(subs, ", "))
		}
		return usagef("unknown command %q (see lpmosctl -h)", rest[0])
	}

	cfs := a.flagSet("lpmosctl " + cmd.path)
	runCmd := cmd.setup(cfs)
	cfs.Usage = func() {
		w := cfs.Output()
		fmt.Fprintf(w, "Usage: lpmosctl %s [flags] %s\n\n%s.\n\nFlags:\n", cmd.path, cmd.args, cmd.summary)
		cfs.PrintDefaults()
		fmt.Fprint(w, "\n"+exitCodesHelp)
	}
	pos, err := parseInterspersed(cfs, rest)
	if err != nil {
		return a.parseError(err)
	}
	if a.g.output != "table" && a.g.output != "json" {
		return usagef("-o %q: table or json", a.g.output)
	}
	return runCmd(ctx, a, pos)
}

// flagSet is a flag set with the global flags, reporting to stderr.
func (a *app) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	a.g.register(fs)
	return fs
}

// parseError turns a flag package error (printed already) into a usage
// error; -h stays flag.ErrHelp.
func (a *app) parseError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return &usageError{err: err, reported: true}
}

// parseInterspersed parses flags wherever they are among the arguments
// ("tasks get ID -o json"), as people type them, and returns the
// positional arguments; everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// client is the API client the global flags describe.
func (a *app) client() (*client.Client, error) {
	c, err := client.New(a.g.url,
		client.WithToken(a.g.token),
		client.WithUserAgent("lpmosctl/1"),
		client.WithHTTPClient(&http.Client{Timeout: a.g.timeout}))
	if err != nil {
		return nil, usagef("--url: %w", err)
	}
	return c, nil
}

// noArgs refuses positional arguments to a command that takes none.
func noArgs(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

func whoami(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		p, err := c.WhoAmI(ctx)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(p)
		}
		return a.table([]string{"SUBJECT", "ROLE"}, [][]string{{p.Subject, p.Role}})
	}
}

func version(fs *flag.FlagSet) func(context.Context, *app, []string) error {
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		v := buildVersion()
		if a.g.output == "json" {
			return a.json(v)
		}
		line := []string{"lpmosctl", v.Module, v.Version}
		if v.Revision != "" {
			line = append(line, "revision "+v.Revision)
		}
		_, err := fmt.Fprintln(a.stdout, strings.Join(append(line, v.Go), " "))
		return err
	}
}

// versionInfo is the build, as `go build` stamps it.
type versionInfo struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	Go       string `json:"go"`
}

func buildVersion() versionInfo {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return versionInfo{Version: "(unknown)"}
	}
	v := versionInfo{Module: bi.Main.Path, Version: bi.Main.Version, Go: bi.GoVersion}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	modified := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && v.Revision != "" {
		v.Revision += "+modified"
	}
	return v
}

// isTerminal reports whether w is a terminal, and its size.
func isTerminal(w io.Writer) (ok bool, width, height int) {
	f, isFile := w.(*os.File)
	if !isFile {
		return false, 0, 0
	}
	return terminalSize(int(f.Fd()))
}
