package ipxe

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

const (
	testTask   = "550e8400-e29b-41d4-a716-446655440000"
	testRegion = "http://10.0.0.1:8081"
)

func testMAC(t testing.TB) lpmos.MAC {
	m, err := lpmos.ParseMAC("52:54:00:12:34:56")
	require.NoError(t, err)
	return m
}

func agentParams(t testing.TB) AgentParams {
	return AgentParams{
		MAC:       testMAC(t),
		TaskID:    testTask,
		Token:     "q8Zr3kT0vYb2-Lm_x.9~",
		RegionURL: testRegion,
		KernelURL: testRegion + "/boot/vmlinuz",
		InitrdURL: testRegion + "/boot/initramfs.cpio.zst",
	}
}

func installerParams(t testing.TB, m Method) InstallerParams {
	p := InstallerParams{MAC: testMAC(t), TaskID: testTask, Method: m}
	switch m {
	case Preseed:
		p.KernelURL = "http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/linux"
		p.InitrdURL = "http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz"
		p.ConfigURL = testRegion + "/api/v1/tasks/" + testTask + "/preseed.cfg"
		p.Hostname = "web-01.dc1.example.com"
	case Autoinstall:
		p.KernelURL = testRegion + "/boot/images/ubuntu/24.04/kernel"
		p.InitrdURL = testRegion + "/boot/images/ubuntu/24.04/initrd"
		p.ConfigURL = testRegion + "/api/v1/tasks/" + testTask + "/nocloud"
		p.ISOURL = "http://releases.ubuntu.com/24.04/ubuntu-24.04.1-live-server-amd64.iso"
	case Kickstart:
		p.KernelURL = "http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/images/pxeboot/vmlinuz"
		p.InitrdURL = "http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/images/pxeboot/initrd.img"
		p.ConfigURL = testRegion + "/api/v1/tasks/" + testTask + "/kickstart.cfg"
		p.RepoURL = "http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/"
	}
	return p
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.WriteFile(p, got, 0o644))
		return
	}
	want, err := os.ReadFile(p)
	require.NoError(t, err, "run go test ./ipxe -update to create it")
	assert.Equal(t, string(want), string(got), "rendered script differs from %s (go test ./ipxe -update rewrites it)", p)
}

func TestGolden(t *testing.T) {
	mac := testMAC(t)
	custom := agentParams(t)
	custom.Consoles = []string{"ttyS1,115200n8"}
	custom.ExtraArgs = []string{"quiet", "lpmos_debug=1", "--", "single"}
	custom.Attempts = 1
	inventory := agentParams(t)
	inventory.TaskID, inventory.Inventory = "", true

	cases := []struct {
		name   string
		render func() ([]byte, error)
	}{
		{"agent", func() ([]byte, error) { return Agent(agentParams(t)) }},
		{"agent-custom", func() ([]byte, error) { return Agent(custom) }},
		{"agent-inventory", func() ([]byte, error) { return Agent(inventory) }},
		{"installer-preseed", func() ([]byte, error) { return Installer(installerParams(t, Preseed)) }},
		{"installer-autoinstall", func() ([]byte, error) { return Installer(installerParams(t, Autoinstall)) }},
		{"installer-kickstart", func() ([]byte, error) { return Installer(installerParams(t, Kickstart)) }},
		{"local-bios", func() ([]byte, error) {
			return LocalBoot(LocalParams{MAC: mac, TaskID: testTask, Firmware: lpmos.FirmwareBIOS})
		}},
		{"local-uefi", func() ([]byte, error) {
			return LocalBoot(LocalParams{MAC: mac, TaskID: testTask, Firmware: lpmos.FirmwareUEFI})
		}},
		{"unknown", func() ([]byte, error) { return Unknown(UnknownParams{MAC: mac, Region: "dc1"}) }},
		{"unknown-poweroff", func() ([]byte, error) {
			return Unknown(UnknownParams{MAC: mac, Region: "dc1", Sleep: 300, PowerOff: true})
		}},
		{"stop-rejected", func() ([]byte, error) { return Stop(StopParams{MAC: mac, TaskID: testTask, Reason: Rejected}) }},
		{"busy", func() ([]byte, error) { return Busy(BusyParams{MAC: mac, TaskID: testTask}) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := c.render()
			require.NoError(t, err)
			require.NoError(t, checkScript(got), "script:\n%s", got)
			golden(t, c.name+".ipxe.golden", got)
		})
	}
}

