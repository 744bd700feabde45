package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/task"
)

// runner runs a command with its positional arguments.
type runner = func(ctx context.Context, a *app, args []string) error

// listFlag is a repeatable flag; each value may also be comma-separated
// where the caller splits it.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// filterFlags select tasks, for a list or a bulk move.
type filterFlags struct {
	region, mac, macPrefix, osType, osVersion, createdBy string
	statuses, tags                                       listFlag
}

func (f *filterFlags) register(fs *flag.FlagSet, withMAC bool) {
	fs.StringVar(&f.region, "region", "", "only tasks of this region")
	fs.Var(&f.statuses, "status", "only tasks in this status (repeatable or comma-separated: any of them)")
	if withMAC {
		fs.StringVar(&f.mac, "mac", "", "only this machine's tasks")
	}
	fs.StringVar(&f.macPrefix, "mac-prefix", "", `only machines whose MAC starts so, e.g. "52:54:00"`)
	fs.StringVar(&f.osType, "os", "", "only tasks installing this OS type")
	fs.StringVar(&f.osVersion, "os-version", "", "only tasks installing this OS version")
	fs.Var(&f.tags, "tag", "only tasks with this tag, KEY=VALUE (repeatable: all of them)")
	fs.StringVar(&f.createdBy, "created-by", "", `only tasks created by this subject, e.g. "jwt:alice"`)
}

func (f *filterFlags) empty() bool {
	return f.region == "" && f.mac == "" && f.macPrefix == "" && f.osType == "" && f.osVersion == "" &&
		f.createdBy == "" && len(f.statuses) == 0 && len(f.tags) == 0
}

func (f *filterFlags) statusList() ([]task.Status, error) {
	var out []task.Status
	for _, v := range f.statuses {
		for s := range strings.SplitSeq(v, ",") {
			st := task.Status(strings.TrimSpace(s))
			if !st.Valid() {
				return nil, usagef("--status %q: not a status (%s)", s, statusNames())
			}
			out = append(out, st)
		}
	}
	return out, nil
}

