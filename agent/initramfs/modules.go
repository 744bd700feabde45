package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ModulesOrderFile is where the agent finds the kernel modules to load, in
// load order; the package documentation describes its format.
const ModulesOrderFile = "/etc/lpmos/modules"

// DefaultModules are the modules Build includes when Options.Modules is nil:
// NICs and disk controllers common in servers and virtual machines. Each is
// included only if the kernel has it as a module; their dependencies come
// from modules.dep. The slice is the caller's.
func DefaultModules() []string { return slices.Clone(defaultModules[:]) }

var defaultModules = [...]string{
	// Virtual machines.
	"virtio_pci", "virtio_net", "virtio_blk", "virtio_scsi",
	// Intel and Mellanox server NICs (mlx5_core pulls in mlxfw, pci-hyperv-intf and friends where the kernel needs them).
	"e1000", "e1000e", "igb", "ixgbe", "i40e", "ice", "mlx5_core",
	// Broadcom server NICs.
	"tg3", "bnxt_en",
	// Disks: SATA/AHCI, NVMe, SCSI disks (SAS HBAs and virtio-scsi need sd_mod).
	"ahci", "libahci", "nvme", "nvme_core", "sd_mod",
}

var (
	// ErrModuleNotFound means a module, or a module another one depends on,
	// is neither in modules.dep nor built into the kernel.
	ErrModuleNotFound = errors.New("kernel module not found")
	// ErrModuleCycle means modules.dep has modules that depend on each other,
	// so no load order exists.
	ErrModuleCycle = errors.New("kernel module dependency cycle")
)

// module is one loadable module of a kernel.
type module struct {
	name   string   // canonical name: file name without .ko*, '-' as '_'
	path   string   // relative to the module tree, as in modules.dep
	deps   []string // canonical names of the modules it needs
	loaded bool     // deps is known; if not, it is read from the file's .modinfo
}

// moduleIndex is what a kernel's module tree says about its modules.
type moduleIndex struct {
	dir     string // the module tree, to read .modinfo from
	byName  map[string]*module
	builtin map[string]bool // canonical names
}

