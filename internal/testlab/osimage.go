package testlab

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
	"github.com/klauspost/compress/zstd"

	"github.com/lpmos/lpmos/agent/initramfs"
)

// FirstbootPackage is the init of the test OS image: the stand-in for
// cloud-init's phone_home (see its package documentation).
const FirstbootPackage = "github.com/lpmos/lpmos/internal/testlab/firstboot"

// The test OS image's layout: an MBR, partition 1 (bootable, FAT16) from
// 1 MiB on, nothing after it, so whoever writes the image can append a
// partition (the agent appends its CIDATA seed).
const (
	osImagePartStart = 2048           // sectors: 1 MiB
	osImagePartSize  = 32 << 20       // bytes
	osImageSize      = 1<<20 + 32<<20 // bytes: the whole image
	osImageName      = "disk.raw"     // in the cache entry
	osImageZstdName  = osImageName + ".zst"
	osImageSumName   = osImageZstdName + ".sha256"
	syslinuxMBR      = "/usr/lib/syslinux/mbr/mbr.bin" // Debian package syslinux-common
	// syslinux for UEFI: Debian packages syslinux-efi and syslinux-common.
	syslinuxEFI        = "/usr/lib/SYSLINUX.EFI/efi64/syslinux.efi"
	syslinuxEFILdlinux = "/usr/lib/syslinux/modules/efi64/ldlinux.e64"
	osImageRecipe      = "osimage-v3" // change when the image's layout or config changes

	// osImageBaseUinit is the u-root command the initramfs is built
	// around (see osImageDir).
	osImageBaseUinit = "github.com/u-root/u-root/cmds/core/poweroff"
)

// osImageModules are the modules of the test OS image's initramfs: the
// agent's NIC and disk drivers plus what mounting the vfat seed needs on
// Debian's kernel (its FAT defaults are codepage 437 and iocharset ascii;
// the other NLS tables cover seeds mounted with utf8 or iso8859-1).
func osImageModules() []string {
	return append(initramfs.DefaultModules(),
		"fat", "vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8")
}

// osImageSyslinuxCfg boots the kernel with the serial console the tests
// read; a panic powers the VM off at once (QEMU runs with -no-reboot).
const osImageSyslinuxCfg = `SERIAL 0 115200
DEFAULT firstboot
PROMPT 0
TIMEOUT 0
LABEL firstboot
  LINUX /vmlinuz
  INITRD /initrd
  APPEND console=ttyS0,115200 panic=-1
`

// osImageTools are the commands building the image needs, with their
// Debian packages.
var osImageTools = map[string]string{
	"sfdisk":    "fdisk",
	"mkfs.vfat": "dosfstools",
	"mcopy":     "mtools",
	"mmd":       "mtools",
	"syslinux":  "syslinux",
}

// BootableImage returns the path of a raw disk image of a tiny OS that
// both SeaBIOS and OVMF boot: an MBR with syslinux's boot code, partition 1
// (active, type EF: an EFI system partition, FAT16, 32 MiB from 1 MiB on)
// holding syslinux for BIOS and \EFI\BOOT\BOOTX64.EFI (syslinux.efi),
// Debian's kernel and a u-root initramfs whose init is [FirstbootPackage]. Booted from a disk
// that also holds a NoCloud seed (a FAT file system labelled CIDATA), it
// phones home as the seed's user-data says, prints the outcome on the
// serial console (lines starting "LPMOS-FIRSTBOOT: ") and powers off.
//
// The image is in the cache ([CacheDir]), keyed by the kernel, the
// firstboot binary, go.sum and the Go version, so it is built once
// (~30 s); do not write into it: copy it. It needs the Debian packages
// syslinux, syslinux-common, syslinux-efi, mtools, dosfstools and fdisk
// (./scripts/test.sh installs them).
func BootableImage(t testing.TB) string {
	t.Helper()
	return filepath.Join(osImageDir(t), osImageName)
}

