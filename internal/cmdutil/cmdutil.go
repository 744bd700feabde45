// Package cmdutil holds the flag groups and start-up steps the example
// binaries share: choosing and opening the store (embedded etcd by default,
// an external cluster, or memory), the control plane's sign-in options, the
// region's flags mapped to a region.ServerConfig, logging, and the exit
// statuses and --version every binary has. It maps flags to the packages'
// configurations and composes nothing itself: each binary's main stays
// flags and composition.
package cmdutil

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/etcd"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// StoreFlags choose the store.
type StoreFlags struct {
	Kind          string
	DataDir       string
	ClientURL     string
	PeerURL       string
	Endpoints     string
	CA, Cert, Key string
	EtcdVerbose   bool
	// Backups of the embedded member.
	SnapshotDir      string
	SnapshotInterval time.Duration
	SnapshotKeep     int
	RestoreFrom      string
	// Embed starts the embedded etcd when no --etcd-endpoints are given;
	// nil for binaries that only connect.
	Embed EmbedFunc
}

// EmbedFunc starts the embedded etcd member f describes (its data in
// <DataDir>/etcd) and returns a store on it and the function that closes
// both. Binaries that run one pass embedetcd.Open, from a package of its
// own so that the others do not link etcd's server.
type EmbedFunc func(ctx context.Context, f *StoreFlags, log *slog.Logger) (st store.Store, closeFn func(), err error)

// Register adds the store flags (README.md lists them). embed, if not nil,
// lets the binary run an embedded etcd (allinone); without it the binary
// only connects (the others).
func (f *StoreFlags) Register(fs *flag.FlagSet, embed EmbedFunc) {
	f.Embed = embed
	if embed != nil {
		fs.StringVar(&f.Kind, "store", "etcd", "etcd (embedded unless --etcd-endpoints is set) or memory (throwaway)")
		fs.StringVar(&f.DataDir, "data-dir", "./lpmos-data", "embedded etcd data and region state")
		fs.StringVar(&f.ClientURL, "etcd-client-url", "https://127.0.0.1:2379", "where the embedded etcd serves clients (etcdctl), with client certificates from <data-dir>/etcd-pki")
		fs.StringVar(&f.PeerURL, "etcd-peer-url", "http://127.0.0.1:2380", "where the embedded etcd listens for peers")
		fs.BoolVar(&f.EtcdVerbose, "etcd-verbose", false, "let the embedded etcd log at info level (by default only its warnings and errors reach the log)")
		fs.StringVar(&f.SnapshotDir, "etcd-snapshot-dir", "", "take snapshots of the embedded etcd into this directory (empty: none)")
		fs.DurationVar(&f.SnapshotInterval, "etcd-snapshot-interval", time.Hour, "time between snapshots (the first at start)")
		fs.IntVar(&f.SnapshotKeep, "etcd-snapshot-keep", 24, "newest snapshots kept")
		fs.StringVar(&f.RestoreFrom, "etcd-restore", "", "restore this snapshot into <data-dir>/etcd (which must not exist) before starting")
	} else {
		f.Kind = "etcd"
	}
	fs.StringVar(&f.Endpoints, "etcd-endpoints", "", "comma-separated external etcd endpoints; when set, nothing is embedded")
	fs.StringVar(&f.CA, "etcd-ca", "", "CA certificate for etcd (PEM)")
	fs.StringVar(&f.Cert, "etcd-cert", "", "client certificate for etcd mTLS (PEM)")
	fs.StringVar(&f.Key, "etcd-key", "", "client key for etcd mTLS (PEM)")
}

