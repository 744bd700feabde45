package ipxe

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lpmos/lpmos"
)

// Method is how a distribution's installer finds its answers.
type Method string

// The installer methods LPMOS renders answer files for (package
// region/templates) and knows the kernel arguments of.
const (
	// Preseed is the Debian installer (Debian, and Ubuntu up to 20.04's
	// legacy images) reading a preseed file.
	Preseed Method = "preseed"
	// Autoinstall is Ubuntu's Subiquity (20.04 and later live-server)
	// reading autoinstall user-data from a NoCloud seed.
	Autoinstall Method = "autoinstall"
	// Kickstart is Anaconda (Rocky, RHEL, AlmaLinux, CentOS Stream,
	// Fedora) reading a kickstart file.
	Kickstart Method = "kickstart"
)

// InstallerParams describes the boot of a distribution's network installer.
type InstallerParams struct {
	// MAC and TaskID identify the machine and task (for the script's
	// messages; the answer file URL is what ties the install to the task).
	MAC    lpmos.MAC
	TaskID string
	// Method selects the installer's auto-install arguments.
	Method Method
	// KernelURL and InitrdURL are the installer's netboot kernel and
	// initrd. The initrd URL's last path element names the image.
	KernelURL string
	InitrdURL string
	// ConfigURL is the answer file: the preseed file (Preseed), the
	// kickstart file (Kickstart), or the NoCloud seed prefix under which
	// the region serves user-data and meta-data (Autoinstall; a trailing
	// '/' is added when missing, as cloud-init requires).
	ConfigURL string
	// RepoURL is Anaconda's installation tree, inst.repo= (Kickstart,
	// required; ignored otherwise).
	RepoURL string
	// ISOURL is the live-server ISO that Ubuntu's netboot initrd
	// downloads and runs the installer from, url= (Autoinstall, required;
	// ignored otherwise).
	ISOURL string
	// Hostname, when set, is given to the Debian installer as hostname=
	// and domain=, because its network setup runs before the preseed file
	// is fetched (Preseed only; the other methods set it in their answer
	// files).
	Hostname string
	// Consoles, ExtraArgs and Attempts work as in AgentParams.
	Consoles  []string
	ExtraArgs []string
	Attempts  int
}

// Installer renders the script that boots a distribution's installer with
// its unattended-install arguments:
//
//	preseed      auto=true priority=critical url=CONFIG interface=auto netcfg/choose_interface=auto [hostname= domain=]
//	autoinstall  root=/dev/ram0 ramdisk_size=1500000 ip=dhcp url=ISO autoinstall ds=nocloud-net;s=CONFIG/
//	kickstart    inst.ks=CONFIG inst.repo=REPO ip=dhcp
//
// followed by the consoles, initrd=NAME and the extra arguments. The ';' in
// ds=nocloud-net;s= needs no escaping: iPXE treats ';' as an operator only
// when it is a word of its own, and the kernel passes it through.
func Installer(p InstallerParams) ([]byte, error) {
	if err := checkMAC("MAC", p.MAC); err != nil {
		return nil, err
	}
	if err := checkTaskID("TaskID", p.TaskID); err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, v string }{{"KernelURL", p.KernelURL}, {"InitrdURL", p.InitrdURL}, {"ConfigURL", p.ConfigURL}} {
		if err := checkURL(f.name, f.v); err != nil {
			return nil, err
		}
	}
	name, err := imageName("InitrdURL", p.InitrdURL)
	if err != nil {
		return nil, err
	}

	var args []string
	var what string
	switch p.Method {
	case Preseed:
		what = "Debian installer"
		// auto=true defers the locale and keyboard questions until the
		// preseed file is loaded; priority=critical hides the rest.
		args = []string{"auto=true", "priority=critical", "url=" + p.ConfigURL,
			"interface=auto", "netcfg/choose_interface=auto"}
		if p.Hostname != "" {
			if err := checkHostname("Hostname", p.Hostname); err != nil {
				return nil, err
			}
			host, domain, _ := strings.Cut(p.Hostname, ".")
			args = append(args, "hostname="+host)
			if domain != "" {
				args = append(args, "domain="+domain)
			}
		}
	case Autoinstall:
		what = "Ubuntu installer"
		if err := checkURL("ISOURL", p.ISOURL); err != nil {
			return nil, err
		}
		seed := p.ConfigURL
		if !strings.HasSuffix(seed, "/") {
			seed += "/"
		}
		// As in Ubuntu's netboot instructions: casper downloads the ISO
		// named by url= into RAM (ip=dhcp brings the network up first).
		args = []string{"root=/dev/ram0", "ramdisk_size=1500000", "ip=dhcp", "url=" + p.ISOURL,
			"autoinstall", "ds=nocloud-net;s=" + seed}
	case Kickstart:
		what = "Anaconda installer"
		if err := checkURL("RepoURL", p.RepoURL); err != nil {
			return nil, err
		}
		args = []string{"inst.ks=" + p.ConfigURL, "inst.repo=" + p.RepoURL, "ip=dhcp"}
	default:
		return nil, invalid("Method", string(p.Method), "want preseed, autoinstall or kickstart")
	}
	args, attempts, err := commandLine(args, p.Consoles, p.ExtraArgs, name, p.Attempts)
	if err != nil {
		return nil, err
	}

	s := newScript()
	s.comment("LPMOS: " + string(p.Method) + " install on " + p.MAC.String() + " for task " + p.TaskID + ".")
	s.echo("LPMOS: booting the " + what + " (" + string(p.Method) + ") for task " + p.TaskID + " on " + p.MAC.String())
	s.bootKernel(what, p.KernelURL, args, p.InitrdURL, name, attempts)
	return s.render()
}

