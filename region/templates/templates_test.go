package templates

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/lpmos/lpmos"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

const testTask = "550e8400-e29b-41d4-a716-446655440000"

// basicData is the common case: DHCP, the installer picks the disk, root
// with an SSH key and no password.
func basicData() Data {
	return Data{
		TaskID:            testTask,
		MAC:               "52-54-00-12-34-56",
		OSType:            "debian",
		OSVersion:         "12",
		RegionURL:         "http://10.0.0.1:8081",
		Token:             "q8Zr3kT0vYb2-Lm_x.9~",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example.com"},
	}
}

// fullData uses every field.
func fullData() Data {
	d := basicData()
	d.Hostname = "web-01.dc1.example.com"
	d.OSType, d.OSVersion = "ubuntu", "24.04"
	d.Disk = "/dev/disk/by-id/nvme-SAMSUNG_MZ1L2960HCJR-00A07_S665NE0T123456"
	d.Network, d.Address, d.Gateway, d.Nameservers = "static", "10.0.0.5/24", "10.0.0.1", []string{"10.0.0.2", "1.1.1.1"}
	d.MirrorURL = "http://mirror.dc1.example.com/ubuntu"
	d.RepoURL = "http://mirror.dc1.example.com/rocky/9/BaseOS/x86_64/os/"
	d.ProgressURL = "http://10.0.0.1:8081/api/v1/agent/progress?via=template"
	d.SSHAuthorizedKeys = append(d.SSHAuthorizedKeys, "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= ops@bastion")
	d.RootPasswordHash = "$6$rounds=656000$YQ8uOZ5Sg1S6$Kx0Ng7JvV5.2H1iSd0pu0q8oaJzzb0uQ0Mkx9qWeHwUPmPD9Nl2D3zCIkM1/6mX5y8lWf0o5T7E4g0Mts4KXj1"
	d.Timezone, d.Locale = "Europe/Berlin", "de_DE.UTF-8"
	d.Packages = []string{"vim", "htop", "linux-image-generic"}
	d.Tags = map[string]string{"environment": "production", "purpose": "web-server"}
	return d
}

// operatorUserData is an operator's cloud-config as a task's user_data:
// it names the host too, sets a scalar LPMOS also sets, adds a key, a
// list item and a root password, and uses YAML 1.1 scalars that must
// survive the merge as written.
const operatorUserData = `#cloud-config
# the operator's own comment
hostname: operator-name
disable_root: true
ssh_pwauth: yes
packages: [nginx]
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example.com
write_files:
  - path: /etc/motd
    permissions: '0644'
    content: |
      Welcome.
runcmd:
  - [touch, /etc/operator-was-here]
`

// variants are the data sets every template is rendered with (golden
// files, validators): DHCP and static, on a NIC, a VLAN and a bond, with
// and without the operator's user-data.
func variants() map[string]Data {
	staticVLAN := fullData()
	staticVLAN.VLANID = 100

	everything := fullData()
	everything.VLANID = 100
	everything.Bond = Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "802.3ad"}
	everything.UserData = operatorUserData

	dhcpBond := basicData()
	dhcpBond.Bond = Bond{Name: "bond0", Interfaces: []string{"enp1s0f0", "enp1s0f1"}}
	dhcpBond.Nameservers = []string{"9.9.9.9"}

	userData := basicData()
	userData.UserData = operatorUserData

	staticBare := basicData()
	staticBare.Network, staticBare.Address = "static", "192.168.10.20/23"

	return map[string]Data{"basic": basicData(), "full": fullData(), "static-vlan": staticVLAN,
		"static-bond-vlan-userdata": everything, "dhcp-bond": dhcpBond, "userdata": userData, "static-bare": staticBare}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(p, got, 0o644))
		return
	}
	want, err := os.ReadFile(p)
	require.NoError(t, err, "run go test ./region/templates -update to create it")
	assert.Equal(t, string(want), string(got), "output differs from %s (go test ./region/templates -update rewrites it)", p)
}

func TestGolden(t *testing.T) {
	for variant, d := range variants() {
		for _, name := range Names() {
			t.Run(name+"-"+variant, func(t *testing.T) {
				got, err := Render(name, d, nil)
				require.NoError(t, err)
				golden(t, name+"-"+variant+".golden", got)
			})
		}
	}
}

func TestNames(t *testing.T) {
	assert.Equal(t, []string{"autoinstall", "cloud-init", "kickstart", "meta-data", "network-config", "nocloud-user-data", "preseed"}, Names())
	for _, n := range Names() {
		text, err := Builtin(n)
		require.NoError(t, err)
		assert.NotEmpty(t, text)
	}
	_, err := Builtin("grub")
	assert.ErrorIs(t, err, ErrUnknownTemplate)
	_, err = Render("grub", basicData(), nil)
	assert.ErrorIs(t, err, ErrUnknownTemplate)
}

