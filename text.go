package lpmos

import (
	"errors"
	"fmt"
	"unicode/utf8"
)

// ErrInvalidText is wrapped by ValidateText's errors.
var ErrInvalidText = errors.New("invalid text")

// TextRuneAllowed reports whether r may appear in text that people read
// on a terminal, in a log or in the dashboard: not a C0 or C1 control
// character (NUL, ESC and the rest: they rewrite terminals and cut
// strings short in C), not DEL, not a Unicode line or paragraph separator
// (a line break the logs do not see), and not a bidirectional embedding,
// override or isolate (they make text read differently from what it is:
// "Trojan Source"). Newline and tab are allowed when multiline is true.
func TextRuneAllowed(r rune, multiline bool) bool {
	switch {
	case r == '\n' || r == '\t':
		return multiline
	case r < 0x20, r >= 0x7f && r <= 0x9f:
		return false
	case r == '\u2028' || r == '\u2029':
		return false
	case r >= '\u202a' && r <= '\u202e', r >= '\u2066' && r <= '\u2069':
		return false
	}
	return true
}

// ValidateText checks that s is valid UTF-8 whose every rune
// TextRuneAllowed allows. multiline allows newline and tab, for notes,
// reasons and messages; names, tags and hardware strings are single lines.
func ValidateText(s string, multiline bool) error {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return fmt.Errorf("%w: not valid UTF-8 at offset %d", ErrInvalidText, i)
			}
			continue // a real U+FFFD is text
		}
		if !TextRuneAllowed(r, multiline) {
			return fmt.Errorf("%w: control or bidirectional formatting character %U at offset %d", ErrInvalidText, r, i)
		}
	}
	return nil
}
