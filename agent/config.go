package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent/httpc"
)

// ErrInvalidConfig is wrapped by ParseCmdline's and Config.validate's errors.
var ErrInvalidConfig = errors.New("invalid agent configuration")

// Config is what the agent needs to talk to its region. RegionURL, MAC,
// TaskID and Token come from the kernel command line (ParseCmdline) or
// flags; the rest has sensible zero-value defaults.
type Config struct {
	RegionURL string
	// OtherRegionURLs are the region's other processes (a region pair's
	// standby by its own address), tried in turn when the process the
	// agent talks to stops answering or answers as a standby (503
	// "standby"): lpmos.region=URL,URL2,... on the kernel line. Without
	// them a region pair needs one address (a virtual IP) in front of
	// both processes for machines in flight to survive a takeover.
	OtherRegionURLs []string
	MAC             lpmos.MAC
	TaskID          string
	Token           string
	// RegionCertSHA256, if set, pins the region's TLS certificate: the
	// SHA-256 of its leaf certificate's DER in hex (lpmos.region_cert_sha256=
	// on the kernel line, beside the token). RegionURL must then be
	// https, and the default HTTPClient accepts only that certificate and
	// refuses plain http, redirects included. Without it an https region
	// is checked against the system's roots.
	RegionCertSHA256 string
	// Mode is ModeInstall (the default: a task's agent) or ModeInventory
	// (a machine without a task, booted by a region in discovery mode:
	// it reports its hardware, the region records it, and it powers off).
	// lpmos.mode= on the kernel line.
	Mode string
	// TraceParent, if set, is the W3C trace context of the task's trace
	// (lpmos.traceparent= on the kernel line, when the region traces with
	// OpenTelemetry): every call to the region carries it as its
	// traceparent header, so that the region's spans of the calls join the
	// task's trace. The agent records no spans itself.
	TraceParent string

	// HTTPClient is used for every agent API call (nil: NewHTTPClient
	// with RegionCertSHA256, a client with sensible dial/TLS timeouts that
	// enforces the pin). A client given here is used as it is: it must do
	// its own pinning. Per-call timeouts come from RequestTimeout, not from
	// the client.
	HTTPClient httpc.Doer
	// RequestTimeout bounds one ordinary call (default 30 s); the approval
	// long-poll gets ApprovalWait on top.
	RequestTimeout time.Duration
	// ApprovalWait is the ?wait= of one approval long-poll (default 30 s;
	// the region caps it at its own limit).
	ApprovalWait time.Duration
	Retry        RetryPolicy
	Logger       *slog.Logger
}

// RetryPolicy bounds the retries of one call on network errors, 5xx and 429:
// exponential backoff from Initial to Max with full jitter, at most Attempts
// tries and MaxElapsed in total, whichever ends first.
type RetryPolicy struct {
	Initial    time.Duration // default 200 ms
	Max        time.Duration // default 10 s
	Attempts   int           // default 30
	MaxElapsed time.Duration // default 5 min
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	if p.Initial <= 0 {
		p.Initial = 200 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 10 * time.Second
	}
	if p.Attempts <= 0 {
		p.Attempts = 30
	}
	if p.MaxElapsed <= 0 {
		p.MaxElapsed = 5 * time.Minute
	}
	return p
}

