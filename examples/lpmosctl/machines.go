package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/task"
	"github.com/lpmos/lpmos/trace"
)

func machinesList(fs *flag.FlagSet) runner {
	var (
		f    client.MachineFilter
		tags listFlag
		all  bool
	)
	fs.StringVar(&f.Region, "region", "", "only machines of this region")
	fs.Var(&tags, "tag", "only machines with this tag, KEY=VALUE (repeatable: all of them)")
	fs.IntVar(&f.MinCores, "min-cores", 0, "only machines that reported at least this many cores")
	fs.IntVar(&f.MinMemoryGB, "min-memory-gb", 0, "only machines that reported at least this much memory")
	fs.IntVar(&f.MinDiskGB, "min-disk-gb", 0, "only machines with a disk at least this big")
	fs.StringVar(&f.Vendor, "vendor", "", "only machines whose system vendor contains this")
	fs.StringVar(&f.Model, "model", "", "only machines whose product name contains this")
	fs.StringVar(&f.MACPrefix, "mac-prefix", "", `only machines whose MAC starts so, e.g. "52:54:00"`)
	fs.IntVar(&f.Limit, "limit", 0, "page size (server default and maximum 500)")
	fs.StringVar(&f.After, "after", "", "the page after this MAC (the previous page's next)")
	fs.BoolVar(&all, "all", false, "every matching machine, page after page")
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		var err error
		if f.Tags, err = tagMap("tag", tags); err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		var out machine.Page
		for {
			p, err := c.Machines(ctx, f)
			if err != nil {
				return err
			}
			out.Machines, out.Total, out.Next = append(out.Machines, p.Machines...), p.Total, p.Next
			if !all || p.Next == "" {
				break
			}
			f.After = p.Next
		}
		if out.Machines == nil {
			out.Machines = []*machine.Machine{}
		}
		if a.g.output == "json" {
			return a.json(out)
		}
		now := time.Now()
		rows := make([][]string, len(out.Machines))
		for i, m := range out.Machines {
			seen := "never"
			if !m.LastSeen.IsZero() {
				seen = age(now, m.LastSeen) + " ago"
			}
			rows[i] = []string{m.MAC.String(), orDash(m.Region), hardwareText(m), bmcText(m.BMC), powerText(m.Power), seen, tagsText(m.Tags)}
		}
		if err := a.table([]string{"MAC", "REGION", "HARDWARE", "BMC", "POWER", "LAST SEEN", "TAGS"}, rows); err != nil {
			return err
		}
		if out.Next != "" {
			fmt.Fprintf(a.stderr, "(%d of %d machines: --after %s or --all for more)\n", len(out.Machines), out.Total, out.Next)
		}
		return nil
	}
}

// hardwareText sums up a machine's last report.
func hardwareText(m *machine.Machine) string {
	if m.LastReport == nil || m.LastReport.Hardware == nil {
		return "-"
	}
	h := m.LastReport.Hardware
	var disk int
	for _, d := range h.Disks {
		disk += d.SizeGB
	}
	s := fmt.Sprintf("%d cores, %d GB, %d disks (%d GB)", h.CPU.Cores, h.Memory.TotalGB, len(h.Disks), disk)
	if id := strings.TrimSpace(h.System.Vendor + " " + h.System.Product); id != "" {
		s = id + ": " + s
	}
	return s
}

func bmcText(b *machine.BMC) string {
	if b == nil {
		return "-"
	}
	s := b.Driver + " " + b.Address
	if !b.HasPassword {
		s += " (no password)"
	}
	return s
}

func powerText(p *machine.Power) string {
	if p == nil {
		return "-"
	}
	s := orDash(p.State)
	if p.Error != "" {
		s += " (last action failed)"
	}
	return s
}

func expectedText(e *hardware.Expected) string {
	if e == nil {
		return "-"
	}
	var parts []string
	for _, f := range []struct {
		v    int
		unit string
	}{{e.Cores, "cores"}, {e.MemoryGB, "GB"}, {e.Disks, "disks"}} {
		if f.v != 0 {
			parts = append(parts, strconv.Itoa(f.v)+" "+f.unit)
		}
	}
	for _, f := range []struct{ name, v string }{{"vendor", e.Vendor}, {"model", e.Model}, {"serial", e.Serial}} {
		if f.v != "" {
			parts = append(parts, f.name+" "+f.v)
		}
	}
	return strings.Join(parts, ", ")
}

