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

func TestValidateInterfaceName(t *testing.T) {
	for _, s := range []string{"eno1", "enp1s0f0", "bond0", "eth0.100", "ib_0", "a", "enx0123456789ab"} {
		assert.NoError(t, lpmos.ValidateInterfaceName(s), s)
	}
	for _, s := range []string{"", "eno 1", "eno1;reboot", "eth0:1", "../eth0", "-eth0", "enx0123456789abc", "eno'1", "eno1\n"} {
		assert.ErrorIs(t, lpmos.ValidateInterfaceName(s), lpmos.ErrInvalidInterfaceName, s)
	}
}

func TestValidatePasswordHash(t *testing.T) {
	// Made with openssl passwd -6/-5 and perl's crypt (libxcrypt).
	for _, s := range []string{
		"$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.",
		"$6$rounds=5000$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.",
		"$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM.",
		"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$GmcwIgvdUC9qLWcKCi6gklUa1dM3ziD43YxYNURLKy0",
		"$2b$12$abcdefghijklmnopqrstuuT1Iwu6o8Wx7BoOyIMHfgVJq6JO/IJhW",
	} {
		assert.NoError(t, lpmos.ValidatePasswordHash(s), s)
	}
	for _, s := range []string{
		"", "hunter2", "correct horse battery staple", "$6$hunter2",
		"$1$abcdefgh$0123456789abcdefghijkl",                     // MD5 crypt: too weak
		"$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk", // cut short
		"$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG. ",
		"$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.\nx",
		"$6$rounds=10$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.",
		"$2b$12$short",
	} {
		err := lpmos.ValidatePasswordHash(s)
		assert.ErrorIs(t, err, lpmos.ErrInvalidPasswordHash, s)
		if err != nil && s != "" {
			assert.NotContains(t, err.Error(), s, "the input is never repeated")
		}
	}
}
