package cmdutil

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/store/memory"
)

func TestRegionFlagsPublicURL(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{"explicit URL", []string{"--region-listen", ":0", "--region-url", "http://10.0.0.1:8081/"}, "http://10.0.0.1:8081", ""},
		{"port from the listen address", []string{"--region-listen", "127.0.0.1:18081", "--dhcp-iface", "lo"}, "http://127.0.0.1:18081", ""},
		{"chosen port without a URL", []string{"--region-listen", "127.0.0.1:0"}, "", "needs --region-url"},
		{"bad listen address", []string{"--region-listen", "nonsense"}, "", "--region-listen"},
		{"TLS: https from the TLS listen address", []string{"--region-listen", "127.0.0.1:18081", "--dhcp-iface", "lo",
			"--region-tls-cert", "c.pem", "--region-tls-key", "k.pem", "--region-tls-listen", ":18443"}, "https://127.0.0.1:18443", ""},
		{"TLS: explicit https URL", []string{"--region-url", "https://region.dc1:8443/",
			"--region-tls-cert", "c.pem", "--region-tls-key", "k.pem"}, "https://region.dc1:8443", ""},
		{"TLS: http URL refused", []string{"--region-url", "http://10.0.0.1:8081",
			"--region-tls-cert", "c.pem", "--region-tls-key", "k.pem"}, "", "must be https://"},
		{"TLS: certificate without key", []string{"--region-tls-cert", "c.pem"}, "", "given together"},
		{"TLS: chosen port without a URL", []string{"--region-tls-cert", "c.pem", "--region-tls-key", "k.pem",
			"--region-tls-listen", ":0"}, "", "--region-tls-listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f RegionFlags
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f.Register(fs)
			require.NoError(t, fs.Parse(append([]string{"--boot-dir", t.TempDir(), "--tftp-listen", ""}, tc.args...)))
			cfg, err := f.ServerConfig(st, log)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.Region.PublicURL)
		})
	}
}

// With TLS, iPXE and firmware are sent to the plain listener unless told
// otherwise, and the HTTPS listener is configured.
func TestRegionFlagsTLSBootURLs(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	parse := func(args ...string) RegionFlags {
		var f RegionFlags
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		f.Register(fs)
		require.NoError(t, fs.Parse(append([]string{"--boot-dir", t.TempDir(), "--tftp-listen", "", "--dhcp-iface", "lo",
			"--region-listen", "127.0.0.1:18081", "--region-tls-cert", "c.pem", "--region-tls-key", "k.pem"}, args...)))
		return f
	}
	f := parse()
	cfg, err := f.ServerConfig(st, log)
	require.NoError(t, err)
	assert.Equal(t, "https://127.0.0.1:8443", cfg.Region.PublicURL)
	assert.Equal(t, "http://127.0.0.1:18081", cfg.Region.BootURL)
	assert.Empty(t, cfg.Region.FirmwareURL, "the region defaults it to the boot URL")
	assert.Equal(t, ":8443", cfg.TLSAddr)
	assert.Equal(t, "c.pem", cfg.TLSCertFile)
	assert.Equal(t, "k.pem", cfg.TLSKeyFile)

	f = parse("--region-boot-url", "https://10.0.0.1:8443/", "--region-firmware-url", "https://10.0.0.1:8443")
	cfg, err = f.ServerConfig(st, log)
	require.NoError(t, err)
	assert.Equal(t, "https://10.0.0.1:8443", cfg.Region.BootURL)
	assert.Equal(t, "https://10.0.0.1:8443", cfg.Region.FirmwareURL)
}

// The IPv6 RA responder runs on the DHCP interface unless --ipv6-ra=false,
// and never without DHCP.
func TestRegionFlagsIPv6RA(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name      string
		args      []string
		wantIface string // "": no responder
	}{
		{"on with DHCP by default", []string{"--dhcp-iface", "lo"}, "lo"},
		{"on with full DHCP", []string{"--dhcp-iface", "lo", "--dhcp-mode", "full", "--dhcp-range", "127.0.0.100-127.0.0.200"}, "lo"},
		{"turned off", []string{"--dhcp-iface", "lo", "--ipv6-ra=false"}, ""},
		{"no DHCP, no RA", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f RegionFlags
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f.Register(fs)
			require.NoError(t, fs.Parse(append([]string{"--boot-dir", t.TempDir(), "--tftp-listen", "", "--region-url", "http://127.0.0.1:8081"}, tc.args...)))
			cfg, err := f.ServerConfig(st, log)
			require.NoError(t, err)
			if tc.wantIface == "" {
				assert.Nil(t, cfg.RA)
				return
			}
			require.NotNil(t, cfg.RA)
			assert.Equal(t, tc.wantIface, cfg.RA.Interface)
		})
	}
}

// The config file's dhcp: section reaches the DHCP server's config in full
// mode, and is refused where no full-mode DHCP server would read it.
func TestRegionDHCPSectionFromTheConfigFile(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.DiscardHandler)
	file := filepath.Join(t.TempDir(), "region.yaml")
	require.NoError(t, os.WriteFile(file, []byte(`dhcp-iface: lo
dhcp-range: 127.0.0.100-127.0.0.200
dhcp:
  relay_pools:
    - {start: 10.9.0.10, end: 10.9.0.99, netmask: 255.255.255.0, router: 10.9.0.1}
  reservations:
    52:54:00:00:00:07: 10.9.0.7
`), 0o600))
	for _, tc := range []struct {
		name string
		args []string
		want string // "" for no error
	}{
		{"full mode", []string{"--dhcp-mode", "full"}, ""},
		{"proxy mode", []string{"--dhcp-mode", "proxy"}, "needs --dhcp-iface and --dhcp-mode full"},
		{"no DHCP", []string{"--dhcp-iface", ""}, "needs --dhcp-iface and --dhcp-mode full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f RegionFlags
			fs := flag.NewFlagSet("region", flag.ContinueOnError)
			f.Register(fs)
			args := append([]string{"--config", file, "--boot-dir", t.TempDir(), "--tftp-listen", "", "--region-url", "http://127.0.0.1:8081"}, tc.args...)
			cf, err := Configure(fs, args, func(string) (string, bool) { return "", false }, SectionDHCP)
			require.NoError(t, err)
			f.DHCPFile = cf.DHCP
			cfg, err := f.ServerConfig(st, log)
			if tc.want != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.want)
				return
			}
			require.NoError(t, err)
			require.NotNil(t, cfg.DHCP)
			require.Len(t, cfg.DHCP.RelayPools, 1)
			assert.Equal(t, "10.9.0.1", cfg.DHCP.RelayPools[0].Router.String())
			mac, err := lpmos.ParseMAC("52:54:00:00:00:07")
			require.NoError(t, err)
			assert.Equal(t, "10.9.0.7", cfg.DHCP.Reservations[mac].String())
		})
	}
}
