package dhcp

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/netns"
)

// TestUdhcpc runs busybox udhcpc against the server in full mode, posing as
// each kind of client, and checks the lease and boot file it ends up with.
func TestUdhcpc(t *testing.T) {
	requireLab(t)
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Fatalf("busybox is not installed (Debian package busybox); ./scripts/test.sh installs it: %v", err)
	}
	tests := []struct {
		name string
		args []string          // udhcpc options that make it look like the client
		want map[string]string // expected script environment (subset)
		not  []string          // variables that must be absent
	}{
		{"plain client gets a lease and no boot options", nil,
			map[string]string{"ip": "10.77.0.100", "subnet": "255.255.255.0", "router": "10.77.0.254",
				"dns": "10.77.0.53", "serverid": "10.77.0.1", "lease": "3600", "domain": "lab.test"},
			[]string{"boot_file", "bootfile", "tftp", "vendor", "opt175"}},
		{"BIOS PXE gets undionly.kpxe over TFTP",
			[]string{"-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001"},
			map[string]string{"ip": "10.77.0.100", "boot_file": "undionly.kpxe", "bootfile": "undionly.kpxe",
				"siaddr": "10.77.0.1", "tftp": "10.77.0.1"},
			[]string{"vendor"}},
		{"UEFI PXE gets snponly.efi and no option 60",
			[]string{"-x", "0x5d:0007", "-V", "PXEClient:Arch:00007:UNDI:003016"},
			map[string]string{"ip": "10.77.0.100", "boot_file": "snponly.efi", "siaddr": "10.77.0.1", "tftp": "10.77.0.1"},
			[]string{"vendor", "opt43"}},
		{"UEFI HTTP gets a URL and option 60 HTTPClient",
			[]string{"-x", "0x5d:0010", "-V", "HTTPClient:Arch:00016:UNDI:003001"},
			map[string]string{"ip": "10.77.0.100", "boot_file": "http://10.77.0.1:8081/snponly.efi",
				"vendor": "HTTPClient"}, // option 60
			[]string{"tftp"}},
		{"iPXE gets its script URL and 175.176=1",
			[]string{"-x", "0x5d:0000", "-x", "0x4d:69505845", "-V", "PXEClient:Arch:00000:UNDI:002001"},
			map[string]string{"ip": "10.77.0.100", "boot_file": "http://10.77.0.1:8081/boot/52:54:00:12:34:56.ipxe",
				"opt175": "b00101"},
			[]string{"vendor"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			srv := serve(t, l.srv, l.config())
			dir := t.TempDir()
			envFile := filepath.Join(dir, "env")
			script := writeScript(t, dir, "script", `[ "$1" = bound ] && env > `+envFile+"\nexit 0\n")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := append([]string{"udhcpc", "-i", l.cliIf, "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1",
				"-O", "60", "-O", "175", "-s", script}, tt.args...)
			out, err := l.cli.Run(ctx, "busybox", args...)
			require.NoError(t, err, "udhcpc failed:\n%s", out)
			env := readEnv(t, envFile)
			for k, v := range tt.want {
				assert.Equal(t, v, env[k], "udhcpc variable %s", k)
			}
			for _, k := range tt.not {
				assert.NotContains(t, env, k)
			}
			assert.NotZero(t, srv.Stats().Acks)
		})
	}
}

// TestDhclient runs ISC dhclient against the server in full mode and reads
// the lease it writes.
func TestDhclient(t *testing.T) {
	requireLab(t)
	if _, err := exec.LookPath("dhclient"); err != nil {
		t.Fatalf("dhclient is not installed (Debian package isc-dhcp-client); ./scripts/test.sh installs it: %v", err)
	}
	const defs = "option pxe-arch code 93 = unsigned integer 16;\n" +
		"option ipxe-encap code 175 = string;\n" +
		"request subnet-mask, routers, domain-name-servers, domain-name, vendor-class-identifier, ipxe-encap;\n"
	tests := []struct {
		name string
		conf string   // dhclient.conf lines that make it look like the client
		want []string // regular expressions the lease must match
		not  []string // ... and must not
	}{
		{"plain client", "",
			[]string{`fixed-address 10\.77\.0\.100;`, `option routers 10\.77\.0\.254;`, `option dhcp-server-identifier 10\.77\.0\.1;`},
			[]string{`filename`, `vendor-class-identifier`}},
		{"BIOS PXE", "send pxe-arch 0;\nsend vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n",
			[]string{`fixed-address 10\.77\.0\.100;`, `filename "undionly\.kpxe";`, `option tftp-server-name "10\.77\.0\.1";`},
			[]string{`vendor-class-identifier`}},
		{"UEFI PXE", "send pxe-arch 7;\nsend vendor-class-identifier \"PXEClient:Arch:00007:UNDI:003016\";\n",
			[]string{`filename "snponly\.efi";`, `option tftp-server-name "10\.77\.0\.1";`},
			[]string{`vendor-class-identifier`}},
		{"UEFI HTTP", "send pxe-arch 16;\nsend vendor-class-identifier \"HTTPClient:Arch:00016:UNDI:003001\";\n",
			[]string{`filename "http://10\.77\.0\.1:8081/snponly\.efi";`, `option vendor-class-identifier "HTTPClient";`},
			nil},
		{"iPXE", "send pxe-arch 0;\nsend user-class \"iPXE\";\n",
			[]string{`filename "http://10\.77\.0\.1:8081/boot/52:54:00:12:34:56\.ipxe";`, `option ipxe-encap b0:1:1;`},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t)
			serve(t, l.srv, l.config())
			dir := t.TempDir()
			conf := filepath.Join(dir, "dhclient.conf")
			require.NoError(t, os.WriteFile(conf, []byte(defs+tt.conf), 0o644))
			leases := filepath.Join(dir, "leases")
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// -d: stay in the foreground (tracked, killed at the end)
			// instead of daemonizing once bound; -sf /bin/true: do not
			// configure the interface.
			p, err := l.cli.Start(ctx, "dhclient", "-4", "-d", "-1", "-v", "-cf", conf, "-lf", leases,
				"-pf", filepath.Join(dir, "pid"), "-sf", "/bin/true", l.cliIf)
			require.NoError(t, err)
			var lease string
			ok := netns.WaitFor(20*time.Second, func() bool {
				b, _ := os.ReadFile(leases)
				lease = string(b)
				return strings.Contains(lease, "}")
			})
			p.Stop()
			require.True(t, ok, "dhclient wrote no lease; its output:\n%s", p.Output())
			for _, re := range tt.want {
				assert.Regexp(t, regexp.MustCompile(re), lease)
			}
			for _, re := range tt.not {
				assert.NotRegexp(t, regexp.MustCompile(re), lease)
			}
		})
	}
}
