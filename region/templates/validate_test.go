package templates

// The answer files checked by the tools that read them (issue 16 item 6):
// every template rendered for every variant (DHCP and static, on a NIC, a
// VLAN and a bond, with the operator's user-data) goes through
//
//   - preseed: debconf-set-selections --checkonly (Debian package debconf);
//   - cloud-config (cloud-init, nocloud-user-data, autoinstall, and
//     autoinstall's user-data on its own, since cloud-init's schema knows
//     nothing below the autoinstall key): cloud-init schema
//     --config-file (package cloud-init);
//   - netplan (network-config, autoinstall's network): netplan generate
//     --root-dir (package netplan.io). cloud-init 22.4's schema command
//     cannot check network-config, netplan can: it refuses unknown keys
//     and bad values, and writes systemd-networkd files from them.
//
// Kickstart has no validator packaged in Debian (pykickstart's ksvalidator
// is not), so kickstart is checked by its golden files only.
//
// A missing tool fails these tests rather than skipping them: the full
// suite must prove the files are valid. They start a process per file
// (cloud-init's takes half a second), so -short skips them.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the real validators; not in -short")
	}
	p, err := exec.LookPath(name)
	require.NoError(t, err, "%s is needed to check the answer files: apt-get install --no-install-recommends %s (scripts/test.sh does)", name, pkg)
	return p
}

// runTool runs a validator and returns its combined output; a non-zero
// exit fails the test.
func runTool(t *testing.T, file string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8")
	out, err := cmd.CombinedOutput()
	text, _ := os.ReadFile(file)
	require.NoError(t, err, "%s %s:\n%s\n--- file:\n%s", name, strings.Join(args, " "), out, text)
	return string(out)
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, b, 0o600))
	return p
}

func TestPreseedValidates(t *testing.T) {
	tool := needTool(t, "debconf-set-selections", "debconf")
	for variant, d := range variants() {
		t.Run(variant, func(t *testing.T) {
			out, err := Render(Preseed, d, nil)
			require.NoError(t, err)
			f := writeTemp(t, "preseed.cfg", out)
			// It warns about unknown types and still exits 0: any output
			// is a failure.
			got := runTool(t, f, tool, "--checkonly", f)
			require.Empty(t, got, "debconf-set-selections complained about:\n%s", out)
		})
	}
}

// checkCloudConfig runs cloud-init's schema check on a cloud-config.
// It exits 0 on deprecated keys and leaves unknown ones alone, so the
// output must be exactly the "Valid" line.
func checkCloudConfig(t *testing.T, tool, name string, text []byte) {
	t.Helper()
	f := writeTemp(t, name, text)
	got := runTool(t, f, tool, "schema", "--config-file", f)
	require.Equal(t, "Valid cloud-config: "+f+"\n", got, "cloud-init schema on:\n%s", text)
}

func TestCloudConfigValidates(t *testing.T) {
	tool := needTool(t, "cloud-init", "cloud-init")
	for variant, d := range variants() {
		for _, name := range []string{CloudInit, NoCloudUserData, Autoinstall} {
			t.Run(name+"-"+variant, func(t *testing.T) {
				out, err := Render(name, d, nil)
				require.NoError(t, err)
				checkCloudConfig(t, tool, name+".yaml", out)
				if name != Autoinstall {
					return
				}
				// Subiquity hands autoinstall.user-data to cloud-init on
				// the installed system: check it as cloud-config too.
				var doc struct {
					Autoinstall struct {
						UserData yaml.Node `yaml:"user-data"`
					} `yaml:"autoinstall"`
				}
				require.NoError(t, yaml.Unmarshal(out, &doc))
				ud, err := yaml.Marshal(&doc.Autoinstall.UserData)
				require.NoError(t, err)
				checkCloudConfig(t, tool, "user-data.yaml", append([]byte("#cloud-config\n"), ud...))
			})
		}
	}
}

// checkNetplan has netplan generate systemd-networkd files from a
// netplan version 2 network (the content under network:).
func checkNetplan(t *testing.T, tool string, network yaml.Node) {
	t.Helper()
	root := t.TempDir()
	doc, err := yaml.Marshal(map[string]*yaml.Node{"network": &network})
	require.NoError(t, err)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "etc/netplan"), 0o755))
	f := filepath.Join(root, "etc/netplan/50-lpmos.yaml")
	require.NoError(t, os.WriteFile(f, doc, 0o600))
	got := runTool(t, f, tool, "generate", "--root-dir", root)
	require.Empty(t, got, "netplan generate on:\n%s", doc)
	units, err := filepath.Glob(filepath.Join(root, "run/systemd/network/*.network"))
	require.NoError(t, err)
	require.NotEmpty(t, units, "netplan wrote no networkd configuration for:\n%s", doc)
}

func TestNetworkConfigValidates(t *testing.T) {
	tool := needTool(t, "netplan", "netplan.io")
	for variant, d := range variants() {
		t.Run(variant, func(t *testing.T) {
			out, err := Render(NetworkConfig, d, nil)
			require.NoError(t, err)
			var nc yaml.Node
			require.NoError(t, yaml.Unmarshal(out, &nc))
			checkNetplan(t, tool, *nc.Content[0])

			out, err = Render(Autoinstall, d, nil)
			require.NoError(t, err)
			var ai struct {
				Autoinstall struct {
					Network yaml.Node `yaml:"network"`
				} `yaml:"autoinstall"`
			}
			require.NoError(t, yaml.Unmarshal(out, &ai))
			checkNetplan(t, tool, ai.Autoinstall.Network)
		})
	}
}
