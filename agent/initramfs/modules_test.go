package initramfs

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/ulikunitz/xz"
)

// A modules.dep in the kernel's format: "path: dependencies", where the
// dependencies of a module are listed transitively.
const fixtureDep = `kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/nvme/host/nvme.ko.zst: kernel/drivers/nvme/host/nvme-core.ko.zst
kernel/drivers/nvme/host/nvme-core.ko.zst:
kernel/drivers/scsi/sd_mod.ko.gz: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/scsi_mod.ko:
kernel/drivers/x/a.ko: kernel/drivers/x/b.ko
kernel/drivers/x/b.ko: kernel/drivers/x/c.ko
kernel/drivers/x/c.ko: kernel/drivers/x/a.ko
kernel/drivers/x/broken.ko: kernel/drivers/x/gone.ko
`

const fixtureBuiltin = `kernel/drivers/block/virtio_blk.ko
kernel/drivers/ata/ahci.ko
`

func fixtureIndex(t *testing.T) *moduleIndex {
	t.Helper()
	ix, err := parseModuleIndex(strings.NewReader(fixtureDep), strings.NewReader(fixtureBuiltin))
	require.NoError(t, err)
	return ix
}

func names(order []*module) []string {
	var n []string
	for _, m := range order {
		n = append(n, m.name)
	}
	return n
}

func TestResolveDependencyOrder(t *testing.T) {
	ix := fixtureIndex(t)
	res, err := ix.resolve([]string{"virtio_net", "nvme", "virtio-blk", "nvme-core", "failover"}, false)
	require.NoError(t, err)
	assert.Equal(t, []string{"failover", "net_failover", "virtio_net", "nvme_core", "nvme"}, names(res.order),
		"each module after its dependencies, each once")
	assert.Equal(t, []string{"virtio_blk"}, res.builtin, "built-ins are skipped, not errors")
	assert.Empty(t, res.missing)
	assert.Equal(t, "kernel/drivers/nvme/host/nvme-core.ko.zst", res.order[3].path)
}

func TestResolveCycle(t *testing.T) {
	_, err := fixtureIndex(t).resolve([]string{"virtio_net", "b"}, true)
	require.ErrorIs(t, err, ErrModuleCycle)
	assert.Contains(t, err.Error(), "b -> c -> a -> b")
}

func TestResolveMissing(t *testing.T) {
	ix := fixtureIndex(t)
	_, err := ix.resolve([]string{"virtio_net", "nosuchmod"}, false)
	require.ErrorIs(t, err, ErrModuleNotFound)
	assert.Contains(t, err.Error(), "nosuchmod")

	res, err := ix.resolve([]string{"nosuchmod", "ahci", "virtio_net"}, true)
	require.NoError(t, err, "optional modules the kernel lacks are left out")
	assert.Equal(t, []string{"nosuchmod"}, res.missing)
	assert.Equal(t, []string{"ahci"}, res.builtin)
	assert.Equal(t, []string{"failover", "net_failover", "virtio_net"}, names(res.order))

	// A dependency modules.dep names but does not have is an error even for
	// optional modules: the module could not be loaded.
	_, err = ix.resolve([]string{"broken"}, true)
	require.ErrorIs(t, err, ErrModuleNotFound)
	assert.Contains(t, err.Error(), "broken needs gone")
}

func TestParseModuleIndexRejectsGarbage(t *testing.T) {
	_, err := parseModuleIndex(strings.NewReader("kernel/a.ko: \nthis is not modules.dep\n"), strings.NewReader(""))
	require.ErrorContains(t, err, "line 2")
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/drivers/nvme/host/nvme-core.ko.zst": "nvme_core",
		"virtio_net.ko.xz":                          "virtio_net",
		"/lib/modules/6.1/kernel/lib/crc-t10dif.ko": "crc_t10dif",
		"nvme-core": "nvme_core",
	} {
		assert.Equal(t, want, moduleName(in), in)
	}
}

