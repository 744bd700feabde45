package ipxe

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/lpmos/lpmos"
)

// script accumulates an iPXE script. Every word passes checkWord, so even a
// validator bug elsewhere cannot produce an extra command: the first bad word
// poisons the script and render returns the error instead of the text.
type script struct {
	b   strings.Builder
	err error
}

func newScript() *script {
	s := &script{}
	s.b.WriteString("#!ipxe\n")
	return s
}

// checkWord rejects anything iPXE would not treat as one literal word:
// white space (it splits words; '\n' ends the command), control and
// non-ASCII bytes, a leading '#' (a comment), the operators "||", "&&" and
// ";", "${" (settings expansion) and a trailing '\' (line continuation).
func checkWord(w string) error {
	switch {
	case w == "":
		return fmt.Errorf("empty word")
	case w[0] == '#':
		return fmt.Errorf("word %q starts a comment", w)
	case w == "||" || w == "&&" || w == ";":
		return fmt.Errorf("word %q is an operator", w)
	case strings.Contains(w, "${"):
		return fmt.Errorf("word %q contains a settings reference", w)
	case strings.HasSuffix(w, `\`):
		return fmt.Errorf("word %q ends in a line continuation", w)
	}
	for i := 0; i < len(w); i++ {
		if c := w[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("word %q has byte %#02x at offset %d", w, c, i)
		}
	}
	return nil
}

func (s *script) fail(err error) {
	if s.err == nil {
		s.err = fmt.Errorf("%w: internal: %w", ErrInvalid, err)
	}
}

func (s *script) words(ws []string) string {
	for _, w := range ws {
		if err := checkWord(w); err != nil {
			s.fail(err)
			return ""
		}
	}
	return strings.Join(ws, " ")
}

// comment writes "# text"; text is ours, with validated values in it.
func (s *script) comment(text string) {
	s.b.WriteString("# " + s.words(strings.Fields(text)) + "\n")
}

func (s *script) blank() { s.b.WriteString("\n") }

func (s *script) label(name string) { s.b.WriteString(":" + s.words([]string{name}) + "\n") }

// cmd writes one command.
func (s *script) cmd(ws ...string) { s.b.WriteString(s.words(ws) + "\n") }

// cmdOr writes "cmd || fallback": iPXE stops a script at the first failing
// command, so every command that may fail names what happens instead.
func (s *script) cmdOr(ws []string, fallback ...string) {
	s.b.WriteString(s.words(ws) + " || " + s.words(fallback) + "\n")
}

// echo prints our message; its words are checked like any other.
func (s *script) echo(text string) { s.cmd(append([]string{"echo"}, strings.Fields(text)...)...) }

func (s *script) render() ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	return []byte(s.b.String()), nil
}

// retryPause is how long a failed download attempt waits before the next,
// and giveUpPause how long the last failure's message stays on screen
// before the machine reboots.
const (
	retryPause  = 5
	giveUpPause = 10
)

// bootKernel writes the download-and-boot sequence, unrolled once per
// attempt: without settings references iPXE cannot count, and a script
// free of "${" is easy to prove free of injected ones. imgfree before each
// attempt drops what a failed one fetched, which would otherwise be handed
// to the kernel as an extra initrd. After the last attempt the machine
// reboots (Debian's iPXE has reboot) to start over with fresh DHCP, and
// returns to the firmware if this iPXE cannot reboot.
func (s *script) bootKernel(what, kernelURL string, args []string, initrdURL, initrdName string, attempts int) {
	for i := 1; i <= attempts; i++ {
		fail := "failed" + strconv.Itoa(i)
		s.label("attempt" + strconv.Itoa(i))
		s.cmd("imgfree")
		s.cmdOr(append([]string{"kernel", kernelURL}, args...), "goto", fail)
		s.cmdOr([]string{"initrd", "--name", initrdName, initrdURL}, "goto", fail)
		s.cmdOr([]string{"boot"}, "goto", fail)
		s.label(fail)
		if i < attempts {
			s.echo(fmt.Sprintf("LPMOS: loading the %s failed (attempt %d of %d), retrying in %d seconds", what, i, attempts, retryPause))
			s.cmd("sleep", strconv.Itoa(retryPause))
		}
	}
	tries := strconv.Itoa(attempts) + " attempts"
	if attempts == 1 {
		tries = "1 attempt"
	}
	s.echo(fmt.Sprintf("LPMOS: could not load the %s after %s, rebooting in %d seconds", what, tries, giveUpPause))
	s.cmd("sleep", strconv.Itoa(giveUpPause))
	s.cmdOr([]string{"reboot"}, "exit")
}

// kernelArgs joins the command line and checks its length.
func kernelArgs(args []string) error {
	n := len(strings.Join(args, " "))
	if n > maxCmdline {
		return fmt.Errorf("%w: kernel command line is %d bytes, Linux keeps at most %d", ErrInvalid, n, maxCmdline)
	}
	return nil
}

// AgentParams describes the boot of the LPMOS agent: the kernel and
// initramfs that examples/mkinitramfs writes, and the kernel command line
// that tells the agent where its region is and who it is.
type AgentParams struct {
	// MAC is the machine's boot NIC.
	MAC lpmos.MAC
	// TaskID is the task the machine boots for; empty with Inventory.
	TaskID string
	// Inventory boots the agent for a machine without a task (a region
	// in discovery mode): it reports its hardware and powers off. The
	// kernel line carries lpmos.mode=inventory instead of lpmos.task.
	Inventory bool
	// Token is the per-task bearer token the agent sends to the region's
	// agent API. It travels only in this script, on the kernel command
	// line as lpmos.token=.
	Token string
	// RegionURL is the base URL of the region's HTTP server, as the
	// machine reaches it, such as http://10.0.0.1:8081.
	RegionURL string
	// OtherRegionURLs are the base URLs of the region's other processes
	// (a region pair's standby, by its own address): the agent turns to
	// them, in order, when RegionURL stops answering or answers as a
	// standby, so a machine in flight survives a takeover without a
	// virtual IP in front of the pair. They follow RegionURL in
	// lpmos.region=, comma-separated (so no region URL may hold a comma).
	OtherRegionURLs []string
	// RegionCertSHA256, if set, is the SHA-256 of the region's TLS
	// certificate (of the leaf's DER, 64 lowercase hex digits). It goes on
	// the kernel line as lpmos.region_cert_sha256=, beside the token: the
	// agent then talks to the region only over https and accepts only
	// that certificate. It needs an https RegionURL.
	RegionCertSHA256 string
	// TraceParent, if set, is the W3C trace context of the task's trace
	// (OpenTelemetry): the agent sends it as the traceparent header of its
	// calls, so that they join the task's trace. lpmos.traceparent= on the
	// kernel line.
	TraceParent string
	// KernelURL and InitrdURL are the agent's vmlinuz and initramfs. The
	// initramfs URL's last path element names the image (initrd=NAME).
	KernelURL string
	InitrdURL string
	// Consoles are the console= values, in order; the last is where the
	// agent's output goes. Nil means tty0 then ttyS0; empty means none.
	Consoles []string
	// ExtraArgs are appended to the kernel command line, one argument
	// each, such as "quiet" or "lpmos_debug=1"... except lpmos.*, initrd
	// and console, which have their own fields.
	ExtraArgs []string
	// Attempts is how often to try the download before rebooting; 0
	// means 3.
	Attempts int
}

// commandLine checks the consoles, extra arguments and attempts (fields
// Consoles, ExtraArgs, Attempts) and returns the kernel command line: head,
// the console= arguments, initrd=NAME and the extra arguments, checked as a
// whole; and the download attempts. The EFI stub of the kernel loads the
// initrd named here from iPXE's virtual file system; without it a UEFI boot
// has no initramfs. BIOS ignores it.
func commandLine(head, consoles, extra []string, initrd string, attempts int) ([]string, int, error) {
	cons, err := consoleArgs("Consoles", consoles)
	if err != nil {
		return nil, 0, err
	}
	if err := checkExtraArgs("ExtraArgs", extra); err != nil {
		return nil, 0, err
	}
	n, err := checkAttempts("Attempts", attempts)
	if err != nil {
		return nil, 0, err
	}
	args := append(append(append(head, cons...), "initrd="+initrd), extra...)
	if err := kernelArgs(args); err != nil {
		return nil, 0, err
	}
	return args, n, nil
}

// Agent renders the script that boots the LPMOS agent. The kernel command
// line carries lpmos.region, lpmos.mac, lpmos.task and lpmos.token (and,
// for a region serving HTTPS, lpmos.region_cert_sha256), which the agent
// reads from /proc/cmdline.
func Agent(p AgentParams) ([]byte, error) {
	if err := checkMAC("MAC", p.MAC); err != nil {
		return nil, err
	}
	if p.Inventory {
		if p.TaskID != "" {
			return nil, fmt.Errorf("%w: TaskID: an inventory boot has no task", ErrInvalid)
		}
	} else if err := checkTaskID("TaskID", p.TaskID); err != nil {
		return nil, err
	}
	if err := checkToken("Token", p.Token); err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, v string }{{"RegionURL", p.RegionURL}, {"KernelURL", p.KernelURL}, {"InitrdURL", p.InitrdURL}} {
		if err := checkURL(f.name, f.v); err != nil {
			return nil, err
		}
	}
	name, err := imageName("InitrdURL", p.InitrdURL)
	if err != nil {
		return nil, err
	}
	regionURLs := append([]string{p.RegionURL}, p.OtherRegionURLs...)
	for i, u := range p.OtherRegionURLs {
		if err := checkURL(fmt.Sprintf("OtherRegionURLs[%d]", i), u); err != nil {
			return nil, err
		}
	}
	if len(regionURLs) > 1 {
		for _, u := range regionURLs {
			if strings.Contains(u, ",") {
				return nil, invalid("OtherRegionURLs", u, "the region's URLs are a comma-separated list on the kernel line: none may hold a comma")
			}
		}
	}
	head := []string{"lpmos.region=" + strings.Join(regionURLs, ","), "lpmos.mac=" + p.MAC.String()}
	which, what := "lpmos.task="+p.TaskID, "task "+p.TaskID
	if p.Inventory {
		which, what = "lpmos.mode=inventory", "inventory (no task)"
	}
	head = append(head, which, "lpmos.token="+p.Token)
	if p.RegionCertSHA256 != "" {
		for _, u := range regionURLs {
			if err := checkCertSHA256("RegionCertSHA256", p.RegionCertSHA256, u); err != nil {
				return nil, err
			}
		}
		head = append(head, "lpmos.region_cert_sha256="+p.RegionCertSHA256)
	}
	if p.TraceParent != "" {
		if err := checkTraceParent("TraceParent", p.TraceParent); err != nil {
			return nil, err
		}
		head = append(head, "lpmos.traceparent="+p.TraceParent)
	}
	args, attempts, err := commandLine(head, p.Consoles, p.ExtraArgs, name, p.Attempts)
	if err != nil {
		return nil, err
	}

	s := newScript()
	s.comment("LPMOS: boot the agent on " + p.MAC.String() + " for " + what + ".")
	s.comment("Rendered per machine by the region. The token on the kernel line is this boot's agent credential.")
	s.echo("LPMOS: booting the agent for " + what + " on " + p.MAC.String())
	s.bootKernel("agent", p.KernelURL, args, p.InitrdURL, name, attempts)
	return s.render()
}