// Open opens the chosen store; close releases it (and stops an embedded
// etcd, which f.Embed starts).
func (f *StoreFlags) Open(ctx context.Context, log *slog.Logger) (st store.Store, closeFn func(), err error) {
	switch {
	case f.Kind == "memory":
		log.Warn("using the in-memory store: everything is lost at exit")
		m := memory.New()
		return m, func() { m.Close() }, nil
	case f.Kind != "etcd":
		return nil, nil, fmt.Errorf("unknown --store %q (etcd or memory)", f.Kind)
	case f.Endpoints != "":
		cfg := etcd.Config{Endpoints: strings.Split(f.Endpoints, ",")}
		if f.CA != "" || f.Cert != "" {
			if cfg.TLS, err = etcd.TLSConfig(f.CA, f.Cert, f.Key); err != nil {
				return nil, nil, err
			}
		}
		s, err := etcd.Dial(ctx, cfg)
		if err != nil {
			return nil, nil, err
		}
		log.Info("connected to etcd", "endpoints", cfg.Endpoints)
		return s, func() { s.Close() }, nil
	case f.Embed == nil:
		return nil, nil, errors.New("--etcd-endpoints is required (this binary does not embed etcd)")
	}
	return f.Embed(ctx, f, log)
}

// AuthFlags configure how callers sign in to the control plane.
type AuthFlags struct {
	TokenFile      string
	HS256File      string
	RS256KeyFiles  string
	JWTIssuer      string
	JWTAudience    string
	JWTMaxLifetime time.Duration
	JWKSURL        string
	JWKSRefresh    time.Duration
	JWTRoleClaim   string
	JWTRoleMap     string
}

// Register adds the sign-in flags.
func (f *AuthFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.TokenFile, "token-file", "", `file of hashed tokens, lines "<sha256-hex> <role> <subject>" (mode 0600 or stricter)`)
	fs.StringVar(&f.HS256File, "jwt-hs256-secret-file", "", "accept HS256 JWTs signed with the secret in this file (mode 0600 or stricter)")
	fs.StringVar(&f.RS256KeyFiles, "jwt-rs256-public-keys", "", "comma-separated PEM RSA public keys: accept RS256 JWTs they verify")
	fs.StringVar(&f.JWTIssuer, "jwt-issuer", "", "required JWT issuer (iss)")
	fs.StringVar(&f.JWTAudience, "jwt-audience", "", "required JWT audience (aud): tokens minted for another service are refused")
	fs.StringVar(&f.JWKSURL, "jwt-jwks-url", "", "accept JWTs (e.g. OIDC ID tokens) signed by a key of this JSON Web Key Set (https; RS256/ES256 and kin, by kid)")
	fs.DurationVar(&f.JWKSRefresh, "jwt-jwks-refresh", auth.DefaultJWKSRefreshInterval, "how often the JWKS is fetched again (an unknown kid also fetches it, at most every 30s)")
	fs.StringVar(&f.JWTRoleClaim, "jwt-role-claim", "role", `JWT claim the role comes from: a string or an array of strings (e.g. "groups"; a dotted path for nested claims)`)
	fs.StringVar(&f.JWTRoleMap, "jwt-role-map", "", `map the role claim's values to roles, e.g. "ops-admins=admin,ops=operator,*=viewer" (highest wins; without it the values are role names)`)
	fs.DurationVar(&f.JWTMaxLifetime, "jwt-max-lifetime", auth.DefaultMaxJWTLifetime, "refuse JWTs whose exp is further than this from their iat (or from now, without iat); negative: no bound")
}