// LocalParams describes a machine whose install is done.
type LocalParams struct {
	MAC lpmos.MAC
	// TaskID is the completed task, for the message; optional.
	TaskID string
	// Inventoried says the machine has no task and was inventoried
	// (discovery) before: the message says so, not that it is installed.
	Inventoried bool
	// Firmware decides how to reach the local disk.
	Firmware lpmos.Firmware
}

// LocalBoot renders the script that boots the installed system from the
// local disk, for machines that still network-boot first after their task
// completed:
//
//   - BIOS: sanboot --no-describe --drive 0x80 boots the first hard disk's
//     boot sector through iPXE (checked with Debian's undionly.kpxe).
//     Returning to the BIOS instead leaves the choice to the BIOS boot
//     order, which on some machines ends at "no bootable device" or loops
//     back into PXE. If sanboot fails, the script exits to the BIOS anyway.
//   - UEFI: exit 1. iPXE cannot boot a local disk under UEFI (its sanboot
//     drives are SAN targets), but returning to the firmware with an error
//     makes the boot manager try the next BootOrder entry, which after an
//     install is the installed system's loader. A plain exit (success)
//     does not: per the UEFI spec the boot manager then shows its menu
//     and tries nothing else (seen with OVMF, which opened its setup UI).
func LocalBoot(p LocalParams) ([]byte, error) {
	if err := checkMAC("MAC", p.MAC); err != nil {
		return nil, err
	}
	task := ""
	if p.TaskID != "" {
		if err := checkTaskID("TaskID", p.TaskID); err != nil {
			return nil, err
		}
		task = " (task " + p.TaskID + " completed)"
	}
	what := " is installed" + task
	if p.Inventoried {
		what = " has no task and was inventoried already (delete its machine record or give it a task to boot it again)"
	}
	s := newScript()
	s.comment("LPMOS: " + p.MAC.String() + what + "; boot the local disk.")
	s.echo("LPMOS: " + p.MAC.String() + what + ", booting from the local disk")
	switch p.Firmware {
	case lpmos.FirmwareBIOS:
		s.comment("BIOS: boot the first disk's boot sector from iPXE, so the BIOS boot order cannot send the machine back into PXE or stop at no bootable device. If that fails, leave it to the BIOS.")
		s.cmdOr([]string{"sanboot", "--no-describe", "--drive", "0x80"}, "exit", "1")
	case lpmos.FirmwareUEFI, lpmos.FirmwareUEFIHTTP, lpmos.FirmwareARM64, lpmos.FirmwareARM64HTTP:
		s.comment("UEFI: iPXE cannot boot a local disk itself. Returning to the firmware with an error makes its boot manager try the next BootOrder entry: the installed system (a success would stop at the boot menu).")
		s.cmd("exit", "1")
	default:
		return nil, invalid("Firmware", string(p.Firmware), "want bios, uefi, uefi-http, arm64 or arm64-http")
	}
	return s.render()
}

// UnknownParams describes a machine that network-boots from the region
// without an active task.
type UnknownParams struct {
	MAC lpmos.MAC
	// Region is the region's ID, for the message.
	Region string
	// Sleep is how many seconds to show the message before leaving; 0
	// means 60. The pause keeps a machine whose firmware comes straight
	// back to PXE from hammering DHCP and the region.
	Sleep int
	// PowerOff makes the script try to power the machine off after the
	// pause instead of returning to the firmware. Debian's iPXE has no
	// poweroff command; it then returns to the firmware as without it.
	PowerOff bool
}