func statusNames() string {
	var names []string
	for _, s := range task.Statuses() {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

// tagMap parses KEY=VALUE flags.
func tagMap(flagName string, tags []string) (map[string]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		k, v, ok := strings.Cut(t, "=")
		if !ok || k == "" {
			return nil, usagef("--%s %q: KEY=VALUE", flagName, t)
		}
		m[k] = v
	}
	return m, nil
}

func tasksCreate(fs *flag.FlagSet) runner {
	var (
		region, osType, osVersion, disk, network, hostname string
		address, gateway, dns, passwordHash, userDataFile  string
		vlan                                               int
		tags, sshKeys                                      listFlag
	)
	fs.StringVar(&region, "region", "", "region whose boot services install the machines (required)")
	fs.StringVar(&osType, "os", "", "OS type, e.g. ubuntu (required; lpmosctl regions list shows what a region offers)")
	fs.StringVar(&osVersion, "os-version", "", "OS version, e.g. 24.04 (required)")
	fs.StringVar(&disk, "disk-layout", "", `"auto" or the device to install onto, e.g. /dev/sda`)
	fs.StringVar(&network, "network", "", "dhcp or static (static when --address is given)")
	fs.StringVar(&address, "address", "", "static IPv4 address with prefix length, e.g. 10.0.0.5/24 (one MAC only)")
	fs.StringVar(&gateway, "gateway", "", "default gateway of a static address, inside its subnet")
	fs.StringVar(&dns, "dns", "", "name servers, comma-separated (at most 4)")
	fs.IntVar(&vlan, "vlan", 0, "802.1Q VLAN ID (1-4094) the network is on")
	fs.Var(&tags, "tag", "tag the tasks, KEY=VALUE (repeatable)")
	fs.StringVar(&hostname, "hostname", "", "the machine's hostname (one MAC only)")
	fs.Var(&sshKeys, "ssh-key", "an authorized_keys line for root (repeatable)")
	fs.StringVar(&passwordHash, "root-password-hash", "", "root's password as a crypt(3) hash, e.g. from mkpasswd -m sha-512")
	fs.StringVar(&userDataFile, "user-data", "", "a #cloud-config file merged into the installed system's cloud-init user-data")
	return func(ctx context.Context, a *app, macs []string) error {
		switch {
		case len(macs) == 0:
			return usagef("give the MAC of at least one machine")
		case region == "" || osType == "" || osVersion == "":
			return usagef("--region, --os and --os-version are required")
		case hostname != "" && len(macs) > 1:
			return usagef("--hostname names one machine, and %d MACs were given", len(macs))
		case address != "" && len(macs) > 1:
			return usagef("--address is one machine's, and %d MACs were given", len(macs))
		}
		tm, err := tagMap("tag", tags)
		if err != nil {
			return err
		}
		var net *task.Network
		if address != "" || gateway != "" || dns != "" || vlan != 0 {
			net = &task.Network{Mode: network, Address: address, Gateway: gateway, VLANID: vlan}
			if net.Mode == "" && address != "" {
				net.Mode = task.NetworkStatic
			}
			for _, s := range strings.Split(dns, ",") {
				if s = strings.TrimSpace(s); s != "" {
					net.DNS = append(net.DNS, s)
				}
			}
		}
		var userData string
		if userDataFile != "" {
			b, err := os.ReadFile(userDataFile)
			if err != nil {
				return usagef("--user-data: %v", err)
			}
			userData = string(b)
		}
		reqs := make([]task.CreateRequest, len(macs))
		for i, mac := range macs {
			reqs[i] = task.CreateRequest{RegionID: region, TargetMAC: mac, OSType: osType, OSVersion: osVersion,
				DiskLayout: disk, NetworkConfig: network, Tags: tm, Network: net, Hostname: hostname,
				SSHKeys: sshKeys, RootPasswordHash: passwordHash, UserData: userData}
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		if len(reqs) == 1 {
			cr, err := c.Create(ctx, reqs[0])
			if err != nil {
				return err
			}
			if a.g.output == "json" {
				return a.json(cr)
			}
			return a.table([]string{"TASK ID", "MAC", "STATUS", "REVISION"},
				[][]string{{cr.TaskID, macs[0], string(cr.Status), strconv.FormatInt(cr.Revision, 10)}})
		}
		res, err := c.CreateBatch(ctx, reqs)
		if err != nil {
			return err
		}
		return a.batchResult(macs, res)
	}
}

// batchResult prints a batch create's items and fails with the first
// failed item's error, if any.
func (a *app) batchResult(macs []string, res *client.BatchResult) error {
	type item struct {
		Index     int             `json:"index"`
		TargetMAC string          `json:"target_mac"`
		Task      *client.Created `json:"task,omitempty"`
		Error     *jsonError      `json:"error,omitempty"`
	}
	out := struct {
		Created int    `json:"created"`
		Failed  int    `json:"failed"`
		Results []item `json:"results"`
	}{Created: res.Created, Failed: res.Failed}
	var rows [][]string
	var first error
	for _, it := range res.Items {
		mac := ""
		if it.Index >= 0 && it.Index < len(macs) {
			mac = macs[it.Index]
		}
		out.Results = append(out.Results, item{Index: it.Index, TargetMAC: mac, Task: it.Task, Error: errorJSON(it.Err)})
		if it.Err != nil {
			rows = append(rows, []string{"-", mac, "-", "-", errorText(it.Err)})
			if first == nil {
				first = fmt.Errorf("%d of %d creates failed; the first, %s: %w", res.Failed, len(macs), mac, it.Err)
			}
			continue
		}
		rows = append(rows, []string{it.Task.TaskID, mac, string(it.Task.Status), strconv.FormatInt(it.Task.Revision, 10), "-"})
	}
	var err error
	if a.g.output == "json" {
		err = a.json(out)
	} else {
		err = a.table([]string{"TASK ID", "MAC", "STATUS", "REVISION", "ERROR"}, rows)
	}
	if first != nil {
		return first
	}
	return err
}

func tasksList(fs *flag.FlagSet) runner {
	var (
		f             filterFlags
		sort          string
		limit, offset int
		all           bool
	)
	f.register(fs, true)
	fs.StringVar(&sort, "sort", "", "order: -created_at (newest first, the default), created_at, status, -status")
	fs.IntVar(&limit, "limit", 0, "page size (server default 100, at most 1000)")
	fs.IntVar(&offset, "offset", 0, "skip this many tasks of the ordered result")
	fs.BoolVar(&all, "all", false, "every matching task, page after page (oldest first unless --sort)")
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		sts, err := f.statusList()
		if err != nil {
			return err
		}
		tags, err := tagMap("tag", f.tags)
		if err != nil {
			return err
		}
		opts := client.ListOptions{RegionID: f.region, Statuses: sts, MAC: f.mac, MACPrefix: f.macPrefix, OSType: f.osType,
			OSVersion: f.osVersion, Tags: tags, CreatedBy: f.createdBy, Sort: task.Sort(sort), Limit: limit, Offset: offset}
		c, err := a.client()
		if err != nil {
			return err
		}
		var page client.Page
		if all {
			page.Tasks, err = c.ListAll(ctx, opts)
			page.Total, page.Limit, page.Offset = len(page.Tasks), len(page.Tasks), offset
		} else {
			var p *client.Page
			p, err = c.List(ctx, opts)
			if p != nil {
				page = *p
			}
		}
		if err != nil {
			return err
		}
		entries := make([]listEntry, len(page.Tasks))
		for i, t := range page.Tasks {
			entries[i] = entry(t)
		}
		if a.g.output == "json" {
			return a.json(struct {
				Tasks  []listEntry `json:"tasks"`
				Total  int         `json:"total"`
				Limit  int         `json:"limit"`
				Offset int         `json:"offset"`
			}{entries, page.Total, page.Limit, page.Offset})
		}
		now := time.Now()
		rows := make([][]string, len(entries))
		for i, e := range entries {
			rows[i] = []string{e.TaskID, e.RegionID, e.TargetMAC.String(), e.OSType + " " + e.OSVersion, string(e.Status),
				progressText(e.Status, e.Progress), age(now, e.CreatedAt), orDash(e.CreatedBy)}
		}
		if err := a.table([]string{"TASK ID", "REGION", "MAC", "OS", "STATUS", "PROGRESS", "AGE", "CREATED BY"}, rows); err != nil {
			return err
		}
		if shown := page.Offset + len(entries); shown < page.Total {
			fmt.Fprintf(a.stderr, "(%d-%d of %d tasks: --offset %d or --all for more)\n", page.Offset+1, shown, page.Total, shown)
		}
		return nil
	}
}

func tasksGet(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one task ID")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		t, err := c.Get(ctx, args[0])
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(t)
		}
		return a.taskDetails(t)
	}
}

