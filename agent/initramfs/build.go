package initramfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/gobusybox/src/pkg/golang"
	"github.com/u-root/mkuimage/uimage"
	"github.com/u-root/uio/llog"
)

const (
	// DefaultAgent is the Go package of the LPMOS agent command.
	DefaultAgent = "github.com/lpmos/lpmos/examples/agent"
	// InitPackage is u-root's init, which becomes /init.
	InitPackage = "github.com/u-root/u-root/cmds/core/init"

	// InitramfsName and KernelName are the file names Build writes into
	// Options.OutDir: the names the region's boot directory serves.
	InitramfsName = "initramfs.cpio.zst"
	KernelName    = "vmlinuz"

	// SizeBudget is what the compressed initramfs should stay under: it
	// travels over TFTP-era networks and iPXE's HTTP to every machine.
	SizeBudget = 20 << 20
)

// Options says what Build builds. The zero value of every field but OutDir
// is a sensible default.
type Options struct {
	// OutDir receives InitramfsName and, if Kernel is set, KernelName. It is
	// created if needed; files are replaced atomically.
	OutDir string

	// Agent is the Go package of the agent command, built as the uinit
	// payload; its last path element names the command (/bbin/<name>).
	// Default DefaultAgent.
	Agent string

	// GoModuleDir is a directory inside a Go module that requires
	// github.com/u-root/u-root and can build Agent; the Go toolchain runs
	// there. Default: the current directory.
	GoModuleDir string

	// Kernel, if set, is a vmlinuz copied to OutDir/KernelName.
	Kernel string

	// KernelModulesDir is a kernel's module tree (/lib/modules/<version>
	// holding modules.dep). Empty: the initramfs has no modules and the
	// agent relies on built-in drivers.
	KernelModulesDir string

	// Modules are the modules to include with their dependencies. Nil means
	// DefaultModules, of which those the kernel lacks are left out (and
	// listed in Result.MissingModules); a module named here explicitly that
	// the kernel lacks is an error.
	Modules []string

	// TempDir holds the scratch directory of the build. Default os.TempDir.
	TempDir string

	// Logger receives progress and the u-root builder's messages (at Debug).
	// Default: discard.
	Logger *slog.Logger
}

// Result describes what Build wrote.
type Result struct {
	Initramfs        string // path of the zstd-compressed cpio
	InitramfsSize    int64  // its size in bytes
	UncompressedSize int64  // size of the cpio before compression
	Kernel           string // path of the copied vmlinuz, if Options.Kernel was set
	KernelSize       int64
	// AgentSize is the size of the u-root busybox binary /bbin/bb, which
	// holds both init and the agent.
	AgentSize int64

	KernelVersion string
	// Modules are the archive paths of the included modules in load order:
	// the content of ModulesOrderFile.
	Modules []string
	// BuiltinModules are requested modules the kernel has built in.
	BuiltinModules []string
	// MissingModules are default modules this kernel does not have.
	MissingModules []string

	Duration time.Duration
}

