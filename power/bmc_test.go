package power_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/power"
)

const secret = "s3cr3t-PASSWORD"

func testCAPEM(t *testing.T) []byte {
	t.Helper()
	srv := httptest.NewTLSServer(nil)
	t.Cleanup(srv.Close)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
}

func TestBMCValidate(t *testing.T) {
	caPEM := testCAPEM(t)
	sum := sha256.Sum256([]byte("x"))
	pin := hex.EncodeToString(sum[:])
	ipmi := power.BMC{Driver: power.DriverIPMI, Address: "10.0.0.5", Username: "admin", Password: secret}
	rf := power.BMC{Driver: power.DriverRedfish, Address: "bmc1.example:8443", Username: "root", Password: secret}
	with := func(b power.BMC, f func(*power.BMC)) power.BMC { f(&b); return b }

	tests := []struct {
		name   string
		bmc    power.BMC
		fields []string // fields named by the errors; none means valid
	}{
		{"ipmi", ipmi, nil},
		{"ipmi with port", with(ipmi, func(b *power.BMC) { b.Address = "10.0.0.5:6230" }), nil},
		{"ipmi bare IPv6", with(ipmi, func(b *power.BMC) { b.Address = "fd00::5" }), nil},
		{"ipmi bracketed IPv6", with(ipmi, func(b *power.BMC) { b.Address = "[fd00::5]" }), nil},
		{"ipmi IPv6 with port", with(ipmi, func(b *power.BMC) { b.Address = "[fd00::5]:623" }), nil},
		{"redfish", rf, nil},
		{"redfish with CA", with(rf, func(b *power.BMC) { b.CAPEM = caPEM }), nil},
		{"redfish with pin", with(rf, func(b *power.BMC) { b.CertSHA256 = strings.ToUpper(pin) }), nil},
		{"redfish with colon pin", with(rf, func(b *power.BMC) { b.CertSHA256 = colons(pin) }), nil},
		{"redfish with system", with(rf, func(b *power.BMC) { b.SystemID = "System.Embedded.1" }), nil},
		{"zero", power.BMC{}, []string{"Driver", "Address", "Username", "Password"}},
		{"unknown driver", with(ipmi, func(b *power.BMC) { b.Driver = "amt" }), []string{"Driver"}},
		{"URL address", with(rf, func(b *power.BMC) { b.Address = "https://bmc1" }), []string{"Address"}},
		{"credentials in address", with(rf, func(b *power.BMC) { b.Address = "root:" + secret + "@bmc1" }), []string{"Address"}},
		{"path in address", with(rf, func(b *power.BMC) { b.Address = "bmc1/redfish" }), []string{"Address"}},
		{"port zero", with(ipmi, func(b *power.BMC) { b.Address = "10.0.0.5:0" }), []string{"Address"}},
		{"port too big", with(ipmi, func(b *power.BMC) { b.Address = "10.0.0.5:70000" }), []string{"Address"}},
		{"empty port", with(ipmi, func(b *power.BMC) { b.Address = "10.0.0.5:" }), []string{"Address"}},
		{"no host", with(ipmi, func(b *power.BMC) { b.Address = ":623" }), []string{"Address"}},
		{"colons but not IPv6", with(ipmi, func(b *power.BMC) { b.Address = "a:b:c" }), []string{"Address"}},
		{"ipmi user too long", with(ipmi, func(b *power.BMC) { b.Username = strings.Repeat("u", 17) }), []string{"Username"}},
		{"ipmi password too long", with(ipmi, func(b *power.BMC) { b.Password = strings.Repeat("p", 21) }), []string{"Password"}},
		{"ipmi with CA", with(ipmi, func(b *power.BMC) { b.CAPEM = caPEM }), []string{"CAPEM"}},
		{"ipmi with pin", with(ipmi, func(b *power.BMC) { b.CertSHA256 = pin }), []string{"CertSHA256"}},
		{"ipmi with system", with(ipmi, func(b *power.BMC) { b.SystemID = "1" }), []string{"SystemID"}},
		{"garbage CA", with(rf, func(b *power.BMC) { b.CAPEM = []byte("not pem") }), []string{"CAPEM"}},
		{"short pin", with(rf, func(b *power.BMC) { b.CertSHA256 = pin[:40] }), []string{"CertSHA256"}},
		{"CA and pin", with(rf, func(b *power.BMC) { b.CAPEM, b.CertSHA256 = caPEM, pin }), []string{"CertSHA256"}},
		{"system with slash", with(rf, func(b *power.BMC) { b.SystemID = "../1" }), []string{"SystemID"}},
		{"newline in user", with(rf, func(b *power.BMC) { b.Username = "a\nb" }), []string{"Username"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.bmc.Validate()
			if len(tt.fields) == 0 {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, power.ErrInvalid)
			var ve *power.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tt.fields, fieldsOf(err))
			assert.NotContains(t, err.Error(), secret)
		})
	}
}

func colons(h string) string {
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// fieldsOf lists the fields named by the ValidationErrors joined in err.
func fieldsOf(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		var ve *power.ValidationError
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		} else if errors.As(err, &ve) {
			out = append(out, ve.Field)
		}
	}
	walk(err)
	return out
}

func TestBMCNeverShowsPassword(t *testing.T) {
	b := power.BMC{Driver: power.DriverRedfish, Address: "bmc1:8443", Username: "root", Password: secret, SystemID: "1"}
	assert.Equal(t, "redfish://root@bmc1:8443/1", b.String())
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		assert.NotContains(t, fmt.Sprintf(format, b), secret, format)
		assert.NotContains(t, fmt.Sprintf(format, &b), secret, "pointer "+format)
	}
	var buf bytes.Buffer
	for _, h := range []slog.Handler{slog.NewJSONHandler(&buf, nil), slog.NewTextHandler(&buf, nil)} {
		slog.New(h).Info("open", "bmc", b)
	}
	assert.Contains(t, buf.String(), "bmc1:8443")
	assert.NotContains(t, buf.String(), secret)
}

func TestOpenRejectsInvalid(t *testing.T) {
	_, err := power.Open(context.Background(), power.BMC{Driver: "ipmi"})
	require.ErrorIs(t, err, power.ErrInvalid)
}

func TestActionAndBootDevice(t *testing.T) {
	for _, a := range []power.Action{power.ActionOn, power.ActionOff, power.ActionCycle} {
		assert.True(t, a.Valid(), a)
	}
	for _, a := range []power.Action{"", "On", "reset", "soft"} {
		assert.False(t, a.Valid(), a)
	}
	assert.True(t, power.BootPXE.Valid())
	assert.True(t, power.BootDisk.Valid())
	assert.False(t, power.BootDevice("cdrom").Valid())
	assert.False(t, power.BootDevice("").Valid())
}
