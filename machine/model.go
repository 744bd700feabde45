package machine

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
)

// Sentinel errors of the machine service. The control plane maps them to
// status codes: ErrInvalid → 400, ErrNotFound → 404, ErrConflict → 409.
var (
	// ErrInvalid: the request is malformed; a *ValidationError names the
	// field. Nothing was written.
	ErrInvalid = errors.New("invalid machine request")
	// ErrNotFound: no record for that MAC.
	ErrNotFound = errors.New("machine not found")
	// ErrConflict: the record exists already (Create), or another writer
	// kept changing it.
	ErrConflict = errors.New("machine conflict")
	// ErrNoBMC: a power action for a machine without a BMC.
	ErrNoBMC = errors.New("machine has no BMC")
	// ErrFenced: the service's Fence refused the write.
	ErrFenced = errors.New("machine: fenced: this writer may no longer write")
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

// The BMC drivers a record may name.
const (
	DriverIPMI    = "ipmi"
	DriverRedfish = "redfish"
)

// Limits on operator input.
const (
	MaxTags         = 32
	MaxTagKeyLen    = 63
	MaxTagValueLen  = 256
	MaxUsernameLen  = 64
	MaxPasswordLen  = 128
	MaxCACertLen    = 16 << 10
	MaxBMCAddrLen   = 255
	MaxMachinesPage = 500
)

var tagKeyRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,62})$`)

// BMC is a machine's baseboard management controller as the API shows it:
// never its password, only whether one is set.
type BMC struct {
	// Driver is DriverIPMI (IPMI v2.0 RMCP+ over LAN) or DriverRedfish.
	Driver string `json:"driver"`
	// Address is host or host:port (IPMI default port 623, Redfish 443).
	Address  string `json:"address"`
	Username string `json:"username,omitempty"`
	// HasPassword says a sealed password is stored.
	HasPassword bool `json:"has_password"`
	// CertSHA256 pins a Redfish BMC's certificate (SHA-256 of its DER, in
	// hex); CACert (PEM) verifies it instead. One of them is needed for
	// Redfish: BMCs ship self-signed certificates.
	CertSHA256 string `json:"cert_sha256,omitempty"`
	CACert     string `json:"ca_cert,omitempty"`
}

// storedBMC is the BMC as the store holds it: with the sealed password.
type storedBMC struct {
	BMC
	PasswordSealed string `json:"password_sealed,omitempty"`
}

// spec is the operator-owned key.
type spec struct {
	Region    string             `json:"region,omitempty"`
	Tags      map[string]string  `json:"tags,omitempty"`
	BMC       *storedBMC         `json:"bmc,omitempty"`
	Expected  *hardware.Expected `json:"expected,omitempty"`
	CreatedAt time.Time          `json:"created_at"`
	CreatedBy string             `json:"created_by,omitempty"`
	UpdatedAt time.Time          `json:"updated_at"`
	UpdatedBy string             `json:"updated_by,omitempty"`
}

// Report is what a region learned from the machine's last hardware report.
type Report struct {
	Hardware *hardware.Info `json:"hardware"`
	// Region whose agent API took the report.
	Region string `json:"region"`
	// Source is the network address the report came from.
	Source string `json:"source,omitempty"`
	// TaskID is the task the machine was booted for; empty in discovery
	// (inventory) mode.
	TaskID string    `json:"task_id,omitempty"`
	At     time.Time `json:"at"`
}

// The power actions and states.
const (
	PowerOn    = "on"
	PowerOff   = "off"
	PowerCycle = "cycle"
	// PowerStatus changes nothing: the region reads the BMC's power state
	// into the record (the state shown is otherwise the one read after the
	// last action).
	PowerStatus = "status"

	StateOn      = "on"
	StateOff     = "off"
	StateUnknown = "unknown"
)

// ValidPowerAction reports whether a is an action an operator may ask.
func ValidPowerAction(a string) bool {
	return a == PowerOn || a == PowerOff || a == PowerCycle || a == PowerStatus
}

// Power is the outcome of the last power action the region took, and the
// state the BMC last reported.
type Power struct {
	State     string    `json:"state"`
	Action    string    `json:"action,omitempty"`
	Actor     string    `json:"actor,omitempty"`
	OK        bool      `json:"ok"`
	Error     string    `json:"error,omitempty"`
	Attempts  int       `json:"attempts,omitempty"`
	At        time.Time `json:"at"`
	RequestID string    `json:"request_id,omitempty"`
}

// PowerRequest is an operator's power action for the machine's region to
// carry out.
type PowerRequest struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	// Region is the region whose queue holds the request.
	Region      string    `json:"region"`
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
	// ExpiresAt is when the request lapses if its region has not carried
	// it out (no process of the region runs, or it is cut off): its keys
	// are on a store lease of Config.PowerRequestTTL, and a region does
	// not carry out a request past it. Powering a machine on hours after
	// the operator asked, when a region comes back, would surprise.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// Expired reports whether a power request has lapsed at now: its region
// must not carry it out.
func (r *PowerRequest) Expired(now time.Time) bool {
	return !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt)
}

// Machine is the assembled record.
type Machine struct {
	MAC lpmos.MAC `json:"mac"`
	// Region is the operator's choice, or else the region of the last
	// report.
	Region string            `json:"region,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
	BMC    *BMC              `json:"bmc,omitempty"`
	// Expected is the hardware the operator expects the machine to have;
	// auto-approval rules with match_expected compare reports with it.
	Expected  *hardware.Expected `json:"expected,omitempty"`
	CreatedAt time.Time          `json:"created_at,omitzero"`
	CreatedBy string             `json:"created_by,omitempty"`
	UpdatedAt time.Time          `json:"updated_at,omitzero"`
	UpdatedBy string             `json:"updated_by,omitempty"`
	// Registered says an operator created or edited the record; a machine
	// known only from a report (discovered) has none.
	Registered bool `json:"registered"`
	// LastReport and LastSeen come from the last hardware report.
	LastReport *Report   `json:"last_report,omitempty"`
	LastSeen   time.Time `json:"last_seen,omitzero"`
	Power      *Power    `json:"power,omitempty"`
	// PendingPower is an operator's power action not yet carried out.
	PendingPower *PowerRequest `json:"pending_power,omitempty"`
}

