package ipxe

import (
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"

	"github.com/lpmos/lpmos"
)

// ErrInvalid is wrapped by every error about a value that cannot go into a
// script; the message names the field. The region answers such errors with
// a 500 and a log line: they mean bad configuration or a bad task, never
// something the booting machine did.
var ErrInvalid = errors.New("invalid iPXE script input")

// Limits on what goes into a script.
const (
	// maxURLLen bounds each URL.
	maxURLLen = 1024
	// maxCmdline is the longest kernel command line: x86 Linux keeps
	// COMMAND_LINE_SIZE (2048) bytes including the terminating NUL and
	// silently truncates the rest, which would drop whatever came last,
	// such as the agent's token.
	maxCmdline = 2047
	// maxExtraArgs and maxArgLen bound extra kernel arguments.
	maxExtraArgs = 32
	maxArgLen    = 256
	// maxTokenLen bounds the per-task agent token.
	maxTokenLen = 256
	// maxAttempts and maxSleep keep loops and waits sane.
	maxAttempts = 10
	maxSleep    = 3600
)

var (
	// urlChars is what a URL may contain: RFC 3986 unreserved characters
	// and the delimiters a plain http URL needs, but not '#', '$', '\'',
	// '"', '(', ')', '*', '!', ';', '\\', white space, control or non-ASCII
	// characters. '$' keeps out iPXE's ${...} expansion; quotes, '#' and
	// ';' mean nothing good on a kernel command line or to the installer
	// scripts that read it.
	urlChars = regexp.MustCompile(`^[A-Za-z0-9._~:/?&=%+,@\[\]-]+$`)
	// tokenRE is the agent token: URL-safe, no separators.
	tokenRE = regexp.MustCompile(`^[A-Za-z0-9._~-]+$`)
	// argRE is one extra kernel argument: a key made of the characters
	// kernel parameters and installer options use (d-i's owner/question
	// keys include '/'), optionally '=' and a value without quotes,
	// white space, '#', '$', ';', '\', '|' or '&'.
	argRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_./-]*(=[A-Za-z0-9._~:/,=+@%-]*)?$`)
	// consoleRE is a Linux console= value such as tty0 or ttyS1,115200n8.
	consoleRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{0,15}(,[A-Za-z0-9]{1,16})?$`)
	// fileNameRE is an image name as iPXE registers it and the EFI stub
	// looks it up (initrd=NAME).
	fileNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	// traceParentRE is a W3C Trace Context traceparent value.
	traceParentRE = regexp.MustCompile(`^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)
	// hostLabelRE is one DNS label (RFC 1123).
	hostLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// invalid wraps ErrInvalid with the field name and why, quoting at most a
// short prefix of the value: these errors reach logs and the value may be
// large or hostile.
func invalid(field, value, reason string) error {
	return fmt.Errorf("%w: %s %s: %s", ErrInvalid, field, quote(value), reason)
}

func quote(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q…", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

// checkURL accepts an absolute http or https URL with a host, made only of
// urlChars, without user information or a fragment. Debian's iPXE has no
// HTTPS; https is accepted for iPXE builds that do.
func checkURL(field, s string) error {
	if s == "" {
		return invalid(field, s, "empty")
	}
	if len(s) > maxURLLen {
		return invalid(field, s, fmt.Sprintf("%d bytes, at most %d allowed", len(s), maxURLLen))
	}
	if !urlChars.MatchString(s) {
		return invalid(field, s, "only letters, digits and -._~:/?&=%+,@[] are allowed in URLs")
	}
	u, err := url.Parse(s)
	if err != nil {
		return invalid(field, s, "not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid(field, s, "scheme must be http or https")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return invalid(field, s, "must be an absolute URL with a host")
	case u.User != nil:
		return invalid(field, s, "user information in a boot URL would be shown on the console and logged")
	}
	return nil
}

// imageName returns the name iPXE should register a downloaded initrd
// under: the last element of the URL's path, which must be a plain file
// name because the kernel's EFI stub finds the initrd by it (initrd=NAME).
func imageName(field, rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", invalid(field, rawURL, "not a URL")
	}
	name := path.Base(u.Path)
	if !fileNameRE.MatchString(name) {
		return "", invalid(field, rawURL, "the path must end in a file name of letters, digits and ._+- (it becomes initrd=NAME)")
	}
	return name, nil
}

func checkMAC(field string, m lpmos.MAC) error {
	if m.IsZero() {
		return fmt.Errorf("%w: %s: unset", ErrInvalid, field)
	}
	// A MAC built by hand rather than parsed may still be a group address.
	if _, err := lpmos.MACFromHardwareAddr(m.HardwareAddr()); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, field, err)
	}
	return nil
}

func checkTaskID(field, id string) error {
	if err := lpmos.ValidateTaskID(id); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, field, err)
	}
	return nil
}

// checkCertSHA256 accepts a certificate pin (64 lowercase hex digits) for
// an https region URL: a pin on a plain http URL could never be checked.
func checkCertSHA256(field, pin, regionURL string) error {
	if len(pin) != 64 || strings.Trim(pin, "0123456789abcdef") != "" {
		return invalid(field, pin, "want the certificate's SHA-256 as 64 lowercase hex digits")
	}
	if !strings.HasPrefix(regionURL, "https://") {
		return invalid(field, pin, "a certificate pin needs an https:// RegionURL")
	}
	return nil
}

func checkTraceParent(field, v string) error {
	if !traceParentRE.MatchString(v) {
		return invalid(field, v, "want a W3C traceparent, version-traceid-spanid-flags in lowercase hex")
	}
	return nil
}

func checkToken(field, tok string) error {
	switch {
	case tok == "":
		return invalid(field, tok, "empty")
	case len(tok) > maxTokenLen:
		return invalid(field, tok, fmt.Sprintf("%d bytes, at most %d allowed", len(tok), maxTokenLen))
	case !tokenRE.MatchString(tok):
		return invalid(field, tok, "only letters, digits and ._~- are allowed")
	}
	return nil
}

// reservedKey reports the kernel arguments this package sets itself; an
// extra argument may not repeat them, since the last occurrence usually wins and
// the agent token or the initrd name would silently change.
func reservedKey(key string) bool {
	return key == "initrd" || key == "console" || strings.HasPrefix(key, "lpmos.")
}

func checkExtraArgs(field string, args []string) error {
	if len(args) > maxExtraArgs {
		return fmt.Errorf("%w: %s: %d arguments, at most %d allowed", ErrInvalid, field, len(args), maxExtraArgs)
	}
	for i, a := range args {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case a == "--" || a == "---":
			// Separators: Linux passes what follows to init, and
			// Debian's installer copies what follows "---" to the
			// installed system's boot loader.
			continue
		case len(a) > maxArgLen:
			return invalid(f, a, fmt.Sprintf("%d bytes, at most %d allowed", len(a), maxArgLen))
		case !argRE.MatchString(a):
			return invalid(f, a, "want key or key=value of letters, digits and ._~:/,=+@%- (no quotes, spaces, '$', '#', ';', '|', '&')")
		}
		key, _, _ := strings.Cut(a, "=")
		if reservedKey(key) {
			return invalid(f, a, "set by LPMOS itself; use the dedicated field")
		}
	}
	return nil
}

// defaultConsoles puts kernel messages on the screen and the first serial
// port. The last console= is /dev/console, where the agent and installers
// talk, and serial is what a BMC's serial-over-LAN and a VM's log show.
var defaultConsoles = []string{"tty0", "ttyS0"}

func consoleArgs(field string, consoles []string) ([]string, error) {
	if consoles == nil {
		consoles = defaultConsoles
	}
	if len(consoles) > 4 {
		return nil, fmt.Errorf("%w: %s: %d consoles, at most 4 allowed", ErrInvalid, field, len(consoles))
	}
	out := make([]string, 0, len(consoles))
	for i, c := range consoles {
		if !consoleRE.MatchString(c) {
			return nil, invalid(fmt.Sprintf("%s[%d]", field, i), c, "want a console such as tty0 or ttyS0,115200n8")
		}
		out = append(out, "console="+c)
	}
	return out, nil
}

func checkAttempts(field string, n int) (int, error) {
	switch {
	case n == 0:
		return 3, nil
	case n < 0 || n > maxAttempts:
		return 0, fmt.Errorf("%w: %s: %d, want 1 to %d (0 for the default)", ErrInvalid, field, n, maxAttempts)
	}
	return n, nil
}

func checkSeconds(field string, n, def int) (int, error) {
	switch {
	case n == 0:
		return def, nil
	case n < 0 || n > maxSleep:
		return 0, fmt.Errorf("%w: %s: %d seconds, want 1 to %d (0 for the default)", ErrInvalid, field, n, maxSleep)
	}
	return n, nil
}

// checkHostname accepts a lowercase RFC 1123 host name, one label or a
// fully qualified name.
func checkHostname(field, h string) error {
	if h == "" || len(h) > 253 {
		return invalid(field, h, "want 1 to 253 characters")
	}
	for _, l := range strings.Split(h, ".") {
		if !hostLabelRE.MatchString(l) {
			return invalid(field, h, "want dot-separated labels of a-z, 0-9 and '-'")
		}
	}
	return nil
}