// The same local-boot script serves every UEFI flavour.
func TestLocalBootOfAnInventoriedMachine(t *testing.T) {
	got, err := LocalBoot(LocalParams{MAC: testMAC(t), Inventoried: true, Firmware: lpmos.FirmwareBIOS})
	require.NoError(t, err)
	assert.Contains(t, string(got), "\necho LPMOS: 52:54:00:12:34:56 has no task and was inventoried already (delete its machine record or give it a task to boot it again), booting from the local disk\n")
	assert.NotContains(t, string(got), "is installed")
	assert.Contains(t, string(got), "sanboot --no-describe --drive 0x80")
}

func TestLocalBootUEFIVariants(t *testing.T) {
	want, err := LocalBoot(LocalParams{MAC: testMAC(t), Firmware: lpmos.FirmwareUEFI})
	require.NoError(t, err)
	for _, fw := range []lpmos.Firmware{lpmos.FirmwareUEFIHTTP, lpmos.FirmwareARM64, lpmos.FirmwareARM64HTTP} {
		got, err := LocalBoot(LocalParams{MAC: testMAC(t), Firmware: fw})
		require.NoError(t, err)
		assert.Equal(t, string(want), string(got), fw)
	}
}

func TestAgentCommandLine(t *testing.T) {
	p := agentParams(t)
	p.InitrdURL = testRegion + "/boot/agent/initrd.img?v=3"
	got, err := Agent(p)
	require.NoError(t, err)
	s := string(got)
	assert.Contains(t, s, "\nkernel "+p.KernelURL+" lpmos.region="+testRegion+" lpmos.mac=52:54:00:12:34:56 lpmos.task="+testTask+
		" lpmos.token="+p.Token+" console=tty0 console=ttyS0 initrd=initrd.img || goto failed1\n")
	// The image is registered under the name initrd= gives, whatever
	// query the URL carries: under UEFI the kernel's EFI stub asks iPXE
	// for the initrd by that name, so the two must match.
	assert.Contains(t, s, "\ninitrd --name initrd.img "+p.InitrdURL+" || goto failed1\n")
	assert.Equal(t, 3, strings.Count(s, "\nimgfree\n"))
	assert.True(t, strings.HasSuffix(s, "\nreboot || exit\n"), s)

	p.Consoles = []string{}
	got, err = Agent(p)
	require.NoError(t, err)
	assert.NotContains(t, string(got), "console=")
}

// A region serving HTTPS puts its certificate's SHA-256 beside the token;
// the kernel and initramfs may still come over plain HTTP (Debian's iPXE
// has no TLS).
func TestAgentCommandLinePinsTheRegionCertificate(t *testing.T) {
	p := agentParams(t)
	p.RegionURL = "https://10.0.0.1:8443"
	p.RegionCertSHA256 = strings.Repeat("0f", 32)
	got, err := Agent(p)
	require.NoError(t, err)
	require.NoError(t, checkScript(got), "script:\n%s", got)
	assert.Contains(t, string(got), "\nkernel "+p.KernelURL+" lpmos.region=https://10.0.0.1:8443 lpmos.mac=52:54:00:12:34:56 lpmos.task="+testTask+
		" lpmos.token="+p.Token+" lpmos.region_cert_sha256="+p.RegionCertSHA256+" console=tty0 console=ttyS0 initrd=initramfs.cpio.zst || goto failed1\n")
}

