package power

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
)

// DriverKind names a BMC protocol.
type DriverKind string

const (
	DriverIPMI    DriverKind = "ipmi"
	DriverRedfish DriverKind = "redfish"
)

// Default ports when BMC.Address has none.
const (
	DefaultIPMIPort    = 623
	DefaultRedfishPort = 443
)

// BMC says how to reach a machine's BMC. Its String, GoString and LogValue
// never show the password.
type BMC struct {
	// Driver is DriverIPMI or DriverRedfish.
	Driver DriverKind
	// Address is host[:port] (an IPv6 host in brackets when a port
	// follows); the port defaults to 623 for IPMI and 443 for Redfish.
	Address string
	// Username and Password are the BMC's credentials. IPMI allows at
	// most 16 bytes of user name and 20 of password.
	Username string
	Password string

	// Redfish only.

	// CAPEM is one or more PEM certificates; the BMC's certificate must
	// chain to one of them and name Address's host.
	CAPEM []byte
	// CertSHA256 pins the BMC's certificate instead: the SHA-256
	// fingerprint of its DER form, in hex, with or without colons. Any
	// other certificate is refused; the name in it is not checked (BMCs'
	// self-signed certificates rarely name their address).
	// With neither CAPEM nor CertSHA256 the system's roots are used.
	CertSHA256 string
	// SystemID picks the computer system under /redfish/v1/Systems
	// (e.g. "1" or "System.Embedded.1"); empty means the first member.
	SystemID string
}

// String shows the driver, user and address, never the password.
func (b BMC) String() string {
	s := string(b.Driver) + "://"
	if b.Username != "" {
		s += b.Username + "@"
	}
	s += b.Address
	if b.SystemID != "" {
		s += "/" + b.SystemID
	}
	return s
}

// GoString is String, so that %#v does not print the password either.
func (b BMC) GoString() string { return "power.BMC(" + b.String() + ")" }

// LogValue is the BMC for slog, without the password.
func (b BMC) LogValue() slog.Value {
	attrs := []slog.Attr{
		slog.String("driver", string(b.Driver)),
		slog.String("address", b.Address),
		slog.String("username", b.Username),
	}
	if b.SystemID != "" {
		attrs = append(attrs, slog.String("system_id", b.SystemID))
	}
	if b.CertSHA256 != "" {
		attrs = append(attrs, slog.String("cert_sha256", b.CertSHA256))
	}
	return slog.GroupValue(attrs...)
}

// Validate checks the configuration and returns every problem found, each
// a *ValidationError naming the field (errors.Is(err, ErrInvalid) holds).
func (b BMC) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	switch b.Driver {
	case DriverIPMI, DriverRedfish:
	case "":
		bad("Driver", "missing: ipmi or redfish")
	default:
		bad("Driver", "%q is not ipmi or redfish", string(b.Driver))
	}
	if _, _, err := b.hostPort(); err != nil {
		bad("Address", "%v", err)
	}
	if b.Username == "" {
		bad("Username", "missing")
	} else if strings.ContainsAny(b.Username, "\x00\r\n") {
		bad("Username", "contains a control character")
	}
	if b.Password == "" {
		bad("Password", "missing")
	}
	if b.Driver == DriverIPMI {
		// RMCP+ limits (IPMI 2.0 §13.17, §13.20).
		if len(b.Username) > 16 {
			bad("Username", "longer than IPMI's 16 bytes")
		}
		if len(b.Password) > 20 {
			bad("Password", "longer than IPMI's 20 bytes")
		}
		if len(b.CAPEM) > 0 {
			bad("CAPEM", "only for redfish")
		}
		if b.CertSHA256 != "" {
			bad("CertSHA256", "only for redfish")
		}
		if b.SystemID != "" {
			bad("SystemID", "only for redfish")
		}
	}
	if len(b.CAPEM) > 0 {
		if _, err := certPool(b.CAPEM); err != nil {
			bad("CAPEM", "%v", err)
		}
	}
	if b.CertSHA256 != "" {
		if _, err := parseFingerprint(b.CertSHA256); err != nil {
			bad("CertSHA256", "%v", err)
		}
		if len(b.CAPEM) > 0 {
			bad("CertSHA256", "set together with CAPEM: choose one")
		}
	}
	if strings.ContainsAny(b.SystemID, "/?#% ") {
		bad("SystemID", "%q is not a plain resource ID", b.SystemID)
	}
	return errors.Join(errs...)
}

// hostPort splits Address and applies the driver's default port. Its errors
// do not quote the address: a mistyped "user:password@host" would show the
// password.
func (b BMC) hostPort() (string, int, error) {
	addr := b.Address
	if addr == "" {
		return "", 0, errors.New("missing")
	}
	if strings.Contains(addr, "://") || strings.ContainsAny(addr, "/?#@ ") {
		return "", 0, errors.New("not host[:port]")
	}
	host, portStr, err := net.SplitHostPort(addr)
	switch {
	case err == nil && portStr == "":
		return "", 0, errors.New("empty port")
	case err != nil && strings.HasPrefix(addr, "[") && strings.HasSuffix(addr, "]"):
		host, portStr = addr[1:len(addr)-1], "" // [IPv6] without a port
	case err != nil:
		host, portStr = addr, "" // no port, or a bare IPv6 address
	}
	if host == "" {
		return "", 0, errors.New("no host")
	}
	if strings.ContainsAny(host, "[]") || (strings.Contains(host, ":") && net.ParseIP(host) == nil) {
		return "", 0, errors.New("not host[:port]")
	}
	port := DefaultIPMIPort
	if b.Driver == DriverRedfish {
		port = DefaultRedfishPort
	}
	if portStr != "" {
		port, err = strconv.Atoi(portStr)
		if err != nil || port < 1 || port > 65535 {
			return "", 0, fmt.Errorf("port %q is not 1-65535", portStr)
		}
	}
	return host, port, nil
}

func certPool(pemData []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for rest := pemData; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return pool, nil
}

func parseFingerprint(s string) ([]byte, error) {
	h := strings.ToLower(strings.ReplaceAll(s, ":", ""))
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 32 {
		return nil, errors.New("not a SHA-256 fingerprint (64 hex digits)")
	}
	return b, nil
}

// Option changes how Open builds a driver.
type Option func(*options)

type options struct {
	log *slog.Logger
}

// WithLogger gives the driver a logger (default: none, nothing is logged).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.log = l }
}

// Open validates b, connects to the BMC with the driver b names and logs
// in. ctx bounds only the connection: the driver lives until its Close.
func Open(ctx context.Context, b BMC, opts ...Option) (Driver, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	o.log = o.log.With("bmc", b)
	switch b.Driver {
	case DriverIPMI:
		return openIPMI(ctx, b, o)
	case DriverRedfish:
		return openRedfish(ctx, b, o)
	}
	return nil, &ValidationError{Field: "Driver", Reason: "unknown"} // unreachable after Validate
}