func TestDefaults(t *testing.T) {
	d := basicData()
	d.MAC = "5254.0012.3456"
	got, err := Render(MetaData, d, nil)
	require.NoError(t, err)
	assert.Contains(t, string(got), "\nlocal-hostname: \"lpmos-525400123456\"\n")

	got, err = Render(Kickstart, d, nil)
	require.NoError(t, err)
	assert.Contains(t, string(got), "\ntimezone Etc/UTC --utc\n")
	assert.Contains(t, string(got), "\nlang en_US.UTF-8\n")
	assert.Contains(t, string(got), "'http://10.0.0.1:8081/api/v1/agent/progress' || true\n", "ProgressURL defaults to the region's agent API")
	assert.Contains(t, string(got), "%include /tmp/lpmos-disk.ks\n")

	// The caller's slices are not shared with the rendering.
	keys := []string{basicData().SSHAuthorizedKeys[0]}
	d.SSHAuthorizedKeys = keys
	nd, err := d.normalize()
	require.NoError(t, err)
	nd.SSHAuthorizedKeys[0] = "changed"
	assert.NotEqual(t, "changed", keys[0])
}

// The JSON the answer files post is exactly the agent API's progress body.
func TestProgressJSON(t *testing.T) {
	d, err := basicData().normalize()
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(d.ProgressJSON("configuring", 95, "Configuring the installed system")), &m))
	assert.Equal(t, map[string]any{
		"mac_address": "52:54:00:12:34:56",
		"task_id":     testTask,
		"stage":       "configuring",
		"percentage":  float64(95),
		"message":     "Configuring the installed system",
	}, m)
	assert.Equal(t, `{"mac_address":"52:54:00:12:34:56","task_id":"`+testTask+`","stage":"completed","percentage":100,"message":"done"}`,
		d.ProgressJSON("completed", 100, "done"))

	for _, name := range []string{Preseed, Kickstart, Autoinstall, CloudInit} {
		out, err := Render(name, basicData(), nil)
		require.NoError(t, err)
		s := string(out)
		if name == Autoinstall || name == CloudInit {
			s = strings.ReplaceAll(s, `\"`, `"`) // JSON inside YAML strings
		}
		assert.Contains(t, s, `"stage":"configuring","percentage":95,`, name)
		assert.Contains(t, s, `"stage":"completed","percentage":100,`, name)
		assert.Contains(t, s, "Authorization: Bearer "+basicData().Token, name)
		assert.Less(t, strings.Index(s, `"stage":"configuring"`), strings.Index(s, `"stage":"completed"`), name)
	}
}

func TestOverride(t *testing.T) {
	overrides := map[string]string{
		Kickstart: "# custom {{.Hostname}} {{.ShortHostname}}\n{{template \"header\" .}}\n%post\n{{.ProgressCurl \"completed\" 100 \"custom\"}}\n%end\n",
		"extra":   "hello {{shellQuote .MAC}}",
	}
	got, err := Render(Kickstart, basicData(), overrides)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(got), "# custom lpmos-525400123456 lpmos-525400123456\n# LPMOS install of "), string(got))
	assert.Contains(t, string(got), `"message":"custom"`)

	// Other names still render the built-in.
	got, err = Render(MetaData, basicData(), overrides)
	require.NoError(t, err)
	builtin, err := Render(MetaData, basicData(), nil)
	require.NoError(t, err)
	assert.Equal(t, string(builtin), string(got))

	// An override may add a template under a new name.
	got, err = Render("extra", basicData(), overrides)
	require.NoError(t, err)
	assert.Equal(t, "hello '52:54:00:12:34:56'", string(got))

	// An override does not leak into the built-in set.
	got, err = Render(Kickstart, basicData(), nil)
	require.NoError(t, err)
	assert.NotContains(t, string(got), "# custom")
}

func TestBrokenOverride(t *testing.T) {
	for name, text := range map[string]string{
		"unclosed action":  "{{.Hostname",
		"unknown function": "{{nope .Hostname}}",
		"unknown field":    "{{.NoSuchField}}",
		"bad method args":  "{{.ProgressJSON 1 2 3}}",
		"unknown template": `{{template "missing" .}}`,
		"runaway output":   `{{range $i := .Packages}}{{end}}{{template "loop" .}}{{define "loop"}}{{.Token}}{{template "loop" .}}{{end}}`,
		"bad index":        `{{index .SSHAuthorizedKeys 99}}`,
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Render(Preseed, basicData(), map[string]string{Preseed: text})
			assert.ErrorIs(t, err, ErrTemplate)
			assert.Nil(t, got)
		})
	}
}