// BootableImageZstd returns [BootableImage]'s image compressed with zstd,
// as the region's catalogue serves images (image.raw.zst), and the
// SHA-256 of the compressed file in hex. It is cached next to the image.
func BootableImageZstd(t testing.TB) (path string, sha256hex string) {
	t.Helper()
	dir := osImageDir(t)
	path = filepath.Join(dir, osImageZstdName)
	unlock := lockFile(t, filepath.Join(CacheDir(), ".lock"))
	defer unlock()
	if sum, err := os.ReadFile(filepath.Join(dir, osImageSumName)); err == nil {
		if _, err := os.Stat(path); err == nil && len(strings.TrimSpace(string(sum))) == 64 {
			return path, strings.TrimSpace(string(sum))
		}
	}
	start := time.Now()
	sum, err := compressZstd(filepath.Join(dir, osImageName), path)
	if err != nil {
		t.Fatalf("testlab: compressing the test OS image: %v", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, osImageSumName), []byte(sum+"\n")); err != nil {
		t.Fatalf("testlab: %v", err)
	}
	t.Logf("testlab: compressed the test OS image in %s: %s", time.Since(start).Round(time.Millisecond), path)
	return path, sum
}

// osImageDir returns the cache entry holding the image, building it if
// needed.
func osImageDir(t testing.TB) string {
	t.Helper()
	for tool, pkg := range osImageTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("testlab: %s is not installed (Debian package %s): run ./scripts/test.sh, which installs the test OS image's tools (syslinux, syslinux-common, mtools, dosfstools, fdisk)", tool, pkg)
		}
	}
	for _, f := range []string{syslinuxMBR, syslinuxEFI, syslinuxEFILdlinux} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("testlab: %v (Debian packages syslinux-common, syslinux-efi): run ./scripts/test.sh, which installs them", err)
		}
	}
	extra := fmt.Sprintf("recipe=%s\nbase=%s\nmodules=%s\ncfg=%s\n",
		osImageRecipe, osImageBaseUinit, strings.Join(osImageModules(), ","), osImageSyslinuxCfg)
	return cachedBuild(t, "the test OS image", "osimage", FirstbootPackage, extra,
		func(ctx context.Context, b buildInputs) (string, error) {
			// u-root's busybox builder cannot build a command below
			// internal/ (Go forbids the import), so the initramfs is built
			// around u-root's poweroff as /bin/uinit and firstboot goes in
			// as /bbin/uinit, which u-root's init runs first; if firstboot
			// ever returns, poweroff ends the boot.
			res, err := initramfs.Build(ctx, initramfs.Options{
				OutDir: filepath.Join(b.tmp, "boot"), Agent: osImageBaseUinit, GoModuleDir: b.root,
				Kernel: b.vmlinuz, KernelModulesDir: b.modulesDir, Modules: osImageModules(), TempDir: b.tmp,
			})
			if err != nil {
				return "", fmt.Errorf("building the initramfs: %w", err)
			}
			initrd := filepath.Join(b.tmp, "initrd")
			if err := writeInitrd(initrd, b.bin, res.Initramfs); err != nil {
				return "", fmt.Errorf("the initrd: %w", err)
			}
			if err := makeBootableImage(ctx, filepath.Join(b.out, osImageName), res.Kernel, initrd, b.tmp); err != nil {
				return "", fmt.Errorf("making the image: %w", err)
			}
			return fmt.Sprintf("initramfs %d bytes, %d modules", res.InitramfsSize, len(res.Modules)), nil
		})
}

