package region

import (
	"context"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/task"
)

// Log lines about a machine carry the attributes "mac" (lpmos.MAC's
// colon form) and, once the machine has a task, "task_id", so that one
// query finds everything the region said about a machine. These helpers
// build them.

// machineAttrs are the attributes of a task's machine.
func machineAttrs(t *task.Task) []any {
	return []any{"mac", t.Metadata.TargetMAC.String(), "task_id", t.ID}
}

// taskAttrs are the attributes of the machine of task id: its MAC comes
// from the region's view, or is left out for a task the view no longer
// holds.
func (r *Region) taskAttrs(id string) []any {
	if t, _, ok := r.tasks.Get(id); ok {
		return machineAttrs(t)
	}
	return []any{"task_id", id}
}

// macAttrs are the attributes of a machine known by its MAC: its task's
// ID too when it has an active one.
func (r *Region) macAttrs(mac lpmos.MAC) []any {
	if t, _, ok := r.tasks.Active(mac); ok {
		return machineAttrs(t)
	}
	return []any{"mac", mac.String()}
}

// caller records which machine an agent API request came from, once
// authAgent knows, for the log line of a request that fails.
type caller struct {
	mac    lpmos.MAC
	taskID string
}

type callerKey struct{}

func withCaller(ctx context.Context) (context.Context, *caller) {
	c := &caller{}
	return context.WithValue(ctx, callerKey{}, c), c
}

// noteCaller records the request's machine, if handle is tracking it.
func noteCaller(ctx context.Context, mac lpmos.MAC, taskID string) {
	if c, ok := ctx.Value(callerKey{}).(*caller); ok {
		c.mac, c.taskID = mac, taskID
	}
}

func (c *caller) attrs() []any {
	var a []any
	if !c.mac.IsZero() {
		a = append(a, "mac", c.mac.String())
	}
	if c.taskID != "" {
		a = append(a, "task_id", c.taskID)
	}
	return a
}