// moduleName returns the canonical name of a module file or name: the kernel
// treats '-' and '_' in module names alike.
func moduleName(p string) string {
	base := path.Base(filepath.ToSlash(p))
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// readModuleIndex reads a module tree such as /lib/modules/<version>: its
// modules.dep and modules.builtin. Kernel packages do not ship modules.dep
// (depmod writes it when the package is installed), so without it the index
// is the tree's .ko files, and a module's dependencies come from the
// "depends=" field of its .modinfo section (what modpost computed and depmod
// would have copied), read only for the modules resolved.
func readModuleIndex(dir string) (*moduleIndex, error) {
	var builtin io.Reader = strings.NewReader("")
	if f, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		defer f.Close()
		builtin = f
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	dep, err := os.Open(filepath.Join(dir, "modules.dep"))
	if errors.Is(err, os.ErrNotExist) {
		return scanModuleTree(dir, builtin)
	}
	if err != nil {
		return nil, fmt.Errorf("kernel module tree %s: %w", dir, err)
	}
	defer dep.Close()
	ix, err := parseModuleIndex(dep, builtin)
	if err != nil {
		return nil, err
	}
	ix.dir = dir
	return ix, nil
}

// scanModuleTree indexes the .ko files below dir by name, their
// dependencies still unread.
func scanModuleTree(dir string, builtin io.Reader) (*moduleIndex, error) {
	ix, err := parseModuleIndex(strings.NewReader(""), builtin)
	if err != nil {
		return nil, err
	}
	ix.dir = dir
	err = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !isModuleFile(d.Name()) {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		m := &module{name: moduleName(rel), path: filepath.ToSlash(rel)}
		if _, dup := ix.byName[m.name]; !dup { // like depmod: the first one found wins
			ix.byName[m.name] = m
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel module tree %s: %w", dir, err)
	}
	if len(ix.byName) == 0 {
		return nil, fmt.Errorf("kernel module tree %s: %w: no modules.dep and no .ko files", dir, ErrModuleNotFound)
	}
	return ix, nil
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// modinfoDepends returns the module names in the "depends=" field of an ELF
// module's .modinfo section.
func modinfoDepends(data []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	var deps []string
	for field := range bytes.SplitSeq(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(field, []byte("depends=")); ok {
			for d := range strings.SplitSeq(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, moduleName(d))
				}
			}
		}
	}
	return deps, nil
}

// parseModuleIndex parses modules.dep ("path: dep dep ...") and
// modules.builtin (one path per line).
func parseModuleIndex(dep, builtin io.Reader) (*moduleIndex, error) {
	ix := &moduleIndex{byName: map[string]*module{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, deps, ok := strings.Cut(line, ":")
		p = strings.TrimSpace(p)
		if !ok || p == "" {
			return nil, fmt.Errorf("modules.dep line %d: want \"path: deps\", got %q", n, line)
		}
		m := &module{name: moduleName(p), path: p, loaded: true}
		for _, d := range strings.Fields(deps) {
			m.deps = append(m.deps, moduleName(d))
		}
		ix.byName[m.name] = m
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	sc = bufio.NewScanner(builtin)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			ix.builtin[moduleName(line)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.builtin: %w", err)
	}
	return ix, nil
}

// resolution is the outcome of resolving module names against an index.
type resolution struct {
	order   []*module // load order: every module after its dependencies
	builtin []string  // requested names the kernel has built in
	missing []string  // optional names the kernel does not have at all
}

// resolve returns the modules named and all they depend on, in load order.
// A name the kernel has neither as a module nor built in is an error unless
// optional is set; a dependency modules.dep names but has no line for is
// always an error.
func (ix *moduleIndex) resolve(names []string, optional bool) (resolution, error) {
	var res resolution
	const (
		visiting = 1
		done     = 2
	)
	state := map[*module]int{}
	var visit func(m *module, chain []string) error
	visit = func(m *module, chain []string) error {
		chain = append(chain, m.name)
		switch state[m] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("%w: %s", ErrModuleCycle, strings.Join(chain, " -> "))
		}
		state[m] = visiting
		if !m.loaded {
			data, err := readModule(filepath.Join(ix.dir, filepath.FromSlash(m.path)))
			if err != nil {
				return fmt.Errorf("module %s: %w", m.name, err)
			}
			if m.deps, err = modinfoDepends(data); err != nil {
				return fmt.Errorf("module %s: reading .modinfo of %s: %w", m.name, m.path, err)
			}
			m.loaded = true
		}
		for _, d := range m.deps {
			dm, ok := ix.byName[d]
			if !ok {
				return fmt.Errorf("%w: %s needs %s, which the kernel's module tree does not have", ErrModuleNotFound, m.name, d)
			}
			if err := visit(dm, chain); err != nil {
				return err
			}
		}
		state[m] = done
		res.order = append(res.order, m)
		return nil
	}
	for _, n := range names {
		name := moduleName(n)
		m, ok := ix.byName[name]
		switch {
		case ok:
			if err := visit(m, nil); err != nil {
				return resolution{}, err
			}
		case ix.builtin[name]:
			res.builtin = append(res.builtin, name)
		case optional:
			res.missing = append(res.missing, name)
		default:
			return resolution{}, fmt.Errorf("%w: %s is neither in modules.dep nor in modules.builtin", ErrModuleNotFound, name)
		}
	}
	return res, nil
}

// stageModules writes the modules in order, decompressed, below dst (mirroring
// their paths in the module tree without the compression suffix) and returns
// their paths relative to dst in the same order.
func stageModules(srcDir, dst string, order []*module) ([]string, error) {
	rels := make([]string, 0, len(order))
	for _, m := range order {
		rel := filepath.FromSlash(m.path)
		for _, ext := range []string{".xz", ".zst", ".gz"} {
			rel = strings.TrimSuffix(rel, ext)
		}
		if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
			return nil, fmt.Errorf("module %s: path %q is not inside the module tree", m.name, m.path)
		}
		data, err := readModule(filepath.Join(srcDir, filepath.FromSlash(m.path)))
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m.name, err)
		}
		if !bytes.HasPrefix(data, []byte("\x7fELF")) {
			return nil, fmt.Errorf("module %s: %s is not an ELF file after decompression", m.name, m.path)
		}
		out := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(out, data, 0o644); err != nil {
			return nil, err
		}
		rels = append(rels, filepath.ToSlash(rel))
	}
	return rels, nil
}

// readModule reads a .ko file, decompressing .ko.xz, .ko.zst and .ko.gz.
func readModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(p, ".xz"):
		xr, err := xz.NewReader(bufio.NewReader(f))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		r = xr
	case strings.HasSuffix(p, ".zst"):
		zr, err := zstd.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(p, ".gz"):
		gr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		r = gr
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return data, nil
}

// modulesDep renders a modules.dep for the staged modules (rels[i] is where
// order[i] was staged), so that modprobe-like tools, u-root's kmodule.Probe
// among them, work inside the initramfs. Like depmod, it lists a module's
// dependencies transitively, the one to load last first.
func modulesDep(order []*module, rels []string) []byte {
	pos := map[string]int{}
	for i, m := range order {
		pos[m.name] = i
	}
	closure := make([]map[int]bool, len(order))
	var b bytes.Buffer
	for i, m := range order {
		closure[i] = map[int]bool{}
		for _, d := range m.deps {
			j := pos[d] // resolve put every dependency before its user
			closure[i][j] = true
			for k := range closure[j] {
				closure[i][k] = true
			}
		}
		b.WriteString(rels[i] + ":")
		for j := len(order) - 1; j >= 0; j-- {
			if closure[i][j] {
				b.WriteString(" " + rels[j])
			}
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// orderFile renders ModulesOrderFile for modules at the given archive paths.
func orderFile(kernelVersion string, archivePaths []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Kernel modules for %s in load order: one absolute path per line.\n", kernelVersion)
	for _, p := range archivePaths {
		b.WriteString(p)
		b.WriteByte('\n')
	}
	return b.Bytes()
}
