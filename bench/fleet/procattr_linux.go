package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the child when the fleet process
// dies, so that an interrupted run leaves no servers behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
