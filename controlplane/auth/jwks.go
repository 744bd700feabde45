package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Defaults of the JWKS key source.
const (
	// DefaultJWKSRefreshInterval is how often the key set is fetched
	// again, so that keys the IdP retired stop working.
	DefaultJWKSRefreshInterval = 15 * time.Minute
	// DefaultJWKSMinRefreshInterval bounds the fetches an unknown kid
	// triggers: anyone can send a token with a made-up kid, and that must
	// not make us hammer the IdP.
	DefaultJWKSMinRefreshInterval = 30 * time.Second
	// MaxJWKSBytes bounds a key set document; real ones are a few KiB.
	MaxJWKSBytes = 256 << 10
	jwksTimeout  = 10 * time.Second
	minRSABits   = 2048
)

// ErrInsecureJWKSURL is returned for a JWKS URL that is not HTTPS (plain
// HTTP is accepted only to a loopback address, for tests): keys fetched
// in clear could be swapped on the way for the attacker's.
var ErrInsecureJWKSURL = errors.New("JWKS URL must be https (http only to a loopback address)")

// jwksAlgs are the algorithms JWKS keys verify, by key type.
var jwksAlgs = map[string]string{
	"RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
	"ES256": "P-256", "ES384": "P-384", "ES512": "P-521",
}

// checkJWKSURL refuses a URL keys must not be fetched from.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("JWKS URL: %w", err)
	}
	switch {
	case u.Host == "":
		return fmt.Errorf("JWKS URL %q: no host", raw)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopback(u.Hostname()):
		return nil
	}
	return fmt.Errorf("%q: %w", raw, ErrInsecureJWKSURL)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// jwk is one key of a set, as RFC 7517 and 7518 write it.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// jwkKey is a parsed key: what it verifies and with which algorithms.
type jwkKey struct {
	kid string
	alg string // "" when the set did not say: any algorithm of its type
	typ string // "RSA" or the EC curve name
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

func (k jwkKey) fits(alg string) bool {
	return jwksAlgs[alg] == k.typ && (k.alg == "" || k.alg == alg)
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// parseJWK turns a key of the set into a verification key, or says why
// it is skipped.
func parseJWK(j jwk) (jwkKey, error) {
	if j.Use != "" && j.Use != "sig" {
		return jwkKey{}, fmt.Errorf("use %q", j.Use)
	}
	if _, ok := jwksAlgs[j.Alg]; j.Alg != "" && !ok {
		return jwkKey{}, fmt.Errorf("unsupported alg %q", j.Alg)
	}
	k := jwkKey{kid: j.Kid, alg: j.Alg}
	switch j.Kty {
	case "RSA":
		n, err := b64(j.N)
		if err != nil || len(n) == 0 {
			return jwkKey{}, errors.New("bad RSA modulus")
		}
		e, err := b64(j.E)
		if err != nil || len(e) == 0 || len(e) > 4 {
			return jwkKey{}, errors.New("bad RSA exponent")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if pub.N.BitLen() < minRSABits {
			return jwkKey{}, fmt.Errorf("RSA key of %d bits (at least %d)", pub.N.BitLen(), minRSABits)
		}
		if pub.E < 3 || pub.E%2 == 0 {
			return jwkKey{}, errors.New("bad RSA exponent")
		}
		k.typ, k.key = "RSA", pub
	case "EC":
		var curve elliptic.Curve
		switch j.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return jwkKey{}, fmt.Errorf("unsupported curve %q", j.Crv)
		}
		size := (curve.Params().BitSize + 7) / 8
		x, errX := b64(j.X)
		y, errY := b64(j.Y)
		if errX != nil || errY != nil || len(x) != size || len(y) != size {
			return jwkKey{}, errors.New("bad EC point")
		}
		// ParseUncompressedPublicKey checks the point is on the curve: an
		// invalid point is a known way to attack ECDSA verifiers.
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
		if err != nil {
			return jwkKey{}, fmt.Errorf("bad EC point: %w", err)
		}
		k.typ, k.key = j.Crv, pub
	default:
		return jwkKey{}, fmt.Errorf("unsupported kty %q", j.Kty)
	}
	if k.alg != "" && jwksAlgs[k.alg] != k.typ {
		return jwkKey{}, fmt.Errorf("alg %s does not fit a %s key", k.alg, k.typ)
	}
	return k, nil
}

// jwks is a key set fetched from a URL: cached, fetched again every
// refresh interval by Run, and on demand when a token names a kid it does
// not hold, at most once per minRefresh. A failed fetch keeps the last
// good set.
type jwks struct {
	url        string
	client     *http.Client
	log        *slog.Logger
	now        func() time.Time
	refresh    time.Duration
	minRefresh time.Duration

	fetchMu   sync.Mutex // one fetch at a time
	mu        sync.Mutex
	keys      []jwkKey
	lastFetch time.Time // last attempt, good or not, by now
}

func newJWKS(j *JWTConfig, log *slog.Logger, now func() time.Time) (*jwks, error) {
	if err := checkJWKSURL(j.JWKSURL); err != nil {
		return nil, err
	}
	s := &jwks{url: j.JWKSURL, client: j.HTTPClient, log: log, now: now,
		refresh: j.JWKSRefreshInterval, minRefresh: j.JWKSMinRefreshInterval}
	if s.refresh <= 0 {
		s.refresh = DefaultJWKSRefreshInterval
	}
	if s.minRefresh <= 0 {
		s.minRefresh = DefaultJWKSMinRefreshInterval
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: jwksTimeout}
	}
	// Redirects are held to the URL's rule too.
	c := *s.client
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		return checkJWKSURL(req.URL.String())
	}
	s.client = &c
	return s, nil
}