func machinesGet(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one MAC")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		d, err := c.Machine(ctx, args[0])
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(d)
		}
		now := time.Now()
		m := &d.Machine
		registered := "no (discovered)"
		if m.Registered {
			registered = fmt.Sprintf("%s by %s", m.CreatedAt.Format(time.RFC3339), orDash(m.CreatedBy))
		}
		kv := [][]string{
			{"MAC:", m.MAC.String()},
			{"Region:", orDash(m.Region)},
			{"Registered:", registered},
			{"Tags:", tagsText(m.Tags)},
			{"BMC:", bmcText(m.BMC)},
			{"Power:", powerText(m.Power)},
			{"Hardware:", hardwareText(m)},
			{"Expected:", expectedText(m.Expected)},
		}
		if p := m.Power; p != nil && p.Error != "" {
			kv = append(kv, []string{"Power error:", printable(p.Error)})
		}
		if r := m.PendingPower; r != nil {
			pending := fmt.Sprintf("%s by %s (%s ago)", r.Action, r.RequestedBy, age(now, r.RequestedAt))
			if !r.ExpiresAt.IsZero() {
				pending += ", lapses at " + r.ExpiresAt.Local().Format(time.RFC3339) + " unless its region carries it out"
			}
			kv = append(kv, []string{"Pending power:", pending})
		}
		if !m.LastSeen.IsZero() {
			kv = append(kv, []string{"Last seen:", fmt.Sprintf("%s (%s ago) from %s", m.LastSeen.Format(time.RFC3339), age(now, m.LastSeen), orDash(m.LastReport.Source))})
		}
		if err := a.table(nil, kv); err != nil {
			return err
		}
		if len(d.Tasks) == 0 {
			return nil
		}
		fmt.Fprintln(a.stdout)
		rows := make([][]string, len(d.Tasks))
		for i, t := range d.Tasks {
			rows[i] = []string{t.TaskID, string(t.Status), t.OSType + " " + t.OSVersion, age(now, t.CreatedAt)}
		}
		return a.table([]string{"TASK ID", "STATUS", "OS", "AGE"}, rows)
	}
}

// machineFlags are the operator record's flags of register and update.
type machineFlags struct {
	region, driver, address, username, passwordFile, certSHA256, caFile string
	tags                                                                listFlag
	noTags, noBMC, noExpected                                           bool
	cores, memoryGB, disks                                              int
	vendor, model, serial                                               string
}

func (f *machineFlags) register(fs *flag.FlagSet, update bool) {
	fs.StringVar(&f.region, "region", "", "the machine's region")
	fs.Var(&f.tags, "tag", "tag, KEY=VALUE (repeatable; replaces all tags)")
	fs.StringVar(&f.driver, "bmc", "", "BMC driver: ipmi or redfish")
	fs.StringVar(&f.address, "bmc-address", "", "BMC host[:port]")
	fs.StringVar(&f.username, "bmc-user", "", "BMC user name")
	fs.StringVar(&f.passwordFile, "bmc-password-file", "", `file holding the BMC password ("-": standard input); never a flag, which ps shows`)
	fs.StringVar(&f.certSHA256, "bmc-cert-sha256", "", "Redfish: SHA-256 of the BMC's certificate (hex), pinned")
	fs.StringVar(&f.caFile, "bmc-ca-file", "", "Redfish: PEM file of the CA the BMC's certificate chains to")
	fs.IntVar(&f.cores, "expect-cores", 0, "expected hardware: cores")
	fs.IntVar(&f.memoryGB, "expect-memory-gb", 0, "expected hardware: memory in GB")
	fs.IntVar(&f.disks, "expect-disks", 0, "expected hardware: number of disks")
	fs.StringVar(&f.vendor, "expect-vendor", "", "expected hardware: system vendor")
	fs.StringVar(&f.model, "expect-model", "", "expected hardware: product name")
	fs.StringVar(&f.serial, "expect-serial", "", "expected hardware: serial number")
	if update {
		fs.BoolVar(&f.noTags, "no-tags", false, "remove all tags")
		fs.BoolVar(&f.noBMC, "no-bmc", false, "remove the BMC")
		fs.BoolVar(&f.noExpected, "no-expected", false, "remove the expected hardware")
	}
}