// makeBootableImage writes the image to name, without root: sfdisk
// partitions the file, mkfs.vfat formats partition 1 in place, mcopy
// copies the files in, syslinux installs its boot sector and ldlinux, and
// syslinux's MBR boot code goes into the first 440 bytes.
func makeBootableImage(ctx context.Context, name, vmlinuz, initrd, tmp string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	err = f.Truncate(osImageSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	sectors := osImagePartSize / 512
	// Type EF (EFI system partition) and active: SeaBIOS runs the MBR
	// code, which boots the active partition whatever its type; OVMF
	// boots \EFI\BOOT\BOOTX64.EFI from an ESP, MBR or GPT.
	table := fmt.Sprintf("label: dos\nlabel-id: 0x4c504d53\nunit: sectors\nstart=%d, size=%d, type=ef, bootable\n", osImagePartStart, sectors)
	if err := runTool(ctx, strings.NewReader(table), "sfdisk", "--no-reread", "--no-tell-kernel", name); err != nil {
		return err
	}
	offset := osImagePartStart * 512
	if err := runTool(ctx, nil, "mkfs.vfat", "-F", "16", "-n", "LPMOS", "-i", "4c504d53", "-h", strconv.Itoa(osImagePartStart),
		"--offset", strconv.Itoa(osImagePartStart), name, strconv.Itoa(osImagePartSize/1024)); err != nil {
		return err
	}
	cfg := filepath.Join(tmp, "syslinux.cfg")
	if err := os.WriteFile(cfg, []byte(osImageSyslinuxCfg), 0o644); err != nil {
		return err
	}
	img := name + "@@" + strconv.Itoa(offset)
	if err := runTool(ctx, nil, "mmd", "-i", img, "::EFI", "::EFI/BOOT"); err != nil {
		return err
	}
	// syslinux.efi reads its configuration from its own directory.
	for _, c := range [][2]string{
		{vmlinuz, "::vmlinuz"}, {initrd, "::initrd"}, {cfg, "::syslinux.cfg"},
		{syslinuxEFI, "::EFI/BOOT/BOOTX64.EFI"}, {syslinuxEFILdlinux, "::EFI/BOOT/ldlinux.e64"}, {cfg, "::EFI/BOOT/syslinux.cfg"},
	} {
		if err := runTool(ctx, nil, "mcopy", "-o", "-i", img, c[0], c[1]); err != nil {
			return err
		}
	}
	if err := runTool(ctx, nil, "syslinux", "--install", "--offset", strconv.Itoa(offset), name); err != nil {
		return err
	}
	mbr, err := os.ReadFile(syslinuxMBR)
	if err != nil {
		return err
	}
	if len(mbr) < 440 {
		return fmt.Errorf("%s: %d bytes, want 440", syslinuxMBR, len(mbr))
	}
	w, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = w.WriteAt(mbr[:440], 0)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeInitrd writes the initrd: an uncompressed newc cpio holding the
// firstboot binary as /bbin/uinit, padded to 512 bytes, followed by the
// u-root initramfs (zstd). The kernel unpacks concatenated archives in
// order, as it does for early microcode in front of a distribution's
// initrd.
func writeInitrd(name, firstboot, base string) error {
	bin, err := os.ReadFile(firstboot)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	cw := cpio.NewWriter(&buf)
	for _, h := range []*cpio.Header{
		{Name: "bbin", Mode: cpio.TypeDir | 0o755},
		{Name: "bbin/uinit", Mode: cpio.TypeReg | 0o755, Size: int64(len(bin))},
	} {
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
		if h.Size > 0 {
			if _, err := cw.Write(bin); err != nil {
				return fmt.Errorf("cpio: %w", err)
			}
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	if pad := buf.Len() % 512; pad != 0 {
		buf.Write(make([]byte, 512-pad))
	}
	zst, err := os.ReadFile(base)
	if err != nil {
		return err
	}
	buf.Write(zst)
	return os.WriteFile(name, buf.Bytes(), 0o644)
}

// runTool runs a command and wraps its output into the error.
func runTool(ctx context.Context, stdin io.Reader, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1") // images have no real geometry
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// compressZstd writes src zstd-compressed to dst (via a temporary file)
// and returns the SHA-256 of what it wrote.
func compressZstd(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+"-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	h := sha256.New()
	zw, err := zstd.NewWriter(io.MultiWriter(tmp, h), zstd.WithEncoderLevel(zstd.SpeedBetterCompression))
	if err != nil {
		tmp.Close()
		return "", err
	}
	if _, err = io.Copy(zw, in); err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), os.Rename(tmp.Name(), dst)
}

func writeFileAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), name)
}
