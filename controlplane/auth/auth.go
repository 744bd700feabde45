// Package auth is how callers of the control plane prove who they are:
// static bearer tokens (given in clear or known only by their SHA-256, as
// token files hold them), and JWTs signed with HS256 or RS256, each
// yielding a Principal with a Role. It turns a token into a Principal and
// nothing more: where the token comes from (a header, a WebSocket
// subprotocol), which role an endpoint needs and what happens on refusal
// stay with the control plane. There is no anonymous access.
package auth

import (
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
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
// do; "exp" is required, an "iat" in the future is refused, and a token
// may not live longer than MaxLifetime.
type JWTConfig struct {
	// HS256Secret verifies HS256 tokens (at least 32 bytes).
	HS256Secret []byte
	// RS256Keys verify RS256 tokens.
	RS256Keys []*rsa.PublicKey
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

// Config says who may sign in. At least one token or a JWT configuration
// is required.
type Config struct {
	Tokens       []StaticToken
	HashedTokens []HashedToken
	JWT          *JWTConfig
	// Now is the clock JWT expiry is checked against (default time.Now).
	Now func() time.Time
}

type jwtClaims struct {
	Role string `json:"role"`
	jwt.RegisteredClaims
}

// Authenticator turns a bearer token into a Principal. It is safe for
// concurrent use.
type Authenticator struct {
	static map[string]Principal // by token hash
	jwt    *JWTConfig
	parser *jwt.Parser
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
		if len(methods) == 0 {
			return nil, errors.New("JWT: no HS256 secret and no RS256 key")
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

// Authenticate returns the caller a bearer token stands for. Its errors
// wrap ErrUnauthenticated.
func (a *Authenticator) Authenticate(token string) (Principal, error) {
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
		switch t.Method.Alg() {
		case "HS256":
			return a.jwt.HS256Secret, nil
		case "RS256":
			return jwt.VerificationKeySet{Keys: toVerificationKeys(a.jwt.RS256Keys)}, nil
		}
		return nil, fmt.Errorf("unexpected signing method %s", t.Method.Alg())
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
	role, err := ParseRole(claims.Role)
	if err != nil || claims.Subject == "" {
		return Principal{}, fmt.Errorf("%w: token needs a sub and a role claim", ErrUnauthenticated)
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
