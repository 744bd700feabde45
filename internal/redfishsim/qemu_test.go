package redfishsim_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/redfishsim"
)

// TestQEMURebootsFollowOverride runs a QEMU machine that reboots by
// itself: SeaBIOS finds nothing to boot (a NIC without a ROM, a blank
// disk) and resets the machine after -boot reboot-timeout (1 ms).
// Each reset is a boot for the BMC: the PXE override of the power-on is
// spent by it and not by the reboots after it, and a disk override set
// while the machine runs is spent by its next reboot, which QEMU's event
// monitor reports and the bootindex reordering over QMP (qom-set)
// carries out.
func TestQEMURebootsFollowOverride(t *testing.T) {
	if testing.Short() {
		t.Skip("runs QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	require.NoError(t, err, "qemu-system-x86_64 (Debian package qemu-system-x86)")
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	require.NoError(t, os.WriteFile(disk, make([]byte, 1<<20), 0o644))
	q := &redfishsim.QEMU{Dir: dir, NIC: "nic0", Disk: "disk0",
		Command: func(boot string) []string {
			nic, blk := "1", "2"
			if redfishsim.DiskFirst(boot) {
				nic, blk = "2", "1"
			}
			return []string{bin, "-nodefaults", "-machine", "q35", "-accel", "tcg", "-m", "64",
				"-display", "none", "-monitor", "none", "-serial", "none",
				"-boot", "reboot-timeout=1",
				"-device", "virtio-net-pci,id=nic0,romfile=,bootindex=" + nic,
				"-drive", "if=none,id=d0,format=raw,file=" + disk,
				"-device", "virtio-blk-pci,drive=d0,id=disk0,bootindex=" + blk}
		}}
	t.Cleanup(func() { _ = q.Close() })
	sim := redfishsim.New(redfishsim.Config{}, q)
	call := func(method, path, body string) {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.SetBasicAuth("admin", "lpmos-redfish")
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, req)
		require.Equal(t, http.StatusNoContent, rec.Code, rec.Body.String())
	}
	// waitBoots waits until the machine has booted n times.
	waitBoots := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for len(sim.Boots()) < n {
			require.NotZero(t, q.PID(), "QEMU stopped; see %s", filepath.Join(dir, "qemu.log"))
			require.True(t, time.Now().Before(deadline), "boots so far %q, want %d", sim.Boots(), n)
			time.Sleep(50 * time.Millisecond)
		}
		return sim.Boots()
	}

	call("PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once"}}`)
	call("POST", "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset", `{"ResetType":"On"}`)
	boots := waitBoots(3)
	assert.Equal(t, []string{"Pxe", "", ""}, boots[:3], "PXE at power-on, the own order (disk first) at the reboots")

	call("PATCH", "/redfish/v1/Systems/1", `{"Boot":{"BootSourceOverrideTarget":"Hdd","BootSourceOverrideEnabled":"Once"}}`)
	n := len(sim.Boots())
	boots = waitBoots(n + 2)
	after := boots[n:]
	i := slices.Index(after, "Hdd")
	require.NotEqual(t, -1, i, "a reboot after the disk override used it: %q", boots)
	assert.Equal(t, 1, strings.Count(strings.Join(after, ","), "Hdd"), "used once: %q", boots)
	boots = waitBoots(len(boots) + 1)
	assert.Equal(t, "", boots[len(boots)-1], "the reboot after the spent override: %q", boots)
	target, enabled := sim.Boot()
	assert.Equal(t, "None", target)
	assert.Equal(t, "Disabled", enabled)
	assert.NotContains(t, boots[1:], "Pxe", "only the power-on booted PXE")
}
