package lpmos

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrInvalidHostname is wrapped by ValidateHostname's errors.
var ErrInvalidHostname = errors.New("invalid hostname")

// ErrInvalidSSHKey is wrapped by ValidateSSHAuthorizedKey's errors.
var ErrInvalidSSHKey = errors.New("invalid SSH authorized key")

// MaxHostnameLen is the longest hostname, that of a DNS name.
const MaxHostnameLen = 253

// MaxSSHKeyLen bounds one authorized_keys line.
const MaxSSHKeyLen = 16 << 10

var (
	hostLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	// sshKeyRE is "type base64 [comment]"; the comment is free text,
	// checked by ValidateText.
	sshKeyRE = regexp.MustCompile(`^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$`)
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
