package power_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/redfishsim"
	"github.com/lpmos/lpmos/power"
)

// rfLab is a redfishsim BMC over TLS with an in-memory machine.
type rfLab struct {
	srv *httptest.Server
	sim *redfishsim.Server
	mem *redfishsim.Memory
	cfg redfishsim.Config
}

func newRFLab(t *testing.T, cfg redfishsim.Config, on bool) *rfLab {
	t.Helper()
	l := &rfLab{mem: redfishsim.NewMemory(on), cfg: cfg}
	if l.cfg.Username == "" {
		l.cfg.Username, l.cfg.Password = "root", "calvin-"+t.Name()
	}
	l.sim = redfishsim.New(l.cfg, l.mem)
	l.srv = quietTLSServer(l.sim)
	t.Cleanup(l.srv.Close)
	return l
}

// quietTLSServer is httptest.NewTLSServer without logging the handshakes
// the tests fail on purpose.
func quietTLSServer(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	return srv
}

// otherCert is a self-signed certificate for 127.0.0.1 that is not the
// one httptest's servers use: its PEM and SHA-256 fingerprint.
func otherCert(t *testing.T) ([]byte, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: "other"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	sum := sha256.Sum256(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), hex.EncodeToString(sum[:])
}

func (l *rfLab) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: l.srv.Certificate().Raw})
}

func (l *rfLab) pin() string {
	sum := sha256.Sum256(l.srv.Certificate().Raw)
	return hex.EncodeToString(sum[:])
}

