package lpmos

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// ErrInvalidHostname is wrapped by ValidateHostname's errors.
var ErrInvalidHostname = errors.New("invalid hostname")

// ErrInvalidSSHKey is wrapped by ValidateSSHAuthorizedKey's errors.
var ErrInvalidSSHKey = errors.New("invalid SSH authorized key")

// MaxHostnameLen is the longest hostname, that of a DNS name.
const MaxHostnameLen = 253

// MaxSSHKeyLen bounds one authorized_keys line.
const MaxSSHKeyLen = 16 << 10

// lazyRE is a regular expression compiled on first use, not at init: a
// binary that never validates these (the agent) then links no regexp
// (about 0.1 MB).
type lazyRE struct {
	expr string
	once sync.Once
	re   *regexp.Regexp
}

func (l *lazyRE) MatchString(s string) bool {
	l.once.Do(func() { l.re = regexp.MustCompile(l.expr) })
	return l.re.MatchString(s)
}

var (
	hostLabelRE = &lazyRE{expr: `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`}
	// sshKeyRE is "type base64 [comment]"; the comment is free text,
	// checked by ValidateText.
	sshKeyRE = &lazyRE{expr: `^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$`}
)

// ValidateHostname checks a machine's hostname as the installers write
// it (a task's "hostname" tag): dot-separated DNS labels of lowercase
// a-z, 0-9 and '-', not starting or ending with '-', 253 characters at
// most. It is checked when a task is created and again when its answer
// file is rendered.
func ValidateHostname(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrInvalidHostname)
	}
	if len(s) > MaxHostnameLen {
		return fmt.Errorf("%w %s: longer than %d characters", ErrInvalidHostname, quoteInput(s), MaxHostnameLen)
	}
	for _, l := range strings.Split(s, ".") {
		if !hostLabelRE.MatchString(l) {
			return fmt.Errorf("%w %s: want dot-separated labels of a-z, 0-9 and '-' (lowercase)", ErrInvalidHostname, quoteInput(s))
		}
	}
	return nil
}

// ValidateSSHAuthorizedKey checks one authorized_keys line as installers
// write it for root (a task's "ssh_key" tag): key type, base64 key and an
// optional comment without control characters; no options prefix, which
// could run commands or forward ports.
func ValidateSSHAuthorizedKey(s string) error {
	if len(s) > MaxSSHKeyLen {
		return fmt.Errorf("%w: longer than %d bytes", ErrInvalidSSHKey, MaxSSHKeyLen)
	}
	if !sshKeyRE.MatchString(s) || ValidateText(s, false) != nil {
		return fmt.Errorf("%w %s: want one authorized_keys line: key type, base64 key, optional comment without control characters", ErrInvalidSSHKey, quoteInput(s))
	}
	return nil
}

// ErrInvalidInterfaceName is wrapped by ValidateInterfaceName's errors.
var ErrInvalidInterfaceName = errors.New("invalid network interface name")

// ErrInvalidPasswordHash is wrapped by ValidatePasswordHash's errors.
var ErrInvalidPasswordHash = errors.New("invalid password hash")

var (
	// ifaceRE is a Linux interface name as netplan, ifupdown and
	// Anaconda take it: at most 15 bytes (IFNAMSIZ-1), no '/', ':',
	// spaces or quotes.
	ifaceRE = &lazyRE{expr: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$`}
	// passwordHashREs are the crypt(3) formats installers accept:
	// SHA-512 and SHA-256 crypt (optionally with rounds=), yescrypt and
	// bcrypt, each with exactly its hash length.
	passwordHashREs = []*lazyRE{
		{expr: `^\$6\$(rounds=[1-9][0-9]{3,8}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$`},
		{expr: `^\$5\$(rounds=[1-9][0-9]{3,8}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{43}$`},
		{expr: `^\$y\$[./0-9A-Za-z]{1,32}\$[./0-9A-Za-z]{1,86}\$[./0-9A-Za-z]{43}$`},
		{expr: `^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./0-9A-Za-z]{53}$`},
	}
)

// ValidateInterfaceName checks a network interface name (a bond's name
// or one of its NICs): 1 to 15 of letters, digits and '_', '.', '-',
// starting with a letter or digit.
func ValidateInterfaceName(s string) error {
	if !ifaceRE.MatchString(s) {
		return fmt.Errorf("%w %s: want 1 to 15 of letters, digits and _.- (such as eno1)", ErrInvalidInterfaceName, quoteInput(s))
	}
	return nil
}

// ValidatePasswordHash checks a root password as installers take it
// hashed: a crypt(3) string of SHA-512 ($6$), SHA-256 ($5$), yescrypt
// ($y$) or bcrypt ($2b$, $2a$, $2y$), such as `mkpasswd -m sha-512` or
// `openssl passwd -6` print. Anything else, a clear-text password above
// all, is refused; the error never repeats the input.
func ValidatePasswordHash(s string) error {
	for _, re := range passwordHashREs {
		if re.MatchString(s) {
			return nil
		}
	}
	if strings.HasPrefix(s, "$") {
		return fmt.Errorf("%w: not a well-formed SHA-512 ($6$), SHA-256 ($5$), yescrypt ($y$) or bcrypt ($2b$) crypt(3) hash", ErrInvalidPasswordHash)
	}
	return fmt.Errorf("%w: want a crypt(3) hash such as `mkpasswd -m sha-512` prints ($6$...), never a clear-text password", ErrInvalidPasswordHash)
}