// A region pair's other processes follow the serving one in
// lpmos.region=, comma-separated; a bad one, a comma inside a URL of the
// list or an http one beside a pin is refused.
func TestAgentCommandLineListsTheRegionsOtherProcesses(t *testing.T) {
	p := agentParams(t)
	p.RegionURL = "http://10.0.0.1:8081"
	p.OtherRegionURLs = []string{"http://10.0.0.2:8081", "http://10.0.0.3:8081"}
	got, err := Agent(p)
	require.NoError(t, err)
	require.NoError(t, checkScript(got), "script:\n%s", got)
	assert.Contains(t, string(got), " lpmos.region=http://10.0.0.1:8081,http://10.0.0.2:8081,http://10.0.0.3:8081 lpmos.mac=")

	tests := []struct {
		name   string
		edit   func(p *AgentParams)
		detail string
	}{
		{"not a URL", func(p *AgentParams) { p.OtherRegionURLs = []string{"ftp://10.0.0.2"} }, "OtherRegionURLs[0]"},
		{"comma in a URL", func(p *AgentParams) { p.OtherRegionURLs = []string{"http://10.0.0.2:8081/a,b"} }, "comma"},
		{"http beside a pin", func(p *AgentParams) {
			p.RegionURL, p.RegionCertSHA256 = "https://10.0.0.1:8443", strings.Repeat("0f", 32)
			p.OtherRegionURLs = []string{"http://10.0.0.2:8081"}
		}, "https"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := agentParams(t)
			tt.edit(&p)
			_, err := Agent(p)
			require.ErrorIs(t, err, ErrInvalid)
			assert.Contains(t, err.Error(), tt.detail)
		})
	}
}

// A traced task's trace context goes on the agent's kernel line, beside
// the token, for the agent's calls to carry.
func TestAgentCommandLineCarriesTheTraceParent(t *testing.T) {
	p := agentParams(t)
	p.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	got, err := Agent(p)
	require.NoError(t, err)
	require.NoError(t, checkScript(got), "script:\n%s", got)
	assert.Contains(t, string(got), " lpmos.token="+p.Token+" lpmos.traceparent="+p.TraceParent+" console=tty0 ")
}

func TestInstallerArgs(t *testing.T) {
	for _, c := range []struct {
		m    Method
		want string
	}{
		{Preseed, " auto=true priority=critical url=" + testRegion + "/api/v1/tasks/" + testTask + "/preseed.cfg interface=auto netcfg/choose_interface=auto hostname=web-01 domain=dc1.example.com console=tty0 console=ttyS0 initrd=initrd.gz || goto failed1\n"},
		{Autoinstall, " root=/dev/ram0 ramdisk_size=1500000 ip=dhcp url=http://releases.ubuntu.com/24.04/ubuntu-24.04.1-live-server-amd64.iso autoinstall ds=nocloud-net;s=" + testRegion + "/api/v1/tasks/" + testTask + "/nocloud/ console=tty0 console=ttyS0 initrd=initrd || goto failed1\n"},
		{Kickstart, " inst.ks=" + testRegion + "/api/v1/tasks/" + testTask + "/kickstart.cfg inst.repo=http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/ ip=dhcp console=tty0 console=ttyS0 initrd=initrd.img || goto failed1\n"},
	} {
		t.Run(string(c.m), func(t *testing.T) {
			got, err := Installer(installerParams(t, c.m))
			require.NoError(t, err)
			assert.Contains(t, string(got), c.want)
		})
	}
	// A seed URL that already ends in '/' gets no second one.
	p := installerParams(t, Autoinstall)
	p.ConfigURL += "/"
	got, err := Installer(p)
	require.NoError(t, err)
	assert.Contains(t, string(got), "/nocloud/ console=")
}

func TestLocate(t *testing.T) {
	dir := t.TempDir()
	other := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, lpmos.IPXEBinaryBIOS), []byte("x"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(other, "ipxe-real.efi"), []byte("y"), 0o644))
	require.NoError(t, os.Symlink(filepath.Join(other, "ipxe-real.efi"), filepath.Join(dir, lpmos.IPXEBinaryUEFIFull)))
	require.NoError(t, os.Mkdir(filepath.Join(dir, lpmos.IPXEBinaryUEFI), 0o755))

	p, err := Locate(dir, lpmos.IPXEBinaryBIOS)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, lpmos.IPXEBinaryBIOS), p)
	p, err = Locate(dir, lpmos.IPXEBinaryUEFIFull)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(other, "ipxe-real.efi"), p, "symbolic links are resolved")
	_, err = Locate(dir, lpmos.IPXEBinaryUEFI)
	assert.ErrorContains(t, err, "not a regular file")
	_, err = Locate(dir, "missing.efi")
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, err = Locate(dir, "../"+lpmos.IPXEBinaryBIOS)
	assert.ErrorContains(t, err, "plain file name")
}