// run fetches the set now and then every refresh interval until ctx ends.
func (s *jwks) run(ctx context.Context) {
	t := time.NewTicker(s.refresh)
	defer t.Stop()
	for {
		s.update(ctx, true)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// update fetches the set and, if it is good, replaces the cached one.
// Unless forced, it does nothing when the last fetch is younger than
// minRefresh.
func (s *jwks) update(ctx context.Context, force bool) {
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	s.mu.Lock()
	now := s.now()
	if !force && !s.lastFetch.IsZero() && now.Sub(s.lastFetch) < s.minRefresh {
		s.mu.Unlock()
		return
	}
	s.lastFetch = now
	s.mu.Unlock()
	keys, err := s.fetch(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("fetching the JWKS failed; the last good keys stay in use", "url", s.url, "err", err)
		}
		return
	}
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
}

func (s *jwks) fetch(ctx context.Context) ([]jwkKey, error) {
	ctx, cancel := context.WithTimeout(ctx, jwksTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > MaxJWKSBytes {
		return nil, fmt.Errorf("key set larger than %d bytes", MaxJWKSBytes)
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("decode key set: %w", err)
	}
	var keys []jwkKey
	for i, j := range set.Keys {
		k, err := parseJWK(j)
		if err != nil {
			s.log.Debug("JWKS key skipped", "url", s.url, "index", i, "kid", j.Kid, "reason", err)
			continue
		}
		keys = append(keys, k)
	}
	// An empty set would lock every JWT user out; more likely the IdP
	// answered with something else, so the last good set stays.
	if len(keys) == 0 {
		return nil, fmt.Errorf("no usable key among %d", len(set.Keys))
	}
	return keys, nil
}

// lookup returns the keys that may verify a token of alg and kid (every
// key of the algorithm's type for a token without kid).
func (s *jwks) lookup(alg, kid string) []jwt.VerificationKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []jwt.VerificationKey
	for _, k := range s.keys {
		if k.fits(alg) && (kid == "" || k.kid == kid) {
			out = append(out, k.key)
		}
	}
	return out
}

// keysFor returns the keys for a token, fetching the set again if none
// fits and the last fetch is at least minRefresh old.
func (s *jwks) keysFor(ctx context.Context, alg, kid string) []jwt.VerificationKey {
	if keys := s.lookup(alg, kid); len(keys) > 0 {
		return keys
	}
	s.update(ctx, false)
	return s.lookup(alg, kid)
}
