package task

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
)

// Sentinel errors of the task service. The HTTP layers map them to status
// codes in one place: ErrInvalid → 400, ErrNotFound → 404, ErrConflict and
// ErrInvalidTransition → 409.
var (
	// ErrInvalid: the request is malformed; a *ValidationError names the
	// field. Nothing was written.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: no such task.
	ErrNotFound = errors.New("task not found")
	// ErrConflict: the task changed under the caller (another writer won),
	// or the MAC already has an active task (*ActiveTaskError). Re-read and
	// decide again.
	ErrConflict = errors.New("conflict")
)

// ValidationError names the field that failed validation.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrInvalid, e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ActiveTaskError: the machine already has an active task.
type ActiveTaskError struct {
	MAC    lpmos.MAC
	TaskID string
}

func (e *ActiveTaskError) Error() string {
	return fmt.Sprintf("%v: machine %s already has active task %s", ErrConflict, e.MAC, e.TaskID)
}

// Unwrap makes errors.Is(err, ErrConflict) hold.
func (e *ActiveTaskError) Unwrap() error { return ErrConflict }

// ExistsError: a create named a task ID (CreateRequest.ID) that is
// already taken; Task is that task as it is now. An idempotent create
// that is repeated gets it and compares (SameRequest).
type ExistsError struct {
	Task *Task
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("%v: task %s already exists", ErrConflict, e.Task.ID)
}

// Unwrap makes errors.Is(err, ErrConflict) hold.
func (e *ExistsError) Unwrap() error { return ErrConflict }

// Metadata is what the operator asked for; written once at creation.
type Metadata struct {
	ID            string    `json:"id"`
	RegionID      string    `json:"region_id"`
	TargetMAC     lpmos.MAC `json:"target_mac"`
	OSType        string    `json:"os_type"`
	OSVersion     string    `json:"os_version"`
	DiskLayout    string    `json:"disk_layout"`
	NetworkConfig string    `json:"network_config"`
	// Network, Hostname, SSHKeys, RootPasswordHash and UserData are the
	// per-machine configuration (CreateRequest); empty in tasks created
	// without it or before it existed: read them through
	// EffectiveNetwork, EffectiveHostname and SSHAuthorizedKeys, which
	// fall back to NetworkConfig and the tags.
	Network          *Network          `json:"network,omitempty"`
	Hostname         string            `json:"hostname,omitempty"`
	SSHKeys          []string          `json:"ssh_keys,omitempty"`
	RootPasswordHash string            `json:"root_password_hash,omitempty"`
	UserData         string            `json:"user_data,omitempty"`
	CreatedAt        time.Time         `json:"created_at"`
	CreatedBy        string            `json:"created_by"`
	Tags             map[string]string `json:"tags,omitempty"`
	// RetryOf is the ID of the attempt this task retries (Service.Retry);
	// empty for a first attempt.
	RetryOf string `json:"retry_of,omitempty"`
	// Attempt numbers the attempts at one spec: 1 for a fresh task, one
	// more for each retry. Tasks created before attempts were counted
	// have none (Task.Attempt reads that as 1).
	Attempt int `json:"attempt,omitempty"`
	// MaxAttempts is the most attempts the task's chain may make, fixed
	// when its first attempt was created (Config.MaxAttempts) and handed
	// down to its retries, so that whoever fails a task (a region) knows
	// whether it was the last one without the control plane's
	// configuration.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// TraceParent is the W3C trace context (a traceparent value) of the
	// task's root span, when the service that created it traces
	// (Config.TracerProvider): the spans of the task's later moves, in
	// the control plane, its region and its agent's calls, join that
	// trace. Empty with tracing off. A retry is a trace of its own, whose
	// root links to the trace of the attempt it retries.
	TraceParent string `json:"trace_parent,omitempty"`
}

