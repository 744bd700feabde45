package cmdutil_test

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/internal/cmdutil"
)

// secretFile writes a file of the kind the sign-in and webhook flags read,
// with the mode given.
func secretFile(t *testing.T, name, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(content), mode))
	require.NoError(t, os.Chmod(p, mode)) // whatever the umask
	return p
}

func TestAuthFlagsApply(t *testing.T) {
	t.Setenv("LPMOS_ADMIN_TOKEN", "")
	const hs = "0123456789abcdef0123456789abcdef-hs256"
	tokens := auth.HashToken("operator-token-0123456789") + " operator otto\n"
	for _, tc := range []struct {
		name    string
		args    func(t *testing.T) []string
		errIs   error
		errHas  string
		checkFn func(t *testing.T, cfg controlplane.Config)
	}{
		{
			name: "HS256 with audience and lifetime",
			args: func(t *testing.T) []string {
				return []string{"--jwt-hs256-secret-file", secretFile(t, "hs", hs+"\n", 0o600), "--jwt-audience", "lpmos", "--jwt-issuer", "idp", "--jwt-max-lifetime", "1h"}
			},
			checkFn: func(t *testing.T, cfg controlplane.Config) {
				require.NotNil(t, cfg.Auth.JWT)
				assert.Equal(t, []byte(hs), cfg.Auth.JWT.HS256Secret)
				assert.Equal(t, "lpmos", cfg.Auth.JWT.Audience)
				assert.Equal(t, "idp", cfg.Auth.JWT.Issuer)
				assert.Equal(t, time.Hour, cfg.Auth.JWT.MaxLifetime)
			},
		},
		{
			name: "default lifetime",
			args: func(t *testing.T) []string {
				return []string{"--jwt-hs256-secret-file", secretFile(t, "hs", hs, 0o400)}
			},
			checkFn: func(t *testing.T, cfg controlplane.Config) {
				require.NotNil(t, cfg.Auth.JWT)
				assert.Equal(t, auth.DefaultMaxJWTLifetime, cfg.Auth.JWT.MaxLifetime)
			},
		},
		{
			name: "empty HS256 secret file",
			args: func(t *testing.T) []string {
				return []string{"--jwt-hs256-secret-file", secretFile(t, "hs", " \n", 0o600)}
			},
			errHas: "empty",
		},
		{
			name: "world-readable HS256 secret",
			args: func(t *testing.T) []string {
				return []string{"--jwt-hs256-secret-file", secretFile(t, "hs", hs, 0o644)}
			},
			errIs: cmdutil.ErrSecretFileMode,
		},
		{
			name: "group-readable HS256 secret",
			args: func(t *testing.T) []string {
				return []string{"--jwt-hs256-secret-file", secretFile(t, "hs", hs, 0o640)}
			},
			errIs: cmdutil.ErrSecretFileMode,
		},
		{
			name:  "world-readable token file",
			args:  func(t *testing.T) []string { return []string{"--token-file", secretFile(t, "tokens", tokens, 0o604)} },
			errIs: cmdutil.ErrSecretFileMode,
		},
		{
			name:  "group-writable token file",
			args:  func(t *testing.T) []string { return []string{"--token-file", secretFile(t, "tokens", tokens, 0o620)} },
			errIs: cmdutil.ErrSecretFileMode,
		},
		{
			name: "private token file",
			args: func(t *testing.T) []string { return []string{"--token-file", secretFile(t, "tokens", tokens, 0o600)} },
			checkFn: func(t *testing.T, cfg controlplane.Config) {
				require.Len(t, cfg.Auth.HashedTokens, 1)
				assert.Equal(t, "otto", cfg.Auth.HashedTokens[0].Subject)
			},
		},
		{
			name:   "audience without a JWT key",
			args:   func(t *testing.T) []string { return []string{"--jwt-audience", "lpmos"} },
			errHas: "--jwt-audience",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f cmdutil.AuthFlags
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f.Register(fs)
			require.NoError(t, fs.Parse(tc.args(t)))
			var cfg controlplane.Config
			_, err := f.Apply(&cfg)
			switch {
			case tc.errIs != nil:
				assert.ErrorIs(t, err, tc.errIs)
			case tc.errHas != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.errHas)
			default:
				require.NoError(t, err)
				tc.checkFn(t, cfg)
			}
		})
	}
}

func TestWebhookFlagsApply(t *testing.T) {
	t.Setenv("LPMOS_WEBHOOK_SECRET", "")
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		errIs   error
		errHas  string
	}{
		{"private", "hook-secret\n", 0o600, nil, ""},
		{"world-readable", "hook-secret", 0o644, cmdutil.ErrSecretFileMode, ""},
		{"empty", "\n", 0o600, nil, "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := cmdutil.WebhookFlags{URLs: "http://127.0.0.1:9/hook", SecretFile: secretFile(t, "hook", tc.content, tc.mode)}
			var cfg controlplane.Config
			err := f.Apply(&cfg)
			switch {
			case tc.errIs != nil:
				assert.ErrorIs(t, err, tc.errIs)
			case tc.errHas != "":
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.errHas)
			default:
				require.NoError(t, err)
				assert.Equal(t, []byte("hook-secret"), cfg.Webhooks.Secret)
			}
		})
	}
}
