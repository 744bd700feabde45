package task

import (
	"errors"
	"fmt"
	"slices"
)

// Status is where a task is in its life. The set is closed: the constants
// below are all there is.
type Status string

// The statuses, in the order a successful task goes through them, then the
// other terminal ones.
const (
	StatusPending         Status = "pending"          // created, waiting for its region
	StatusReady           Status = "ready"            // region prepared boot files and script
	StatusBooting         Status = "booting"          // machine fetched its iPXE script
	StatusPendingApproval Status = "pending_approval" // agent reported hardware
	StatusApproved        Status = "approved"         // operator approved the install
	StatusInstalling      Status = "installing"       // agent is installing, with progress
	StatusCompleted       Status = "completed"        // installed; machine boots from disk
	StatusFailed          Status = "failed"           // an error or a timeout ended it
	StatusRejected        Status = "rejected"         // operator rejected the hardware
	StatusCancelled       Status = "cancelled"        // operator cancelled it
)

var statuses = [...]Status{
	StatusPending, StatusReady, StatusBooting, StatusPendingApproval, StatusApproved,
	StatusInstalling, StatusCompleted, StatusFailed, StatusRejected, StatusCancelled,
}

// Statuses lists every status, in lifecycle order. The slice is the
// caller's: changing it changes nothing here.
func Statuses() []Status { return slices.Clone(statuses[:]) }

// Valid reports whether s is one of the statuses.
func (s Status) Valid() bool { return slices.Contains(statuses[:], s) }

// Terminal reports whether the task is over: nothing moves it any more and
// its machine is free for a new task.
func (s Status) Terminal() bool {
	switch s {
	case StatusCompleted, StatusFailed, StatusRejected, StatusCancelled:
		return true
	}
	return false
}

// ParseStatus validates a status given as text (a query parameter, say).
func ParseStatus(s string) (Status, error) {
	if st := Status(s); st.Valid() {
		return st, nil
	}
	return "", fmt.Errorf("%w: unknown status %q", ErrInvalid, s)
}

// Event is something that happens to a task and may move it to another
// status. The set is closed.
type Event string

// The events. Timeline entries use the same names.
const (
	EventPrepared         Event = "prepared"          // region is ready to boot the machine
	EventBootStarted      Event = "boot_started"      // machine fetched its iPXE script
	EventHardwareReported Event = "hardware_reported" // agent reported the hardware
	EventApproved         Event = "approved"          // operator approved
	EventRejected         Event = "rejected"          // operator rejected
	EventInstallStarted   Event = "install_started"   // agent began installing
	EventCompleted        Event = "completed"         // agent finished installing
	EventFailed           Event = "failed"            // error or timeout
	EventCancelled        Event = "cancelled"         // operator cancelled
)

var events = [...]Event{
	EventPrepared, EventBootStarted, EventHardwareReported, EventApproved, EventRejected,
	EventInstallStarted, EventCompleted, EventFailed, EventCancelled,
}

// Events lists every event. The slice is the caller's.
func Events() []Event { return slices.Clone(events[:]) }

// Timeline entries that are not transitions.
const (
	TimelineCreated      = "task_created"  // the task was created
	TimelineStageChanged = "stage_changed" // the install moved to a new stage
	// TimelineFirstBoot: the installed system booted and phoned home
	// (recorded once, on a completed task; see Service.RecordFirstBoot).
	TimelineFirstBoot = "first_boot"
	// TimelineRefused: the region refused a request made for the task's
	// machine (a boot script fetch or an agent call from an address its
	// token is not bound to); Source says from where. Bounded per task by
	// MaxRefusals (see Service.RecordRefusal).
	TimelineRefused = "refused"
	// TimelineRetried: an ended task was retried as a new task
	// (TimelineEntry.RetriedAs; see Service.Retry). At most one per task.
	TimelineRetried = "retried"
	// TimelinePower: the region drove the machine's BMC (power on, off,
	// next boot device) for the task, or failed to; Message says what
	// and how it went. Bounded per task by MaxPowerEntries (see
	// Service.RecordPower).
	TimelinePower = "power"
	// TimelineRules: auto-approval rules applied to the task's hardware
	// report and none approved it; Message gives each rule's reasons.
	TimelineRules = "approval_rules"
)

// transitions is the whole state machine: (status, event) → next status.
// A pair that is not here is illegal. Failure and cancellation are allowed
// from every non-terminal status and are added in init.
var transitions = map[Status]map[Event]Status{
	StatusPending:         {EventPrepared: StatusReady},
	StatusReady:           {EventBootStarted: StatusBooting},
	StatusBooting:         {EventHardwareReported: StatusPendingApproval},
	StatusPendingApproval: {EventApproved: StatusApproved, EventRejected: StatusRejected},
	StatusApproved:        {EventInstallStarted: StatusInstalling},
	StatusInstalling:      {EventCompleted: StatusCompleted},
	StatusCompleted:       {},
	StatusFailed:          {},
	StatusRejected:        {},
	StatusCancelled:       {},
}

func init() {
	for st, evs := range transitions {
		if !st.Terminal() {
			evs[EventFailed] = StatusFailed
			evs[EventCancelled] = StatusCancelled
		}
	}
}

// ErrInvalidTransition is returned (wrapped in a *TransitionError) for an
// event that is illegal in the task's current status.
var ErrInvalidTransition = errors.New("invalid transition")

// TransitionError says which move was illegal.
type TransitionError struct {
	From  Status
	Event Event
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("%v: %q is not allowed in status %q", ErrInvalidTransition, e.Event, e.From)
}

// Unwrap makes errors.Is(err, ErrInvalidTransition) hold.
func (e *TransitionError) Unwrap() error { return ErrInvalidTransition }

// Apply returns the status that event moves a task in status from to, or a
// *TransitionError. It is pure: the service calls it inside its
// compare-and-swap, and tests cover every pair.
func Apply(from Status, ev Event) (Status, error) {
	if next, ok := transitions[from][ev]; ok {
		return next, nil
	}
	return "", &TransitionError{From: from, Event: ev}
}