// Build builds the agent's initramfs and writes it, and the kernel if given,
// into o.OutDir. It runs the Go toolchain (go on PATH, or GOROOT); u-root's
// builder does not take a context, so ctx is checked between steps only.
func Build(ctx context.Context, o Options) (Result, error) {
	start := time.Now()
	if o.OutDir == "" {
		return Result{}, errors.New("initramfs: Options.OutDir is required")
	}
	if o.Agent == "" {
		o.Agent = DefaultAgent
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	modDir, err := goModuleDir(ctx, o.GoModuleDir)
	if err != nil {
		return Result{}, err
	}
	if err := checkCommand(ctx, modDir, o.Agent); err != nil {
		return Result{}, err
	}
	tmp, err := os.MkdirTemp(o.TempDir, "lpmos-initramfs-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(tmp)

	var res Result
	files, err := addModules(o, tmp, &res)
	if err != nil {
		return Result{}, err
	}
	if len(res.Modules) > 0 {
		log.Info("kernel modules", "version", res.KernelVersion, "count", len(res.Modules),
			"builtin", res.BuiltinModules, "missing", res.MissingModules)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	buildDir := filepath.Join(tmp, "build")
	if err := os.Mkdir(buildDir, 0o755); err != nil {
		return Result{}, err
	}
	cpioPath := filepath.Join(tmp, "initramfs.cpio")
	env := golang.Default(golang.DisableCGO(), golang.WithGOOS("linux"), golang.WithGOARCH("amd64"),
		golang.WithWorkingDir(modDir))
	ulog := llog.New(slog.LevelDebug, func(format string, v ...any) {
		log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "u-root")
	})
	log.Info("building u-root initramfs", "init", InitPackage, "uinit", o.Agent, "dir", modDir)
	err = uimage.Create(ulog,
		uimage.WithReplaceEnv(env),
		uimage.WithBaseArchive(uimage.DefaultRamfs()),
		uimage.WithTempDir(buildDir),
		uimage.WithCPIOOutput(cpioPath),
		uimage.WithBusyboxCommands(InitPackage, o.Agent),
		uimage.WithInit("init"),
		uimage.WithUinit(path.Base(o.Agent)),
		uimage.WithFiles(files...),
		uimage.WithSkipLDD(), // nothing dynamic goes in: static Go and .ko files
	)
	if err != nil {
		return Result{}, fmt.Errorf("initramfs: building with u-root: %w", err)
	}
	if bbs, _ := filepath.Glob(filepath.Join(buildDir, "*", "bb")); len(bbs) == 1 {
		if fi, err := os.Stat(bbs[0]); err == nil {
			res.AgentSize = fi.Size()
		}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return Result{}, err
	}
	res.Initramfs = filepath.Join(o.OutDir, InitramfsName)
	if res.UncompressedSize, res.InitramfsSize, err = compress(cpioPath, res.Initramfs); err != nil {
		return Result{}, fmt.Errorf("initramfs: compressing: %w", err)
	}
	if o.Kernel != "" {
		res.Kernel = filepath.Join(o.OutDir, KernelName)
		if res.KernelSize, err = copyFile(o.Kernel, res.Kernel); err != nil {
			return Result{}, fmt.Errorf("initramfs: copying kernel: %w", err)
		}
	}
	res.Duration = time.Since(start)
	log.Info("initramfs built", "path", res.Initramfs, "bytes", res.InitramfsSize, "took", res.Duration.Round(time.Millisecond))
	return res, nil
}

// addModules stages the kernel modules and the order file below tmp and
// returns them as u-root "-files" arguments (host path:archive path).
func addModules(o Options, tmp string, res *Result) ([]string, error) {
	var archivePaths []string
	if o.KernelModulesDir != "" {
		ix, err := readModuleIndex(o.KernelModulesDir)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		names, optional := o.Modules, false
		if names == nil {
			names, optional = DefaultModules(), true
		}
		r, err := ix.resolve(names, optional)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		res.KernelVersion = filepath.Base(filepath.Clean(o.KernelModulesDir))
		res.BuiltinModules, res.MissingModules = r.builtin, r.missing
		rels, err := stageModules(o.KernelModulesDir, filepath.Join(tmp, "modules"), r.order)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		for _, rel := range rels {
			archivePaths = append(archivePaths, path.Join("/lib/modules", res.KernelVersion, rel))
		}
		res.Modules = archivePaths
		if len(rels) > 0 {
			staged := filepath.Join(tmp, "modules")
			if err := os.WriteFile(filepath.Join(staged, "modules.dep"), modulesDep(r.order, rels), 0o644); err != nil {
				return nil, err
			}
			if _, err := copyFile(filepath.Join(o.KernelModulesDir, "modules.builtin"), filepath.Join(staged, "modules.builtin")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("initramfs: %w", err)
			}
		}
	}
	order := filepath.Join(tmp, "modules.order")
	if err := os.WriteFile(order, orderFile(res.KernelVersion, archivePaths), 0o644); err != nil {
		return nil, err
	}
	files := []string{order + ":" + strings.TrimPrefix(ModulesOrderFile, "/")}
	if len(archivePaths) > 0 {
		files = append(files, filepath.Join(tmp, "modules")+":"+path.Join("lib/modules", res.KernelVersion))
	}
	return files, nil
}

// goModuleDir checks that dir (default: the current directory) is inside a
// Go module, which u-root's builder needs to resolve the packages.
func goModuleDir(ctx context.Context, dir string) (string, error) {
	if dir == "" {
		dir = "."
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	out, err := run(ctx, dir, "go", "env", "GOMOD")
	if err != nil {
		return "", fmt.Errorf("initramfs: the Go toolchain is needed to build the agent: %w", err)
	}
	if gomod := strings.TrimSpace(string(out)); gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("initramfs: %s is not inside a Go module; set Options.GoModuleDir to one that requires github.com/u-root/u-root", dir)
	}
	return dir, nil
}

// checkCommand fails early, and clearly, if pkg is not a Go command that
// resolves from dir.
func checkCommand(ctx context.Context, dir, pkg string) error {
	out, err := run(ctx, dir, "go", "list", "-f", "{{.Name}}", pkg)
	if err != nil {
		return fmt.Errorf("initramfs: agent package %s: %w", pkg, err)
	}
	if name := strings.TrimSpace(string(out)); name != "main" {
		return fmt.Errorf("initramfs: agent package %s is package %s, not a command (package main)", pkg, name)
	}
	return nil
}

// compress writes src zstd-compressed (the best ratio klauspost offers, about
// zstd -19) to dst via a temporary file and returns both sizes.
func compress(src, dst string) (in, out int64, err error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+"-")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	zw, err := zstd.NewWriter(tmp, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		tmp.Close()
		return 0, 0, err
	}
	if in, err = io.Copy(zw, f); err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, err
	}
	fi, err := os.Stat(tmp.Name())
	if err != nil {
		return 0, 0, err
	}
	return in, fi.Size(), os.Rename(tmp.Name(), dst)
}

// copyFile copies src to dst via a temporary file and returns the size.
func copyFile(src, dst string) (int64, error) {
	f, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+"-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, f)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return n, os.Rename(tmp.Name(), dst)
}
