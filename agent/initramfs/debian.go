package initramfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// DebianKernelMeta is the Debian package that depends on the current kernel.
const DebianKernelMeta = "linux-image-amd64"

var debianKernelPkg = regexp.MustCompile(`^linux-image-([0-9][^ ]*)$`)

// FetchDebianKernel makes Debian's current amd64 kernel available below dir
// and returns the path of its vmlinuz and of its module tree
// (lib/modules/<version>). It resolves linux-image-amd64 to the versioned
// package it depends on (from the local apt index: run apt-get update first on
// a fresh system), downloads it with apt-get download and unpacks it with
// dpkg -x into dir/<package>, without installing anything. A package already
// unpacked there is reused, so repeated calls cost no network.
func FetchDebianKernel(ctx context.Context, dir string) (vmlinuz, modulesDir string, err error) {
	pkg, err := debianKernelPackage(ctx)
	if err != nil {
		return "", "", err
	}
	version := debianKernelPkg.FindStringSubmatch(pkg)[1]
	dir, err = filepath.Abs(dir)
	if err != nil {
		return "", "", err
	}
	root := filepath.Join(dir, pkg)
	if vmlinuz, modulesDir, err = unpackedKernel(root, version); err == nil {
		return vmlinuz, modulesDir, nil
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	tmp, err := os.MkdirTemp(dir, ".fetch-"+pkg+"-")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	// As root, apt drops to the _apt user, which cannot write to a directory
	// of ours; the sandbox buys nothing for a download we unpack ourselves.
	if _, err := run(ctx, tmp, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg); err != nil {
		return "", "", fmt.Errorf("downloading %s: %w", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return "", "", fmt.Errorf("downloading %s: expected one .deb, found %d", pkg, len(debs))
	}
	unpacked := filepath.Join(tmp, "root")
	if _, err := run(ctx, tmp, "dpkg", "-x", debs[0], unpacked); err != nil {
		return "", "", fmt.Errorf("unpacking %s: %w", debs[0], err)
	}
	if _, _, err := unpackedKernel(unpacked, version); err != nil {
		return "", "", fmt.Errorf("unpacking %s: %w", pkg, err)
	}
	// Rename is atomic: a concurrent or interrupted fetch never leaves a
	// half-unpacked kernel where the cache check would accept it.
	if err := os.Rename(unpacked, root); err != nil {
		if _, _, err2 := unpackedKernel(root, version); err2 != nil {
			return "", "", fmt.Errorf("caching %s: %w", pkg, err)
		}
	}
	return unpackedKernel(root, version)
}

// FindKernel returns the vmlinuz and module tree of a kernel package unpacked
// into root (dpkg -x): root/boot/vmlinuz-<version> and
// root/lib/modules/<version> (or usr/lib/modules).
func FindKernel(root string) (vmlinuz, modulesDir string, err error) {
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return "", "", fmt.Errorf("%s: want one boot/vmlinuz-<version>, found %d", root, len(kernels))
	}
	version := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	return unpackedKernel(root, version)
}

// debianKernelPackage returns the versioned kernel package linux-image-amd64
// depends on, such as linux-image-6.1.0-56-amd64.
func debianKernelPackage(ctx context.Context) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", DebianKernelMeta)
	if err != nil {
		return "", fmt.Errorf("resolving %s (is this Debian with an apt index? try apt-get update): %w", DebianKernelMeta, err)
	}
	for line := range strings.Lines(string(out)) {
		dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends:")
		if dep = strings.TrimSpace(dep); ok && debianKernelPkg.MatchString(dep) {
			return dep, nil
		}
	}
	return "", fmt.Errorf("resolving %s: apt-cache names no linux-image-<version> dependency (try apt-get update)", DebianKernelMeta)
}

// unpackedKernel finds vmlinuz and the module tree of an unpacked kernel
// package (Debian 12 ships lib/modules, merged-/usr releases usr/lib/modules).
func unpackedKernel(root, version string) (vmlinuz, modulesDir string, err error) {
	vmlinuz = filepath.Join(root, "boot", "vmlinuz-"+version)
	if _, err := os.Stat(vmlinuz); err != nil {
		return "", "", err
	}
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		modulesDir = filepath.Join(root, d, version)
		if _, err := os.Stat(filepath.Join(modulesDir, "modules.builtin")); err == nil {
			return vmlinuz, modulesDir, nil
		}
	}
	return "", "", fmt.Errorf("%w: no modules.builtin for %s below %s", os.ErrNotExist, version, root)
}

// run runs a command and returns its standard output; the error carries its
// standard error.
func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%s: %w: %s", name, err, msg)
		} else {
			err = fmt.Errorf("%s: %w", name, err)
		}
		return nil, err
	}
	return out, nil
}
