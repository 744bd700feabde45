package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane/auth"
)

// idp is an in-process JWKS server whose key set a test changes.
type idp struct {
	mu       sync.Mutex
	keys     map[string]any // kid → private key
	down     bool
	oversize bool
	requests atomic.Int64
	srv      *httptest.Server
}

func newIDP(t *testing.T) *idp {
	p := &idp{keys: map[string]any{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (p *idp) serve(w http.ResponseWriter, _ *http.Request) {
	p.requests.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	var keys []map[string]string
	for kid, k := range p.keys {
		switch k := k.(type) {
		case *rsa.PrivateKey:
			keys = append(keys, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
				"n": b64u(k.N.Bytes()), "e": b64u(big.NewInt(int64(k.E)).Bytes())})
		case *ecdsa.PrivateKey:
			pub, _ := k.PublicKey.Bytes()
			keys = append(keys, map[string]string{"kty": "EC", "kid": kid, "crv": "P-256",
				"x": b64u(pub[1:33]), "y": b64u(pub[33:])})
		}
	}
	if p.oversize {
		keys = append(keys, map[string]string{"kty": "oct", "k": strings.Repeat("A", auth.MaxJWKSBytes)})
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"keys": keys})
}

func (p *idp) set(kid string, key any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if key == nil {
		delete(p.keys, kid)
	} else {
		p.keys[kid] = key
	}
}

func (p *idp) setDown(down bool) { p.mu.Lock(); p.down = down; p.mu.Unlock() }

// fakeClock is a clock a test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func signKid(t *testing.T, key any, kid string, c *fakeClock, groups any) string {
	t.Helper()
	method := jwt.SigningMethod(jwt.SigningMethodRS256)
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		method = jwt.SigningMethodES256
	}
	tok := jwt.NewWithClaims(method, jwt.MapClaims{"sub": "alice", "groups": groups, "exp": c.Now().Add(time.Hour).Unix()})
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	require.NoError(t, err)
	return s
}

func newRSA(t *testing.T) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	return k
}

func newEC(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	return k
}

func jwksAuth(t *testing.T, p *idp, c *fakeClock, refresh time.Duration) *auth.Authenticator {
	t.Helper()
	a, err := auth.New(auth.Config{Now: c.Now, JWT: &auth.JWTConfig{
		JWKSURL: p.srv.URL + "/jwks", JWKSRefreshInterval: refresh, RoleClaim: "groups",
		RoleMap: map[string]auth.Role{"ops-admins": auth.RoleAdmin, "ops": auth.RoleOperator},
	}})
	require.NoError(t, err)
	return a
}

func TestJWKS(t *testing.T) {
	ctx := context.Background()
	p := newIDP(t)
	rk, ek := newRSA(t), newEC(t)
	p.set("rsa-1", rk)
	p.set("ec-1", ek)
	c := &fakeClock{t: now}
	a := jwksAuth(t, p, c, time.Hour)

	got, err := a.Authenticate(ctx, signKid(t, rk, "rsa-1", c, []string{"ops", "ops-admins"}))
	require.NoError(t, err)
	assert.Equal(t, auth.Principal{Subject: "jwt:alice", Role: auth.RoleAdmin, Method: "jwt"}, got)
	got, err = a.Authenticate(ctx, signKid(t, ek, "ec-1", c, "ops"))
	require.NoError(t, err)
	assert.Equal(t, auth.RoleOperator, got.Role)
	_, err = a.Authenticate(ctx, signKid(t, ek, "ec-1", c, "guests"))
	assert.ErrorIs(t, err, auth.ErrUnauthenticated, "no value maps to a role")
	_, err = a.Authenticate(ctx, signKid(t, ek, "rsa-1", c, "ops"))
	assert.ErrorIs(t, err, auth.ErrUnauthenticated, "a kid of another key type")
	assert.EqualValues(t, 1, p.requests.Load(), "the set is cached")

	// Rotation: a new kid fetches the set again, once the minimum
	// interval has passed.
	rk2 := newRSA(t)
	p.set("rsa-2", rk2)
	c.Advance(31 * time.Second)
	_, err = a.Authenticate(ctx, signKid(t, rk2, "rsa-2", c, "ops"))
	require.NoError(t, err)
	assert.EqualValues(t, 2, p.requests.Load())

	// A forged kid flood fetches at most once per interval.
	c.Advance(31 * time.Second)
	forged := newRSA(t)
	for i := range 50 {
		_, err = a.Authenticate(ctx, signKid(t, forged, "forged-"+string(rune('a'+i%26)), c, "ops"))
		assert.ErrorIs(t, err, auth.ErrUnauthenticated)
	}
	assert.EqualValues(t, 3, p.requests.Load())

	// The IdP down: the last good keys still work.
	p.setDown(true)
	c.Advance(time.Minute)
	_, err = a.Authenticate(ctx, signKid(t, forged, "forged-x", c, "ops"))
	assert.ErrorIs(t, err, auth.ErrUnauthenticated)
	assert.EqualValues(t, 4, p.requests.Load())
	_, err = a.Authenticate(ctx, signKid(t, rk, "rsa-1", c, "ops"))
	require.NoError(t, err)
	p.setDown(false)

	// A key removed from the set is refused after the periodic refresh.
	p.set("rsa-1", nil)
	b := jwksAuth(t, p, c, 10*time.Millisecond)
	_, err = b.Authenticate(ctx, signKid(t, rk, "rsa-1", c, "ops"))
	assert.ErrorIs(t, err, auth.ErrUnauthenticated)
	p.set("rsa-1", rk)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	require.Eventually(t, func() bool {
		_, err := b.Authenticate(ctx, signKid(t, rk, "rsa-1", c, "ops"))
		return err == nil
	}, 10*time.Second, 10*time.Millisecond, "the refresh loop picks up an added key")
	p.set("rsa-1", nil)
	require.Eventually(t, func() bool {
		_, err := b.Authenticate(ctx, signKid(t, rk, "rsa-1", c, "ops"))
		return err != nil
	}, 10*time.Second, 10*time.Millisecond, "the refresh loop drops a removed key")
}

