package region

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/lpmos/lpmos/task"
)

// OS offering kinds.
const (
	KindImage     = "image"
	KindInstaller = "installer"
)

// Entry is one installable OS of the region's catalogue.
type Entry struct {
	OSType, OSVersion string
	Kind              string
	// Image: the file (relative to the boot directory), its SHA-256 as
	// listed in SHA256SUMS, and its size.
	ImagePath string
	SHA256    string
	Size      int64
	// Installer: kernel and initrd URLs (local files under the boot
	// directory, or the distribution's mirror), the installer family
	// (preseed, autoinstall, kickstart) and the repository URL.
	KernelURL, InitrdURL string
	Family               string
	RepoURL              string
	// ISOURL is the live-server ISO Ubuntu's netboot initrd installs from.
	ISOURL string
}

// builtinInstallers are netboot installers from the distributions' HTTP
// mirrors (Debian's iPXE cannot fetch HTTPS), used unless the boot
// directory holds local files for the same OS.
var builtinInstallers = []Entry{
	{OSType: "debian", OSVersion: "12", Kind: KindInstaller, Family: "preseed",
		KernelURL: "http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/linux",
		InitrdURL: "http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz",
		RepoURL:   "http://deb.debian.org/debian"},
	{OSType: "ubuntu", OSVersion: "22.04", Kind: KindInstaller, Family: "autoinstall",
		KernelURL: "http://releases.ubuntu.com/22.04/netboot/amd64/linux",
		InitrdURL: "http://releases.ubuntu.com/22.04/netboot/amd64/initrd",
		ISOURL:    "http://releases.ubuntu.com/22.04/ubuntu-22.04.5-live-server-amd64.iso",
		RepoURL:   "http://archive.ubuntu.com/ubuntu"},
	{OSType: "ubuntu", OSVersion: "24.04", Kind: KindInstaller, Family: "autoinstall",
		KernelURL: "http://releases.ubuntu.com/24.04/netboot/amd64/linux",
		InitrdURL: "http://releases.ubuntu.com/24.04/netboot/amd64/initrd",
		ISOURL:    "http://releases.ubuntu.com/24.04/ubuntu-24.04.3-live-server-amd64.iso",
		RepoURL:   "http://archive.ubuntu.com/ubuntu"},
	{OSType: "rocky", OSVersion: "9", Kind: KindInstaller, Family: "kickstart",
		KernelURL: "http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/images/pxeboot/vmlinuz",
		InitrdURL: "http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/images/pxeboot/initrd.img",
		RepoURL:   "http://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/"},
}

// imageNames are the disk image names looked for, in order of preference.
var imageNames = []string{"image.raw.zst", "image.raw.xz", "image.raw.gz", "image.raw"}

// Catalogue is what a region can install: the images and installers found
// in its boot directory's images/<os_type>/<os_version>/, the images of
// the image catalogue (osimage) it downloaded and verified, and the
// built-in netboot installers. A local directory wins over a catalogue
// image for the same OS, and both over a built-in installer.
type Catalogue struct {
	mu         sync.RWMutex
	local      []Entry          // found in the boot directory
	registered map[string]Entry // ready catalogue images, by image ID
	entries    []Entry          // what the region offers: all three, merged
}

// ScanCatalogue reads bootDir/images. A malformed entry (an image without a
// SHA256SUMS line for it, say) is reported in problems and left out; it
// does not stop the region.
func ScanCatalogue(bootDir, publicURL string) (cat *Catalogue, problems []error) {
	cat = &Catalogue{registered: map[string]Entry{}}
	root := filepath.Join(bootDir, "images")
	types, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		problems = append(problems, fmt.Errorf("read OS catalogue: %w", err))
	}
	for _, t := range types {
		if !t.IsDir() || !validName(t.Name()) {
			continue
		}
		versions, err := os.ReadDir(filepath.Join(root, t.Name()))
		if err != nil {
			problems = append(problems, err)
			continue
		}
		for _, v := range versions {
			if !v.IsDir() || !validName(v.Name()) {
				continue
			}
			e, err := scanEntry(bootDir, t.Name(), v.Name(), publicURL)
			if err != nil {
				problems = append(problems, err)
				continue
			}
			if e != nil {
				cat.local = append(cat.local, *e)
			}
		}
	}
	cat.merge()
	return cat, problems
}

