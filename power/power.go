package power

import (
	"context"
	"errors"
	"fmt"
)

// Errors callers can branch on, wrapped with context by the drivers.
var (
	// ErrInvalid: a BMC configuration or an argument is not valid.
	ErrInvalid = errors.New("power: invalid")
	// ErrUnreachable: the BMC did not answer (network error, timeout).
	ErrUnreachable = errors.New("power: BMC unreachable")
	// ErrAuth: the BMC refused the credentials, or (Redfish) its
	// certificate is not the trusted one.
	ErrAuth = errors.New("power: BMC authentication failed")
	// ErrUnsupported: the BMC cannot do what was asked.
	ErrUnsupported = errors.New("power: not supported by the BMC")
)

// Action is a power action. The set is closed: ActionOn, ActionOff and
// ActionCycle.
type Action string

const (
	// ActionOn switches the machine on; nothing happens if it is on.
	ActionOn Action = "on"
	// ActionOff switches the machine off at once (no graceful shutdown):
	// a machine being provisioned has nothing to save. Nothing happens if
	// it is off.
	ActionOff Action = "off"
	// ActionCycle switches the machine off and on again, so that it boots
	// anew; a machine that is off is switched on.
	ActionCycle Action = "cycle"
)

// Valid reports whether a is one of the known actions.
func (a Action) Valid() bool {
	switch a {
	case ActionOn, ActionOff, ActionCycle:
		return true
	}
	return false
}

// State is a machine's power state as its BMC reports it.
type State string

const (
	StateOn  State = "on"
	StateOff State = "off"
	// StateUnknown: the BMC answered with something else, e.g. a Redfish
	// BMC's "PoweringOn".
	StateUnknown State = "unknown"
)

// BootDevice is the device a machine boots from next.
type BootDevice string

const (
	// BootPXE: the network (PXE, or the firmware's network boot).
	BootPXE BootDevice = "pxe"
	// BootDisk: the local disk.
	BootDisk BootDevice = "disk"
)

// Valid reports whether d is one of the known boot devices.
func (d BootDevice) Valid() bool {
	return d == BootPXE || d == BootDisk
}

// Driver controls one machine through its BMC. Its methods are safe for
// concurrent use (a driver serializes its calls to the BMC); the context
// bounds each call.
type Driver interface {
	// PowerState returns the machine's power state.
	PowerState(ctx context.Context) (State, error)
	// SetPower performs a power action.
	SetPower(ctx context.Context, a Action) error
	// SetNextBoot makes the machine boot from d on its next boot only,
	// not persistently.
	SetNextBoot(ctx context.Context, d BootDevice) error
	// Close ends the session with the BMC and releases the driver's
	// connections and goroutines.
	Close() error
}

// ValidationError says which field of a BMC configuration (or which
// argument) is not valid and why. It wraps ErrInvalid.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("power: invalid %s: %s", e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

func checkAction(a Action) error {
	if !a.Valid() {
		return &ValidationError{Field: "action", Reason: fmt.Sprintf("%q is not on, off or cycle", string(a))}
	}
	return nil
}

func checkBootDevice(d BootDevice) error {
	if !d.Valid() {
		return &ValidationError{Field: "boot device", Reason: fmt.Sprintf("%q is not pxe or disk", string(d))}
	}
	return nil
}
