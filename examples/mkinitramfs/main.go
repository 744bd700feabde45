// Command mkinitramfs builds the LPMOS agent's boot files: it writes a kernel
// (vmlinuz) and the u-root initramfs with the agent (initramfs.cpio.zst) into
// a region's boot directory. Run it inside this module (it builds the agent
// with the Go toolchain):
//
//	go run ./examples/mkinitramfs --out ./lpmos-data/boot
//
// Without --kernel-dir it fetches Debian's current kernel package once into
// --kernel-cache.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/lpmos/lpmos/agent/initramfs"
)

func main() {
	out := flag.String("out", "./lpmos-data/boot", "boot directory to write vmlinuz and initramfs.cpio.zst into")
	kernelDir := flag.String("kernel-dir", "", "an unpacked kernel package (boot/vmlinuz-<ver>, lib/modules/<ver>); default: Debian's, fetched into --kernel-cache")
	kernelCache := flag.String("kernel-cache", "", "where Debian's kernel package is kept between runs (default: kernel-cache beside --out)")
	agent := flag.String("agent", initramfs.DefaultAgent, "Go package of the agent command (the uinit payload)")
	verbose := flag.Bool("v", false, "log the u-root builder's output")
	flag.Parse()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, *out, *kernelDir, *kernelCache, *agent); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, out, kernelDir, kernelCache, agent string) error {
	var vmlinuz, modules string
	var err error
	if kernelDir != "" {
		vmlinuz, modules, err = initramfs.FindKernel(kernelDir)
	} else {
		if kernelCache == "" {
			kernelCache = filepath.Join(filepath.Dir(filepath.Clean(out)), "kernel-cache")
		}
		log.Info("fetching Debian's kernel", "cache", kernelCache)
		vmlinuz, modules, err = initramfs.FetchDebianKernel(ctx, kernelCache)
	}
	if err != nil {
		return err
	}
	res, err := initramfs.Build(ctx, initramfs.Options{
		OutDir: out, Agent: agent, Kernel: vmlinuz, KernelModulesDir: modules, Logger: log,
	})
	if err != nil {
		return err
	}
	fmt.Printf("%-20s %10d bytes (%.1f MiB)  %s\n", initramfs.KernelName, res.KernelSize, mib(res.KernelSize), res.Kernel)
	fmt.Printf("%-20s %10d bytes (%.1f MiB)  %s  (%d modules for %s, built in %s)\n", initramfs.InitramfsName,
		res.InitramfsSize, mib(res.InitramfsSize), res.Initramfs, len(res.Modules), res.KernelVersion, res.Duration.Round(1e6))
	if res.InitramfsSize > initramfs.SizeBudget {
		fmt.Printf("WARNING: the initramfs is %.1f MiB, over its %.0f MiB budget\n", mib(res.InitramfsSize), mib(initramfs.SizeBudget))
	}
	return nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
