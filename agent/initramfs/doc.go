// Package initramfs builds the in-RAM system a machine boots into while LPMOS
// discovers and provisions it: a u-root initramfs whose /init is u-root's
// init and whose uinit payload is the LPMOS agent, plus the kernel modules
// a bare-metal server needs to reach its network and its disks.
//
// [Build] compiles u-root's cmds/core/init and the agent command into one
// u-root busybox binary (/bbin/bb, with /bbin/init and /bbin/agent symlinks
// to it; "agent" is the last element of the agent's package path), links
// /init to bbin/init and /bin/uinit to ../bbin/agent, and builds without a
// default shell (u-root's -defaultsh=""): u-root's init mounts /proc, /sys,
// /dev and friends, then runs /bin/uinit, that is the agent, with the
// arguments of uroot.uinitargs= on the kernel command line (Build adds none).
// When the agent exits there is no shell to fall back to and init exits, so
// the agent ends by rebooting or powering off. The archive is compressed with
// zstd, so the kernel must have CONFIG_RD_ZSTD (Debian's has).
//
// # Kernel modules
//
// Given a kernel's module tree (/lib/modules/<version>/ of an unpacked Debian
// kernel package, see [FetchDebianKernel]), Build adds the modules for common
// NICs and disks ([DefaultModules]) and everything they depend on according to
// modules.dep, decompressed (.ko.xz, .ko.zst and .ko.gz become .ko), at their
// usual place /lib/modules/<version>/kernel/.../name.ko. Modules the kernel has
// built in (modules.builtin) are left out, and so is every module not needed.
// A kernel package does not ship modules.dep (depmod writes it on install);
// without it the dependencies come from the "depends=" field of each module's
// .modinfo section, which is what depmod itself would have recorded.
//
// Next to them, /lib/modules/<version>/modules.dep (for exactly these
// modules) and the kernel's modules.builtin let modprobe-like tools, such as
// u-root's kmodule.Probe, work inside the initramfs.
//
// Loading them is the agent's job, so that it can report what failed: they
// are neither in /lib/modules/*.ko nor in /lib/modules-load.d, which u-root's
// init would load by itself. The agent need not parse modules.dep either: it
// reads [ModulesOrderFile],
// /etc/lpmos/modules: one absolute path of a .ko file per line, in load order
// (every module after all the modules it depends on), so loading them one
// after the other with init_module/finit_module works. Lines that are empty or
// start with '#' are comments. The file exists, possibly with comments only,
// in every initramfs Build writes.
//
// This package builds images on the operator's machine; it must not be
// imported by code that runs on the provisioned machine, and it knows nothing
// of regions, tasks or the store.
package initramfs
