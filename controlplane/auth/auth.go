// Package auth is how callers of the control plane prove who they are:
// static bearer tokens (given in clear or known only by their SHA-256, as
// token files hold them), and JWTs signed with HS256, RS256 or keys of an
// identity provider's JWKS URL (OIDC ID tokens), each yielding a Principal
// with a Role, from a claim through an optional mapping. It turns a token into a Principal and
// nothing more: where the token comes from (a header, a WebSocket
// subprotocol), which role an endpoint needs and what happens on refusal
// stay with the control plane. There is no anonymous access.
package auth

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// StaticToken is a bearer token given in clear text (e.g. the admin token
// from LPMOS_ADMIN_TOKEN); only its hash is kept in memory.
type StaticToken struct {
	Token   string
	Subject string
	Role    Role
}

// HashedToken is a static token known only by its SHA-256, as read from a
// token file, so the file does not hold secrets.
type HashedToken struct {
	SHA256  string // lowercase hex of sha256(token)
	Subject string
	Role    Role
}

// HashToken returns the hex SHA-256 of a token, as token files hold it.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// LoadTokenFile reads hashed tokens, one per line:
//
//	<sha256-hex> <role> <subject>
//
// Blank lines and lines starting with # are ignored. Its errors name the
// line and what is wrong with it but never quote it: an operator who
// wrote a token in clear text instead of its hash must not find it in a
// log.
func LoadTokenFile(path string) ([]HashedToken, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token file: %w", err)
	}
	var out []HashedToken
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("%s:%d: want \"<sha256-hex> <role> <subject>\" (%d fields)", path, n+1, len(f))
		}
		if b, err := hex.DecodeString(f[0]); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%s:%d: the first field is not a hex SHA-256 (64 hex digits; write auth.HashToken of the token, never the token)", path, n+1)
		}
		role, err := ParseRole(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: the second field is not a role (viewer, operator, admin)", path, n+1)
		}
		out = append(out, HashedToken{SHA256: strings.ToLower(f[0]), Role: role, Subject: f[2]})
	}
	return out, nil
}

// JWTConfig accepts signed JWTs as bearer tokens. The "sub" claim names the
// caller and the "role" claim (viewer, operator, admin) says what it may
// do, unless RoleClaim and RoleMap say otherwise; "exp" is required, an
// "iat" in the future is refused, and a token may not live longer than
// MaxLifetime.
type JWTConfig struct {
	// HS256Secret verifies HS256 tokens (at least 32 bytes).
	HS256Secret []byte
	// RS256Keys verify RS256 tokens.
	RS256Keys []*rsa.PublicKey

	// JWKSURL, when set, is an identity provider's JSON Web Key Set:
	// its RSA and EC keys verify RS256/384/512 and ES256/384/512
	// tokens, chosen by the token's kid. It must be https (http only to
	// a loopback address). Authenticator.Run fetches it at start and
	// every JWKSRefreshInterval (default 15 min); a kid the set does not
	// hold fetches it again, at most once per JWKSMinRefreshInterval
	// (default 30 s), so a key the IdP rotated in works at once and
	// made-up kids cannot make us hammer the IdP. A failed fetch keeps
	// the last good set (and is logged).
	JWKSURL                string
	JWKSRefreshInterval    time.Duration
	JWKSMinRefreshInterval time.Duration
	// HTTPClient fetches the JWKS (default: one with a 10 s timeout).
	HTTPClient *http.Client

	// RoleClaim names the claim the role is read from (default "role"):
	// a string or an array of strings, e.g. an IdP's "groups". A name
	// that is not a top-level claim is followed as a dotted path
	// ("realm_access.roles").
	RoleClaim string
	// RoleMap maps the claim's values to roles; the key "*" gives a
	// role to every token. The highest role any value maps to wins; a
	// token none maps is refused. Without a map the values are role
	// names (viewer, operator, admin).
	RoleMap map[string]Role
	// Issuer and Audience, when set, must match the token's: a token
	// without "iss" or "aud" is then refused.
	Issuer, Audience string
	// MaxLifetime bounds exp-iat (exp-now for a token without iat), so
	// that a leaked long-lived token, or one minted for years by a
	// careless issuer, is refused (default DefaultMaxJWTLifetime;
	// negative: no bound).
	MaxLifetime time.Duration
}

// DefaultMaxJWTLifetime is JWTConfig.MaxLifetime's default: a working day
// with room, longer than any interactive session token needs.
const DefaultMaxJWTLifetime = 24 * time.Hour