// Patch changes an operator-owned part of a record; a nil field is left
// as it is. Tags replace all tags. BMC replaces the BMC, but a BMC without
// Password keeps the stored password when its driver and address are
// unchanged (changing the username or pin without retyping it);
// RemoveBMC removes it. Expected replaces the expected hardware;
// RemoveExpected removes it.
type Patch struct {
	Region         *string            `json:"region,omitempty"`
	Tags           map[string]string  `json:"tags,omitempty"`
	BMC            *BMCInput          `json:"bmc,omitempty"`
	RemoveBMC      bool               `json:"-"`
	Expected       *hardware.Expected `json:"expected,omitempty"`
	RemoveExpected bool               `json:"-"`
	// Actor is the authenticated caller, set by the API layer.
	Actor string `json:"-"`
}

// BMCInput is a BMC as the operator gives it, with the password in clear
// (sealed before it is stored).
type BMCInput struct {
	Driver     string `json:"driver"`
	Address    string `json:"address"`
	Username   string `json:"username,omitempty"`
	Password   string `json:"password,omitempty"`
	CertSHA256 string `json:"cert_sha256,omitempty"`
	CACert     string `json:"ca_cert,omitempty"`
}

// LogValue never shows the password.
func (b BMCInput) String() string {
	return fmt.Sprintf("%s://%s@%s", b.Driver, b.Username, b.Address)
}

// Validate checks a patch; it does not need the record.
func (p *Patch) Validate() error {
	if p.Region != nil && *p.Region != "" {
		if err := lpmos.ValidateRegionID(*p.Region); err != nil {
			return invalid("region", "%v", err)
		}
	}
	if err := validateTags(p.Tags); err != nil {
		return err
	}
	if p.BMC != nil {
		if err := p.BMC.Validate(); err != nil {
			return err
		}
	}
	if p.Expected != nil {
		if err := p.Expected.Validate(); err != nil {
			var he *hardware.ValidationError
			switch {
			case !errors.As(err, &he):
				return invalid("expected", "%v", err)
			case he.Field == "expected":
				return invalid("expected", "%s", he.Reason)
			default:
				return invalid("expected."+he.Field, "%s", he.Reason)
			}
		}
	}
	return nil
}