// With Debian's ipxe package installed, the binaries lpmos names are where
// lpmos.DefaultIPXEDir says.
func TestLocateDebian(t *testing.T) {
	if _, err := os.Stat(lpmos.DefaultIPXEDir); err != nil {
		t.Fatal("Debian's ipxe package is not installed: run ./scripts/test.sh, which installs it")
	}
	for _, name := range lpmos.IPXEBinaries() {
		_, err := Locate("", name)
		assert.NoError(t, err, name)
	}
}

func TestInvalidInputs(t *testing.T) {
	type agentMod func(*AgentParams)
	agentCases := map[string]agentMod{
		"zero MAC":              func(p *AgentParams) { p.MAC = lpmos.MAC{} },
		"multicast MAC":         func(p *AgentParams) { p.MAC = lpmos.MAC{1, 2, 3, 4, 5, 6} },
		"inventory with a task": func(p *AgentParams) { p.Inventory = true },
		"empty task":            func(p *AgentParams) { p.TaskID = "" },
		"uppercase task":        func(p *AgentParams) { p.TaskID = strings.ToUpper(testTask) },
		"task with newline":     func(p *AgentParams) { p.TaskID = testTask[:35] + "\n" },
		"empty token":           func(p *AgentParams) { p.Token = "" },
		"token with space":      func(p *AgentParams) { p.Token = "abc def" },
		"token with expansion":  func(p *AgentParams) { p.Token = "${net0/mac}" },
		"token with newline":    func(p *AgentParams) { p.Token = "abc\nshell" },
		"token with operator":   func(p *AgentParams) { p.Token = "a||b" },
		"token too long":        func(p *AgentParams) { p.Token = strings.Repeat("a", maxTokenLen+1) },
		"region URL ftp":        func(p *AgentParams) { p.RegionURL = "ftp://10.0.0.1/" },
		"region URL relative":   func(p *AgentParams) { p.RegionURL = "/boot" },
		"region URL no host":    func(p *AgentParams) { p.RegionURL = "http:///boot" },
		"region URL with user":  func(p *AgentParams) { p.RegionURL = "http://admin:pw@10.0.0.1/" },
		"pin on http":           func(p *AgentParams) { p.RegionCertSHA256 = strings.Repeat("ab", 32) },
		"pin too short": func(p *AgentParams) {
			p.RegionURL, p.RegionCertSHA256 = "https://10.0.0.1:8443", strings.Repeat("ab", 31)
		},
		"pin uppercase": func(p *AgentParams) {
			p.RegionURL, p.RegionCertSHA256 = "https://10.0.0.1:8443", strings.Repeat("AB", 32)
		},
		"pin with space": func(p *AgentParams) {
			p.RegionURL, p.RegionCertSHA256 = "https://10.0.0.1:8443", strings.Repeat("ab", 31)+"a "
		},
		"URL with space":         func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/a b" },
		"URL with expansion":     func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/${filename}" },
		"URL with dollar":        func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/$x" },
		"URL with newline":       func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/a\nshell" },
		"URL with CR":            func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/a\r" },
		"URL with quote":         func(p *AgentParams) { p.KernelURL = `http://10.0.0.1/a"b` },
		"URL with fragment":      func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/a#b" },
		"URL with backslash":     func(p *AgentParams) { p.KernelURL = `http://10.0.0.1/a\` },
		"URL with semicolon":     func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/a;b" },
		"URL with bad escape":    func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/%zz" },
		"URL non-ASCII":          func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/é" },
		"URL too long":           func(p *AgentParams) { p.KernelURL = "http://10.0.0.1/" + strings.Repeat("a", maxURLLen) },
		"initrd without name":    func(p *AgentParams) { p.InitrdURL = "http://10.0.0.1/" },
		"initrd odd name":        func(p *AgentParams) { p.InitrdURL = "http://10.0.0.1/boot/%20agent" },
		"extra with space":       func(p *AgentParams) { p.ExtraArgs = []string{"a b"} },
		"extra with newline":     func(p *AgentParams) { p.ExtraArgs = []string{"a\nchain http://evil/"} },
		"extra operator":         func(p *AgentParams) { p.ExtraArgs = []string{"||"} },
		"extra semicolon word":   func(p *AgentParams) { p.ExtraArgs = []string{";"} },
		"extra comment":          func(p *AgentParams) { p.ExtraArgs = []string{"#x"} },
		"extra expansion":        func(p *AgentParams) { p.ExtraArgs = []string{"a=${x}"} },
		"extra quote":            func(p *AgentParams) { p.ExtraArgs = []string{`a="b c"`} },
		"extra empty":            func(p *AgentParams) { p.ExtraArgs = []string{""} },
		"extra option-like":      func(p *AgentParams) { p.ExtraArgs = []string{"--name"} },
		"extra reserved token":   func(p *AgentParams) { p.ExtraArgs = []string{"lpmos.token=x"} },
		"trace parent garbage":   func(p *AgentParams) { p.TraceParent = "00-xyz" },
		"trace parent uppercase": func(p *AgentParams) { p.TraceParent = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01" },
		"extra reserved initrd":  func(p *AgentParams) { p.ExtraArgs = []string{"initrd=evil"} },
		"extra reserved console": func(p *AgentParams) { p.ExtraArgs = []string{"console=ttyS1"} },
		"too many extras":        func(p *AgentParams) { p.ExtraArgs = make([]string, maxExtraArgs+1) },
		"console bad":            func(p *AgentParams) { p.Consoles = []string{"ttyS0 init=/bin/sh"} },
		"attempts negative":      func(p *AgentParams) { p.Attempts = -1 },
		"attempts too many":      func(p *AgentParams) { p.Attempts = maxAttempts + 1 },
		"command line too long": func(p *AgentParams) {
			for range 16 {
				p.ExtraArgs = append(p.ExtraArgs, "x="+strings.Repeat("y", 200))
			}
		},
	}
	for name, mod := range agentCases {
		t.Run("agent/"+name, func(t *testing.T) {
			p := agentParams(t)
			mod(&p)
			got, err := Agent(p)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Nil(t, got)
		})
	}

	installerCases := map[string]func(*InstallerParams){
		"no method":           func(p *InstallerParams) { p.Method = "" },
		"unknown method":      func(p *InstallerParams) { p.Method = "winpe" },
		"bad config URL":      func(p *InstallerParams) { p.ConfigURL = "http://x/a b" },
		"kickstart no repo":   func(p *InstallerParams) { p.Method = Kickstart; p.RepoURL = "" },
		"autoinstall no ISO":  func(p *InstallerParams) { p.Method = Autoinstall; p.ISOURL = "" },
		"autoinstall bad ISO": func(p *InstallerParams) { p.Method = Autoinstall; p.ISOURL = "http://x/${a}.iso" },
		"preseed bad host":    func(p *InstallerParams) { p.Method = Preseed; p.Hostname = "web 01" },
		"preseed host upper":  func(p *InstallerParams) { p.Method = Preseed; p.Hostname = "Web01" },
		"preseed host inject": func(p *InstallerParams) { p.Method = Preseed; p.Hostname = "a\nshell" },
		"bad task":            func(p *InstallerParams) { p.TaskID = "x" },
		"bad extra":           func(p *InstallerParams) { p.ExtraArgs = []string{"a;b c"} },
	}
	for name, mod := range installerCases {
		t.Run("installer/"+name, func(t *testing.T) {
			p := installerParams(t, Kickstart)
			p.ISOURL = "http://releases.ubuntu.com/x.iso"
			mod(&p)
			got, err := Installer(p)
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Nil(t, got)
		})
	}

	mac := testMAC(t)
	others := map[string]func() ([]byte, error){
		"local zero MAC":      func() ([]byte, error) { return LocalBoot(LocalParams{Firmware: lpmos.FirmwareBIOS}) },
		"local no firmware":   func() ([]byte, error) { return LocalBoot(LocalParams{MAC: mac}) },
		"local bad firmware":  func() ([]byte, error) { return LocalBoot(LocalParams{MAC: mac, Firmware: "coreboot"}) },
		"local bad task":      func() ([]byte, error) { return LocalBoot(LocalParams{MAC: mac, TaskID: "x", Firmware: "bios"}) },
		"unknown no region":   func() ([]byte, error) { return Unknown(UnknownParams{MAC: mac}) },
		"unknown bad region":  func() ([]byte, error) { return Unknown(UnknownParams{MAC: mac, Region: "dc1\nshell"}) },
		"unknown long sleep":  func() ([]byte, error) { return Unknown(UnknownParams{MAC: mac, Region: "dc1", Sleep: maxSleep + 1}) },
		"unknown neg sleep":   func() ([]byte, error) { return Unknown(UnknownParams{MAC: mac, Region: "dc1", Sleep: -1}) },
		"stop no reason":      func() ([]byte, error) { return Stop(StopParams{MAC: mac, TaskID: testTask}) },
		"stop bad reason":     func() ([]byte, error) { return Stop(StopParams{MAC: mac, TaskID: testTask, Reason: "bored"}) },
		"stop bad task":       func() ([]byte, error) { return Stop(StopParams{MAC: mac, TaskID: "", Reason: Rejected}) },
		"stop zero MAC":       func() ([]byte, error) { return Stop(StopParams{TaskID: testTask, Reason: Rejected}) },
		"busy bad task":       func() ([]byte, error) { return Busy(BusyParams{MAC: mac}) },
		"busy zero MAC":       func() ([]byte, error) { return Busy(BusyParams{TaskID: testTask}) },
		"stop negative sleep": func() ([]byte, error) { return Stop(StopParams{MAC: mac, TaskID: testTask, Reason: Failed, Sleep: -5}) },
	}
	for name, render := range others {
		t.Run(name, func(t *testing.T) {
			got, err := render()
			assert.ErrorIs(t, err, ErrInvalid)
			assert.Nil(t, got)
		})
	}
}

// Errors name the field and never carry a huge or multi-line value.
func TestInvalidErrorMessage(t *testing.T) {
	p := agentParams(t)
	p.Token = strings.Repeat("A", 5000) + "\n"
	_, err := Agent(p)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Token")
	assert.Less(t, len(err.Error()), 300)
	assert.NotContains(t, err.Error(), "\n")

	p = agentParams(t)
	p.TaskID = "nope"
	_, err = Agent(p)
	assert.ErrorIs(t, err, ErrInvalid)
	assert.ErrorIs(t, err, lpmos.ErrInvalidTaskID)
}

// The script builder itself refuses words that would change a script's
// structure, as a second line of defence behind the validators.
func TestCheckWord(t *testing.T) {
	for _, w := range []string{"", "a b", "a\tb", "a\nb", "#c", "||", "&&", ";", "x${y}", `a\`, "é", "a\x00"} {
		assert.Error(t, checkWord(w), "%q", w)
	}
	for _, w := range []string{"kernel", "a;b", "a|b", "a&b", "$x", "http://x/?a=1&b=2", `a\b`} {
		assert.NoError(t, checkWord(w), "%q", w)
	}
	s := newScript()
	s.cmd("echo", "ok")
	s.cmd("echo", "bad\nexit")
	_, err := s.render()
	assert.ErrorIs(t, err, ErrInvalid)
}

// commands is what LPMOS scripts may run: the commands Debian's 2019 iPXE
// has (poweroff is tried, with a fallback, because other builds have it).
var commands = []string{"kernel", "initrd", "boot", "imgfree", "echo", "sleep", "goto", "exit", "reboot", "poweroff", "sanboot"}

var labelRE = regexp.MustCompile(`^:[a-z0-9_]+$`)

// checkScript parses a rendered script the way iPXE would and checks that
// every line is a comment, a label or a known command (optionally "|| "
// another), that nothing expands settings, and that every goto has its
// label.
func checkScript(b []byte) error {
	s := string(b)
	if !strings.HasPrefix(s, "#!ipxe\n") || !strings.HasSuffix(s, "\n") {
		return errors.New("missing #!ipxe header or final newline")
	}
	if strings.Contains(s, "${") {
		return errors.New("contains a settings reference")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c != '\n' && (c < ' ' || c >= 0x7f) {
			return fmt.Errorf("byte %#02x at offset %d", c, i)
		}
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")[1:]
	labels := map[string]bool{}
	var gotos []string
	for n, line := range lines {
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "# "):
			continue
		case strings.HasPrefix(line, ":"):
			if !labelRE.MatchString(line) {
				return fmt.Errorf("line %d: bad label %q", n+2, line)
			}
			labels[line[1:]] = true
			continue
		}
		if strings.HasSuffix(line, `\`) || line != strings.TrimSpace(line) || strings.Contains(line, "  ") {
			return fmt.Errorf("line %d: bad spacing or continuation: %q", n+2, line)
		}
		words := strings.Split(line, " ")
		parts := [][]string{words}
		if i := slices.Index(words, "||"); i >= 0 {
			parts = [][]string{words[:i], words[i+1:]}
		}
		for _, part := range parts {
			if len(part) == 0 {
				return fmt.Errorf("line %d: empty command in %q", n+2, line)
			}
			if !slices.Contains(commands, part[0]) {
				return fmt.Errorf("line %d: unexpected command %q", n+2, part[0])
			}
			for _, w := range part {
				if err := checkWord(w); err != nil {
					return fmt.Errorf("line %d: %w", n+2, err)
				}
			}
			if part[0] == "goto" {
				if len(part) != 2 {
					return fmt.Errorf("line %d: goto needs one label", n+2)
				}
				gotos = append(gotos, part[1])
			}
		}
	}
	for _, g := range gotos {
		if !labels[g] {
			return fmt.Errorf("goto %s has no label", g)
		}
	}
	return nil
}

// shape is a script with everything but the structure removed: per line,
// the comment or label marker or the command words before any argument.
func shape(b []byte) []string {
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "#"):
			out = append(out, "#")
		case strings.HasPrefix(line, ":"):
			out = append(out, line)
		default:
			words := strings.Fields(line)
			sh := ""
			for i, w := range words {
				if i == 0 || w == "||" || (i > 0 && words[i-1] == "||") {
					sh += w + " "
				}
			}
			out = append(out, sh)
		}
	}
	return out
}

func FuzzAgentScript(f *testing.F) {
	f.Add([]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, testTask, "tok", testRegion, testRegion+"/vmlinuz", testRegion+"/initrd.img", "quiet", "ttyS0", 0)
	f.Add([]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, testTask, "t\nchain http://evil/", testRegion, testRegion+"/vmlinuz", testRegion+"/i", "a=${x}", "tty0", 2)
	f.Add([]byte{2, 0, 0, 0, 0, 1}, testTask, "${net0/mac}", "http://h/${x}", "http://h/a b", "http://h/#", "||", "ttyS0 x", 1)
	f.Add([]byte{2, 0, 0, 0, 0, 1}, testTask, "a", "http://h:1/?a=1&b=2", "https://[::1]:8/k", "http://h/x/initrd.gz?q=%41", "---", "ttyS1,115200n8", 10)
	f.Add([]byte{2, 0, 0, 0, 0, 1}, testTask, "a", "http://h/x\\", "http://h/k;reboot", "http://h/i\r", "a\\", "", 3)

	mac := testMAC(f)
	f.Fuzz(func(t *testing.T, macBytes []byte, task, token, region, kernel, initrd, extra, console string, attempts int) {
		p := AgentParams{TaskID: task, Token: token, RegionURL: region, KernelURL: kernel, InitrdURL: initrd,
			ExtraArgs: []string{extra}, Consoles: []string{console}, Attempts: attempts}
		copy(p.MAC[:], macBytes)
		got, err := Agent(p)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalid)
			require.Nil(t, got)
			return
		}
		require.NoError(t, checkScript(got), "script:\n%s", got)

		// The structure must not depend on the values: same lines, same
		// commands as for benign values with the same number of attempts.
		ref, err := Agent(AgentParams{MAC: mac, TaskID: testTask, Token: "t", RegionURL: "http://r", KernelURL: "http://r/k",
			InitrdURL: "http://r/i", ExtraArgs: []string{"x"}, Consoles: []string{"tty0"}, Attempts: attempts})
		require.NoError(t, err)
		require.Equal(t, shape(ref), shape(got), "script:\n%s", got)

		// Values land whole, as single words, on the kernel line.
		for _, line := range strings.Split(string(got), "\n") {
			if !strings.HasPrefix(line, "kernel ") {
				continue
			}
			words := strings.Fields(line)
			require.Equal(t, kernel, words[1])
			for _, w := range []string{"lpmos.region=" + region, "lpmos.mac=" + p.MAC.String(), "lpmos.task=" + task,
				"lpmos.token=" + token, "console=" + console, extra} {
				require.Contains(t, words, w)
			}
		}
	})
}
