// Command agent is the LPMOS agent a machine runs from RAM after
// PXE-booting: it reads its region, MAC, task and token from the kernel
// command line (or flags), reports the hardware, waits for approval and
// installs the OS with progress. On rejection it exits 0 and leaves
// powering off to init, unless --poweroff (or running as PID 1).
//
// In the LPMOS initramfs (u-root's init starts it, and the initramfs lists
// its kernel modules in /etc/lpmos/modules) it first loads the drivers and
// brings the boot NIC up with DHCP, and it ends the machine's stay in RAM
// itself, since there is no shell to return to: reboot after an install
// (the region then sends the machine to its disk) or a failure (the region
// decides what comes next), power off when the task was rejected.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/agent/netup"
	"github.com/lpmos/lpmos/hardware"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		region   = flag.String("region", "", "region URL (default: lpmos.region= on the kernel command line)")
		mac      = flag.String("mac", "", "MAC of the boot NIC (default: lpmos.mac=)")
		taskID   = flag.String("task", "", "task ID (default: lpmos.task=)")
		token    = flag.String("token", "", "agent token (default: lpmos.token=)")
		pin      = flag.String("region-cert-sha256", "", "SHA-256 (hex) of the region's TLS certificate: talk to it over https only, accepting only that certificate (default: lpmos.region_cert_sha256=)")
		mode     = flag.String("mode", "", "\"inventory\": report the hardware of a machine without a task, then power off (default: lpmos.mode=)")
		cmdline  = flag.String("cmdline", "/proc/cmdline", "kernel command line to read the lpmos.* parameters from")
		demo     = flag.Bool("demo", false, "simulate the install (writes nothing)")
		poweroff = flag.Bool("poweroff", false, "power the machine off when the task is rejected (implied when PID 1)")
		netMode  = flag.String("netup", "auto", "bring the boot NIC up (modules + DHCP) first: auto (in the LPMOS initramfs), yes or no")
		netOnly  = flag.Bool("netup-only", false, "bring the network up, print the result and exit")
	)
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	cfg, err := config(*cmdline, *region, *mac, *taskID, *token, *mode, *pin)
	if err != nil {
		return err
	}
	inInitramfs := os.Getppid() == 1 && fileExists(netup.ModulesFile)
	if *netMode == "yes" || (*netMode == "auto" && inInitramfs) || *netOnly {
		modules := ""
		if fileExists(netup.ModulesFile) {
			modules = netup.ModulesFile
		}
		res, err := netup.Up(context.Background(), netup.Options{ModulesFile: modules, MAC: cfg.MAC, Logger: log})
		if err != nil {
			return finish(inInitramfs, fmt.Errorf("network: %w", err))
		}
		if *netOnly {
			fmt.Printf("network up: interface=%s address=%s gateway=%s modules=%d\n", res.Interface, res.Address, res.Gateway, res.Modules)
			return nil
		}
	}
	return finish(inInitramfs, runAgent(log, cfg, *demo, *poweroff))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// finish ends the agent. In the initramfs the machine reboots (after a
// pause on errors, so a broken network does not spin): the region's script
// decides what it boots next.
func finish(inInitramfs bool, err error) error {
	if !inInitramfs {
		return err
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err, "- rebooting in 30 s")
		time.Sleep(30 * time.Second)
	}
	syscall.Sync()
	return syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
}

func runAgent(log *slog.Logger, cfg agent.Config, demo, poweroff bool) error {
	cfg.Logger = log
	client, err := agent.NewClient(cfg)
	if err != nil {
		return err
	}
	defer client.Close()
	// Images come from the region too: download them with the agent's
	// client, which carries the certificate pin.
	installers := map[string]agent.Installer{"image": &install.Image{Logger: log, HTTPClient: client.HTTPClient()}}
	if demo {
		installers = map[string]agent.Installer{"image": install.Demo{}, "installer": install.Demo{}}
	}
	runner, err := agent.NewRunner(agent.RunnerConfig{Client: client, Collector: &hardware.Collector{}, Installers: installers, Logger: log})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = runner.Run(ctx)
	switch {
	case errors.Is(err, agent.ErrRejected), errors.Is(err, agent.ErrInventoried):
		fmt.Println("powering off:", err)
		if poweroff || os.Getpid() == 1 || (os.Getppid() == 1 && fileExists(netup.ModulesFile)) {
			syscall.Sync()
			return syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
		}
		return nil
	case err != nil:
		return err
	}
	fmt.Println("install completed: reboot to the installed system")
	return nil
}

// config reads the kernel command line, if there is one, and lets flags
// override it.
func config(path, region, mac, taskID, token, mode, pin string) (agent.Config, error) {
	var line string
	if region == "" || mac == "" || (taskID == "" && mode == "") || token == "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return agent.Config{}, fmt.Errorf("read %s (or pass --region, --mac, --task, --token): %w", path, err)
		}
		line = string(b)
	}
	for k, v := range map[string]string{"lpmos.region": region, "lpmos.mac": mac, "lpmos.task": taskID, "lpmos.token": token, "lpmos.mode": mode, "lpmos.region_cert_sha256": pin} {
		if v != "" {
			line = dropParam(line, k) + " " + k + "=" + v
		}
	}
	if mac != "" {
		if _, err := lpmos.ParseMAC(mac); err != nil {
			return agent.Config{}, fmt.Errorf("--mac: %w", err)
		}
	}
	return agent.ParseCmdline(line)
}

// dropParam removes key=... words from a command line.
func dropParam(line, key string) string {
	var kept []string
	for _, w := range strings.Fields(line) {
		if !strings.HasPrefix(w, key+"=") {
			kept = append(kept, w)
		}
	}
	return strings.Join(kept, " ")
}