func (c Config) withDefaults() Config {
	if c.HTTPClient == nil {
		c.HTTPClient = NewHTTPClient(c.RegionCertSHA256)
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.ApprovalWait <= 0 {
		c.ApprovalWait = 30 * time.Second
	}
	c.Retry = c.Retry.withDefaults()
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// The agent's modes (Config.Mode).
const (
	ModeInstall   = ""
	ModeInventory = "inventory"
)

// Validate checks the four identity fields (an inventory agent has no
// task).
func (c Config) Validate() error {
	if err := validateRegionURL(c.RegionURL); err != nil {
		return err
	}
	if err := validatePin(c.RegionCertSHA256, c.RegionURL); err != nil {
		return err
	}
	for _, u := range c.OtherRegionURLs {
		if err := validateRegionURL(u); err != nil {
			return err
		}
		if err := validatePin(c.RegionCertSHA256, u); err != nil {
			return err
		}
	}
	if c.MAC.IsZero() {
		return fmt.Errorf("%w: lpmos.mac is missing", ErrInvalidConfig)
	}
	switch c.Mode {
	case ModeInstall:
		if err := lpmos.ValidateTaskID(c.TaskID); err != nil {
			return fmt.Errorf("%w: lpmos.task: %w", ErrInvalidConfig, err)
		}
	case ModeInventory:
		if c.TaskID != "" {
			return fmt.Errorf("%w: lpmos.task is given in inventory mode", ErrInvalidConfig)
		}
	default:
		return fmt.Errorf("%w: lpmos.mode %q is not %q", ErrInvalidConfig, c.Mode, ModeInventory)
	}
	if err := validateTraceParent(c.TraceParent); err != nil {
		return err
	}
	return validateToken(c.Token)
}

// validateTraceParent accepts an empty value or a W3C traceparent:
// version-traceid-spanid-flags in lowercase hex (2-32-16-2 digits).
func validateTraceParent(s string) error {
	if s == "" {
		return nil
	}
	ok := len(s) == 55 && s[2] == '-' && s[35] == '-' && s[52] == '-'
	for i := 0; ok && i < len(s); i++ {
		if i != 2 && i != 35 && i != 52 {
			c := s[i]
			ok = c >= '0' && c <= '9' || c >= 'a' && c <= 'f'
		}
	}
	if !ok {
		return fmt.Errorf("%w: lpmos.traceparent %q is not a W3C traceparent", ErrInvalidConfig, s)
	}
	return nil
}

func validateRegionURL(s string) error {
	if s == "" {
		return fmt.Errorf("%w: lpmos.region is missing", ErrInvalidConfig)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%w: lpmos.region: %w", ErrInvalidConfig, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%w: lpmos.region %q is not an http(s)://host[:port][/path] URL", ErrInvalidConfig, s)
	}
	return nil
}

// validateToken accepts the opaque token charsets in use (hex today,
// base64url or JWT-like later) and nothing that could break a header.
func validateToken(s string) error {
	if s == "" {
		return fmt.Errorf("%w: lpmos.token is missing", ErrInvalidConfig)
	}
	if len(s) < 16 || len(s) > 1024 {
		return fmt.Errorf("%w: lpmos.token must be 16..1024 characters, got %d", ErrInvalidConfig, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("-._~+/=", c) >= 0
		if !ok {
			return fmt.Errorf("%w: lpmos.token has a character outside [A-Za-z0-9-._~+/=] at %d", ErrInvalidConfig, i)
		}
	}
	return nil
}

// ParseCmdline reads the agent's identity from a kernel command line
// (/proc/cmdline): lpmos.region=URL[,URL...] lpmos.mac=MAC lpmos.task=ID
// lpmos.token=TOKEN, or lpmos.mode=inventory instead of lpmos.task, and
// lpmos.region_cert_sha256=HEX for a region that serves HTTPS, and
// lpmos.traceparent=W3C-TRACEPARENT for a traced task. Words without "=" (the UEFI line starts with a bare
// image name such as "vmlinuz") and other parameters are skipped; a
// repeated lpmos.* key is an error, since which one wins would be a guess.
func ParseCmdline(cmdline string) (Config, error) {
	var c Config
	seen := map[string]bool{}
	for _, w := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(w, "=")
		if !ok || !strings.HasPrefix(k, "lpmos.") {
			continue
		}
		if seen[k] {
			return Config{}, fmt.Errorf("%w: %s given twice", ErrInvalidConfig, k)
		}
		seen[k] = true
		v = strings.Trim(v, `"`)
		switch k {
		case "lpmos.region":
			urls := strings.Split(v, ",")
			c.RegionURL = strings.TrimRight(urls[0], "/")
			for _, u := range urls[1:] {
				c.OtherRegionURLs = append(c.OtherRegionURLs, strings.TrimRight(u, "/"))
			}
		case "lpmos.mac":
			m, err := lpmos.ParseMAC(v)
			if err != nil {
				return Config{}, fmt.Errorf("%w: lpmos.mac: %w", ErrInvalidConfig, err)
			}
			c.MAC = m
		case "lpmos.task":
			c.TaskID = v
		case "lpmos.token":
			c.Token = v
		case "lpmos.mode":
			c.Mode = v
		case "lpmos.region_cert_sha256":
			c.RegionCertSHA256 = v
		case "lpmos.traceparent":
			c.TraceParent = v
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