func TestInvalidData(t *testing.T) {
	cases := map[string]func(*Data){
		"no task":                func(d *Data) { d.TaskID = "" },
		"bad task":               func(d *Data) { d.TaskID = "x" },
		"no MAC":                 func(d *Data) { d.MAC = "" },
		"bad MAC":                func(d *Data) { d.MAC = "52:54:00:12:34:56\nx" },
		"hostname newline":       func(d *Data) { d.Hostname = "web\nd-i preseed/late_command string reboot" },
		"hostname space":         func(d *Data) { d.Hostname = "web 01" },
		"hostname quote":         func(d *Data) { d.Hostname = `web"01` },
		"hostname shell":         func(d *Data) { d.Hostname = "$(reboot)" },
		"hostname template":      func(d *Data) { d.Hostname = "{{.Token}}" },
		"hostname upper":         func(d *Data) { d.Hostname = "Web01" },
		"hostname dash end":      func(d *Data) { d.Hostname = "web-" },
		"hostname too long":      func(d *Data) { d.Hostname = strings.Repeat("a.", 127) + "a" },
		"os type":                func(d *Data) { d.OSType = "Debian 12" },
		"os version":             func(d *Data) { d.OSVersion = "12;reboot" },
		"disk relative":          func(d *Data) { d.Disk = "sda" },
		"disk dotdot":            func(d *Data) { d.Disk = "/dev/../etc/passwd" },
		"disk space":             func(d *Data) { d.Disk = "/dev/sda --drives=sdb" },
		"network":                func(d *Data) { d.Network = "bond" },
		"dhcp with address":      func(d *Data) { d.Address = "10.0.0.5/24" },
		"static no address":      func(d *Data) { d.Network = "static" },
		"static ipv6":            func(d *Data) { static(d); d.Address = "2001:db8::5/64" },
		"static bad gateway":     func(d *Data) { static(d); d.Gateway = "10.0.0.1 --nameserver=evil" },
		"static gateway outside": func(d *Data) { static(d); d.Gateway = "10.0.1.1" },
		"too many nameservers": func(d *Data) {
			static(d)
			d.Nameservers = []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4", "9.9.9.9"}
		},
		"dhcp with gateway":       func(d *Data) { d.Gateway = "10.0.0.1" },
		"vlan too big":            func(d *Data) { d.VLANID = 4095 },
		"vlan negative":           func(d *Data) { d.VLANID = -1 },
		"bond one nic":            func(d *Data) { d.Bond = Bond{Name: "bond0", Interfaces: []string{"eno1"}} },
		"bond no name":            func(d *Data) { d.Bond = Bond{Interfaces: []string{"eno1", "eno2"}} },
		"bond nic quote":          func(d *Data) { d.Bond = Bond{Name: "bond0", Interfaces: []string{"eno1", "eno'2"}} },
		"bond nic newline":        func(d *Data) { d.Bond = Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2\nx"}} },
		"bond name long":          func(d *Data) { d.Bond = Bond{Name: "bond0123456789abc", Interfaces: []string{"eno1", "eno2"}} },
		"bond nic twice":          func(d *Data) { d.Bond = Bond{Name: "bond0", Interfaces: []string{"eno1", "eno1"}} },
		"bond mode":               func(d *Data) { d.Bond = Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "lacp"} },
		"user-data script":        func(d *Data) { d.UserData = "#!/bin/sh\nreboot\n" },
		"user-data bad yaml":      func(d *Data) { d.UserData = "#cloud-config\na: [\n" },
		"user-data list":          func(d *Data) { d.UserData = "#cloud-config\n- a\n" },
		"password md5":            func(d *Data) { d.RootPasswordHash = "$1$abcdefgh$0123456789abcdefghijkl" },
		"static bad nameserver":   func(d *Data) { static(d); d.Nameservers = []string{"dns.example.com"} },
		"mirror ftp":              func(d *Data) { d.MirrorURL = "ftp://mirror/debian" },
		"mirror space":            func(d *Data) { d.MirrorURL = "http://mirror/de bian" },
		"mirror quote":            func(d *Data) { d.MirrorURL = "http://mirror/'debian" },
		"repo hash":               func(d *Data) { d.RepoURL = "http://mirror/os/#frag" },
		"progress userinfo":       func(d *Data) { d.ProgressURL = "http://u:p@10.0.0.1/" },
		"progress newline":        func(d *Data) { d.ProgressURL = "http://10.0.0.1/\n" },
		"no progress or region":   func(d *Data) { d.RegionURL = "" },
		"no token":                func(d *Data) { d.Token = "" },
		"token quote":             func(d *Data) { d.Token = "a'b" },
		"token space":             func(d *Data) { d.Token = "a b" },
		"key newline":             func(d *Data) { d.SSHAuthorizedKeys = []string{"ssh-ed25519 AAAA a\nssh-ed25519 BBBB evil"} },
		"key CR":                  func(d *Data) { d.SSHAuthorizedKeys = []string{"ssh-ed25519 AAAA a\r"} },
		"key options":             func(d *Data) { d.SSHAuthorizedKeys = []string{`command="/bin/sh" ssh-ed25519 AAAA`} },
		"key type":                func(d *Data) { d.SSHAuthorizedKeys = []string{"ssh-foo AAAA"} },
		"key empty":               func(d *Data) { d.SSHAuthorizedKeys = []string{""} },
		"key bad base64":          func(d *Data) { d.SSHAuthorizedKeys = []string{"ssh-ed25519 AA$A"} },
		"key invalid utf8":        func(d *Data) { d.SSHAuthorizedKeys = []string{"ssh-ed25519 AAAA \xff"} },
		"key line separator":      func(d *Data) { d.SSHAuthorizedKeys = []string{"ssh-ed25519 AAAA a\u2028b"} },
		"password hash plain":     func(d *Data) { d.RootPasswordHash = "hunter2" },
		"password hash space":     func(d *Data) { d.RootPasswordHash = "$6$salt$abc def" },
		"timezone":                func(d *Data) { d.Timezone = "Europe/Berlin; reboot" },
		"locale":                  func(d *Data) { d.Locale = "en_US.UTF-8\n" },
		"package space":           func(d *Data) { d.Packages = []string{"vim htop"} },
		"package option":          func(d *Data) { d.Packages = []string{"--allow-unauthenticated"} },
		"package newline":         func(d *Data) { d.Packages = []string{"vim\n%post"} },
		"tag key":                 func(d *Data) { d.Tags = map[string]string{"a b": "x"} },
		"tag value newline":       func(d *Data) { d.Tags = map[string]string{"a": "x\ny"} },
		"tag value control":       func(d *Data) { d.Tags = map[string]string{"a": "x\x1by"} },
		"tag value invalid utf-8": func(d *Data) { d.Tags = map[string]string{"a": "\xc3"} },
		"tag value too long":      func(d *Data) { d.Tags = map[string]string{"a": strings.Repeat("x", maxTagValue+1)} },
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			d := basicData()
			mod(&d)
			assert.ErrorIs(t, d.Validate(), ErrInvalid)
			for _, n := range Names() {
				got, err := Render(n, d, nil)
				assert.ErrorIs(t, err, ErrInvalid, n)
				assert.Nil(t, got, n)
			}
		})
	}
	d := basicData()
	d.TaskID = "nope"
	assert.ErrorIs(t, d.Validate(), lpmos.ErrInvalidTaskID)
	d = basicData()
	d.MAC = "ff:ff:ff:ff:ff:ff"
	assert.ErrorIs(t, d.Validate(), lpmos.ErrInvalidMAC)
}