// jwtLeeway absorbs clock skew between the issuer and us.
const jwtLeeway = 30 * time.Second

// LoadRSAPublicKey reads a PEM RSA public key (PKIX or PKCS#1).
func LoadRSAPublicKey(path string) (*rsa.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read JWT public key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	if pub, err := x509.ParsePKIXPublicKey(block.Bytes); err == nil {
		if k, ok := pub.(*rsa.PublicKey); ok {
			return k, nil
		}
		return nil, fmt.Errorf("%s: not an RSA key", path)
	}
	return x509.ParsePKCS1PublicKey(block.Bytes)
}

// ParseRoleMap parses "value=role,value=role,*=role", as the
// --jwt-role-map flag takes it, into a JWTConfig.RoleMap.
func ParseRoleMap(s string) (map[string]Role, error) {
	m := map[string]Role{}
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		i := strings.LastIndex(item, "=")
		if i <= 0 {
			return nil, fmt.Errorf("role map entry %q: want value=role", item)
		}
		role, err := ParseRole(strings.TrimSpace(item[i+1:]))
		if err != nil {
			return nil, fmt.Errorf("role map entry %q: %w", item, err)
		}
		m[strings.TrimSpace(item[:i])] = role
	}
	if len(m) == 0 {
		return nil, errors.New("empty role map")
	}
	return m, nil
}

// Config says who may sign in. At least one token or a JWT configuration
// is required.
type Config struct {
	Tokens       []StaticToken
	HashedTokens []HashedToken
	JWT          *JWTConfig
	// Now is the clock JWT expiry is checked against (default time.Now);
	// it also spaces the JWKS fetches unknown kids trigger.
	Now func() time.Time
	// Logger receives failed JWKS fetches (default slog.Default()).
	Logger *slog.Logger
}

// jwtClaims are the registered claims, which the parser validates, and
// all claims, where the role claim is found.
type jwtClaims struct {
	jwt.RegisteredClaims
	all map[string]any
}

func (c *jwtClaims) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &c.RegisteredClaims); err != nil {
		return err
	}
	return json.Unmarshal(b, &c.all)
}

// claim returns a claim by name or, failing that, by dotted path.
func (c *jwtClaims) claim(name string) any {
	if v, ok := c.all[name]; ok {
		return v
	}
	var cur any = c.all
	for _, part := range strings.Split(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

// role is the highest role the claim's values give, RoleNone for none.
func (j *JWTConfig) role(c *jwtClaims) Role {
	var values []string
	switch v := c.claim(j.RoleClaim).(type) {
	case string:
		values = []string{v}
	case []any:
		for _, e := range v {
			if s, ok := e.(string); ok {
				values = append(values, s)
			}
		}
	}
	best := RoleNone
	if j.RoleMap != nil {
		best = j.RoleMap["*"]
	}
	for _, v := range values {
		var r Role
		if j.RoleMap != nil {
			if v == "*" {
				continue // only the map's own "*" means everyone
			}
			r = j.RoleMap[v]
		} else {
			r, _ = ParseRole(v)
		}
		best = max(best, r)
	}
	return best
}

// Authenticator turns a bearer token into a Principal. It is safe for
// concurrent use.
type Authenticator struct {
	static map[string]Principal // by token hash
	jwt    *JWTConfig
	parser *jwt.Parser
	jwks   *jwks // nil without JWTConfig.JWKSURL
	now    func() time.Time
}

// ErrUnauthenticated is every refusal: a missing, unknown, malformed or
// expired token. Callers should not tell the reasons apart to the caller.
var ErrUnauthenticated = errors.New("missing or invalid bearer token")

// maxTokenLen bounds what is hashed or parsed per attempt.
const maxTokenLen = 8192

// New checks cfg and returns its Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Authenticator{static: map[string]Principal{}, now: cfg.Now}
	add := func(hash, method, subject string, role Role) error {
		if subject == "" || role == RoleNone {
			return fmt.Errorf("token for %q: subject and role are required", subject)
		}
		a.static[hash] = newPrincipal(method, subject, role)
		return nil
	}
	for _, t := range cfg.Tokens {
		if len(t.Token) < 16 {
			return nil, fmt.Errorf("token for %q: at least 16 characters", t.Subject)
		}
		if err := add(HashToken(t.Token), MethodToken, t.Subject, t.Role); err != nil {
			return nil, err
		}
	}
	for _, t := range cfg.HashedTokens {
		if err := add(strings.ToLower(t.SHA256), MethodHashed, t.Subject, t.Role); err != nil {
			return nil, err
		}
	}
	if cfg.JWT != nil {
		j := *cfg.JWT
		if j.MaxLifetime == 0 {
			j.MaxLifetime = DefaultMaxJWTLifetime
		}
		if j.RoleClaim == "" {
			j.RoleClaim = "role"
		}
		for v, r := range j.RoleMap {
			if r < RoleViewer || r > RoleAdmin {
				return nil, fmt.Errorf("JWT role map: %q maps to no role", v)
			}
		}
		a.jwt = &j
		if len(j.HS256Secret) > 0 && len(j.HS256Secret) < 32 {
			return nil, errors.New("JWT HS256 secret: at least 32 bytes")
		}
		var methods []string
		if len(j.HS256Secret) > 0 {
			methods = append(methods, "HS256")
		}
		if len(j.RS256Keys) > 0 {
			methods = append(methods, "RS256")
		}
		if j.JWKSURL != "" {
			var err error
			if a.jwks, err = newJWKS(&j, cfg.Logger, cfg.Now); err != nil {
				return nil, err
			}
			for alg := range jwksAlgs {
				if !slices.Contains(methods, alg) {
					methods = append(methods, alg)
				}
			}
		}
		if len(methods) == 0 {
			return nil, errors.New("JWT: no HS256 secret, RS256 key or JWKS URL")
		}
		opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(), jwt.WithLeeway(jwtLeeway), jwt.WithTimeFunc(cfg.Now)}
		if j.Issuer != "" {
			opts = append(opts, jwt.WithIssuer(j.Issuer))
		}
		if j.Audience != "" {
			opts = append(opts, jwt.WithAudience(j.Audience))
		}
		a.parser = jwt.NewParser(opts...)
	}
	if len(a.static) == 0 && a.parser == nil {
		return nil, errors.New("no tokens and no JWT configuration: nobody could sign in (anonymous access is not supported)")
	}
	return a, nil
}

