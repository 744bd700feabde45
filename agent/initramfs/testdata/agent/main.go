// Command agent is a stand-in for the LPMOS agent in the initramfs tests,
// used while examples/agent does not build and by the QEMU boot test: as the
// uinit payload it loads the modules /etc/lpmos/modules lists, in order,
// reports on the console, and powers the machine off.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	fmt.Println("lpmos placeholder agent")
	loaded, failed := 0, 0
	if f, err := os.Open("/etc/lpmos/modules"); err != nil {
		fmt.Println("LPMOS-PLACEHOLDER error:", err)
		failed++
	} else {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			p := strings.TrimSpace(sc.Text())
			if p == "" || strings.HasPrefix(p, "#") {
				continue
			}
			if err := load(p); err != nil && err != syscall.EEXIST {
				fmt.Printf("LPMOS-PLACEHOLDER insmod %s: %v\n", p, err)
				failed++
				continue
			}
			loaded++
		}
		f.Close()
	}
	fmt.Printf("LPMOS-PLACEHOLDER modules loaded=%d failed=%d\n", loaded, failed)
	// What the drivers found: NICs and disks (the kernel probes the PCI
	// devices while init_module runs, so they are there by now).
	fmt.Printf("LPMOS-PLACEHOLDER nics=%s disks=%s\n", list("/sys/class/net", "lo"), list("/sys/block", ""))
	// Power off only inside a u-root initramfs, never on a host by mistake.
	if _, err := os.Stat("/bbin/bb"); err == nil && os.Getppid() == 1 {
		// Let the serial console send what is written before the power
		// goes: the last line was sometimes lost in the UART's queue.
		// TCSBRK with a non-zero argument is tcdrain(3).
		syscall.Syscall(syscall.SYS_IOCTL, os.Stdout.Fd(), tcsbrk, 1)
		time.Sleep(200 * time.Millisecond)
		syscall.Sync()
		syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	}
}

func list(dir, skip string) string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		if e.Name() != skip && !strings.HasPrefix(e.Name(), "loop") && !strings.HasPrefix(e.Name(), "ram") {
			names = append(names, e.Name())
		}
	}
	return strings.Join(names, ",")
}

// sysFinitModule is finit_module(2) on linux/amd64, the only target Build has.
const sysFinitModule = 313

func load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	params := []byte{0}
	_, _, errno := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(&params[0])), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// tcsbrk is the TCSBRK ioctl on linux/amd64 (the syscall package does not
// name it).
const tcsbrk = 0x5409