// TestStageModules reads a module tree with modules.dep from disk and stages
// compressed and plain modules decompressed, at their paths minus the suffix.
func TestStageModules(t *testing.T) {
	src := t.TempDir()
	write := func(rel string, data []byte) {
		p := filepath.Join(src, filepath.FromSlash(rel))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, data, 0o644))
	}
	ko := func(name string) []byte { return []byte("\x7fELF fake module " + name) }
	var xzBuf, zstBuf, gzBuf bytes.Buffer
	xw, err := xz.NewWriter(&xzBuf)
	require.NoError(t, err)
	xw.Write(ko("failover"))
	require.NoError(t, xw.Close())
	zw, err := zstd.NewWriter(&zstBuf)
	require.NoError(t, err)
	zw.Write(ko("nvme"))
	require.NoError(t, zw.Close())
	gw := gzip.NewWriter(&gzBuf)
	gw.Write(ko("sd_mod"))
	require.NoError(t, gw.Close())

	write("modules.dep", []byte(fixtureDep))
	write("modules.builtin", []byte(fixtureBuiltin))
	write("kernel/net/core/failover.ko.xz", xzBuf.Bytes())
	write("kernel/drivers/nvme/host/nvme.ko.zst", zstBuf.Bytes())
	write("kernel/drivers/scsi/sd_mod.ko.gz", gzBuf.Bytes())
	write("kernel/drivers/scsi/scsi_mod.ko", ko("scsi_mod"))
	write("kernel/drivers/nvme/host/nvme-core.ko.zst", []byte("not zstd at all"))

	ix, err := readModuleIndex(src)
	require.NoError(t, err)
	dst := t.TempDir()
	mods := func(n ...string) []*module {
		var ms []*module
		for _, name := range n {
			ms = append(ms, ix.byName[name])
		}
		return ms
	}
	rels, err := stageModules(src, dst, mods("failover", "nvme", "scsi_mod", "sd_mod"))
	require.NoError(t, err)
	assert.Equal(t, []string{
		"kernel/net/core/failover.ko", "kernel/drivers/nvme/host/nvme.ko",
		"kernel/drivers/scsi/scsi_mod.ko", "kernel/drivers/scsi/sd_mod.ko",
	}, rels)
	for i, name := range []string{"failover", "nvme", "scsi_mod", "sd_mod"} {
		got, err := os.ReadFile(filepath.Join(dst, filepath.FromSlash(rels[i])))
		require.NoError(t, err)
		assert.Equal(t, ko(name), got)
	}

	_, err = stageModules(src, t.TempDir(), mods("nvme_core"))
	require.ErrorContains(t, err, "nvme_core", "a corrupt module is an error naming it")
	write("kernel/drivers/x/a.ko", []byte("#!/bin/sh\n"))
	_, err = stageModules(src, t.TempDir(), mods("a"))
	require.ErrorContains(t, err, "not an ELF file")
}

func TestReadModuleIndexWithoutModulesDep(t *testing.T) {
	_, err := readModuleIndex(t.TempDir())
	require.ErrorIs(t, err, ErrModuleNotFound, "an empty tree is not a kernel module tree")
}

// TestResolveFromModinfo resolves against Debian's real module tree, which
// has no modules.dep: dependencies come from each module's .modinfo.
func TestResolveFromModinfo(t *testing.T) {
	if testing.Short() {
		t.Skip("needs Debian's kernel package")
	}
	_, modulesDir := fetchKernel(t)
	ix, err := readModuleIndex(modulesDir)
	require.NoError(t, err)
	res, err := ix.resolve([]string{"virtio_net"}, false)
	require.NoError(t, err)
	got := names(res.order)
	require.NotEmpty(t, got)
	assert.Equal(t, "virtio_net", got[len(got)-1])
	if !ix.builtin["net_failover"] {
		assert.Subset(t, got, []string{"failover", "net_failover"})
		assert.Less(t, indexOf(got, "failover"), indexOf(got, "net_failover"))
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func TestModulesDep(t *testing.T) {
	ix := fixtureIndex(t)
	res, err := ix.resolve([]string{"virtio_net", "sd_mod"}, false)
	require.NoError(t, err)
	rels := []string{
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/scsi/scsi_mod.ko", "kernel/drivers/scsi/sd_mod.ko",
	}
	assert.Equal(t, `kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/scsi/scsi_mod.ko:
kernel/drivers/scsi/sd_mod.ko: kernel/drivers/scsi/scsi_mod.ko
`, string(modulesDep(res.order, rels)))
}