func static(d *Data) {
	d.Network, d.Address, d.Gateway, d.Nameservers = "static", "10.0.0.5/24", "10.0.0.1", []string{"10.0.0.2"}
}

// Hostile but valid values: they must come out exactly as they went in.
const (
	hostileKey = `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 it's "$(touch PWNED)" ` + "`touch PWNED`" + ` ; touch PWNED {{.Token}} \ '\'' $HOME %s`
	hostileTag = `'; touch PWNED; echo '"$(touch PWNED)" {{.Token}} \n \' ` + "`id`"
)

func hostileData() Data {
	d := fullData()
	d.SSHAuthorizedKeys = []string{basicData().SSHAuthorizedKeys[0], hostileKey}
	d.Tags = map[string]string{"note": hostileTag, "x/y.z": "ünïcode ✓"}
	return d
}

func TestShellQuote(t *testing.T) {
	sh := needShell(t)
	for _, s := range []string{"", "plain", "it's", `"$(touch PWNED)"`, "`id`", `\`, `'\''`, "a\nb", "$HOME", hostileKey, hostileTag} {
		dir := t.TempDir()
		cmd := exec.Command(sh, "-c", "printf '%s' "+shellQuote(s))
		cmd.Dir = dir
		out, err := cmd.Output()
		require.NoError(t, err, s)
		assert.Equal(t, s, string(out))
		assert.NoFileExists(t, filepath.Join(dir, "PWNED"))
	}
}

// The exact text hostile values turn into, in each syntax.
func TestHostileValuesRenderInert(t *testing.T) {
	d := hostileData()
	nd, err := d.normalize()
	require.NoError(t, err)

	ks, err := Render(Kickstart, d, nil)
	require.NoError(t, err)
	assert.Contains(t, string(ks), "\nprintf '%s\\n' 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example.com' "+
		`'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 it'\''s "$(touch PWNED)" `+"`touch PWNED`"+` ; touch PWNED {{.Token}} \ '\''\'\'''\'' $HOME %s' > /root/.ssh/authorized_keys`+"\n")
	assert.Contains(t, string(ks), "\nprintf '%s\\n' "+`'{"note":"'\''; touch PWNED; echo '\''\"$(touch PWNED)\" {{.Token}} \\n \\'\'' `+"`id`"+`","x/y.z":"ünïcode ✓"}' > /etc/lpmos/tags.json`+"\n")

	ps, err := Render(Preseed, d, nil)
	require.NoError(t, err)
	assert.Contains(t, string(ps), " printf '%s' "+b64(nd.AuthorizedKeys())+" > /target/root/lpmos-keys.b64; \\\n")
	assert.Contains(t, string(ps), " printf '%s' "+b64(nd.TagsJSON()+"\n")+" > /target/etc/lpmos/tags.json.b64; \\\n")
	// Apart from line continuations, the preseed has no backslash at all.
	for _, line := range strings.Split(string(ps), "\n") {
		assert.NotContains(t, strings.TrimSuffix(line, `\`), `\`, line)
	}

	ci, err := Render(CloudInit, d, nil)
	require.NoError(t, err)
	assert.Contains(t, string(ci), "\n  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 it's \\\"$(touch PWNED)\\\" `touch PWNED` ; touch PWNED {{.Token}} \\\\ '\\\\'' $HOME %s\"\n")
	// No template syntax from a value is ever executed: the token does
	// not replace {{.Token}}.
	for _, name := range []string{Kickstart, Autoinstall, CloudInit} {
		out, err := Render(name, d, nil)
		require.NoError(t, err)
		assert.Contains(t, string(out), "{{.Token}}", name)
	}
}

func b64(s string) string { return funcs["base64"].(func(string) string)(s) }

// parseYAML decodes a rendered YAML file, failing the test on a syntax error.
func parseYAML(t *testing.T, name string, d Data) map[string]any {
	t.Helper()
	out, err := Render(name, d, nil)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, yaml.Unmarshal(out, &m), "%s:\n%s", name, out)
	return m
}

func TestYAMLParses(t *testing.T) {
	for variant, d := range map[string]Data{"basic": basicData(), "full": fullData(), "hostile": hostileData()} {
		t.Run(variant, func(t *testing.T) {
			nd, err := d.normalize()
			require.NoError(t, err)

			meta := parseYAML(t, MetaData, d)
			assert.Equal(t, map[string]any{"instance-id": "lpmos-" + testTask, "local-hostname": nd.Hostname}, meta)

			net := parseYAML(t, NetworkConfig, d)
			assert.Equal(t, 2, net["version"])
			nic := net["ethernets"].(map[string]any)["lpmos0"].(map[string]any)
			assert.Equal(t, map[string]any{"macaddress": "52:54:00:12:34:56"}, nic["match"])
			if nd.Static() {
				assert.Equal(t, false, nic["dhcp4"])
				assert.Equal(t, []any{"10.0.0.5/24"}, nic["addresses"])
				assert.Equal(t, []any{map[string]any{"to": "0.0.0.0/0", "via": "10.0.0.1"}}, nic["routes"])
			} else {
				assert.Equal(t, true, nic["dhcp4"])
			}

			ci := parseYAML(t, CloudInit, d)
			assert.Equal(t, nd.ShortHostname(), ci["hostname"])
			assert.Equal(t, toAny(nd.SSHAuthorizedKeys), ci["ssh_authorized_keys"], "keys survive YAML exactly")
			assert.Equal(t, false, ci["disable_root"])
			runcmd := ci["runcmd"].([]any)
			require.Len(t, runcmd, 2)
			for _, c := range runcmd {
				argv := c.([]any)
				require.Len(t, argv, 3)
				assert.Equal(t, []any{"sh", "-c"}, argv[:2])
			}
			if len(nd.Tags) > 0 {
				wf := ci["write_files"].([]any)[0].(map[string]any)
				assert.Equal(t, "/etc/lpmos/tags.json", wf["path"])
				assert.Equal(t, "0644", wf["permissions"], "permissions stay a string")
				var tags map[string]string
				require.NoError(t, json.Unmarshal([]byte(wf["content"].(string)), &tags))
				assert.Equal(t, nd.Tags, tags)
			}

			ai := parseYAML(t, Autoinstall, d)
			require.Len(t, ai, 1, "autoinstall user-data has the single key autoinstall")
			a := ai["autoinstall"].(map[string]any)
			assert.Equal(t, 1, a["version"])
			assert.Equal(t, nd.Locale, a["locale"])
			assert.Equal(t, net, a["network"], "the same netplan as network-config")
			late := a["late-commands"].([]any)
			assert.Contains(t, late[0], "curtin in-target --target=/target -- curl ")
			assert.Contains(t, late[len(late)-1], `"stage":"completed"`)
			if nd.DiskAuto() {
				assert.NotContains(t, a["storage"].(map[string]any)["layout"], "match")
			} else {
				assert.Equal(t, map[string]any{"path": nd.Disk}, a["storage"].(map[string]any)["layout"].(map[string]any)["match"])
			}
		})
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// The shell parts of each answer file, run in a real shell with fake curl,
// in-target and lsblk: the fakes record their arguments, so the test sees
// exactly what the installer would run, and files land in a temporary
// directory standing in for the installed system.

func needShell(t *testing.T) string {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	return sh
}

type shellRun struct {
	dir   string // the fake root: dir/target, dir/root, dir/etc
	bin   string
	log   string
	shell string
	// onlyFakes limits PATH to the fakes, hiding the host's tools.
	onlyFakes bool
}

func newShellRun(t *testing.T) *shellRun {
	r := &shellRun{dir: t.TempDir(), shell: needShell(t)}
	r.bin = filepath.Join(r.dir, "bin")
	r.log = filepath.Join(r.dir, "calls.log")
	require.NoError(t, os.MkdirAll(r.bin, 0o755))
	// Each call is recorded as NUL-terminated words and a \x01.
	record := "#!/bin/sh\n{ printf '%s\\0' \"${0##*/}\" \"$@\"; printf '\\001'; } >> " + shellQuote(r.log) + "\n"
	for _, name := range []string{"curl", "wget", "restorecon"} {
		require.NoError(t, os.WriteFile(filepath.Join(r.bin, name), []byte(record), 0o755))
	}
	// in-target records, and runs "sh -c CMD" with CMD's absolute paths
	// moved into the fake target.
	inTarget := record + "if [ \"$1\" = sh ] && [ \"$2\" = -c ]; then exec sh -c \"$(printf '%s' \"$3\" | sed 's# /# " +
		filepath.Join(r.dir, "target") + "/#g')\"; fi\n"
	require.NoError(t, os.WriteFile(filepath.Join(r.bin, "in-target"), []byte(inTarget), 0o755))
	lsblk := "#!/bin/sh\nprintf '%s\\n' 'loop0 loop 0' 'sr0 rom 1' 'sda disk 1' 'nvme0n1 disk 0' 'nvme1n1 disk 0'\n"
	require.NoError(t, os.WriteFile(filepath.Join(r.bin, "lsblk"), []byte(lsblk), 0o755))
	for _, d := range []string{"target/root", "target/etc/network", "root", "etc", "tmp"} {
		require.NoError(t, os.MkdirAll(filepath.Join(r.dir, d), 0o755))
	}
	return r
}

func (r *shellRun) run(t *testing.T, script string) {
	t.Helper()
	cmd := exec.Command(r.shell, "-e", "-c", script)
	cmd.Dir = r.dir
	path := r.bin + ":" + os.Getenv("PATH")
	if r.onlyFakes {
		path = r.bin
	}
	cmd.Env = append(os.Environ(), "PATH="+path)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "script:\n%s\noutput:\n%s", script, out)
	assert.NoFileExists(t, filepath.Join(r.dir, "PWNED"))
	assert.NoFileExists(t, filepath.Join(r.dir, "target", "PWNED"))
}

func (r *shellRun) calls(t *testing.T) [][]string {
	b, err := os.ReadFile(r.log)
	require.NoError(t, err)
	var calls [][]string
	for _, rec := range strings.Split(strings.TrimSuffix(string(b), "\x01"), "\x01") {
		calls = append(calls, strings.Split(strings.TrimSuffix(rec, "\x00"), "\x00"))
	}
	return calls
}

func (r *shellRun) file(t *testing.T, path string) string {
	b, err := os.ReadFile(filepath.Join(r.dir, path))
	require.NoError(t, err)
	return string(b)
}

func wantCurl(d Data, stage string, pct int, msg string) []string {
	return []string{"curl", "-fsS", "-m", "30", "-X", "POST", "-H", "Content-Type: application/json",
		"-H", "Authorization: Bearer " + d.Token, "--data", d.ProgressJSON(stage, pct, msg), d.ProgressURL}
}

// inFakeRoot points the absolute paths starting with the given prefixes at
// the fake root.
func (r *shellRun) inFakeRoot(s string, prefixes ...string) string {
	for _, p := range prefixes {
		s = strings.ReplaceAll(s, " "+p, " "+r.dir+p)
	}
	return s
}

func TestPreseedLateCommandRuns(t *testing.T) {
	d, err := hostileData().normalize()
	require.NoError(t, err)
	out, err := Render(Preseed, d, nil)
	require.NoError(t, err)
	// The value of preseed/late_command, with its continuation lines
	// joined as the installer joins them.
	text := string(out)
	i := strings.Index(text, "d-i preseed/late_command string ")
	require.GreaterOrEqual(t, i, 0)
	var cmd strings.Builder
	for _, line := range strings.Split(text[i+len("d-i preseed/late_command string "):], "\n") {
		cont := strings.HasSuffix(line, `\`)
		cmd.WriteString(strings.TrimSuffix(line, `\`))
		if !cont {
			break
		}
	}
	r := newShellRun(t)
	r.run(t, r.inFakeRoot(cmd.String(), "/target/"))

	calls := r.calls(t)
	require.Len(t, calls, 4)
	assert.Equal(t, append([]string{"in-target"}, wantCurl(d, "configuring", 95, "Configuring the installed system")...), calls[0])
	assert.Equal(t, []string{"in-target", "sh", "-c", "base64 -d /root/lpmos-keys.b64 > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys"}, calls[1])
	assert.Equal(t, append([]string{"in-target"}, wantCurl(d, "completed", 100, "Installation complete, rebooting")...), calls[3])
	// The fake in-target ran the base64 commands relative to the fake
	// target; the result is exactly the keys and tags.
	assert.Equal(t, d.SSHAuthorizedKeys[0]+"\n"+hostileKey+"\n", r.file(t, "target/root/.ssh/authorized_keys"))
	assert.Equal(t, d.TagsJSON()+"\n", r.file(t, "target/etc/lpmos/tags.json"))
	assert.NoFileExists(t, filepath.Join(r.dir, "target/root/lpmos-keys.b64"))
}

func TestKickstartScriptsRun(t *testing.T) {
	d, err := hostileData().normalize()
	require.NoError(t, err)
	d.Disk = "auto"
	out, err := Render(Kickstart, d, nil)
	require.NoError(t, err)
	section := func(header string) string {
		text := string(out)
		i := strings.Index(text, "\n"+header+"\n")
		require.GreaterOrEqual(t, i, 0, header)
		body := text[i+len(header)+2:]
		return body[:strings.Index(body, "\n%end\n")]
	}

	r := newShellRun(t)
	r.run(t, r.inFakeRoot(section("%pre --interpreter=/bin/sh"), "/tmp/"))
	assert.Equal(t, "ignoredisk --only-use=nvme0n1\nclearpart --all --initlabel --drives=nvme0n1\nbootloader --boot-drive=nvme0n1\n",
		r.file(t, "tmp/lpmos-disk.ks"), "the first non-removable disk")

	r = newShellRun(t)
	// %post runs chrooted in the installed system.
	r.run(t, r.inFakeRoot(section("%post --log=/root/lpmos-post.log"), "/root/", "/etc/"))
	calls := r.calls(t)
	require.Len(t, calls, 3)
	assert.Equal(t, wantCurl(d, "configuring", 95, "Configuring the installed system"), calls[0])
	assert.Equal(t, "restorecon", calls[1][0])
	assert.Equal(t, wantCurl(d, "completed", 100, "Installation complete, rebooting"), calls[2])
	assert.Equal(t, d.SSHAuthorizedKeys[0]+"\n"+hostileKey+"\n", r.file(t, "root/.ssh/authorized_keys"))
	assert.Equal(t, d.TagsJSON()+"\n", r.file(t, "etc/lpmos/tags.json"))
}

func TestAutoinstallLateCommandsRun(t *testing.T) {
	d, err := hostileData().normalize()
	require.NoError(t, err)
	a := parseYAML(t, Autoinstall, d)["autoinstall"].(map[string]any)
	r := newShellRun(t)
	for _, c := range a["late-commands"].([]any) {
		cmd := strings.ReplaceAll(c.(string), "curtin in-target --target=/target -- ", "in-target ")
		r.run(t, r.inFakeRoot(cmd, "/target/"))
	}
	calls := r.calls(t)
	require.Len(t, calls, 2)
	assert.Equal(t, append([]string{"in-target"}, wantCurl(d, "configuring", 95, "Configuring the installed system")...), calls[0])
	assert.Equal(t, append([]string{"in-target"}, wantCurl(d, "completed", 100, "Installation complete, rebooting")...), calls[1])
	assert.Equal(t, d.SSHAuthorizedKeys[0]+"\n"+hostileKey+"\n", r.file(t, "target/root/.ssh/authorized_keys"))
	assert.Equal(t, d.TagsJSON()+"\n", r.file(t, "target/etc/lpmos/tags.json"))
}

func TestCloudInitRuncmdRuns(t *testing.T) {
	d, err := hostileData().normalize()
	require.NoError(t, err)
	ci := parseYAML(t, CloudInit, d)
	for _, tool := range []string{"curl", "wget"} {
		t.Run(tool, func(t *testing.T) {
			r := newShellRun(t)
			if tool == "wget" {
				// An image without curl.
				require.NoError(t, os.Remove(filepath.Join(r.bin, "curl")))
				r.onlyFakes = true
			}
			for _, c := range ci["runcmd"].([]any) {
				r.run(t, c.([]any)[2].(string))
			}
			calls := r.calls(t)
			require.Len(t, calls, 2)
			if tool == "curl" {
				assert.Equal(t, wantCurl(d, "completed", 100, "First boot: cloud-init finished"), calls[1])
				return
			}
			assert.Equal(t, []string{"wget", "-q", "-O", "/dev/null", "-T", "30", "-t", "1",
				"--header=Content-Type: application/json", "--header=Authorization: Bearer " + d.Token,
				"--post-data=" + d.ProgressJSON("completed", 100, "First boot: cloud-init finished"), d.ProgressURL}, calls[1])
		})
	}
}

// Rendering never shares state between calls; run with -race.
func TestConcurrentRender(t *testing.T) {
	done := make(chan []byte)
	for i := range 8 {
		go func() {
			d := basicData()
			d.Hostname = fmt.Sprintf("host-%d", i)
			out, err := Render(Kickstart, d, map[string]string{"x": "{{.Hostname}}"})
			if err != nil {
				out = []byte(err.Error())
			}
			done <- out
		}()
	}
	for range 8 {
		out := <-done
		assert.True(t, bytes.Contains(out, []byte("--hostname=host-")), string(out))
	}
}

// The preseed's late_command writes the installed system's
// /etc/network/interfaces for every network but plain DHCP: run in a
// shell against a fake /sys/class/net that has the task's NIC.
func TestPreseedNetworkLateCommandRuns(t *testing.T) {
	want := map[string]string{
		"full":        "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet static\n    address 10.0.0.5/24\n    gateway 10.0.0.1\n",
		"static-bare": "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet static\n    address 192.168.10.20/23\n",
		"static-vlan": "auto lo\niface lo inet loopback\n\nallow-hotplug ens3\niface ens3 inet manual\n\n" +
			"auto vlan100\niface vlan100 inet static\n    vlan-raw-device ens3\n    address 10.0.0.5/24\n    gateway 10.0.0.1\n",
		"static-bond-vlan-userdata": "auto lo\niface lo inet loopback\n\nauto bond0\niface bond0 inet manual\n" +
			"    bond-slaves eno1 eno2\n    bond-mode 802.3ad\n    bond-miimon 100\n\n" +
			"auto vlan100\niface vlan100 inet static\n    vlan-raw-device bond0\n    address 10.0.0.5/24\n    gateway 10.0.0.1\n",
		"dhcp-bond": "auto lo\niface lo inet loopback\n\nauto bond0\niface bond0 inet dhcp\n" +
			"    bond-slaves enp1s0f0 enp1s0f1\n    bond-mode active-backup\n    bond-miimon 100\n",
	}
	vs := variants()
	for variant, interfaces := range want {
		t.Run(variant, func(t *testing.T) {
			d, err := vs[variant].normalize()
			require.NoError(t, err)
			out, err := Render(Preseed, d, nil)
			require.NoError(t, err)
			text := string(out)
			i := strings.Index(text, "d-i preseed/late_command string ")
			require.GreaterOrEqual(t, i, 0)
			var cmd strings.Builder
			for _, line := range strings.Split(text[i+len("d-i preseed/late_command string "):], "\n") {
				cont := strings.HasSuffix(line, `\`)
				cmd.WriteString(strings.TrimSuffix(line, `\`))
				if !cont {
					break
				}
			}
			r := newShellRun(t)
			nic := filepath.Join(r.dir, "sys/class/net/ens3")
			require.NoError(t, os.MkdirAll(nic, 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(nic, "address"), []byte(d.MAC+"\n"), 0o644))
			r.run(t, r.inFakeRoot(cmd.String(), "/target/", "/sys/"))
			assert.Equal(t, interfaces, r.file(t, "target/etc/network/interfaces"))
			var resolv string
			for _, ns := range d.Nameservers {
				resolv += "nameserver " + ns + "\n"
			}
			if resolv == "" {
				assert.NoFileExists(t, filepath.Join(r.dir, "target/etc/resolv.conf"))
			} else {
				assert.Equal(t, resolv, r.file(t, "target/etc/resolv.conf"))
			}
		})
	}
	// Plain DHCP on the NIC: the installer's own configuration stays.
	out, err := Render(Preseed, basicData(), nil)
	require.NoError(t, err)
	assert.NotContains(t, string(out), "/etc/network/interfaces;")
}