// Run keeps the JWKS current: it fetches it at once and then every
// JWTConfig.JWKSRefreshInterval until ctx ends. Without a JWKS URL it
// returns at once. Tokens are verified without it too, but then the set
// is fetched only when a token needs a key it does not hold.
func (a *Authenticator) Run(ctx context.Context) error {
	if a.jwks != nil {
		a.jwks.run(ctx)
	}
	return nil
}

// Authenticate returns the caller a bearer token stands for; ctx bounds a
// JWKS fetch the token may trigger. Its errors wrap ErrUnauthenticated.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Principal, error) {
	if token == "" || len(token) > maxTokenLen {
		return Principal{}, ErrUnauthenticated
	}
	if p, ok := a.static[HashToken(token)]; ok {
		return p, nil
	}
	if a.parser == nil || strings.Count(token, ".") != 2 {
		return Principal{}, ErrUnauthenticated
	}
	var claims jwtClaims
	_, err := a.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		alg := t.Method.Alg()
		if alg == "HS256" {
			return a.jwt.HS256Secret, nil
		}
		var keys []jwt.VerificationKey
		if alg == "RS256" {
			keys = toVerificationKeys(a.jwt.RS256Keys)
		}
		if _, ok := jwksAlgs[alg]; ok && a.jwks != nil {
			kid, _ := t.Header["kid"].(string)
			keys = append(keys, a.jwks.keysFor(ctx, alg, kid)...)
		}
		if len(keys) == 0 {
			return nil, fmt.Errorf("no key for %s token", alg)
		}
		return jwt.VerificationKeySet{Keys: keys}, nil
	})
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if max := a.jwt.MaxLifetime; max > 0 {
		from := a.now()
		if claims.IssuedAt != nil {
			from = claims.IssuedAt.Time
		}
		if claims.ExpiresAt.Sub(from) > max+jwtLeeway {
			return Principal{}, fmt.Errorf("%w: token lives longer than %v", ErrUnauthenticated, max)
		}
	}
	role := a.jwt.role(&claims)
	if role == RoleNone || claims.Subject == "" {
		return Principal{}, fmt.Errorf("%w: token needs a sub and a %s claim that gives a role", ErrUnauthenticated, a.jwt.RoleClaim)
	}
	return newPrincipal(MethodJWT, claims.Subject, role), nil
}

func toVerificationKeys(keys []*rsa.PublicKey) []jwt.VerificationKey {
	out := make([]jwt.VerificationKey, len(keys))
	for i, k := range keys {
		out[i] = k
	}
	return out
}