func (f *machineFlags) input(fs *flag.FlagSet, stdin *os.File) (client.MachineInput, error) {
	var in client.MachineInput
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if set["region"] {
		in.Region = &f.region
	}
	tags, err := tagMap("tag", f.tags)
	if err != nil {
		return in, err
	}
	in.Tags = tags
	if f.noTags {
		if tags != nil {
			return in, usagef("--tag and --no-tags together")
		}
		in.Tags = map[string]string{}
	}
	if f.driver != "" || f.address != "" || f.username != "" || f.passwordFile != "" || f.certSHA256 != "" || f.caFile != "" {
		if f.noBMC {
			return in, usagef("--bmc flags and --no-bmc together")
		}
		b := &machine.BMCInput{Driver: f.driver, Address: f.address, Username: f.username, CertSHA256: f.certSHA256}
		if f.passwordFile != "" {
			raw, err := readInput(f.passwordFile, stdin)
			if err != nil {
				return in, usagef("--bmc-password-file: %v", err)
			}
			b.Password = strings.TrimRight(string(raw), "\r\n")
		}
		if f.caFile != "" {
			raw, err := os.ReadFile(f.caFile)
			if err != nil {
				return in, usagef("--bmc-ca-file: %v", err)
			}
			b.CACert = string(raw)
		}
		in.BMC = b
	}
	in.RemoveBMC = f.noBMC
	e := hardware.Expected{Cores: f.cores, MemoryGB: f.memoryGB, Disks: f.disks, Vendor: f.vendor, Model: f.model, Serial: f.serial}
	if !e.IsZero() {
		if f.noExpected {
			return in, usagef("--expect-* flags and --no-expected together")
		}
		in.Expected = &e
	}
	in.RemoveExpected = f.noExpected
	return in, nil
}

// decodeStrict decodes one JSON value and refuses unknown fields, so a
// typo in a rule file is an error rather than a condition left out.
func decodeStrict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

// maxInputBytes bounds what a command reads from a file or standard input.
const maxInputBytes = 1 << 20

// readInput reads path, or stdin for "-", up to maxInputBytes.
func readInput(path string, stdin io.Reader) ([]byte, error) {
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		stdin = f
	}
	b, err := io.ReadAll(io.LimitReader(stdin, maxInputBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxInputBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxInputBytes)
	}
	return b, nil
}

func machinesRegister(fs *flag.FlagSet) runner {
	var f machineFlags
	f.register(fs, false)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give the machine's MAC")
		}
		in, err := f.input(fs, os.Stdin)
		if err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		m, err := c.RegisterMachine(ctx, args[0], in)
		if err != nil {
			return err
		}
		return a.machineRecord(m)
	}
}

func machinesUpdate(fs *flag.FlagSet) runner {
	var f machineFlags
	f.register(fs, true)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give the machine's MAC")
		}
		in, err := f.input(fs, os.Stdin)
		if err != nil {
			return err
		}
		if in.Region == nil && in.Tags == nil && in.BMC == nil && !in.RemoveBMC && in.Expected == nil && !in.RemoveExpected {
			return usagef("nothing to change: give --region, --tag, --bmc..., --expect-... or a --no-... flag")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		m, err := c.UpdateMachine(ctx, args[0], in)
		if err != nil {
			return err
		}
		return a.machineRecord(m)
	}
}

// machineRecord prints a register's or an update's answer.
func (a *app) machineRecord(m *machine.Machine) error {
	if a.g.output == "json" {
		return a.json(m)
	}
	return a.table([]string{"MAC", "REGION", "BMC", "EXPECTED", "TAGS"},
		[][]string{{m.MAC.String(), orDash(m.Region), bmcText(m.BMC), expectedText(m.Expected), tagsText(m.Tags)}})
}

func machinesDelete(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one MAC")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		if err := c.DeleteMachine(ctx, args[0]); err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(map[string]string{"deleted": args[0]})
		}
		_, err = fmt.Fprintf(a.stdout, "deleted %s\n", args[0])
		return err
	}
}