// merge rebuilds entries; the caller holds mu (or owns c).
func (c *Catalogue) merge() {
	taken := map[string]bool{}
	entries := slices.Clone(c.local)
	for _, e := range c.local {
		taken[e.OSType+"/"+e.OSVersion] = true
	}
	ids := make([]string, 0, len(c.registered))
	for id := range c.registered {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		e := c.registered[id]
		if k := e.OSType + "/" + e.OSVersion; !taken[k] {
			entries = append(entries, e)
			taken[k] = true
		}
	}
	for _, b := range builtinInstallers {
		if !taken[b.OSType+"/"+b.OSVersion] {
			entries = append(entries, b)
		}
	}
	slices.SortFunc(entries, func(a, b Entry) int {
		return strings.Compare(a.OSType+"/"+a.OSVersion, b.OSType+"/"+b.OSVersion)
	})
	c.entries = entries
}

// setRegistered offers (e non-nil) or withdraws (nil) the catalogue
// image id.
func (c *Catalogue) setRegistered(id string, e *Entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e == nil {
		delete(c.registered, id)
	} else {
		c.registered[id] = *e
	}
	c.merge()
}

func validName(s string) bool {
	return s != "" && !strings.HasPrefix(s, ".") && !strings.ContainsAny(s, " /\\\x00")
}

// scanEntry reads one images/<type>/<version>/ directory: an image with
// its SHA256SUMS line, or an installer's kernel + initrd.
func scanEntry(bootDir, osType, osVersion, publicURL string) (*Entry, error) {
	rel := path.Join("images", osType, osVersion)
	dir := filepath.Join(bootDir, filepath.FromSlash(rel))
	for _, name := range imageNames {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		sums, err := readSHA256SUMS(filepath.Join(dir, "SHA256SUMS"))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		sum, ok := sums[name]
		if !ok {
			return nil, fmt.Errorf("%s: SHA256SUMS has no line for %s", rel, name)
		}
		return &Entry{OSType: osType, OSVersion: osVersion, Kind: KindImage, ImagePath: path.Join(rel, name), SHA256: sum, Size: fi.Size()}, nil
	}
	_, kerr := os.Stat(filepath.Join(dir, "kernel"))
	_, ierr := os.Stat(filepath.Join(dir, "initrd"))
	if kerr == nil && ierr == nil {
		e := &Entry{OSType: osType, OSVersion: osVersion, Kind: KindInstaller, Family: familyOf(osType),
			KernelURL: publicURL + "/boot/files/" + rel + "/kernel", InitrdURL: publicURL + "/boot/files/" + rel + "/initrd"}
		for _, b := range builtinInstallers {
			if b.OSType == osType {
				e.RepoURL, e.ISOURL = b.RepoURL, b.ISOURL
			}
		}
		return e, nil
	}
	return nil, nil // an empty or unrelated directory
}

func familyOf(osType string) string {
	switch osType {
	case "debian":
		return "preseed"
	case "ubuntu":
		return "autoinstall"
	case "rocky", "rhel", "centos", "almalinux", "fedora":
		return "kickstart"
	}
	return ""
}

// readSHA256SUMS parses `sha256sum` output: "<hex>  <name>" (or " *<name>"
// for binary mode).
func readSHA256SUMS(p string) (map[string]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sum, name, ok := strings.Cut(line, " ")
		name = strings.TrimPrefix(strings.TrimLeft(name, " "), "*")
		if b, err := hex.DecodeString(sum); !ok || err != nil || len(b) != 32 || name == "" {
			return nil, fmt.Errorf("%s:%d: not a sha256sum line", p, n)
		}
		out[name] = strings.ToLower(sum)
	}
	return out, sc.Err()
}

// Lookup finds the entry for an OS.
func (c *Catalogue) Lookup(osType, osVersion string) (Entry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, e := range c.entries {
		if e.OSType == osType && e.OSVersion == osVersion {
			return e, true
		}
	}
	return Entry{}, false
}

// Entries lists the catalogue.
func (c *Catalogue) Entries() []Entry {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.entries)
}

// Offerings is the catalogue as published in the region's capabilities.
func (c *Catalogue) Offerings() []task.OSOffering {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]task.OSOffering, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, task.OSOffering{Type: e.OSType, Version: e.OSVersion, Kind: e.Kind})
	}
	return out
}
