// Package testpki makes throw-away certificate authorities and
// certificates for tests that run real TLS servers and clients (the
// region's HTTPS, firmware that is handed a CA, mutual TLS to etcd). It is
// for tests only: keys are written unencrypted into the test's directory.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority whose certificate is in CertFile (PEM).
type CA struct {
	Cert     *x509.Certificate
	CertFile string
	key      crypto.Signer
	dir      string
	rsa      bool
}

// Leaf is a certificate issued by a CA, with its files (PEM).
type Leaf struct {
	Cert              *x509.Certificate
	CertFile, KeyFile string
}

// NewCA makes a CA named name, with ECDSA P-256 keys, in a temporary
// directory of t.
func NewCA(t testing.TB, name string) *CA { return newCA(t, name, false) }

// NewRSACA is NewCA with RSA 2048 keys, for peers that may lack ECDSA
// (UEFI firmware).
func NewRSACA(t testing.TB, name string) *CA { return newCA(t, name, true) }

func newCA(t testing.TB, name string, useRSA bool) *CA {
	t.Helper()
	dir := t.TempDir()
	c, key := create(t, name, nil, nil, nil, useRSA)
	ca := &CA{Cert: c, key: key, dir: dir, CertFile: filepath.Join(dir, "ca.crt"), rsa: useRSA}
	write(t, ca.CertFile, "CERTIFICATE", c.Raw)
	return ca
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue makes a leaf certificate for name, valid for hosts (DNS names or
// IP addresses) for server and client authentication, signed by the CA.
func (ca *CA) Issue(t testing.TB, name string, hosts ...string) Leaf {
	t.Helper()
	c, key := create(t, name, ca.Cert, ca.key, hosts, ca.rsa)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	l := Leaf{Cert: c, CertFile: filepath.Join(ca.dir, name+".crt"), KeyFile: filepath.Join(ca.dir, name+".key")}
	write(t, l.CertFile, "CERTIFICATE", c.Raw)
	write(t, l.KeyFile, "PRIVATE KEY", der)
	return l
}

func create(t testing.TB, name string, parent *x509.Certificate, parentKey crypto.Signer, hosts []string, useRSA bool) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	var key crypto.Signer
	var err error
	if useRSA {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
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
	if useRSA {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment // RSA key exchange, for old TLS stacks
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		tmpl.ExtKeyUsage = nil
	} else {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatalf("testpki: create %s: %v", name, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return c, key
}

func write(t testing.TB, name, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(name, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("testpki: %v", err)
	}
}

// efiCertX509 is EFI_CERT_X509_GUID (a5c059a1-94e4-4aa7-87b5-ab155c2bf072)
// as it is laid out in memory: the first three fields little-endian.
var efiCertX509 = [16]byte{0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72}

// EDK2CACerts encodes certificates as the EDK2 firmware reads its trusted
// CAs for HTTPS boot (OVMF: QEMU -fw_cfg name=etc/edk2/https/cacerts,
// file=...): one EFI_SIGNATURE_LIST of type EFI_CERT_X509_GUID per
// certificate, each holding one EFI_SIGNATURE_DATA (an owner GUID, zero
// here, and the certificate's DER), what `p11-kit extract
// --format=edk2-cacerts` writes.
func EDK2CACerts(certs ...*x509.Certificate) []byte {
	var out []byte
	le32 := func(v int) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }
	for _, c := range certs {
		sigSize := 16 + len(c.Raw)
		out = append(out, efiCertX509[:]...)
		out = append(out, le32(16+4+4+4+sigSize)...) // SignatureListSize
		out = append(out, le32(0)...)                // SignatureHeaderSize
		out = append(out, le32(sigSize)...)          // SignatureSize
		out = append(out, make([]byte, 16)...)       // SignatureOwner
		out = append(out, c.Raw...)
	}
	return out
}
