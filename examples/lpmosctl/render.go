package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/task"
)

// json prints v as indented JSON, for scripts.
func (a *app) json(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints aligned columns under a header (nil: none), for people.
func (a *app) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	if header != nil {
		fmt.Fprintln(tw, strings.Join(header, "\t"))
	}
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = printable(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// printable replaces control characters (an escape sequence in a message
// would drive the terminal; a tab or newline would break the table) with
// "?": the API refuses most, but a table must hold whatever comes.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// truncate cuts s to at most n runes.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:max(n, 0)])
}

// listEntry is a task as a list shows it: the API's list entry, so that a
// script reads the same fields from lpmosctl as from the API.
type listEntry struct {
	TaskID    string            `json:"task_id"`
	Status    task.Status       `json:"status"`
	Revision  int64             `json:"revision"`
	RegionID  string            `json:"region_id"`
	TargetMAC lpmos.MAC         `json:"target_mac"`
	OSType    string            `json:"os_type"`
	OSVersion string            `json:"os_version"`
	CreatedAt time.Time         `json:"created_at"`
	CreatedBy string            `json:"created_by"`
	Tags      map[string]string `json:"tags,omitempty"`
	Progress  *task.Progress    `json:"progress,omitempty"`
	Error     *task.ErrorInfo   `json:"error,omitempty"`
}

func entry(t *task.Task) listEntry {
	m := t.Metadata
	return listEntry{TaskID: t.ID, Status: t.Status, Revision: t.Revision, RegionID: m.RegionID, TargetMAC: m.TargetMAC,
		OSType: m.OSType, OSVersion: m.OSVersion, CreatedAt: m.CreatedAt, CreatedBy: m.CreatedBy, Tags: m.Tags,
		Progress: t.Progress, Error: t.Error}
}

// jsonError is an error as -o json prints it: the API's error object.
type jsonError struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

func errorJSON(err error) *jsonError {
	if err == nil {
		return nil
	}
	if e, ok := client.AsError(err); ok {
		return &jsonError{Code: e.Code, Message: e.Message, Field: e.Field}
	}
	return &jsonError{Message: err.Error()}
}

// errorText is an error for a table cell: the API's message without the
// request line.
func errorText(err error) string {
	if e, ok := client.AsError(err); ok {
		s := e.Code
		if e.Field != "" {
			s += " (" + e.Field + ")"
		}
		if e.Message != "" {
			s += ": " + e.Message
		}
		return s
	}
	return err.Error()
}

// age is how long ago t was, in the largest unit that fits.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// percent is how far a task is, for a progress bar: the install's
// percentage while it installs, 100 once completed.
func percent(st task.Status, p *task.Progress) int {
	switch {
	case st == task.StatusCompleted:
		return 100
	case p != nil:
		return max(0, min(100, p.Percentage))
	}
	return 0
}

// bar is a progress bar of width cells, e.g. "[#####.....]".
func bar(pct, width int) string {
	n := pct * width / 100
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

// progressText is a task's progress for a table cell.
func progressText(st task.Status, p *task.Progress) string {
	if p == nil && st != task.StatusCompleted {
		return "-"
	}
	s := fmt.Sprintf("%d%%", percent(st, p))
	if p != nil && p.Stage != "" {
		s += " " + string(p.Stage)
	}
	return s
}

// tagsText is tags as k=v, sorted.
func tagsText(tags map[string]string) string {
	if len(tags) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(tags)) {
		parts = append(parts, k+"="+tags[k])
	}
	return strings.Join(parts, ",")
}

// orDash is s, or "-" for an empty table cell.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// terminalSize reports whether fd is a terminal and its size (80x24 if it
// does not say).
func terminalSize(fd int) (ok bool, width, height int) {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return false, 0, 0
	}
	width, height = int(ws.Col), int(ws.Row)
	if width == 0 {
		width = 80
	}
	if height == 0 {
		height = 24
	}
	return true, width, height
}
