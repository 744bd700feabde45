package testpki

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// The EDK2 CA database is a sequence of EFI_SIGNATURE_LISTs, one X.509
// certificate each, whose sizes add up.
func TestEDK2CACerts(t *testing.T) {
	a, b := NewCA(t, "a"), NewRSACA(t, "b")
	db := EDK2CACerts(a.Cert, b.Cert)
	for i, want := range [][]byte{a.Cert.Raw, b.Cert.Raw} {
		if len(db) < 28 {
			t.Fatalf("list %d: %d bytes left", i, len(db))
		}
		if !bytes.Equal(db[:16], efiCertX509[:]) {
			t.Errorf("list %d: type %x, want EFI_CERT_X509_GUID", i, db[:16])
		}
		listSize := int(binary.LittleEndian.Uint32(db[16:]))
		headerSize := binary.LittleEndian.Uint32(db[20:])
		sigSize := int(binary.LittleEndian.Uint32(db[24:]))
		if headerSize != 0 || sigSize != 16+len(want) || listSize != 28+sigSize || listSize > len(db) {
			t.Fatalf("list %d: sizes list=%d header=%d signature=%d for a %d-byte certificate", i, listSize, headerSize, sigSize, len(want))
		}
		if got := db[28+16 : listSize]; !bytes.Equal(got, want) {
			t.Errorf("list %d: the certificate's DER differs", i)
		}
		db = db[listSize:]
	}
	if len(db) != 0 {
		t.Errorf("%d bytes after the last list", len(db))
	}
}