func TestJWKSRefusals(t *testing.T) {
	ctx := context.Background()
	p := newIDP(t)
	rk := newRSA(t)
	p.set("rsa-1", rk)
	c := &fakeClock{t: now}
	a := jwksAuth(t, p, c, time.Hour)
	claims := jwt.MapClaims{"sub": "alice", "groups": "ops", "exp": now.Add(time.Hour).Unix()}

	none := jwt.NewWithClaims(jwt.SigningMethodNone, claims)
	none.Header["kid"] = "rsa-1"
	tok, err := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	require.NoError(t, err)
	_, err = a.Authenticate(ctx, tok)
	assert.ErrorIs(t, err, auth.ErrUnauthenticated, "alg none")

	hs := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	hs.Header["kid"] = "rsa-1"
	pem := []byte(b64u(rk.N.Bytes()))
	tok, err = hs.SignedString(pem)
	require.NoError(t, err)
	_, err = a.Authenticate(ctx, tok)
	assert.ErrorIs(t, err, auth.ErrUnauthenticated, "HS256 with the public key as secret")

	o := newIDP(t)
	o.set("rsa-1", rk)
	o.oversize = true
	b := jwksAuth(t, o, c, time.Hour)
	_, err = b.Authenticate(ctx, signKid(t, rk, "rsa-1", c, "ops"))
	assert.ErrorIs(t, err, auth.ErrUnauthenticated, "oversized key set")

	for _, u := range []string{"http://idp.example/jwks", "ftp://127.0.0.1/jwks", "https:///jwks"} {
		_, err := auth.New(auth.Config{JWT: &auth.JWTConfig{JWKSURL: u}})
		assert.Error(t, err, u)
	}
	_, err = auth.New(auth.Config{JWT: &auth.JWTConfig{JWKSURL: "https://idp.example/jwks"}})
	assert.NoError(t, err)
}

func TestRoleMap(t *testing.T) {
	m, err := auth.ParseRoleMap("ops-admins=admin, ops=operator,*=viewer")
	require.NoError(t, err)
	assert.Equal(t, map[string]auth.Role{"ops-admins": auth.RoleAdmin, "ops": auth.RoleOperator, "*": auth.RoleViewer}, m)
	for _, bad := range []string{"", "ops", "ops=root", "=admin"} {
		_, err := auth.ParseRoleMap(bad)
		assert.Error(t, err, bad)
	}

	tests := []struct {
		name  string
		claim string
		m     map[string]auth.Role
		value any
		want  auth.Role
	}{
		{"default: role names", "", nil, "operator", auth.RoleOperator},
		{"default: array, highest wins", "", nil, []string{"viewer", "admin", "root"}, auth.RoleAdmin},
		{"default: unknown", "", nil, "root", auth.RoleNone},
		{"map: string", "groups", m, "ops", auth.RoleOperator},
		{"map: array, highest wins", "groups", m, []string{"ops", "ops-admins", "x"}, auth.RoleAdmin},
		{"map: wildcard", "groups", m, []string{"guests"}, auth.RoleViewer},
		{"map: absent claim gets wildcard", "groups", m, nil, auth.RoleViewer},
		{"map without wildcard: no match", "groups", map[string]auth.Role{"ops": auth.RoleOperator}, "guests", auth.RoleNone},
		{"literal * value is no wildcard", "groups", map[string]auth.Role{"*": auth.RoleViewer, "ops": auth.RoleOperator}, "*", auth.RoleViewer},
		{"non-strings ignored", "groups", map[string]auth.Role{"ops": auth.RoleOperator}, []any{1, "ops"}, auth.RoleOperator},
		{"dotted path", "realm_access.roles", map[string]auth.Role{"ops": auth.RoleOperator}, "nested", auth.RoleOperator},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := auth.New(auth.Config{Now: func() time.Time { return now }, JWT: &auth.JWTConfig{HS256Secret: hsSecret, RoleClaim: tt.claim, RoleMap: tt.m}})
			require.NoError(t, err)
			c := jwt.MapClaims{"sub": "bo", "exp": now.Add(time.Hour).Unix()}
			name := tt.claim
			if name == "" {
				name = "role"
			}
			if tt.value == "nested" {
				c["realm_access"] = map[string]any{"roles": []string{"ops"}}
			} else if tt.value != nil {
				c[name] = tt.value
			}
			got, err := a.Authenticate(context.Background(), sign(t, jwt.SigningMethodHS256, hsSecret, c))
			if tt.want == auth.RoleNone {
				assert.ErrorIs(t, err, auth.ErrUnauthenticated)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.Role)
		})
	}
}
