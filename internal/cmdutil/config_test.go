package cmdutil_test

import (
	"bytes"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/internal/cmdutil"
)

type listValue []string

func (l *listValue) String() string     { return strings.Join(*l, ",") }
func (l *listValue) Set(v string) error { *l = append(*l, v); return nil }

// testFlags is a program's flags: a string, a duration, a bool, a list.
type testFlags struct {
	bootDir string
	ttl     time.Duration
	ra      bool
	tftp    string
	peers   listValue
}

func newFlags() (*flag.FlagSet, *testFlags) {
	var f testFlags
	fs := flag.NewFlagSet("prog", flag.ContinueOnError)
	fs.SetOutput(new(bytes.Buffer))
	fs.StringVar(&f.bootDir, "boot-dir", "/default", "")
	fs.DurationVar(&f.ttl, "leader-ttl", 10*time.Second, "")
	fs.BoolVar(&f.ra, "ipv6-ra", false, "")
	fs.StringVar(&f.tftp, "tftp-listen", ":69", "")
	fs.Bool("version", false, "print the version and exit")
	fs.Var(&f.peers, "peer", "repeatable")
	return fs, &f
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "lpmos.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestConfigurePrecedence(t *testing.T) {
	file := writeFile(t, "boot-dir: /from-file\nleader-ttl: 30s\nipv6-ra: true\npeer: [a, b]\n")
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, f *testFlags)
	}{
		{"defaults", nil, nil, func(t *testing.T, f *testFlags) {
			assert.Equal(t, "/default", f.bootDir)
			assert.Equal(t, 10*time.Second, f.ttl)
		}},
		{"file", []string{"--config", file}, nil, func(t *testing.T, f *testFlags) {
			assert.Equal(t, "/from-file", f.bootDir)
			assert.Equal(t, 30*time.Second, f.ttl)
			assert.True(t, f.ra)
			assert.Equal(t, listValue{"a", "b"}, f.peers, "a list sets a repeatable flag per item")
		}},
		{"file named by the environment", nil, map[string]string{"LPMOS_CONFIG": file}, func(t *testing.T, f *testFlags) {
			assert.Equal(t, "/from-file", f.bootDir)
		}},
		{"environment over file", []string{"--config", file}, map[string]string{"LPMOS_BOOT_DIR": "/from-env", "LPMOS_PEER": "c"},
			func(t *testing.T, f *testFlags) {
				assert.Equal(t, "/from-env", f.bootDir)
				assert.Equal(t, 30*time.Second, f.ttl, "the file still sets what the environment does not")
				assert.Equal(t, listValue{"c"}, f.peers)
			}},
		{"flag over environment", []string{"--config", file, "--boot-dir", "/from-flag"}, map[string]string{"LPMOS_BOOT_DIR": "/from-env"},
			func(t *testing.T, f *testFlags) { assert.Equal(t, "/from-flag", f.bootDir) }},
		{"an empty variable sets an empty value", nil, map[string]string{"LPMOS_TFTP_LISTEN": ""},
			func(t *testing.T, f *testFlags) { assert.Equal(t, "", f.tftp) }},
		{"other LPMOS_ variables are not flags", nil, map[string]string{"LPMOS_ARTIFACTS": "/tmp/x", "LPMOS_VERSION": "1.2.3"},
			func(t *testing.T, f *testFlags) { assert.Equal(t, "/default", f.bootDir) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, f := newFlags()
			cf, err := cmdutil.Configure(fs, tc.args, env(tc.env))
			require.NoError(t, err)
			require.NotNil(t, cf)
			tc.check(t, f)
		})
	}
}

func TestConfigureRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, file string
		env        map[string]string
		want       string
	}{
		{"unknown key", "boot-dir: /x\nbootdir: /y\n", nil, `line 2: "bootdir" is not a flag of prog`},
		{"bad value", "leader-ttl: soon\n", nil, "leader-ttl: parse error"},
		{"a map for a flag", "boot-dir: {a: 1}\n", nil, "boot-dir: want a value or a list"},
		{"not a mapping", "- boot-dir\n", nil, "want a mapping"},
		{"a key twice", "boot-dir: /a\nboot-dir: /b\n", nil, `"boot-dir" given twice`},
		{"malformed YAML", "boot-dir: [\n", nil, "--config"},
		{"misspelt section key", "dhcp:\n  relay_pool: []\n", nil, "field relay_pool not found"},
		{"bad environment value", "", map[string]string{"LPMOS_LEADER_TTL": "soon"}, "LPMOS_LEADER_TTL: parse error"},
		{"an action is not a setting", "version: true\n", nil, `"version" is an action, not a setting`},
		{"the file cannot name another file", "config: /etc/other.yaml\n", nil, `"config" is not a flag`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, _ := newFlags()
			_, err := cmdutil.Configure(fs, []string{"--config", writeFile(t, tc.file)}, env(tc.env), cmdutil.SectionDHCP)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	fs, _ := newFlags()
	_, err := cmdutil.Configure(fs, []string{"--config", filepath.Join(t.TempDir(), "missing.yaml")}, env(nil))
	assert.ErrorIs(t, err, os.ErrNotExist)
	fs, _ = newFlags()
	_, err = cmdutil.Configure(fs, []string{"--config", writeFile(t, "dhcp:\n  reservations: {}\n")}, env(nil))
	require.Error(t, err, "a program that does not read the dhcp: section refuses it")
	assert.Contains(t, err.Error(), `"dhcp" is not a flag of prog`)
}

func TestConfigureHelpSaysSo(t *testing.T) {
	fs, _ := newFlags()
	var out bytes.Buffer
	fs.SetOutput(&out)
	_, err := cmdutil.Configure(fs, []string{"-h"}, env(nil))
	require.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, out.String(), "-config")
	assert.Contains(t, out.String(), "LPMOS_BOOT_DIR")
	assert.Contains(t, out.String(), "Precedence: command line, then environment, then file, then default.")
}

func TestConfigDHCPSection(t *testing.T) {
	fs, _ := newFlags()
	cf, err := cmdutil.Configure(fs, []string{"--config", writeFile(t, `
dhcp:
  relay_pools:
    - start: 10.1.0.100
      end: 10.1.0.200
      netmask: 255.255.255.0
      router: 10.1.0.1
      dns: [10.1.0.2, 10.1.0.3]
      domain_name: rack1.example.net
      lease_time: 2h
  reservations:
    "52-54-00-00-00-01": 10.1.0.50
`)}, env(nil), cmdutil.SectionDHCP)
	require.NoError(t, err)
	var c dhcp.Config
	require.NoError(t, cf.DHCP.Apply(&c))
	require.Len(t, c.RelayPools, 1)
	p := c.RelayPools[0]
	assert.Equal(t, "10.1.0.100", p.Start.String())
	assert.Equal(t, "10.1.0.200", p.End.String())
	assert.Equal(t, net.CIDRMask(24, 32), p.Netmask)
	assert.Equal(t, "10.1.0.1", p.Router.String())
	assert.Len(t, p.DNS, 2)
	assert.Equal(t, "rack1.example.net", p.DomainName)
	assert.Equal(t, 2*time.Hour, p.LeaseTime)
	mac, err := lpmos.ParseMAC("52:54:00:00:00:01")
	require.NoError(t, err)
	assert.Equal(t, "10.1.0.50", c.Reservations[mac].String())

	for _, tc := range []struct {
		name string
		sec  cmdutil.DHCPSection
		want string
	}{
		{"bad start", cmdutil.DHCPSection{RelayPools: []cmdutil.PoolSection{{Start: "10.1.0", End: "10.1.0.9", Netmask: "255.255.255.0"}}}, "dhcp.relay_pools[0].start"},
		{"no netmask", cmdutil.DHCPSection{RelayPools: []cmdutil.PoolSection{{Start: "10.1.0.1", End: "10.1.0.9"}}}, "dhcp.relay_pools[0].netmask"},
		{"bad lease", cmdutil.DHCPSection{RelayPools: []cmdutil.PoolSection{{Start: "10.1.0.1", End: "10.1.0.9", Netmask: "255.255.255.0", LeaseTime: "-1h"}}}, "lease_time"},
		{"bad MAC", cmdutil.DHCPSection{Reservations: map[string]string{"nonsense": "10.1.0.5"}}, "dhcp.reservations"},
		{"bad address", cmdutil.DHCPSection{Reservations: map[string]string{"52:54:00:00:00:02": "fe80::1"}}, "dhcp.reservations.52:54:00:00:00:02"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.sec.Apply(&dhcp.Config{})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
