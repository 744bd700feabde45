package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/task"
)

func tasksWatch(fs *flag.FlagSet) runner {
	var plain bool
	fs.BoolVar(&plain, "plain", false, "print a line per change even on a terminal (the default when stdout is not one)")
	return func(ctx context.Context, a *app, ids []string) error {
		if len(ids) > client.MaxWatchTasks {
			return usagef("%d task IDs: at most %d (give none to watch every task)", len(ids), client.MaxWatchTasks)
		}
		if a.g.output == "json" {
			return usagef("tasks watch draws progress for people; scripts: lpmosctl tasks get -o json, or the client package's Watch")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		tty, width, height := isTerminal(a.stdout)
		b := &board{w: a.stdout, tty: tty && !plain, width: width, height: height, byID: map[string]*row{}}
		sub := client.Subscription{TaskIDs: ids, All: len(ids) == 0, Seen: map[string]int64{}}
		// The tasks as they are now, for their MACs and a first screen;
		// the watch then reports only what moves past these revisions.
		if sub.All {
			var active []task.Status
			for _, s := range task.Statuses() {
				if !s.Terminal() {
					active = append(active, s)
				}
			}
			ts, err := c.ListAll(ctx, client.ListOptions{Statuses: active})
			if err != nil {
				return err
			}
			for _, t := range ts {
				b.add(t)
				sub.Seen[t.ID] = t.Revision
			}
		} else {
			for _, id := range ids {
				t, err := c.Get(ctx, id)
				if err != nil {
					return err
				}
				b.add(t)
				sub.Seen[t.ID] = t.Revision
			}
		}
		b.note = "connecting"
		b.render(nil)
		w, err := c.Watch(ctx, sub)
		if err != nil {
			return err
		}
		defer w.Close()
		for {
			if !sub.All && b.allEnded() {
				b.note = "every task ended"
				b.render(nil)
				return b.outcome()
			}
			var ev client.Event
			var ok bool
			select {
			case <-ctx.Done():
			case ev, ok = <-w.Events():
			}
			if ctx.Err() != nil {
				b.note = "interrupted"
				b.render(nil)
				if sub.All {
					return nil
				}
				return errors.New("interrupted before every task ended")
			}
			if !ok {
				return w.Err()
			}
			// Take what else is waiting before drawing, so that a burst
			// is one redraw.
			changed := b.apply(ctx, c, ev)
			for more := true; more; {
				select {
				case ev, ok = <-w.Events():
					if ok {
						changed = append(changed, b.apply(ctx, c, ev)...)
					}
					more = ok
				default:
					more = false
				}
			}
			b.render(changed)
		}
	}
}

// row is one task on the board.
type row struct {
	id, mac  string
	status   task.Status
	progress *task.Progress
	errText  string
	printed  string // the line printed last, in plain mode
}

// board draws the watched tasks: on a terminal it redraws them in place
// with ANSI cursor movements; elsewhere it prints a line per change.
type board struct {
	w             io.Writer
	tty           bool
	width, height int
	rows          []*row
	byID          map[string]*row
	note          string // the connection's state
	drawn         int    // lines drawn last time, on a terminal
}

func (b *board) add(t *task.Task) *row {
	r := &row{id: t.ID, mac: t.Metadata.TargetMAC.String(), status: t.Status, progress: t.Progress}
	if t.Error != nil {
		r.errText = t.Error.Code + ": " + t.Error.Message
	}
	b.rows = append(b.rows, r)
	b.byID[t.ID] = r
	return r
}

// apply takes an event and returns the rows it changed.
func (b *board) apply(ctx context.Context, c *client.Client, ev client.Event) []*row {
	switch ev.Type {
	case client.EventLive:
		b.note = "live"
	case client.EventDisconnected:
		b.note = fmt.Sprintf("disconnected (%v), reconnecting", ev.Err)
	case client.EventStatus:
		r := b.byID[ev.TaskID]
		if r == nil {
			if ev.Status.Resync && ev.Status.Status.Terminal() {
				return nil // ended before the watch began
			}
			t, err := c.Get(ctx, ev.TaskID)
			if err != nil {
				t = &task.Task{ID: ev.TaskID}
			}
			r = b.add(t)
		}
		r.status = ev.Status.Status
		if r.status == task.StatusFailed {
			if t, err := c.Get(ctx, ev.TaskID); err == nil && t.Error != nil {
				r.errText = t.Error.Code + ": " + t.Error.Message
			}
		}
		return []*row{r}
	case client.EventProgress:
		if r := b.byID[ev.TaskID]; r != nil {
			r.progress = ev.Progress
			return []*row{r}
		}
	}
	return nil
}

func (b *board) allEnded() bool {
	for _, r := range b.rows {
		if !r.status.Terminal() {
			return false
		}
	}
	return true
}

// outcome fails unless every task completed.
func (b *board) outcome() error {
	var bad []string
	for _, r := range b.rows {
		if r.status != task.StatusCompleted {
			bad = append(bad, r.id+" "+string(r.status))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d tasks did not complete: %s", len(bad), len(b.rows), strings.Join(bad, ", "))
	}
	return nil
}

// line is a row as drawn: ID, MAC, status, bar, percentage and what the
// task is doing.
func (b *board) line(r *row) string {
	pct := percent(r.status, r.progress)
	what := ""
	switch {
	case r.status == task.StatusFailed:
		what = r.errText
	case r.status == task.StatusInstalling && r.progress != nil:
		what = string(r.progress.Stage)
		if r.progress.Message != "" {
			what += ": " + r.progress.Message
		}
	}
	s := printable(strings.TrimRight(fmt.Sprintf("%-36s  %-17s  %-16s  %s %3d%%  %s", r.id, orDash(r.mac), r.status, bar(pct, 20), pct, what), " "))
	if b.tty && b.width > 0 {
		s = truncate(s, b.width-1) // a wrapped line would break the redraw
	}
	return s
}

// render shows the changed rows: on a terminal the whole board is redrawn
// in place (changed is then ignored); elsewhere each changed row whose
// line differs from what was printed gets a line with the time (nil: every
// row, the first time).
func (b *board) render(changed []*row) {
	if !b.tty {
		if changed == nil && b.drawn == 0 {
			changed, b.drawn = b.rows, 1
		}
		now := time.Now().Format("15:04:05")
		for _, r := range changed {
			if l := b.line(r); l != r.printed {
				r.printed = l
				fmt.Fprintf(b.w, "%s %s\n", now, l)
			}
		}
		return
	}
	lines := []string{fmt.Sprintf("%-36s  %-17s  %-16s  %s", "TASK ID", "MAC", "STATUS", "PROGRESS")}
	rows := b.rows
	if room := max(1, b.height-3); len(rows) > room {
		lines = append(lines, fmt.Sprintf("(%d earlier tasks not shown)", len(rows)-room+1))
		rows = rows[len(rows)-room+1:]
	}
	for _, r := range rows {
		lines = append(lines, b.line(r))
	}
	lines = append(lines, truncate(printable(fmt.Sprintf("watching %d tasks: %s", len(b.rows), b.note)), max(b.width-1, 1)))
	var sb strings.Builder
	if b.drawn > 0 {
		fmt.Fprintf(&sb, "\x1b[%dA", b.drawn) // back to the board's first line
	}
	for _, l := range lines {
		sb.WriteString("\r\x1b[2K" + l + "\n")
	}
	sb.WriteString("\x1b[J") // clear what a longer board left below
	b.drawn = len(lines)
	_, _ = io.WriteString(b.w, sb.String())
}
