package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane/auth"
)

var (
	hsSecret = []byte("0123456789abcdef0123456789abcdef-hs256")
	rsaKey   = func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	}()
	// now is the authenticator's clock in these tests: far from the wall
	// clock, so that a check against time.Now would be caught.
	now = time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
)

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	require.NoError(t, err)
	return tok
}

func TestAuthenticate(t *testing.T) {
	const clearToken = "viewer-token-0123456789"
	a, err := auth.New(auth.Config{
		Tokens:       []auth.StaticToken{{Token: clearToken, Subject: "vera", Role: auth.RoleViewer}},
		HashedTokens: []auth.HashedToken{{SHA256: strings.ToUpper(auth.HashToken("operator-token-0123456789")), Subject: "otto", Role: auth.RoleOperator}},
		JWT:          &auth.JWTConfig{HS256Secret: hsSecret, RS256Keys: []*rsa.PublicKey{&rsaKey.PublicKey}, Issuer: "https://idp.example", Audience: "lpmos"},
		Now:          func() time.Time { return now },
	})
	require.NoError(t, err)

	claims := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "jo@example.com", "role": "admin", "iss": "https://idp.example", "aud": "lpmos", "exp": now.Add(time.Hour).Unix()}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	hs := func(extra jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, hsSecret, claims(extra)) }

	admin := auth.Principal{Subject: "jwt:jo@example.com", Role: auth.RoleAdmin, Method: "jwt"}
	tests := []struct {
		name  string
		token string
		want  auth.Principal // zero: refused
	}{
		{"JWT named like a static token", hs(jwt.MapClaims{"sub": "vera"}), auth.Principal{Subject: "jwt:vera", Role: auth.RoleAdmin, Method: "jwt"}},
		{"clear token", clearToken, auth.Principal{Subject: "token:vera", Role: auth.RoleViewer, Method: "token"}},
		{"hashed token (hash in any case)", "operator-token-0123456789", auth.Principal{Subject: "hashed:otto", Role: auth.RoleOperator, Method: "hashed"}},
		{"HS256", hs(nil), admin},
		{"RS256", sign(t, jwt.SigningMethodRS256, rsaKey, claims(jwt.MapClaims{"role": "viewer"})), auth.Principal{Subject: "jwt:jo@example.com", Role: auth.RoleViewer, Method: "jwt"}},
		{"expired by the injected clock", hs(jwt.MapClaims{"exp": now.Add(-time.Hour).Unix()}), auth.Principal{}},
		{"expired within the leeway", hs(jwt.MapClaims{"exp": now.Add(-10 * time.Second).Unix()}), admin},
		{"valid only by the wall clock", hs(jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}), auth.Principal{}},
		{"no exp", hs(jwt.MapClaims{"exp": nil}), auth.Principal{}},
		{"no role", hs(jwt.MapClaims{"role": nil}), auth.Principal{}},
		{"unknown role", hs(jwt.MapClaims{"role": "root"}), auth.Principal{}},
		{"no subject", hs(jwt.MapClaims{"sub": nil}), auth.Principal{}},
		{"wrong issuer", hs(jwt.MapClaims{"iss": "https://evil.example"}), auth.Principal{}},
		{"wrong audience", hs(jwt.MapClaims{"aud": "other"}), auth.Principal{}},
		{"one of its audiences", hs(jwt.MapClaims{"aud": []string{"other", "lpmos"}}), admin},
		{"no audience", hs(jwt.MapClaims{"aud": nil}), auth.Principal{}},
		{"no issuer", hs(jwt.MapClaims{"iss": nil}), auth.Principal{}},
		{"lives a day", hs(jwt.MapClaims{"iat": now.Add(-time.Hour).Unix(), "exp": now.Add(23 * time.Hour).Unix()}), admin},
		{"lives 100 years", hs(jwt.MapClaims{"iat": now.Add(-time.Hour).Unix(), "exp": now.AddDate(100, 0, 0).Unix()}), auth.Principal{}},
		{"lives 25 hours, most of them gone", hs(jwt.MapClaims{"iat": now.Add(-24 * time.Hour).Unix(), "exp": now.Add(time.Hour).Unix()}), auth.Principal{}},
		{"no iat, expires in 100 years", hs(jwt.MapClaims{"exp": now.AddDate(100, 0, 0).Unix()}), auth.Principal{}},
		{"no iat, expires in 23 hours", hs(jwt.MapClaims{"exp": now.Add(23 * time.Hour).Unix()}), admin},
		{"issued in the future", hs(jwt.MapClaims{"iat": now.AddDate(100, 0, 0).Unix(), "exp": now.AddDate(100, 0, 0).Add(time.Hour).Unix()}), auth.Principal{}},
		{"wrong key", sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-123"), claims(nil)), auth.Principal{}},
		{"unsigned", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil)), auth.Principal{}},
		{"HS256 signed with the RSA public key", sign(t, jwt.SigningMethodHS256, x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey), claims(nil)), auth.Principal{}},
		{"empty", "", auth.Principal{}},
		{"garbage", "not-a-token", auth.Principal{}},
		{"too long", strings.Repeat("a", 9000), auth.Principal{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := a.Authenticate(context.Background(), tt.token)
			if tt.want == (auth.Principal{}) {
				assert.ErrorIs(t, err, auth.ErrUnauthenticated)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestJWTMaxLifetime(t *testing.T) {
	tok := sign(t, jwt.SigningMethodHS256, hsSecret, jwt.MapClaims{"sub": "jo", "role": "viewer", "iat": now.Unix(), "exp": now.Add(72 * time.Hour).Unix()})
	for _, tt := range []struct {
		name string
		max  time.Duration
		ok   bool
	}{
		{"default: a day", 0, false},
		{"a week", 7 * 24 * time.Hour, true},
		{"two days", 48 * time.Hour, false},
		{"unbounded", -1, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := auth.New(auth.Config{JWT: &auth.JWTConfig{HS256Secret: hsSecret, MaxLifetime: tt.max}, Now: func() time.Time { return now }})
			require.NoError(t, err)
			_, err = a.Authenticate(context.Background(), tok)
			if tt.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, auth.ErrUnauthenticated)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	tests := []struct {
		name string
		cfg  auth.Config
	}{
		{"nobody could sign in", auth.Config{}},
		{"short token", auth.Config{Tokens: []auth.StaticToken{{Token: "short", Subject: "a", Role: auth.RoleAdmin}}}},
		{"token without subject", auth.Config{Tokens: []auth.StaticToken{{Token: "long-enough-token-123", Role: auth.RoleAdmin}}}},
		{"token without role", auth.Config{HashedTokens: []auth.HashedToken{{SHA256: auth.HashToken("x"), Subject: "a"}}}},
		{"short HS256 secret", auth.Config{JWT: &auth.JWTConfig{HS256Secret: []byte("short")}}},
		{"JWT without keys", auth.Config{JWT: &auth.JWTConfig{Issuer: "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := auth.New(tt.cfg)
			assert.Error(t, err)
		})
	}
}

func TestLoadTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	h := auth.HashToken("some-token-0123456789")
	got, err := auth.LoadTokenFile(write("ok", "# operators\n\n"+strings.ToUpper(h)+" operator otto\n  "+h+"  viewer vera  \n"))
	require.NoError(t, err)
	assert.Equal(t, []auth.HashedToken{{SHA256: h, Role: auth.RoleOperator, Subject: "otto"}, {SHA256: h, Role: auth.RoleViewer, Subject: "vera"}}, got)

	// A token written in clear text where its hash belongs (or anywhere
	// else on a bad line) is never echoed.
	const secret = "s3cret-clear-text-token-42"
	for _, tc := range []struct{ name, text string }{
		{"fields", h + " operator\n"},
		{"hash", "abc operator otto\n"},
		{"role", h + " root otto\n"},
		{"nothex", strings.Repeat("z", 64) + " viewer v\n"},
		{"toomany", h + " viewer v extra\n"},
		{"clear token instead of hash", secret + " admin ada\n"},
		{"clear token alone", secret + "\n"},
		{"clear token with role", secret + " admin\n"},
		{"clear token in the role column", h + " " + secret + " ada\n"},
		{"clear token and more", h + " admin ada " + secret + "\n"},
	} {
		_, err := auth.LoadTokenFile(write(strings.ReplaceAll(tc.name, " ", "_"), tc.text))
		require.Error(t, err, tc.name)
		assert.NotContains(t, err.Error(), secret, tc.name)
		assert.NotContains(t, err.Error(), strings.Repeat("z", 64), tc.name)
		assert.Contains(t, err.Error(), ":1:", "%s: the line is named", tc.name)
	}
	_, err = auth.LoadTokenFile(filepath.Join(dir, "missing"))
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestLoadRSAPublicKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, block *pem.Block) string {
		p := filepath.Join(dir, name)
		data := []byte("not PEM")
		if block != nil {
			data = pem.EncodeToMemory(block)
		}
		require.NoError(t, os.WriteFile(p, data, 0o600))
		return p
	}
	pkix, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	require.NoError(t, err)
	for name, block := range map[string]*pem.Block{
		"pkix":  {Type: "PUBLIC KEY", Bytes: pkix},
		"pkcs1": {Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey)},
	} {
		k, err := auth.LoadRSAPublicKey(write(name, block))
		require.NoError(t, err, name)
		assert.True(t, rsaKey.PublicKey.Equal(k), name)
	}

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecDER, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	require.NoError(t, err)
	for name, block := range map[string]*pem.Block{
		"ec":      {Type: "PUBLIC KEY", Bytes: ecDER},
		"garbage": {Type: "PUBLIC KEY", Bytes: []byte("nope")},
		"nopem":   nil,
	} {
		_, err := auth.LoadRSAPublicKey(write(name, block))
		assert.Error(t, err, name)
	}
}

func TestRoles(t *testing.T) {
	for _, r := range []auth.Role{auth.RoleViewer, auth.RoleOperator, auth.RoleAdmin} {
		got, err := auth.ParseRole(r.String())
		require.NoError(t, err)
		assert.Equal(t, r, got)
	}
	_, err := auth.ParseRole("none")
	assert.Error(t, err, "none is not a role one can be given")
	assert.True(t, auth.RoleViewer < auth.RoleOperator && auth.RoleOperator < auth.RoleAdmin, "each role includes the ones below it")

	_, ok := auth.PrincipalFrom(context.Background())
	assert.False(t, ok)
	p := auth.Principal{Subject: "ada", Role: auth.RoleAdmin, Method: "token"}
	got, ok := auth.PrincipalFrom(auth.WithPrincipal(context.Background(), p))
	require.True(t, ok)
	assert.Equal(t, p, got)
}