// Approval is the operator's decision on a task's hardware.
type Approval struct {
	Status     string    `json:"status"` // "approved" or "rejected"
	ApprovedBy string    `json:"approved_by,omitempty"`
	ApprovedAt time.Time `json:"approved_at,omitzero"`
	RejectedBy string    `json:"rejected_by,omitempty"`
	RejectedAt time.Time `json:"rejected_at,omitzero"`
	Notes      string    `json:"notes,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

// Stage is a step of the install; the set is closed.
type Stage string

// The install stages, in order.
const (
	StagePartitioning Stage = "partitioning"
	StageDownloading  Stage = "downloading"
	StageWriting      Stage = "writing"
	StageInstalling   Stage = "installing"
	StageConfiguring  Stage = "configuring"
	StageCompleted    Stage = "completed"
)

var stages = [...]Stage{StagePartitioning, StageDownloading, StageWriting, StageInstalling, StageConfiguring, StageCompleted}

// Stages lists the install stages in order. The slice is the caller's.
func Stages() []Stage { return slices.Clone(stages[:]) }

// Valid reports whether s is one of the stages.
func (s Stage) Valid() bool { return slices.Contains(stages[:], s) }

// Progress is the install's latest progress report.
type Progress struct {
	Stage      Stage          `json:"stage"`
	Percentage int            `json:"percentage"`
	Message    string         `json:"message,omitempty"`
	Details    map[string]any `json:"details,omitempty"`
	UpdatedAt  time.Time      `json:"updated_at"`
}

// ErrorInfo says why a task failed.
type ErrorInfo struct {
	// Code is a short machine-readable reason, e.g. "checksum_mismatch",
	// "timeout", "agent_error".
	Code string `json:"code"`
	// Stage is the status or install stage the task failed in.
	Stage      string    `json:"stage,omitempty"`
	Message    string    `json:"message"`
	OccurredAt time.Time `json:"occurred_at"`
}

// TimelineEntry is one line of a task's history.
type TimelineEntry struct {
	Timestamp time.Time `json:"timestamp"`
	Event     string    `json:"event"`            // an Event, TimelineCreated or TimelineStageChanged
	Status    Status    `json:"status,omitempty"` // the status after the event
	Stage     Stage     `json:"stage,omitempty"`  // for stage changes
	Actor     string    `json:"actor,omitempty"`  // who caused it
	Message   string    `json:"message,omitempty"`
	// Source is the network address the event came from, where the
	// region knows it: the agent's hardware report, refused requests.
	Source string `json:"source,omitempty"`
	// RetriedAs names the task that retries this one (TimelineRetried).
	RetriedAs string `json:"retried_as,omitempty"`
}

// Task is the assembled view of a task's keys.
type Task struct {
	ID     string `json:"task_id"`
	Status Status `json:"status"`
	// Revision is the store revision of the last status change: pass it
	// back with ExpectRevision to act only if nothing moved meanwhile.
	Revision int64           `json:"revision"`
	Metadata Metadata        `json:"metadata"`
	Hardware *hardware.Info  `json:"hardware,omitempty"`
	Approval *Approval       `json:"approval,omitempty"`
	Progress *Progress       `json:"progress,omitempty"`
	Error    *ErrorInfo      `json:"error,omitempty"`
	Logs     string          `json:"logs,omitempty"`
	Timeline []TimelineEntry `json:"timeline"`
}

// Attempt is the task's attempt number (Metadata.Attempt; 1 if unset).
func (t *Task) Attempt() int { return max(t.Metadata.Attempt, 1) }

// MaxAttempts is the most attempts the task's chain may make
// (Metadata.MaxAttempts; DefaultMaxAttempts if unset).
func (t *Task) MaxAttempts() int {
	if t.Metadata.MaxAttempts > 0 {
		return t.Metadata.MaxAttempts
	}
	return DefaultMaxAttempts
}

// RetriedAs is the ID of the task that retries this one, or "".
func (t *Task) RetriedAs() string {
	for _, e := range t.Timeline {
		if e.Event == TimelineRetried {
			return e.RetriedAs
		}
	}
	return ""
}

// FailedAt is when a failed task failed: its error's time, else its last
// timeline entry of event failed. Zero for a task that has not failed.
func (t *Task) FailedAt() time.Time {
	if t.Status != StatusFailed {
		return time.Time{}
	}
	if t.Error != nil && !t.Error.OccurredAt.IsZero() {
		return t.Error.OccurredAt
	}
	for i := len(t.Timeline) - 1; i >= 0; i-- {
		if t.Timeline[i].Event == string(EventFailed) {
			return t.Timeline[i].Timestamp
		}
	}
	return time.Time{}
}

// DefaultMaxAttempts is Config.MaxAttempts' default.
const DefaultMaxAttempts = 3

// MaxMaxAttempts bounds Config.MaxAttempts.
const MaxMaxAttempts = 100

// DeadTask is the dead-letter record of a task that failed on its last
// allowed attempt (DLQKey(DLQTasks, id)): enough to investigate after
// the task itself was purged.
type DeadTask struct {
	TaskID    string    `json:"task_id"`
	RegionID  string    `json:"region_id"`
	TargetMAC lpmos.MAC `json:"target_mac"`
	OSType    string    `json:"os_type"`
	OSVersion string    `json:"os_version"`
	// Attempts is how many attempts the chain made (this one's number),
	// MaxAttempts how many it was allowed; RetryOf the previous one.
	Attempts    int             `json:"attempts"`
	MaxAttempts int             `json:"max_attempts"`
	RetryOf     string          `json:"retry_of,omitempty"`
	Error       ErrorInfo       `json:"error"`
	Timeline    []TimelineEntry `json:"timeline"`
	DeadAt      time.Time       `json:"dead_at"`
}

// Why a retry was refused (RetryError.Reason); the HTTP API answers
// 409 with the reason as its error code.
const (
	// RetryNotRetryable: the task is neither failed nor cancelled.
	RetryNotRetryable = "not_retryable"
	// RetryAlreadyRetried: the task was retried already (by someone
	// else, or a retry that raced this one); RetryError.TaskID names the
	// retry.
	RetryAlreadyRetried = "already_retried"
	// RetryAttemptsExhausted: the task was its chain's last allowed
	// attempt.
	RetryAttemptsExhausted = "attempts_exhausted"
	// RetryActiveTask: the machine has an active task already
	// (RetryError.TaskID); one active task per MAC.
	RetryActiveTask = "active_task"
)

// RetryError says why Service.Retry refused. It wraps ErrConflict (and,
// for RetryActiveTask, the *ActiveTaskError).
type RetryError struct {
	Reason string
	// TaskID names the task in the way: the retry that exists already,
	// or the machine's active task.
	TaskID  string
	Message string
	err     error
}

func (e *RetryError) Error() string { return fmt.Sprintf("%v: %s", ErrConflict, e.Message) }

// Unwrap makes errors.Is(err, ErrConflict) hold.
func (e *RetryError) Unwrap() error {
	if e.err != nil {
		return e.err
	}
	return ErrConflict
}

// LastActivity is when the task last moved: its newest timeline entry or
// progress report. A region's status timeouts count from it. Refused
// requests (TimelineRefused) are not activity: anyone can cause them, and
// they must not keep a stuck task from timing out.
func (t *Task) LastActivity() time.Time {
	tl := t.Timeline
	for len(tl) > 0 && tl[len(tl)-1].Event == TimelineRefused {
		tl = tl[:len(tl)-1]
	}
	return newest(tl, t.Progress)
}

// newest is the time of the newest of a timeline's last entry and a
// progress report.
func newest(timeline []TimelineEntry, p *Progress) time.Time {
	var at time.Time
	if n := len(timeline); n > 0 {
		at = timeline[n-1].Timestamp
	}
	if p != nil && p.UpdatedAt.After(at) {
		at = p.UpdatedAt
	}
	return at
}

// CreateRequest is what an operator asks for. Strings are validated by the
// service, so that bad input yields a *ValidationError naming the field.
type CreateRequest struct {
	RegionID      string            `json:"region_id"`
	TargetMAC     string            `json:"target_mac"`
	OSType        string            `json:"os_type"`
	OSVersion     string            `json:"os_version"`
	DiskLayout    string            `json:"disk_layout,omitempty"`
	NetworkConfig string            `json:"network_config,omitempty"`
	Tags          map[string]string `json:"tags,omitempty"`
	// Network is the machine's network (mode, static address, gateway,
	// DNS, VLAN, bond); nil means network_config's mode alone.
	Network *Network `json:"network,omitempty"`
	// Hostname is the installed system's host name (lpmos.ValidateHostname);
	// the hostname tag still works, and must agree when both are given.
	Hostname string `json:"hostname,omitempty"`
	// SSHKeys are authorized_keys lines for root, at most MaxSSHKeys of
	// MaxSSHKeyLen bytes; the ssh_key tag's key is added to them.
	SSHKeys []string `json:"ssh_keys,omitempty"`
	// RootPasswordHash is root's password as a crypt(3) hash
	// (lpmos.ValidatePasswordHash); empty leaves root's password locked.
	// Never logged.
	RootPasswordHash string `json:"root_password_hash,omitempty"`
	// UserData is the operator's cloud-config (CheckUserData), merged into
	// the cloud-init user-data and autoinstall user-data LPMOS writes.
	UserData string `json:"user_data,omitempty"`
	// CreatedBy is the authenticated caller, set by the API layer, never
	// taken from the request body.
	CreatedBy string `json:"-"`
	// ID, when set, is the new task's ID instead of a random one (a valid
	// task ID, see lpmos.ValidateTaskID). The API layer derives it from an
	// Idempotency-Key, so that a repeated create finds the task the first
	// one made (an *ExistsError) instead of making a second. Never taken
	// from the request body.
	ID string `json:"-"`
}

// Tags the installers read: the machine's hostname and one authorized_keys
// line for root. They are checked when the task is created
// (lpmos.ValidateHostname, lpmos.ValidateSSHAuthorizedKey); empty means
// none (the region's default hostname, no key).
const (
	TagHostname = "hostname"
	TagSSHKey   = "ssh_key"
)

// Limits on operator input.
const (
	MaxTags        = 32
	MaxTagKeyLen   = 63
	MaxTagValueLen = 256
	MaxTextLen     = 1024 // notes, reasons, messages
	MaxActorLen    = 256
	MaxDetails     = 32
)

var (
	osTypeRe     = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	osVersionRe  = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$`)
	tagKeyRe     = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$`)
	diskDeviceRe = regexp.MustCompile(`^/dev/[A-Za-z0-9][A-Za-z0-9/_.-]{0,62}$`)
)

// Disk layouts: "auto" (the installer picks the smallest suitable disk), or
// a device path to install onto.
const DiskLayoutAuto = "auto"

// Network configurations understood by installers.
const (
	NetworkDHCP   = "dhcp"
	NetworkStatic = "static"
)

var osFamilies = [...]string{"debian", "ubuntu", "rocky", "almalinux", "centos", "rhel", "fedora", "flatcar", "custom"}

// OSFamilies are the operating systems LPMOS knows how to install by
// default; a region's capabilities may narrow or extend this at creation
// through Config.ValidateOS. The slice is the caller's.
func OSFamilies() []string { return slices.Clone(osFamilies[:]) }

// checkText checks free text a person wrote or reads: notes, reasons,
// messages. Newline and tab are allowed; other control characters and
// bidirectional overrides are not (lpmos.ValidateText).
func checkText(field, s string, max int) error {
	return checkString(field, s, max, true)
}

// checkLine checks a single-line value: tags, names, codes.
func checkLine(field, s string, max int) error {
	return checkString(field, s, max, false)
}

func checkString(field, s string, max int, multiline bool) error {
	if len(s) > max {
		return invalid(field, "longer than %d bytes", max)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "not valid UTF-8")
	}
	if err := lpmos.ValidateText(s, multiline); err != nil {
		return invalid(field, "contains control or bidirectional formatting characters")
	}
	return nil
}

func checkActor(by string) error {
	if strings.TrimSpace(by) == "" {
		return invalid("actor", "is required")
	}
	return checkLine("actor", by, MaxActorLen)
}

// normalize validates a create request and fills its defaults.
// SameAs reports whether t is what this request creates: same region,
// machine, OS, disk layout, network configuration and tags (defaults
// applied), whoever made it and whatever happened to it since. A repeated
// idempotent create must be the same request as the first.
func (r CreateRequest) SameAs(t *Task) bool {
	mac, err := r.normalize()
	if err != nil {
		return false
	}
	m := t.Metadata
	return r.RegionID == m.RegionID && mac == m.TargetMAC && r.OSType == m.OSType &&
		r.OSVersion == m.OSVersion && r.DiskLayout == m.DiskLayout &&
		r.NetworkConfig == m.NetworkConfig && maps.Equal(r.Tags, m.Tags) &&
		reflect.DeepEqual(r.Network, m.Network) && r.Hostname == m.Hostname &&
		slices.Equal(r.SSHKeys, m.SSHKeys) && r.RootPasswordHash == m.RootPasswordHash &&
		r.UserData == m.UserData
}

func (r *CreateRequest) normalize() (lpmos.MAC, error) {
	if r.RegionID == "" {
		return lpmos.MAC{}, invalid("region_id", "is required")
	}
	if err := lpmos.ValidateRegionID(r.RegionID); err != nil {
		return lpmos.MAC{}, invalid("region_id", "%v", err)
	}
	if r.TargetMAC == "" {
		return lpmos.MAC{}, invalid("target_mac", "is required")
	}
	mac, err := lpmos.ParseMAC(r.TargetMAC)
	if err != nil {
		return lpmos.MAC{}, invalid("target_mac", "%v", err)
	}
	if !osTypeRe.MatchString(r.OSType) {
		return mac, invalid("os_type", "%q is not an OS type (lowercase letters, digits, '-')", truncate(r.OSType))
	}
	if !osVersionRe.MatchString(r.OSVersion) {
		return mac, invalid("os_version", "%q is not a version", truncate(r.OSVersion))
	}
	if r.DiskLayout == "" {
		r.DiskLayout = DiskLayoutAuto
	}
	if r.DiskLayout != DiskLayoutAuto && (!diskDeviceRe.MatchString(r.DiskLayout) || strings.Contains(r.DiskLayout, "..")) {
		return mac, invalid("disk_layout", "%q is neither %q nor a /dev/ path", truncate(r.DiskLayout), DiskLayoutAuto)
	}
	if len(r.Tags) > MaxTags {
		return mac, invalid("tags", "%d tags, at most %d allowed", len(r.Tags), MaxTags)
	}
	for k, v := range r.Tags {
		if !tagKeyRe.MatchString(k) {
			return mac, invalid("tags", "key %q is not a valid tag name", truncate(k))
		}
		if err := checkLine("tags."+k, v, MaxTagValueLen); err != nil {
			return mac, err
		}
	}
	// Installers write these into the machine's configuration; a bad one
	// found only at boot would fail an install an operator already
	// approved. Empty means the default, as the region reads it.
	if h := r.Tags[TagHostname]; h != "" {
		if err := lpmos.ValidateHostname(h); err != nil {
			return mac, invalid("tags."+TagHostname, "%v", err)
		}
	}
	if k := r.Tags[TagSSHKey]; k != "" {
		if err := lpmos.ValidateSSHAuthorizedKey(k); err != nil {
			return mac, invalid("tags."+TagSSHKey, "%v", err)
		}
	}
	if err := r.normalizeMachine(); err != nil {
		return mac, err
	}
	if err := checkActor(r.CreatedBy); err != nil {
		return mac, err
	}
	return mac, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Validate checks a progress report from an agent, as ReportProgress
// does before it writes: a caller that holds a report back (the region
// throttles them) can refuse a bad one at once.
func (p *Progress) Validate() error {
	if !p.Stage.Valid() {
		return invalid("stage", "unknown stage %q", truncate(string(p.Stage)))
	}
	if p.Percentage < 0 || p.Percentage > 100 {
		return invalid("percentage", "%d is not within 0..100", p.Percentage)
	}
	if err := checkText("message", p.Message, MaxTextLen); err != nil {
		return err
	}
	if len(p.Details) > MaxDetails {
		return invalid("details", "%d entries, at most %d allowed", len(p.Details), MaxDetails)
	}
	for k, v := range p.Details {
		if err := checkLine("details key", k, MaxTagKeyLen); err != nil {
			return err
		}
		switch v := v.(type) {
		case string:
			if err := checkText("details."+k, v, MaxTagValueLen); err != nil {
				return err
			}
		case float64, int, int64, bool, nil:
		default:
			return invalid("details."+k, "must be a string, number or boolean")
		}
	}
	return nil
}

func (e *ErrorInfo) validate() error {
	if e.Code == "" {
		return invalid("error.code", "is required")
	}
	if err := checkLine("error.code", e.Code, 64); err != nil {
		return err
	}
	if err := checkLine("error.stage", e.Stage, 64); err != nil {
		return err
	}
	return checkText("error.message", e.Message, MaxTextLen)
}
