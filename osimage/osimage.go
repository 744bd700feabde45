// Package osimage owns the image catalogue: OS disk images an operator
// registers (URL, SHA-256, format, OS type and version, architecture) for
// one region or all, kept under /lpmos/images/{id}. The control plane
// serves the catalogue API over a Service; each region's leader follows
// the catalogue (Follow), downloads the images meant for it once,
// verifies them and reports their state in its capabilities
// (task.ImageState). The package knows the store and nothing else of ours.
package osimage

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store"
)

// Prefix is where the catalogue lives, one key per image.
const Prefix = "/lpmos/images/"

// GuardKey is written with every image registered (the count of images
// then): Create's transaction compares it, so two registrations racing
// cannot both pass the checks against the catalogue they read (the same
// OS in overlapping regions, the cap of MaxImages).
const GuardKey = "/lpmos/config/images_guard"

// MaxImages bounds the catalogue.
const MaxImages = 256

// Sentinel errors; the control plane maps them to 400, 404 and 409.
var (
	ErrInvalid  = errors.New("invalid image")
	ErrNotFound = errors.New("image not found")
	ErrConflict = errors.New("image conflict")
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

// Formats are the image formats a region serves and the agent writes: a
// raw disk image, or one compressed with gzip, xz or zstd. The region
// stores the image as "image.<format>".
var Formats = []string{"raw", "raw.gz", "raw.xz", "raw.zst"}

// FormatInstaller is the format of a distribution's network installer: URL
// and SHA256 are its kernel's, InitrdURL and InitrdSHA256 its initrd's.
// A region offers it (booting it with its rendered preseed, kickstart or
// autoinstall) once both are downloaded and verified, in place of a
// built-in installer of the same OS fetched from the mirror unverified.
const FormatInstaller = "installer"

// Archs are the architectures an image may be built for.
var Archs = []string{"amd64", "arm64"}

// Image is one catalogue record.
type Image struct {
	// ID names the image, e.g. "ubuntu-24.04-amd64".
	ID string `json:"id"`
	// Region limits the image to one region; empty: every region.
	Region string `json:"region,omitempty"`
	// URL is where regions download it (http or https).
	URL string `json:"url"`
	// SHA256 is the hex SHA-256 of the bytes at URL (before any
	// decompression).
	SHA256 string `json:"sha256"`
	// InitrdURL and InitrdSHA256 are an installer's initrd (format
	// FormatInstaller only).
	InitrdURL    string `json:"initrd_url,omitempty"`
	InitrdSHA256 string `json:"initrd_sha256,omitempty"`
	Format       string `json:"format"`
	OSType       string `json:"os_type"`
	OSVersion    string `json:"os_version"`
	Arch         string `json:"arch"`

	CreatedAt time.Time `json:"created_at,omitzero"`
	CreatedBy string    `json:"created_by,omitempty"`
}

var (
	idRe        = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	osTypeRe    = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	osVersionRe = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$`)
)

// ValidateID checks an image ID: 1–63 of a-z, 0-9, '.', '_', '-',
// starting with a letter or digit.
func ValidateID(id string) error {
	if !idRe.MatchString(id) {
		return invalid("id", "%q is not an image ID (1-63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)", trunc(id))
	}
	return nil
}

// Validate checks a record, naming the first field that is wrong. SHA256
// is normalised to lowercase.
func (m *Image) Validate() error {
	if err := ValidateID(m.ID); err != nil {
		return err
	}
	if m.Region != "" {
		if err := lpmos.ValidateRegionID(m.Region); err != nil {
			return invalid("region", "%v", err)
		}
	}
	if err := checkURL("url", m.URL); err != nil {
		return err
	}
	if err := checkSum("sha256", &m.SHA256); err != nil {
		return err
	}
	if !slices.Contains(Formats, m.Format) && m.Format != FormatInstaller {
		return invalid("format", "%q is not one of %s, %s", trunc(m.Format), strings.Join(Formats, ", "), FormatInstaller)
	}
	if m.Format == FormatInstaller {
		if err := checkURL("initrd_url", m.InitrdURL); err != nil {
			return err
		}
		if err := checkSum("initrd_sha256", &m.InitrdSHA256); err != nil {
			return err
		}
	} else if m.InitrdURL != "" || m.InitrdSHA256 != "" {
		field := "initrd_url"
		if m.InitrdURL == "" {
			field = "initrd_sha256"
		}
		return invalid(field, "only an installer (format %q) has an initrd", FormatInstaller)
	}
	if !osTypeRe.MatchString(m.OSType) {
		return invalid("os_type", "%q is not an OS type (lowercase letters, digits, '-')", trunc(m.OSType))
	}
	if !osVersionRe.MatchString(m.OSVersion) {
		return invalid("os_version", "%q is not a version", trunc(m.OSVersion))
	}
	if !slices.Contains(Archs, m.Arch) {
		return invalid("arch", "%q is not one of %s", trunc(m.Arch), strings.Join(Archs, ", "))
	}
	return nil
}

func checkURL(field, s string) error {
	if s == "" {
		return invalid(field, "is required")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil || len(s) > 2048:
		return invalid(field, "%q is not a URL", trunc(s))
	case u.Scheme != "http" && u.Scheme != "https":
		return invalid(field, "scheme %q: only http and https are downloaded", trunc(u.Scheme))
	case u.Host == "":
		return invalid(field, "%q has no host", trunc(s))
	case u.User != nil:
		return invalid(field, "must not carry credentials")
	}
	return nil
}

// checkSum checks a hex SHA-256 and lowercases it.
func checkSum(field string, s *string) error {
	if b, err := hex.DecodeString(*s); err != nil || len(b) != 32 {
		return invalid(field, "%q is not 64 hex digits", trunc(*s))
	}
	*s = strings.ToLower(*s)
	return nil
}

// File is one file of an image as a region stores it.
type File struct {
	Name, URL, SHA256 string
}

// Files are the files a region downloads for the image: "image.<format>",
// or an installer's "kernel" and "initrd".
func (m *Image) Files() []File {
	if m.Format == FormatInstaller {
		return []File{{"kernel", m.URL, m.SHA256}, {"initrd", m.InitrdURL, m.InitrdSHA256}}
	}
	return []File{{"image." + m.Format, m.URL, m.SHA256}}
}

// AppliesTo reports whether the image is meant for region.
func (m *Image) AppliesTo(region string) bool { return m.Region == "" || m.Region == region }

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Service reads and writes the catalogue over a store.
type Service struct {
	st  store.Store
	now func() time.Time
}

// NewService returns a Service over st; now defaults to time.Now.
func NewService(st store.Store, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{st: st, now: now}
}

// Create registers an image. An ID taken, or another image for the same
// OS type and version in an overlapping region (a task names only those,
// so a region could not tell the two apart), is ErrConflict; nothing is
// written then.
func (s *Service) Create(ctx context.Context, m Image, actor string) (*Image, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	m.CreatedAt, m.CreatedBy = s.now().UTC(), actor
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	for range maxCASRetries {
		// The guard before the list: a registration that commits after
		// this read changes the guard, so checks against a list read
		// before it cannot pass the compare below.
		var guardRev int64
		if g, err := s.st.Get(ctx, GuardKey); err == nil {
			guardRev = g.ModRevision
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		all, err := s.List(ctx)
		if err != nil {
			return nil, err
		}
		for _, o := range all {
			if o.ID == m.ID {
				return nil, fmt.Errorf("%w: image %s is already registered", ErrConflict, m.ID)
			}
			if o.OSType == m.OSType && o.OSVersion == m.OSVersion && (o.Region == "" || m.Region == "" || o.Region == m.Region) {
				return nil, fmt.Errorf("%w: image %s already offers %s %s there", ErrConflict, o.ID, m.OSType, m.OSVersion)
			}
		}
		if len(all) >= MaxImages {
			return nil, fmt.Errorf("%w: %d images already, at most %d", ErrConflict, len(all), MaxImages)
		}
		res, err := s.st.Txn(ctx, store.Txn{
			If:   []store.Compare{store.Missing(Prefix + m.ID), store.ModRevisionIs(GuardKey, guardRev)},
			Then: []store.Op{store.OpPut(Prefix+m.ID, b), store.OpPut(GuardKey, []byte(strconv.Itoa(len(all)+1)))},
		})
		if err != nil {
			return nil, err
		}
		if res.Succeeded {
			return &m, nil
		}
		// The ID was taken or another registration came between: read
		// again and check again.
	}
	return nil, fmt.Errorf("%w: the catalogue kept changing; try again", ErrConflict)
}

// maxCASRetries bounds Create's compare-and-swap attempts.
const maxCASRetries = 8

// Get returns an image.
func (s *Service) Get(ctx context.Context, id string) (*Image, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	kv, err := s.st.Get(ctx, Prefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	var m Image
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return nil, fmt.Errorf("image %s unreadable: %w", id, err)
	}
	return &m, nil
}

// List returns every image, sorted by ID.
func (s *Service) List(ctx context.Context) ([]Image, error) {
	res, err := s.st.List(ctx, Prefix, store.ListOptions{})
	if err != nil {
		return nil, err
	}
	return decode(res.KVs), nil
}

func decode(kvs []store.KV) []Image {
	out := make([]Image, 0, len(kvs))
	for _, kv := range kvs {
		var m Image
		if json.Unmarshal(kv.Value, &m) == nil && m.Validate() == nil {
			out = append(out, m)
		}
	}
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Delete removes an image; regions remove their copies.
func (s *Service) Delete(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	n, _, err := s.st.Delete(ctx, Prefix+id)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return nil
}

// Follow calls fn with the whole catalogue, sorted by ID, once listed and
// again after every change, until ctx ends. The catalogue is small and
// changes rarely, so each change lists it again. fn runs in Follow's
// goroutine. A nil log is slog.Default().
func Follow(ctx context.Context, st store.Store, log *slog.Logger, fn func([]Image)) {
	if log == nil {
		log = slog.Default()
	}
	store.Follow(ctx, log, "image catalogue watch", func(ctx context.Context) error {
		res, err := st.List(ctx, Prefix, store.ListOptions{})
		if err != nil {
			return err
		}
		fn(decode(res.KVs))
		wctx, cancel := context.WithCancel(ctx)
		watch := st.Watch(wctx, Prefix, res.Revision+1)
		defer func() {
			cancel()
			for range watch {
			}
		}()
		for resp := range watch {
			if resp.Err != nil {
				return resp.Err
			}
			res, err := st.List(ctx, Prefix, store.ListOptions{})
			if err != nil {
				return err
			}
			fn(decode(res.KVs))
		}
		if ctx.Err() == nil {
			return errors.New("image catalogue watch closed")
		}
		return ctx.Err()
	})
}
