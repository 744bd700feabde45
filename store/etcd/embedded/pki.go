package embedded

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/lpmos/lpmos/store/etcd"
)

func pkiFiles(dir string) etcd.PKI {
	return etcd.PKI{
		Dir:            dir,
		CAFile:         filepath.Join(dir, "ca.crt"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKeyFile:  filepath.Join(dir, "server.key"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKeyFile:  filepath.Join(dir, "client.key"),
	}
}

func caKeyFile(p etcd.PKI) string { return filepath.Join(p.Dir, "ca.key") }

// Certificate lifetimes. The CA outlives any sensible deployment because
// replacing it invalidates every copy handed to other processes; leaves are
// renewed on a start within renewBefore of their expiry.
const (
	caLifetime   = 20 * 365 * 24 * time.Hour
	leafLifetime = 2 * 365 * 24 * time.Hour
	renewBefore  = 30 * 24 * time.Hour
)

// EnsurePKI makes sure dir holds a CA, a server certificate valid for host
// (and loopback), and a client certificate, generating what is missing,
// expiring or, for the server certificate, no longer naming host. An
// existing valid CA is never replaced, so copies of it and of the client
// certificate held elsewhere keep working.
func EnsurePKI(dir, host string) (etcd.PKI, error) {
	p := pkiFiles(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, fmt.Errorf("etcd PKI: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone.
	if err := os.Chmod(dir, 0o700); err != nil {
		return p, fmt.Errorf("etcd PKI: %w", err)
	}
	now := time.Now()
	ca, caKey, err := loadPair(p.CAFile, caKeyFile(p))
	fresh := err != nil || !ca.IsCA || now.Add(renewBefore).After(ca.NotAfter)
	if fresh {
		if !errors.Is(err, os.ErrNotExist) && err != nil {
			return p, fmt.Errorf("etcd PKI in %s (delete the directory to start over): %w", dir, err)
		}
		if ca, caKey, err = newCert(nil, nil, "lpmos etcd CA", nil, now, caLifetime); err != nil {
			return p, err
		}
		if err := writePair(p.CAFile, caKeyFile(p), ca, caKey); err != nil {
			return p, err
		}
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if host != "" && !slices.Contains(hosts, host) {
		hosts = append(hosts, host)
	}
	leaves := []struct {
		name, certFile, keyFile string
		hosts                   []string
	}{
		{"lpmos etcd server", p.ServerCertFile, p.ServerKeyFile, hosts},
		{"lpmos", p.ClientCertFile, p.ClientKeyFile, nil},
	}
	for _, l := range leaves {
		if !fresh && leafValid(l.certFile, l.keyFile, ca, l.hosts, now) {
			continue
		}
		c, k, err := newCert(ca, caKey, l.name, l.hosts, now, leafLifetime)
		if err != nil {
			return p, err
		}
		if err := writePair(l.certFile, l.keyFile, c, k); err != nil {
			return p, err
		}
	}
	return p, nil
}

// leafValid reports whether a certificate exists, was signed by ca, is not
// about to expire and names every host.
func leafValid(certFile, keyFile string, ca *x509.Certificate, hosts []string, now time.Time) bool {
	c, _, err := loadPair(certFile, keyFile)
	if err != nil || c.CheckSignatureFrom(ca) != nil || now.Add(renewBefore).After(c.NotAfter) {
		return false
	}
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// newCert creates a P-256 key and a certificate for it, self-signed when
// parent is nil. Leaves serve both sides of TLS: etcd's gRPC gateway dials
// the member with the server certificate as its client certificate.
func newCert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, hosts []string, now time.Time, life time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd PKI: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, nil, fmt.Errorf("etcd PKI: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"lpmos"}},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew between processes
		NotAfter:     now.Add(life),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	signer, signerKey := tmpl, key
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.ExtKeyUsage = nil
	} else {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd PKI: create %s certificate: %w", cn, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("etcd PKI: %w", err)
	}
	return c, key, nil
}

func loadPair(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, err
	}
	pair, err := tls.X509KeyPair(cb, kb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, fmt.Errorf("%s: not an ECDSA key", keyFile)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certFile, err)
	}
	return c, key, nil
}

func writePair(certFile, keyFile string, c *x509.Certificate, key *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("etcd PKI: %w", err)
	}
	// The key first: a certificate without its key is treated as missing.
	if err := writeFile0600(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})); err != nil {
		return err
	}
	return writeFile0600(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// writeFile0600 replaces name atomically, so a crash never leaves half a
// key, and with mode 0600 whatever the umask or an older file's mode.
func writeFile0600(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return fmt.Errorf("etcd PKI: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("etcd PKI: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("etcd PKI: write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("etcd PKI: write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("etcd PKI: write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("etcd PKI: %w", err)
	}
	return nil
}