// networkText sums up a task's network: the mode, and the static
// address, gateway, name servers, VLAN and bond where given.
func networkText(m task.Metadata) string {
	n := m.EffectiveNetwork()
	parts := []string{orDash(n.Mode)}
	if n.Address != "" {
		parts = append(parts, n.Address)
	}
	if n.Gateway != "" {
		parts = append(parts, "via "+n.Gateway)
	}
	if len(n.DNS) > 0 {
		parts = append(parts, "DNS "+strings.Join(n.DNS, ","))
	}
	if n.VLANID != 0 {
		parts = append(parts, "VLAN "+strconv.Itoa(n.VLANID))
	}
	if b := n.Bond; b != nil {
		parts = append(parts, fmt.Sprintf("bond %s (%s, %s)", b.Name, strings.Join(b.Interfaces, ","), b.Mode))
	}
	return strings.Join(parts, " ")
}

// taskDetails prints one task for a person.
func (a *app) taskDetails(t *task.Task) error {
	m := t.Metadata
	now := time.Now()
	kv := [][]string{
		{"Task:", t.ID},
		{"Status:", fmt.Sprintf("%s (revision %d)", t.Status, t.Revision)},
		{"Region:", m.RegionID},
		{"MAC:", m.TargetMAC.String()},
		{"OS:", m.OSType + " " + m.OSVersion},
		{"Disk layout:", orDash(m.DiskLayout)},
		{"Network:", networkText(m)},
		{"Created:", fmt.Sprintf("%s (%s ago) by %s", m.CreatedAt.Format(time.RFC3339), age(now, m.CreatedAt), orDash(m.CreatedBy))},
		{"Tags:", tagsText(m.Tags)},
	}
	if h := m.EffectiveHostname(); h != "" {
		kv = append(kv, []string{"Hostname:", h})
	}
	if k := m.SSHAuthorizedKeys(); len(k) > 0 {
		kv = append(kv, []string{"SSH keys:", strconv.Itoa(len(k))})
	}
	if m.RootPasswordHash != "" {
		kv = append(kv, []string{"Root password:", "set (hashed)"})
	}
	if m.UserData != "" {
		kv = append(kv, []string{"User-data:", fmt.Sprintf("%d bytes of cloud-config", len(m.UserData))})
	}
	if p := t.Progress; p != nil || t.Status == task.StatusCompleted {
		line := fmt.Sprintf("%s %3d%%", bar(percent(t.Status, p), 20), percent(t.Status, p))
		if p != nil {
			line += " " + string(p.Stage)
			if p.Message != "" {
				line += ": " + p.Message
			}
		}
		kv = append(kv, []string{"Progress:", line})
	}
	if h := t.Hardware; h != nil {
		kv = append(kv, []string{"Hardware:", fmt.Sprintf("%s, %d cores/%d threads, %d GB RAM, %d disks, %d NICs",
			orDash(h.CPU.Model), h.CPU.Cores, h.CPU.Threads, h.Memory.TotalGB, len(h.Disks), len(h.Network))})
	}
	if ap := t.Approval; ap != nil {
		var line string
		if ap.Status == "rejected" {
			line = fmt.Sprintf("rejected by %s at %s: %s", ap.RejectedBy, ap.RejectedAt.Format(time.RFC3339), ap.Reason)
		} else {
			line = fmt.Sprintf("%s by %s at %s", ap.Status, ap.ApprovedBy, ap.ApprovedAt.Format(time.RFC3339))
			if ap.Notes != "" {
				line += ": " + ap.Notes
			}
		}
		kv = append(kv, []string{"Approval:", line})
	}
	if e := t.Error; e != nil {
		kv = append(kv, []string{"Error:", fmt.Sprintf("%s in %s: %s", e.Code, orDash(e.Stage), e.Message)})
	}
	if err := a.table(nil, kv); err != nil {
		return err
	}
	if len(t.Timeline) == 0 {
		return nil
	}
	fmt.Fprintln(a.stdout, "\nTimeline:")
	rows := make([][]string, len(t.Timeline))
	for i, e := range t.Timeline {
		rows[i] = []string{"  " + e.Timestamp.Format(time.RFC3339), e.Event, orDash(string(e.Status)), orDash(e.Actor), e.Message}
	}
	return a.table([]string{"  TIME", "EVENT", "STATUS", "ACTOR", "MESSAGE"}, rows)
}