func (l *rfLab) bmc() power.BMC {
	return power.BMC{
		Driver:   power.DriverRedfish,
		Address:  strings.TrimPrefix(l.srv.URL, "https://"),
		Username: l.cfg.Username,
		Password: l.cfg.Password,
		CAPEM:    l.caPEM(),
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRedfishLifecycle(t *testing.T) {
	tests := []struct {
		name       string
		noSessions bool
		pinned     bool
	}{
		{"session, CA", false, false},
		{"session, pinned", false, true},
		{"basic auth, CA", true, false},
		{"basic auth, pinned", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newRFLab(t, redfishsim.Config{NoSessions: tt.noSessions}, false)
			ctx := ctxT(t)
			b := l.bmc()
			if tt.pinned {
				b.CAPEM, b.CertSHA256 = nil, l.pin()
			}
			d, err := power.Open(ctx, b)
			require.NoError(t, err)
			if tt.noSessions {
				assert.Zero(t, l.sim.Sessions())
			} else {
				assert.Equal(t, 1, l.sim.Sessions(), "logged in with a session")
			}

			st, err := d.PowerState(ctx)
			require.NoError(t, err)
			assert.Equal(t, power.StateOff, st)

			require.NoError(t, d.SetNextBoot(ctx, power.BootPXE))
			target, enabled := l.sim.Boot()
			assert.Equal(t, "Pxe", target)
			assert.Equal(t, "Once", enabled)

			require.NoError(t, d.SetPower(ctx, power.ActionOn))
			assert.True(t, l.mem.On())
			assert.Equal(t, []string{"Pxe"}, l.mem.Boots())
			target, enabled = l.sim.Boot()
			assert.Equal(t, "None", target, "a Once override is used up by the boot")
			assert.Equal(t, "Disabled", enabled)
			st, err = d.PowerState(ctx)
			require.NoError(t, err)
			assert.Equal(t, power.StateOn, st)

			require.NoError(t, d.SetPower(ctx, power.ActionOn), "on when on")
			require.NoError(t, d.SetNextBoot(ctx, power.BootDisk))
			require.NoError(t, d.SetPower(ctx, power.ActionCycle))
			assert.Equal(t, []string{"Pxe", "Hdd"}, l.mem.Boots())

			require.NoError(t, d.SetPower(ctx, power.ActionOff))
			assert.False(t, l.mem.On())
			require.NoError(t, d.SetPower(ctx, power.ActionOff), "off when off")
			require.NoError(t, d.SetPower(ctx, power.ActionCycle), "cycle when off switches on")
			assert.True(t, l.mem.On())
			assert.Equal(t, []string{"On", "PowerCycle", "ForceOff", "On"}, l.sim.Resets())

			assert.ErrorIs(t, d.SetPower(ctx, "reboot"), power.ErrInvalid)
			assert.ErrorIs(t, d.SetNextBoot(ctx, "usb"), power.ErrInvalid)

			require.NoError(t, d.Close())
			assert.Zero(t, l.sim.Sessions(), "Close deletes the session")
			require.NoError(t, d.Close(), "a second Close")
			_, err = d.PowerState(ctx)
			assert.Error(t, err, "a closed driver")
		})
	}
}

func TestRedfishAllowableValues(t *testing.T) {
	ctx := ctxT(t)
	t.Run("cycle falls back to ForceRestart", func(t *testing.T) {
		l := newRFLab(t, redfishsim.Config{ResetTypes: []string{"On", "ForceOff", "ForceRestart"}}, true)
		d, err := power.Open(ctx, l.bmc())
		require.NoError(t, err)
		defer d.Close()
		require.NoError(t, d.SetPower(ctx, power.ActionCycle))
		assert.Equal(t, []string{"ForceRestart"}, l.sim.Resets())
		assert.True(t, l.mem.On())
	})
	t.Run("no way to cycle", func(t *testing.T) {
		l := newRFLab(t, redfishsim.Config{ResetTypes: []string{"On", "ForceOff"}}, true)
		d, err := power.Open(ctx, l.bmc())
		require.NoError(t, err)
		defer d.Close()
		err = d.SetPower(ctx, power.ActionCycle)
		require.ErrorIs(t, err, power.ErrUnsupported)
		assert.False(t, power.Retryable(err))
	})
	t.Run("no PXE override", func(t *testing.T) {
		l := newRFLab(t, redfishsim.Config{BootTargets: []string{"None", "Hdd"}}, false)
		d, err := power.Open(ctx, l.bmc())
		require.NoError(t, err)
		defer d.Close()
		require.ErrorIs(t, d.SetNextBoot(ctx, power.BootPXE), power.ErrUnsupported)
		require.NoError(t, d.SetNextBoot(ctx, power.BootDisk))
	})
}

func TestRedfishSystemID(t *testing.T) {
	ctx := ctxT(t)
	l := newRFLab(t, redfishsim.Config{SystemID: "System.Embedded.1"}, false)
	b := l.bmc()
	b.SystemID = "System.Embedded.1"
	d, err := power.Open(ctx, b)
	require.NoError(t, err)
	require.NoError(t, d.Close())

	b.SystemID = "2"
	_, err = power.Open(ctx, b)
	require.ErrorIs(t, err, power.ErrInvalid)
	var ve *power.ValidationError
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, "SystemID", ve.Field)
	assert.Zero(t, l.sim.Sessions(), "a failed Open logs out")
}

func TestRedfishSessionExpiry(t *testing.T) {
	ctx := ctxT(t)
	l := newRFLab(t, redfishsim.Config{}, false)
	d, err := power.Open(ctx, l.bmc())
	require.NoError(t, err)
	defer d.Close()
	l.sim.ExpireSessions()
	_, err = d.PowerState(ctx)
	require.NoError(t, err, "the driver logs in again")
	assert.Equal(t, 1, l.sim.Sessions())
}

