package lpmos

import (
	"errors"
	"fmt"
)

// ErrInvalidRegionID is wrapped by ValidateRegionID's errors.
var ErrInvalidRegionID = errors.New("invalid region ID")

// ErrInvalidTaskID is wrapped by ValidateTaskID's errors.
var ErrInvalidTaskID = errors.New("invalid task ID")

// MaxRegionIDLen is the longest region ID, the length limit of a DNS label.
const MaxRegionIDLen = 63

// ValidateRegionID checks that s can name a region. Region IDs become etcd
// key segments (/lpmos/regions/{r}/...), URL path segments, metric labels and
// often host names, so they follow DNS label rules, narrowed to lowercase so
// that "DC1" and "dc1" cannot be two regions: 1 to 63 characters of a-z, 0-9
// and '-', starting with a letter and not ending with '-'.
func ValidateRegionID(s string) error {
	switch {
	case s == "":
		return regionError(s, "empty")
	case len(s) > MaxRegionIDLen:
		return regionError(s, fmt.Sprintf("%d characters, at most %d allowed", len(s), MaxRegionIDLen))
	case s[0] < 'a' || s[0] > 'z':
		return regionError(s, "must start with a lowercase letter")
	case s[len(s)-1] == '-':
		return regionError(s, "must not end with '-'")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return regionError(s, fmt.Sprintf("character %q at offset %d; only a-z, 0-9 and '-' are allowed", c, i))
		}
	}
	return nil
}

func regionError(input, reason string) error {
	return fmt.Errorf("%w %s: %s", ErrInvalidRegionID, quoteInput(input), reason)
}

// ValidateTaskID checks that s is a task ID: a UUID in its canonical
// lowercase text form, xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. Only one
// spelling is accepted (no braces, no "urn:uuid:", no uppercase) because the
// ID is used verbatim as an etcd key segment and in URLs, where two spellings
// of one UUID would be two different tasks. The nil UUID (all zeros) is
// rejected too: no generator produces it, so it only ever comes from an
// uninitialised value.
//
// The version and variant nibbles are not checked, so IDs minted by other
// tools (v1, v7) are accepted.
func ValidateTaskID(s string) error {
	const canonicalLen = 36
	if len(s) != canonicalLen {
		if s == "" {
			return taskError(s, "empty")
		}
		return taskError(s, fmt.Sprintf("%d characters, want %d (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)", len(s), canonicalLen))
	}
	allZero := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return taskError(s, fmt.Sprintf("want '-' at offset %d", i))
			}
			continue
		}
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return taskError(s, fmt.Sprintf("character %q at offset %d; only lowercase hex digits are allowed", c, i))
		}
		if c != '0' {
			allZero = false
		}
	}
	if allZero {
		return taskError(s, "the nil UUID is not a task ID")
	}
	return nil
}

func taskError(input, reason string) error {
	return fmt.Errorf("%w %s: %s", ErrInvalidTaskID, quoteInput(input), reason)
}