// Apply fills cfg.Auth. The admin token comes from
// LPMOS_ADMIN_TOKEN; if that is unset and nothing else is configured (or
// always, when generate is true) a random one is generated and returned so
// the caller can print it once.
func (f *AuthFlags) Apply(cfg *controlplane.Config) (generated string, err error) {
	if f.TokenFile != "" {
		// The file holds only hashes, but whoever can write it can make
		// themselves admin and whoever can read it can try to crack weak
		// tokens offline: it is held to the rules of a secret file.
		if err := checkSecretFile(f.TokenFile); err != nil {
			return "", err
		}
		if cfg.Auth.HashedTokens, err = auth.LoadTokenFile(f.TokenFile); err != nil {
			return "", err
		}
	}
	var jc auth.JWTConfig
	if f.HS256File != "" {
		// An empty file must not quietly turn JWT sign-in off: the
		// operator asked for it.
		if jc.HS256Secret, err = readSecretFile(f.HS256File, "--jwt-hs256-secret-file"); err != nil {
			return "", err
		}
	}
	for _, p := range strings.Split(f.RS256KeyFiles, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		k, err := auth.LoadRSAPublicKey(p)
		if err != nil {
			return "", err
		}
		jc.RS256Keys = append(jc.RS256Keys, k)
	}
	if f.JWTRoleMap != "" {
		if jc.RoleMap, err = auth.ParseRoleMap(f.JWTRoleMap); err != nil {
			return "", fmt.Errorf("--jwt-role-map: %w", err)
		}
	}
	if len(jc.HS256Secret) > 0 || len(jc.RS256Keys) > 0 || f.JWKSURL != "" {
		jc.Issuer, jc.Audience = f.JWTIssuer, f.JWTAudience
		jc.MaxLifetime = f.JWTMaxLifetime // 0: auth's default
		jc.JWKSURL, jc.JWKSRefreshInterval = f.JWKSURL, f.JWKSRefresh
		jc.RoleClaim = f.JWTRoleClaim
		cfg.Auth.JWT = &jc
	} else if f.JWTIssuer != "" || f.JWTAudience != "" || f.JWTRoleMap != "" {
		return "", errors.New("--jwt-issuer, --jwt-audience and --jwt-role-map need --jwt-hs256-secret-file, --jwt-rs256-public-keys or --jwt-jwks-url")
	}
	admin := os.Getenv("LPMOS_ADMIN_TOKEN")
	if admin == "" && len(cfg.Auth.HashedTokens) == 0 && cfg.Auth.JWT == nil {
		var b [24]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		admin, generated = hex.EncodeToString(b[:]), hex.EncodeToString(b[:])
	}
	if admin != "" {
		cfg.Auth.Tokens = append(cfg.Auth.Tokens, auth.StaticToken{Token: admin, Subject: "admin", Role: auth.RoleAdmin})
	}
	return generated, nil
}

// ErrSecretFileMode is returned for a secret file that users other than
// its owner may read or write.
var ErrSecretFileMode = errors.New("secret file is accessible by group or others")

// checkSecretFile refuses, as ssh does for private keys, a secret file
// that group or others may read or write: a warning in a log nobody reads
// would leave the secret exposed, and chmod 600 is an easy fix.
func checkSecretFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%s: %w (mode %04o; chmod 600 it, or set defaultMode 0400 on a Kubernetes secret volume)", path, ErrSecretFileMode, fi.Mode().Perm())
	}
	return nil
}

// readSecretFile reads a secret file checked by checkSecretFile, without
// surrounding white space, and refuses an empty one. Errors never include
// the file's content.
func readSecretFile(path, flagName string) ([]byte, error) {
	if err := checkSecretFile(path); err != nil {
		return nil, fmt.Errorf("%s: %w", flagName, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flagName, err)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, fmt.Errorf("%s: %s is empty", flagName, path)
	}
	return b, nil
}

// Logger builds the process logger: "text" or "json" on stderr.
func Logger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: text or json", format)
}

// WebhookFlags configure notifications.
type WebhookFlags struct {
	URLs       string
	SecretFile string
}

// Register adds the webhook flags.
func (f *WebhookFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.URLs, "webhook-urls", "", "comma-separated URLs notified (signed POST) on pending_approval, completed, failed")
	fs.StringVar(&f.SecretFile, "webhook-secret-file", "", "file holding the webhook signing secret (or env LPMOS_WEBHOOK_SECRET)")
}

// Apply fills cfg.Webhooks.
func (f *WebhookFlags) Apply(cfg *controlplane.Config) error {
	for _, u := range strings.Split(f.URLs, ",") {
		if u = strings.TrimSpace(u); u != "" {
			cfg.Webhooks.URLs = append(cfg.Webhooks.URLs, u)
		}
	}
	secret := []byte(os.Getenv("LPMOS_WEBHOOK_SECRET"))
	if f.SecretFile != "" {
		var err error
		if secret, err = readSecretFile(f.SecretFile, "--webhook-secret-file"); err != nil {
			return err
		}
	}
	cfg.Webhooks.Secret = secret
	return nil
}