func TestRedfishAuthErrors(t *testing.T) {
	ctx := ctxT(t)
	otherPEM, otherPin := otherCert(t)
	for _, noSessions := range []bool{false, true} {
		l := newRFLab(t, redfishsim.Config{NoSessions: noSessions}, false)
		tests := []struct {
			name string
			edit func(*power.BMC)
		}{
			{"wrong password", func(b *power.BMC) { b.Password = "wrong-password" }},
			{"wrong user", func(b *power.BMC) { b.Username = "nobody" }},
			{"wrong pin", func(b *power.BMC) { b.CAPEM, b.CertSHA256 = nil, otherPin }},
			{"other CA", func(b *power.BMC) { b.CAPEM = otherPEM }},
			{"system roots", func(b *power.BMC) { b.CAPEM = nil }},
		}
		for _, tt := range tests {
			name := tt.name
			if noSessions {
				name += ", basic auth"
			}
			t.Run(name, func(t *testing.T) {
				b := l.bmc()
				tt.edit(&b)
				_, err := power.Open(ctx, b)
				require.ErrorIs(t, err, power.ErrAuth)
				assert.False(t, power.Retryable(err))
				assert.NotContains(t, err.Error(), b.Password)
				assert.NotContains(t, err.Error(), l.cfg.Password)
			})
		}
	}
}

func TestRedfishUnreachable(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedAddr := closed.Addr().String()
	require.NoError(t, closed.Close())

	// Accepts connections and never says a word.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()

	sum := sha256.Sum256([]byte("any"))
	for name, addr := range map[string]string{"closed port": closedAddr, "silent": silent.Addr().String()} {
		t.Run(name, func(t *testing.T) {
			const deadline = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			_, err := power.Open(ctx, power.BMC{Driver: power.DriverRedfish, Address: addr, Username: "root", Password: "x", CertSHA256: hex.EncodeToString(sum[:])})
			require.ErrorIs(t, err, power.ErrUnreachable)
			assert.True(t, power.Retryable(err))
			assert.Less(t, time.Since(start), deadline+time.Second)
		})
	}
}

// TestRedfishHostileBMC: a BMC's answers are bounded and cannot send the
// driver (and its credentials) elsewhere.
func TestRedfishHostileBMC(t *testing.T) {
	ctx := ctxT(t)
	inner := redfishsim.New(redfishsim.Config{Username: "root", Password: "pw"}, redfishsim.NewMemory(false))
	var mode string
	srv := quietTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redfish/v1/Systems" {
			switch mode {
			case "huge":
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"Members":[{"@odata.id":"` + strings.Repeat("x", 2<<20) + `"}]}`))
				return
			case "foreign":
				_, _ = w.Write([]byte(`{"Members":[{"@odata.id":"https://elsewhere.example/redfish/v1/Systems/1"}]}`))
				return
			case "redirect":
				http.Redirect(w, r, "https://elsewhere.example/redfish/v1/Systems", http.StatusFound)
				return
			}
		}
		inner.ServeHTTP(w, r)
	}))
	defer srv.Close()
	sum := sha256.Sum256(srv.Certificate().Raw)
	b := power.BMC{Driver: power.DriverRedfish, Address: strings.TrimPrefix(srv.URL, "https://"), Username: "root", Password: "pw", CertSHA256: hex.EncodeToString(sum[:])}
	for _, m := range []string{"huge", "foreign", "redirect"} {
		t.Run(m, func(t *testing.T) {
			mode = m
			_, err := power.Open(ctx, b)
			require.Error(t, err)
			assert.NotErrorIs(t, err, power.ErrUnreachable)
			assert.Zero(t, inner.Sessions())
		})
	}
}

func TestRedfishConcurrentCalls(t *testing.T) {
	ctx := ctxT(t)
	l := newRFLab(t, redfishsim.Config{}, false)
	d, err := power.Open(ctx, l.bmc())
	require.NoError(t, err)
	defer d.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			var err error
			switch i % 3 {
			case 0:
				_, err = d.PowerState(ctx)
			case 1:
				err = d.SetNextBoot(ctx, power.BootPXE)
			default:
				err = d.SetPower(ctx, power.ActionOn)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	assert.True(t, l.mem.On())
	assert.Len(t, l.mem.Boots(), 1, "one power-on")
}