func validateTags(tags map[string]string) error {
	if len(tags) > MaxTags {
		return invalid("tags", "%d tags, at most %d allowed", len(tags), MaxTags)
	}
	for k, v := range tags {
		if !tagKeyRe.MatchString(k) {
			return invalid("tags", "key %q is not a valid tag name (lowercase letters, digits, '.', '_', '-')", trunc(k))
		}
		if len(v) > MaxTagValueLen {
			return invalid("tags."+k, "longer than %d bytes", MaxTagValueLen)
		}
		if err := lpmos.ValidateText(v, false); err != nil {
			return invalid("tags."+k, "%v", err)
		}
	}
	return nil
}

// Validate checks a BMC as given.
func (b *BMCInput) Validate() error {
	switch b.Driver {
	case DriverIPMI, DriverRedfish:
	default:
		return invalid("bmc.driver", "%q is neither %q nor %q", trunc(b.Driver), DriverIPMI, DriverRedfish)
	}
	if err := validateAddress(b.Address); err != nil {
		return invalid("bmc.address", "%v", err)
	}
	if len(b.Username) > MaxUsernameLen {
		return invalid("bmc.username", "longer than %d bytes", MaxUsernameLen)
	}
	if err := lpmos.ValidateText(b.Username, false); err != nil {
		return invalid("bmc.username", "%v", err)
	}
	if len(b.Password) > MaxPasswordLen {
		return invalid("bmc.password", "longer than %d bytes", MaxPasswordLen)
	}
	if err := lpmos.ValidateText(b.Password, false); err != nil {
		// The message must not quote the password.
		return invalid("bmc.password", "contains characters that are not allowed")
	}
	if b.Driver == DriverIPMI && len(b.Username) > 16 {
		return invalid("bmc.username", "IPMI v2.0 user names are at most 16 bytes")
	}
	if b.Driver == DriverIPMI && len(b.Password) > 20 {
		return invalid("bmc.password", "IPMI v2.0 passwords are at most 20 bytes")
	}
	if b.CertSHA256 != "" {
		fp := strings.ToLower(strings.ReplaceAll(b.CertSHA256, ":", ""))
		if raw, err := hex.DecodeString(fp); err != nil || len(raw) != 32 {
			return invalid("bmc.cert_sha256", "want the SHA-256 of the certificate: 64 hex digits, colons allowed")
		}
		b.CertSHA256 = fp
	}
	if b.CACert != "" {
		if len(b.CACert) > MaxCACertLen {
			return invalid("bmc.ca_cert", "longer than %d bytes", MaxCACertLen)
		}
		if err := checkPEM(b.CACert); err != nil {
			return invalid("bmc.ca_cert", "%v", err)
		}
	}
	if b.Driver == DriverIPMI && (b.CertSHA256 != "" || b.CACert != "") {
		return invalid("bmc.cert_sha256", "IPMI over LAN has no certificates; only Redfish takes a pin or CA")
	}
	if b.Driver == DriverRedfish && b.CertSHA256 == "" && b.CACert == "" {
		return invalid("bmc.cert_sha256", "Redfish needs the BMC's certificate pinned (cert_sha256) or a CA (ca_cert): BMCs ship self-signed certificates")
	}
	return nil
}

func checkPEM(s string) error {
	rest := []byte(s)
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q is not a CERTIFICATE", block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %v", n+1, err)
		}
		n++
	}
	if n == 0 || strings.TrimSpace(string(rest)) != "" {
		return errors.New("want one or more PEM CERTIFICATE blocks and nothing else")
	}
	return nil
}

var hostRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,253}[A-Za-z0-9])?$`)

func validateAddress(a string) error {
	if a == "" {
		return errors.New("required: host or host:port")
	}
	if len(a) > MaxBMCAddrLen {
		return fmt.Errorf("longer than %d bytes", MaxBMCAddrLen)
	}
	host := a
	if h, p, err := net.SplitHostPort(a); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q is not a port number", trunc(p))
		}
		host = h
	}
	if net.ParseIP(host) != nil || hostRe.MatchString(host) {
		return nil
	}
	return fmt.Errorf("%q is not host or host:port (no scheme, no path)", trunc(a))
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