func machinesPower(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 2 {
			return usagef("give a MAC and on, off, cycle or status")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		req, err := c.PowerMachine(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(req)
		}
		_, err = fmt.Fprintf(a.stdout, "%s %s: requested (region %s carries it out; lpmosctl machines get %s shows the outcome)\n",
			req.Action, args[0], req.Region, args[0])
		return err
	}
}

func machinesProvision(fs *flag.FlagSet) runner {
	var region, osType, osVersion, disk, hostname string
	var tags, sshKeys listFlag
	fs.StringVar(&region, "region", "", "region (default: the machine's)")
	fs.StringVar(&osType, "os", "", "OS type, e.g. ubuntu (required)")
	fs.StringVar(&osVersion, "os-version", "", "OS version, e.g. 24.04 (required)")
	fs.StringVar(&disk, "disk-layout", "", `"auto" or the device to install onto`)
	fs.StringVar(&hostname, "hostname", "", "the machine's hostname")
	fs.Var(&tags, "tag", "tag the task, KEY=VALUE (repeatable)")
	fs.Var(&sshKeys, "ssh-key", "an authorized_keys line for root (repeatable)")
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give the machine's MAC")
		}
		if osType == "" || osVersion == "" {
			return usagef("--os and --os-version are required")
		}
		tm, err := tagMap("tag", tags)
		if err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		cr, err := c.CreateForMachine(ctx, args[0], task.CreateRequest{RegionID: region, OSType: osType, OSVersion: osVersion,
			DiskLayout: disk, Hostname: hostname, Tags: tm, SSHKeys: sshKeys})
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(cr)
		}
		return a.table([]string{"TASK ID", "MAC", "STATUS", "REVISION"},
			[][]string{{cr.TaskID, args[0], string(cr.Status), strconv.FormatInt(cr.Revision, 10)}})
	}
}

func rulesList(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		rules, err := c.Rules(ctx)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			if rules == nil {
				rules = []rule.Rule{}
			}
			return a.json(struct {
				Rules []rule.Rule `json:"rules"`
			}{rules})
		}
		rows := make([][]string, len(rules))
		for i, r := range rules {
			rows[i] = []string{r.Name, ruleScope(r), ruleConditions(r), orDash(r.UpdatedBy)}
		}
		return a.table([]string{"RULE", "APPLIES TO", "CONDITIONS", "UPDATED BY"}, rows)
	}
}

func ruleScope(r rule.Rule) string {
	switch {
	case r.OnlyNamed:
		return "tasks tagged " + rule.TaskTag + "=" + r.Name
	case r.Region != "":
		return "region " + r.Region
	}
	return "every region"
}

// ruleConditions says a rule's conditions in words.
func ruleConditions(r rule.Rule) string {
	var parts []string
	add := func(v int, format string) {
		if v != 0 {
			parts = append(parts, fmt.Sprintf(format, v))
		}
	}
	add(r.MinCores, "≥%d cores")
	add(r.MaxCores, "≤%d cores")
	add(r.MinMemoryGB, "≥%d GB")
	add(r.MaxMemoryGB, "≤%d GB")
	add(r.MinDisks, "≥%d disks")
	add(r.MaxDisks, "≤%d disks")
	if r.MinDiskGB != 0 || r.DiskType != "" {
		parts = append(parts, strings.TrimSpace(fmt.Sprintf("a %s disk ≥%d GB", r.DiskType, r.MinDiskGB)))
	}
	add(r.MinNICMbps, "a NIC ≥%d Mb/s")
	for _, p := range []struct{ name, v string }{{"vendor", r.Vendor}, {"model", r.Model}, {"serial", r.Serial}} {
		if p.v != "" {
			parts = append(parts, p.name+" "+p.v)
		}
	}
	if r.MatchExpected {
		parts = append(parts, "as expected")
	}
	return strings.Join(parts, ", ")
}

func rulesGet(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one rule name")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		r, err := c.Rule(ctx, args[0])
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(r)
		}
		return a.table(nil, [][]string{
			{"Rule:", r.Name}, {"Applies to:", ruleScope(*r)}, {"Conditions:", ruleConditions(*r)},
			{"Notes:", orDash(printable(r.Notes))},
			{"Updated:", fmt.Sprintf("%s by %s", r.UpdatedAt.Format(time.RFC3339), orDash(r.UpdatedBy))},
		})
	}
}

