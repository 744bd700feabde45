package lpmos_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/lpmos/lpmos"
)

func TestValidateText(t *testing.T) {
	for _, tc := range []struct {
		name      string
		s         string
		line, doc bool // accepted as a single line, as multi-line text
	}{
		{"plain", "Dell PowerEdge R750", true, true},
		{"empty", "", true, true},
		{"unicode", "Grüße, 東京 ✓", true, true},
		{"replacement character", "Dell\uFFFD", true, true},
		{"newline", "line one\nline two", false, true},
		{"tab", "a\tb", false, true},
		{"CR", "a\rb", false, false},
		{"NUL", "a\x00b", false, false},
		{"ESC", "\x1b[2Jcleared", false, false},
		{"BEL", "a\x07", false, false},
		{"DEL", "a\x7f", false, false},
		{"C1 CSI", "a\u009b2J", false, false},
		{"C1 NEL", "a\u0085b", false, false},
		{"line separator", "a\u2028b", false, false},
		{"paragraph separator", "a\u2029b", false, false},
		{"RLO", "invoice\u202Efdp.exe", false, false},
		{"LRE", "a\u202Ab", false, false},
		{"PDF", "a\u202Cb", false, false},
		{"RLI", "a\u2067b", false, false},
		{"PDI", "a\u2069b", false, false},
		{"invalid UTF-8", "SN\xff", false, false},
		{"truncated UTF-8", "a\xc3", false, false},
		{"zero-width joiner is text", "👨\u200d💻", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, m := range []struct {
				multiline, want bool
			}{{false, tc.line}, {true, tc.doc}} {
				err := lpmos.ValidateText(tc.s, m.multiline)
				if m.want {
					assert.NoError(t, err, "multiline=%v", m.multiline)
				} else {
					assert.ErrorIs(t, err, lpmos.ErrInvalidText, "multiline=%v", m.multiline)
				}
			}
		})
	}
}

func TestValidateHostname(t *testing.T) {
	for _, tc := range []struct {
		s  string
		ok bool
	}{
		{"web-01", true},
		{"web-01.dc1.example.com", true},
		{"a", true},
		{"0web", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a.", 126) + "a", true},
		{"", false},
		{"Web01", false},
		{"web 01", false},
		{"web_01", false},
		{"-web", false},
		{"web-", false},
		{"web..01", false},
		{"web.", false},
		{strings.Repeat("a", 64), false},
		{strings.Repeat("a.", 127) + "a", false},
		{"web\nd-i preseed/late_command string reboot", false},
		{"$(reboot)", false},
		{"web\x00", false},
	} {
		err := lpmos.ValidateHostname(tc.s)
		if tc.ok {
			assert.NoError(t, err, "%q", tc.s)
		} else {
			assert.ErrorIs(t, err, lpmos.ErrInvalidHostname, "%q", tc.s)
		}
	}
}

func TestValidateSSHAuthorizedKey(t *testing.T) {
	const ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	for _, tc := range []struct {
		name, s string
		ok      bool
	}{
		{"ed25519", ed, true},
		{"with comment", ed + " admin@example.com", true},
		{"comment with spaces", ed + " Ada Lovelace laptop", true},
		{"ecdsa", "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= ops@bastion", true},
		{"empty", "", false},
		{"options prefix", `command="/bin/sh" ` + ed, false},
		{"unknown type", "ssh-foo AAAA", false},
		{"no key", "ssh-ed25519", false},
		{"bad base64", "ssh-ed25519 AA$A", false},
		{"two keys", ed + " a\n" + ed + " evil", false},
		{"CR", ed + " a\r", false},
		{"ESC in comment", ed + " \x1b[31mred", false},
		{"bidi in comment", ed + " admin\u202Emoc.live", false},
		{"too long", ed + " " + strings.Repeat("c", lpmos.MaxSSHKeyLen), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := lpmos.ValidateSSHAuthorizedKey(tc.s)
			if tc.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, lpmos.ErrInvalidSSHKey)
			}
		})
	}
}
