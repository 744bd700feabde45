package agent

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/lpmos/lpmos/agent/httpc"
)

// ErrCertificatePin is wrapped by the error of a TLS handshake whose
// server certificate is not the pinned one (Config.RegionCertSHA256), and
// of a request or redirect to a plain http:// URL under a pin.
var ErrCertificatePin = errors.New("region certificate does not match the pin")

// CertSHA256 is the pin of a certificate: the SHA-256 of the leaf's DER,
// as 64 lowercase hex digits (what lpmos.region_cert_sha256= carries).
func CertSHA256(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// validatePin checks a certificate pin and that the region URL it guards
// is https: a pin on plain HTTP would protect nothing.
func validatePin(pin, regionURL string) error {
	if pin == "" {
		return nil
	}
	if len(pin) != 64 || strings.Trim(pin, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: lpmos.region_cert_sha256 must be 64 lowercase hex digits", ErrInvalidConfig)
	}
	if !strings.HasPrefix(regionURL, "https://") {
		return fmt.Errorf("%w: lpmos.region_cert_sha256 is given but lpmos.region %q is not https://: refusing plain HTTP", ErrInvalidConfig, regionURL)
	}
	return nil
}

// PinnedTLSConfig returns a TLS client configuration (TLS 1.2 or later)
// that accepts exactly one server certificate: the leaf whose SHA-256 is
// pin. The chain, the host name and the expiry are not checked — the pin
// is the whole trust decision, which suits a region's self-signed
// certificate whose digest reached the machine with its token.
func PinnedTLSConfig(pin string) *tls.Config {
	want := strings.ToLower(pin)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is VerifyConnection's, against the pin.
		InsecureSkipVerify: true, //nolint:gosec // the pin replaces chain verification
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: the server sent no certificate", ErrCertificatePin)
			}
			if got := CertSHA256(cs.PeerCertificates[0].Raw); got != want {
				return fmt.Errorf("%w: server certificate SHA-256 %s, pinned %s", ErrCertificatePin, got, want)
			}
			return nil
		},
	}
}

// NewHTTPClient returns the agent's HTTP client (see package httpc): no
// proxy, dial and TLS handshake timeouts, no response-header timeout (the
// approval long-poll holds the headers back). With a pin (64 hex digits) it
// talks TLS only, accepts only the pinned certificate and follows no
// redirect to plain http; without one, https URLs are checked against the
// system's roots. The agent's image downloads use the same client, so they
// are pinned too.
func NewHTTPClient(pin string) *httpc.Client {
	c := &httpc.Client{}
	if pin != "" {
		c.TLSConfig = PinnedTLSConfig(pin)
		c.CheckURL = HTTPSOnly
	}
	return c
}

// HTTPSOnly refuses a URL (a redirect's included) that is not https, so
// that a pinned agent never sends its token in the clear. It is
// httpc.Client.CheckURL under a pin.
func HTTPSOnly(u *url.URL) error {
	if u.Scheme != "https" {
		return fmt.Errorf("%w: refusing %s: only https is allowed under a certificate pin", ErrCertificatePin, u.Redacted())
	}
	return nil
}