// move is one of approve, reject and cancel.
type move struct {
	verb     string // "approved"
	textFlag string // "notes" or "reason"
	textHelp string
	required bool
	single   func(ctx context.Context, c *client.Client, id, text string, opts ...client.MoveOption) (any, task.Status, int64, error)
	bulk     func(c *client.Client, ctx context.Context, sel client.Selection, text string) (*client.BulkResult, error)
}

var (
	tasksApprove = moveCommand(move{
		verb: "approved", textFlag: "notes", textHelp: "notes recorded with the approval",
		single: func(ctx context.Context, c *client.Client, id, text string, opts ...client.MoveOption) (any, task.Status, int64, error) {
			d, err := c.Approve(ctx, id, text, opts...)
			if err != nil {
				return nil, "", 0, err
			}
			return d, d.Status, d.Revision, nil
		},
		bulk: (*client.Client).BulkApprove,
	})
	tasksReject = moveCommand(move{
		verb: "rejected", textFlag: "reason", textHelp: "why the hardware is rejected (required)", required: true,
		single: func(ctx context.Context, c *client.Client, id, text string, opts ...client.MoveOption) (any, task.Status, int64, error) {
			d, err := c.Reject(ctx, id, text, opts...)
			if err != nil {
				return nil, "", 0, err
			}
			return d, d.Status, d.Revision, nil
		},
		bulk: (*client.Client).BulkReject,
	})
	tasksCancel = moveCommand(move{
		verb: "cancelled", textFlag: "reason", textHelp: "why, recorded in the timeline",
		single: func(ctx context.Context, c *client.Client, id, text string, opts ...client.MoveOption) (any, task.Status, int64, error) {
			if err := c.Cancel(ctx, id, text, opts...); err != nil {
				return nil, "", 0, err
			}
			return map[string]string{"task_id": id, "status": string(task.StatusCancelled)}, task.StatusCancelled, 0, nil
		},
		bulk: (*client.Client).BulkCancel,
	})
)