// Unknown renders the script for a machine without an active task: a
// message, a pause, then exit 1 to the firmware (which boots the next
// device, usually the local disk) or, with PowerOff, an attempt to power
// off.
func Unknown(p UnknownParams) ([]byte, error) {
	if err := checkMAC("MAC", p.MAC); err != nil {
		return nil, err
	}
	if err := lpmos.ValidateRegionID(p.Region); err != nil {
		return nil, fmt.Errorf("%w: Region: %w", ErrInvalid, err)
	}
	wait, err := checkSeconds("Sleep", p.Sleep, 60)
	if err != nil {
		return nil, err
	}
	s := newScript()
	s.comment("LPMOS: " + p.MAC.String() + " has no active task in region " + p.Region + ".")
	s.echo("LPMOS: " + p.MAC.String() + " has no active task in region " + p.Region)
	s.echo("LPMOS: create a task for this MAC address to provision the machine")
	if p.PowerOff {
		s.echo(fmt.Sprintf("LPMOS: powering off in %d seconds", wait))
		s.cmd("sleep", strconv.Itoa(wait))
		s.powerOffOrExit()
		return s.render()
	}
	s.echo(fmt.Sprintf("LPMOS: leaving network boot in %d seconds", wait))
	s.cmd("sleep", strconv.Itoa(wait))
	s.comment("An error, so that a UEFI boot manager tries the next boot option (a success stops at its menu).")
	s.cmd("exit", "1")
	return s.render()
}

// StopReason says why a machine must not be provisioned.
type StopReason string

// The task outcomes that stop a machine.
const (
	Rejected  StopReason = "rejected"
	Cancelled StopReason = "cancelled"
	Failed    StopReason = "failed"
)

// StopParams describes a machine whose task ended without an install.
type StopParams struct {
	MAC    lpmos.MAC
	TaskID string
	Reason StopReason
	// Sleep is how many seconds to show the message before powering off
	// (or returning to the firmware); 0 means 30.
	Sleep int
}

// Stop renders the script for a machine whose task was rejected, cancelled
// or failed: a message, a pause, then poweroff. Debian's iPXE (and
// upstream's default build) has no poweroff command, so there the script
// returns to the firmware, which boots whatever the disk holds: the machine
// is left as it was, and if the firmware comes back to PXE the pause keeps
// the loop slow.
func Stop(p StopParams) ([]byte, error) {
	if err := checkMAC("MAC", p.MAC); err != nil {
		return nil, err
	}
	if err := checkTaskID("TaskID", p.TaskID); err != nil {
		return nil, err
	}
	switch p.Reason {
	case Rejected, Cancelled, Failed:
	default:
		return nil, invalid("Reason", string(p.Reason), "want rejected, cancelled or failed")
	}
	wait, err := checkSeconds("Sleep", p.Sleep, 30)
	if err != nil {
		return nil, err
	}
	s := newScript()
	s.comment("LPMOS: task " + p.TaskID + " for " + p.MAC.String() + " was " + string(p.Reason) + "; do not provision.")
	s.echo("LPMOS: task " + p.TaskID + " for " + p.MAC.String() + " was " + string(p.Reason))
	s.echo("LPMOS: this machine will not be provisioned, powering off in " + strconv.Itoa(wait) + " seconds")
	s.cmd("sleep", strconv.Itoa(wait))
	s.powerOffOrExit()
	return s.render()
}

// BusyParams describes a script fetch refused because the machine's task
// is already booting with an agent token bound to another address.
type BusyParams struct {
	MAC    lpmos.MAC
	TaskID string
	// Sleep is how many seconds to show the message before returning to
	// the firmware; 0 means 60.
	Sleep int
}

// Busy renders the script for a fetch that gets no token: the machine's
// task is already booting (its agent holds a token bound to another
// address). It says so, pauses and returns to the firmware with an error,
// so that a machine that really is this one boots its next device, and a
// firmware that comes straight back to PXE loops slowly. The region
// records the fetch in the task's timeline.
func Busy(p BusyParams) ([]byte, error) {
	if err := checkMAC("MAC", p.MAC); err != nil {
		return nil, err
	}
	if err := checkTaskID("TaskID", p.TaskID); err != nil {
		return nil, err
	}
	wait, err := checkSeconds("Sleep", p.Sleep, 60)
	if err != nil {
		return nil, err
	}
	s := newScript()
	s.comment("LPMOS: task " + p.TaskID + " for " + p.MAC.String() + " is already booting from another address.")
	s.echo("LPMOS: task " + p.TaskID + " for " + p.MAC.String() + " is already booting from another address")
	s.echo("LPMOS: this boot was refused and recorded in the task timeline")
	s.echo(fmt.Sprintf("LPMOS: leaving network boot in %d seconds", wait))
	s.cmd("sleep", strconv.Itoa(wait))
	s.cmd("exit", "1")
	return s.render()
}

// powerOffOrExit tries poweroff and, where iPXE lacks it (Debian's build
// says "poweroff: command not found"), returns to the firmware. The caller
// has already paused, so a firmware that comes straight back to PXE loops
// slowly. The exit is a success on purpose: a UEFI boot manager then stops
// at its menu instead of booting whatever is on the disk of a machine that
// was refused.
func (s *script) powerOffOrExit() {
	s.comment("Debian's iPXE has no poweroff command: return to the firmware instead.")
	s.cmdOr([]string{"poweroff"}, "exit")
}