// CapacityFlags bound how many tasks may be active at once, so that
// creates cannot fill the store up to etcd's quota.
type CapacityFlags struct {
	MaxActive, MaxActivePerRegion int
	// RateLimit and RateBurst bound each caller's API requests.
	RateLimit float64
	RateBurst int
	// PendingTimeout fails tasks no region picked up.
	PendingTimeout time.Duration
	// MaxAttempts bounds a task's attempts (the first and its retries);
	// AutoRetry retries failed tasks by policy.
	MaxAttempts int
	AutoRetry   bool
}

// Register adds the capacity flags.
func (f *CapacityFlags) Register(fs *flag.FlagSet) {
	fs.IntVar(&f.MaxActive, "max-active-tasks", controlplane.DefaultMaxActiveTasks, "most tasks not yet ended at once, in all (creates over it get 409 capacity); negative: no cap")
	fs.IntVar(&f.MaxActivePerRegion, "max-active-tasks-per-region", controlplane.DefaultMaxActiveTasksPerRegion, "most tasks not yet ended at once in one region; negative: no cap")
	fs.Float64Var(&f.RateLimit, "api-rate", controlplane.DefaultRateLimit, "API requests a second each caller (token subject) may make before 429 rate_limited; raise it for automation that creates or moves tasks in bulk")
	fs.IntVar(&f.RateBurst, "api-burst", controlplane.DefaultRateBurst, "API requests a caller may make at once above --api-rate")
	fs.DurationVar(&f.PendingTimeout, "pending-timeout", controlplane.DefaultPendingTimeout, "fail a task still pending this long after its creation (its region never picked it up) with code region_unavailable; negative: never")
	fs.IntVar(&f.MaxAttempts, "max-attempts", task.DefaultMaxAttempts, "most attempts per task, the first and its retries (POST /api/v1/tasks/{id}/retry, --auto-retry); a task that fails on its last goes to the dead-letter list")
	fs.BoolVar(&f.AutoRetry, "auto-retry", false, "retry failed tasks automatically, with exponential backoff (30 s doubling to 10 min, jittered), except failures retrying cannot fix (no_disk, disk_too_small, bad_image, no_checksum, boot_files_missing)")
}

// Apply sets the caps in cfg.
func (f *CapacityFlags) Apply(cfg *controlplane.Config) {
	cfg.MaxActiveTasks, cfg.MaxActiveTasksPerRegion = f.MaxActive, f.MaxActivePerRegion
	cfg.RateLimit, cfg.RateBurst = rate.Limit(f.RateLimit), f.RateBurst
	cfg.PendingTimeout = f.PendingTimeout
	cfg.MaxAttempts, cfg.AutoRetry = f.MaxAttempts, f.AutoRetry
}

// BMCKeyFlag is --bmc-key-file: the key that seals the BMC passwords of
// machine records (machine.Sealer). The control plane seals with it and
// the regions open with it, so every process that runs either needs the
// same file.
type BMCKeyFlag struct{ File string }

// Register adds --bmc-key-file; generated, if set, says where the key is
// kept when the flag is empty (the all-in-one binary's data directory).
func (f *BMCKeyFlag) Register(fs *flag.FlagSet, generated string) {
	help := "file (mode 0600) with the 32-byte key (raw, hex or base64) that seals BMC passwords in machine records; the control plane and every region need the same; empty: BMC passwords are refused"
	if generated != "" {
		help = "file (mode 0600) with the 32-byte key (raw, hex or base64) that seals BMC passwords in machine records (default: " + generated + ", generated on first start)"
	}
	fs.StringVar(&f.File, "bmc-key-file", "", help)
}

// Sealer loads the key; with f.File empty it generates one at generated
// (0600) if that is set, and otherwise returns nil (no BMC passwords).
func (f *BMCKeyFlag) Sealer(generated string) (*machine.Sealer, error) {
	switch {
	case f.File != "":
		return machine.LoadKeyFile(f.File)
	case generated != "":
		if err := os.MkdirAll(filepath.Dir(generated), 0o700); err != nil {
			return nil, err
		}
		return machine.EnsureKeyFile(generated)
	}
	return nil, nil
}