// moveCommand is approve, reject or cancel: of one task (with --revision
// for If-Match), or of several by ID or by filter in one bulk call.
func moveCommand(m move) func(fs *flag.FlagSet) runner {
	return func(fs *flag.FlagSet) runner {
		var (
			text  string
			rev   int64
			limit int
			f     filterFlags
		)
		fs.StringVar(&text, m.textFlag, "", m.textHelp)
		fs.Int64Var(&rev, "revision", -1, "act only if the task has not moved since this revision (If-Match, as the dashboard does; one ID only)")
		f.register(fs, false)
		fs.IntVar(&limit, "limit", 0, "with filter flags: at most this many tasks, oldest first (default and maximum 1000)")
		return func(ctx context.Context, a *app, ids []string) error {
			switch {
			case m.required && text == "":
				return usagef("--%s is required", m.textFlag)
			case len(ids) == 0 && f.empty():
				return usagef("give task IDs, or filter flags (--region, --status, --tag, ...) to select tasks")
			case len(ids) > 0 && !f.empty():
				return usagef("give task IDs or filter flags, not both")
			case rev >= 0 && len(ids) != 1:
				return usagef("--revision applies to one task ID")
			case limit != 0 && len(ids) > 0:
				return usagef("--limit applies to filter flags")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if len(ids) == 1 {
				var opts []client.MoveOption
				if rev >= 0 {
					opts = append(opts, client.IfMatch(rev))
				}
				out, st, newRev, err := m.single(ctx, c, ids[0], text, opts...)
				if err != nil {
					return err
				}
				if a.g.output == "json" {
					return a.json(out)
				}
				revText := "-"
				if newRev > 0 {
					revText = strconv.FormatInt(newRev, 10)
				}
				return a.table([]string{"TASK ID", "STATUS", "REVISION"}, [][]string{{ids[0], string(st), revText}})
			}
			sel := client.ByIDs(ids...)
			if len(ids) == 0 {
				sts, err := f.statusList()
				if err != nil {
					return err
				}
				tags, err := tagMap("tag", f.tags)
				if err != nil {
					return err
				}
				sel = client.ByFilter(client.BulkFilter{RegionID: f.region, Statuses: sts, Tags: tags, MACPrefix: f.macPrefix,
					OSType: f.osType, OSVersion: f.osVersion, CreatedBy: f.createdBy})
				sel.Limit = limit
			}
			res, err := m.bulk(c, ctx, sel, text)
			if err != nil {
				return err
			}
			return a.bulkResult(m.verb, res)
		}
	}
}

// bulkResult prints a bulk move and fails with the first unmoved task's
// error, if any.
func (a *app) bulkResult(verb string, res *client.BulkResult) error {
	type failed struct {
		TaskID string     `json:"task_id"`
		Error  *jsonError `json:"error"`
	}
	out := struct {
		Matched   int            `json:"matched"`
		Truncated bool           `json:"truncated"`
		Moved     []client.Moved `json:"moved"`
		Failed    []failed       `json:"failed"`
	}{Matched: res.Matched, Truncated: res.Truncated, Moved: res.Moved, Failed: []failed{}}
	if out.Moved == nil {
		out.Moved = []client.Moved{}
	}
	var rows [][]string
	for _, mv := range res.Moved {
		rows = append(rows, []string{mv.TaskID, string(mv.Status), strconv.FormatInt(mv.Revision, 10), "-"})
	}
	var first error
	for _, f := range res.Failed {
		out.Failed = append(out.Failed, failed{f.TaskID, errorJSON(f.Err)})
		rows = append(rows, []string{f.TaskID, "-", "-", errorText(f.Err)})
		if first == nil {
			first = fmt.Errorf("%d of %d tasks not %s; the first, %s: %w", len(res.Failed), res.Matched, verb, f.TaskID, f.Err)
		}
	}
	var err error
	if a.g.output == "json" {
		err = a.json(out)
	} else {
		err = a.table([]string{"TASK ID", "STATUS", "REVISION", "ERROR"}, rows)
		if res.Truncated {
			fmt.Fprintf(a.stderr, "(the filter matched more than the limit: run the command again for the next ones)\n")
		}
	}
	if first != nil {
		return first
	}
	return err
}

// tasksRetry starts a new attempt of a failed or cancelled task.
func tasksRetry(fs *flag.FlagSet) runner {
	var rev int64
	fs.Int64Var(&rev, "revision", -1, "retry only if the task has not moved since this revision (If-Match)")
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("give one task ID")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		var opts []client.MoveOption
		if rev >= 0 {
			opts = append(opts, client.IfMatch(rev))
		}
		r, err := c.Retry(ctx, args[0], opts...)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			return a.json(r)
		}
		_, err = fmt.Fprintf(a.stdout, "%s retried as %s (attempt %d of %d, %s)\n", args[0], r.TaskID, r.Attempt, r.MaxAttempts, r.Status)
		return err
	}
}