func rulesPut(fs *flag.FlagSet) runner {
	var file string
	fs.StringVar(&file, "f", "", `JSON file of the rule ("-": standard input), as GET /api/v1/rules/{name} shows it (required)`)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give the rule's name")
		}
		if file == "" {
			return usagef("-f FILE is required")
		}
		raw, err := readInput(file, os.Stdin)
		if err != nil {
			return usagef("-f: %v", err)
		}
		var r rule.Rule
		if err := decodeStrict(raw, &r); err != nil {
			return usagef("-f %s: %v", file, err)
		}
		if r.Name != "" && r.Name != args[0] {
			return usagef("the file names rule %q, the command %q", r.Name, args[0])
		}
		r.Name = args[0]
		c, err := a.client()
		if err != nil {
			return err
		}
		got, err := c.PutRule(ctx, r)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(got)
		}
		return a.table([]string{"RULE", "APPLIES TO", "CONDITIONS"}, [][]string{{got.Name, ruleScope(*got), ruleConditions(*got)}})
	}
}

func rulesDelete(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one rule name")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		if err := c.DeleteRule(ctx, args[0]); err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(map[string]string{"deleted": args[0]})
		}
		_, err = fmt.Fprintf(a.stdout, "deleted rule %s\n", args[0])
		return err
	}
}

func machinesTrace(fs *flag.FlagSet) runner {
	var (
		follow   bool
		interval time.Duration
	)
	fs.BoolVar(&follow, "follow", false, "keep printing new events as they come, until interrupted")
	fs.DurationVar(&interval, "interval", 2*time.Second, "how often --follow reads the trace")
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one MAC")
		}
		if interval < 100*time.Millisecond {
			return usagef("--interval must be at least 100ms")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		tr, err := c.MachineTrace(ctx, args[0])
		if err != nil {
			return err
		}
		if a.g.output == "json" && !follow {
			return a.json(tr)
		}
		if len(tr.Events) == 0 && !follow {
			fmt.Fprintf(a.stdout, "no region has heard from %s (check its cabling, VLAN and DHCP relay)\n", tr.MAC)
			return nil
		}
		var fresh newEvents
		header := []string{"TIME", "REGION", "KIND", "OUTCOME", "WHAT", "WHY"}
		printNew := func(events []trace.Event) error {
			var rows [][]string
			for _, e := range fresh.of(events) {
				if a.g.output == "json" {
					if err := a.json(e); err != nil {
						return err
					}
					continue
				}
				rows = append(rows, traceRow(e))
			}
			if len(rows) == 0 {
				return nil
			}
			// Later batches of --follow have no header (and may align
			// differently).
			h := header
			header = nil
			return a.table(h, rows)
		}
		if err := printNew(tr.Events); err != nil || !follow {
			return err
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
			}
			if tr, err = c.MachineTrace(ctx, args[0]); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if err := printNew(tr.Events); err != nil {
				return err
			}
		}
	}
}

// newEvents picks the events of a trace read again whole that the last
// read did not have. Regions flush their events at their own pace, so a
// region's event may arrive older than another's already printed; a
// repeat a region folded into an event (its count and time changed) is
// new again. Only the last read's events are remembered.
type newEvents struct{ seen map[string]bool }

func (n *newEvents) of(events []trace.Event) []trace.Event {
	var out []trace.Event
	read := make(map[string]bool, len(events))
	for _, e := range events {
		k := fmt.Sprintf("%s|%s|%s|%s|%d|%d", e.Region, e.Kind, e.Outcome, e.Message, e.Time.UnixNano(), e.Count)
		read[k] = true
		if !n.seen[k] {
			out = append(out, e)
		}
	}
	n.seen = read
	return out
}

// traceRow is one boot event as a table row; a repeated event says how
// many times it came.
func traceRow(e trace.Event) []string {
	what := e.Message
	if e.Count > 1 {
		what += fmt.Sprintf(" (×%d)", e.Count)
	}
	return []string{e.Time.Local().Format("15:04:05.000"), orDash(e.Region), string(e.Kind), string(e.Outcome), what, orDash(e.Reason)}
}
