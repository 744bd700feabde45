package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/httpc"
)

// Failure codes the image installer reports (agent.InstallError.Code).
const (
	CodeNoDisk           = "no_disk"
	CodeDownloadFailed   = "download_failed"
	CodeBadImage         = "bad_image"
	CodeWriteFailed      = "write_failed"
	CodeDiskTooSmall     = "disk_too_small"
	CodeChecksumMismatch = "checksum_mismatch"
	CodeNoChecksum       = "no_checksum"
)

// Image writes a disk image (raw, or gzip/xz/zstd compressed, detected by
// its magic bytes, not its name) from Plan.ImageURL straight onto the
// target disk as it downloads.
//
// Checksums: SHA-256 of the bytes as downloaded is checked against
// Plan.SHA256, and SHA-256 of the bytes written is reported as
// written_sha256 (for a raw image one hash is both). Download, decompression,
// both hashes and the write run at once, as a pipeline of goroutines
// passing blocks of one fixed pool (pipeline.go). A stream cannot be verified before it is written
// without holding the whole image (RAM is what the agent runs in), so the
// check happens at the end of the stream: on a mismatch the data is
// already on the disk, and the installer then zeroes the disk's first MiB
// (partition table and boot sector) so the machine cannot boot a corrupt
// image, and fails with code checksum_mismatch saying so.
//
// A broken download (region restart, network blip) is resumed with an HTTP
// Range request guarded by If-Range, so the stream, both hashes and the
// decompressor carry on where they were.
//
// When the plan has a hostname, SSH keys, a phone-home URL or seed files
// the region rendered (Plan.SeedUserData, Plan.SeedNetworkConfig), a
// cloud-init NoCloud seed (a CIDATA FAT partition after the image's
// partitions, see SeedNoCloud) is written after the image is verified; the
// final details say "cloud_init": "seeded: ..." or "not_seeded: <why>"
// (not a failure).
type Image struct {
	HTTPClient httpc.Doer // nil: a plain httpc.Client (TLS checked against the system's roots)
	Disks      DiskLister // nil: SysfsDisks{}
	// ChunkSize is the write size (default 4 MiB; rounded up to 4 KiB);
	// four chunks are in flight between download, hash and write.
	ChunkSize int
	// ProgressInterval: at most one "writing" report this often (1 s).
	ProgressInterval time.Duration
	// ResumeFor bounds how long one outage of the image server is retried
	// (default 5 min); backoff grows from 200 ms to 5 s.
	ResumeFor time.Duration
	Logger    *slog.Logger
}

var _ agent.Installer = (*Image)(nil)

func ierr(stage, code string, format string, args ...any) error {
	return &agent.InstallError{Stage: stage, Code: code, Err: fmt.Errorf(format, args...)}
}

// Install implements agent.Installer.
func (im *Image) Install(ctx context.Context, plan agent.Plan, progress agent.ProgressFunc) error {
	log := im.Logger
	if log == nil {
		log = slog.Default()
	}
	want := strings.ToLower(strings.TrimSpace(plan.SHA256))
	if len(want) != sha256.Size*2 {
		return ierr(agent.StagePartitioning, CodeNoChecksum, "the plan has no valid sha256 for %s: refusing to write an unverifiable image", plan.ImageURL)
	}
	lister := im.Disks
	if lister == nil {
		lister = SysfsDisks{}
	}
	progress(agent.StagePartitioning, 0, "selecting the target disk", nil)
	disk, err := SelectDisk(ctx, lister, plan.Disk, plan.ImageSize)
	if err != nil {
		return &agent.InstallError{Stage: agent.StagePartitioning, Code: CodeNoDisk, Err: err}
	}
	progress(agent.StagePartitioning, 100, "target disk "+disk.Path, map[string]any{"disk": disk.Path, "disk_size_bytes": disk.SizeBytes})

	// Read-write: the cloud-init seed reads back the partition table.
	f, err := os.OpenFile(disk.Path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return ierr(agent.StagePartitioning, CodeNoDisk, "open %s: %w", disk.Path, err)
	}
	defer f.Close()
	// Full, aligned chunks go through a second, O_DIRECT descriptor (no
	// page-cache copy, no dirty-page write-back at fsync); the unaligned
	// tail, the wipe and the fsync go through f. Either descriptor's fsync
	// covers the inode (file or block device) both wrote to.
	direct, err := openDirect(disk.Path)
	if err != nil {
		log.Info("writing without O_DIRECT", "disk", disk.Path, "err", err)
		direct = nil
	} else {
		defer direct.Close()
	}

	progress(agent.StageDownloading, 0, "downloading "+plan.ImageURL, nil)
	// Every stage of the write (see pipeline.go), the download included,
	// runs under st: the first failure cancels the rest, and all of them
	// have ended before Install returns (st.stop is deferred after
	// body.Close, so it runs first).
	st := newStages(ctx)
	body := &resumingBody{ctx: st.ctx, client: im.HTTPClient, url: plan.ImageURL, resumeFor: im.ResumeFor, log: log}
	if body.client == nil {
		body.client = &httpc.Client{}
	}
	if body.resumeFor <= 0 {
		body.resumeFor = 5 * time.Minute
	}
	defer body.Close()
	defer st.stop()
	if err := body.open(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ierr(agent.StageDownloading, CodeDownloadFailed, "%w", err)
	}
	total := body.total
	if total <= 0 {
		total = plan.ImageSize
	}

	w := newChunkWriter(f, direct, im.ChunkSize, log)
	p, err := startPipeline(st, body, w)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.As(err, new(*downloadError)):
		return ierr(agent.StageDownloading, CodeDownloadFailed, "%w", err)
	default:
		return ierr(agent.StageDownloading, CodeBadImage, "%w", err)
	}
	format := p.format

	start := time.Now()
	interval := im.ProgressInterval
	if interval <= 0 {
		interval = time.Second
	}
	lastReport := time.Time{}
	report := func(final bool) {
		now := time.Now()
		if !final && now.Sub(lastReport) < interval {
			return
		}
		lastReport = now
		d := p.downloaded.Load()
		pct := 0
		if total > 0 {
			pct = int(min(100, d*100/total))
		}
		secs := max(now.Sub(start).Seconds(), 1e-3)
		progress(agent.StageWriting, pct, fmt.Sprintf("writing %s image to %s", format, disk.Path), map[string]any{
			"bytes_downloaded": d, "bytes_total": total, "speed_mbps": float64(d) * 8 / 1e6 / secs, "disk": disk.Path, "format": format,
		})
	}
	report(true)

	err = p.run(func() { report(false) })
	written := p.written
	if err != nil {
		var we *writeError
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &we) && errors.Is(we.err, syscall.ENOSPC), errors.As(err, &we) && disk.SizeBytes > 0 && written > disk.SizeBytes:
			return ierr(agent.StageWriting, CodeDiskTooSmall, "the image does not fit %s (%d bytes): %w", disk.Path, disk.SizeBytes, err)
		case errors.As(err, &we):
			return ierr(agent.StageWriting, CodeWriteFailed, "%w", err)
		case errors.As(err, new(*downloadError)):
			return ierr(agent.StageWriting, CodeDownloadFailed, "%w", err)
		default:
			return ierr(agent.StageWriting, CodeBadImage, "%w", err)
		}
	}
	report(true)

	progress(agent.StageConfiguring, 0, "flushing "+disk.Path, nil)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if err := f.Truncate(written); err != nil {
			return ierr(agent.StageConfiguring, CodeWriteFailed, "truncate %s: %w", disk.Path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return ierr(agent.StageConfiguring, CodeWriteFailed, "fsync %s: %w", disk.Path, err)
	}
	got := hex.EncodeToString(p.dlHash.Sum(nil))
	if got != want {
		wipeErr := wipeHead(f)
		msg := "its first MiB has been zeroed so it cannot boot the corrupt image"
		if wipeErr != nil {
			msg = "zeroing its first MiB failed too (" + wipeErr.Error() + "): THE DISK HOLDS A CORRUPT IMAGE"
		}
		return ierr(agent.StageWriting, CodeChecksumMismatch,
			"image %s has sha256 %s, the plan says %s; %d bytes were already written to %s (a stream can only be verified at its end): %s",
			plan.ImageURL, got, want, written, disk.Path, msg)
	}
	seeded := im.seed(f, disk, written, plan, progress, log)
	if err := rereadPartitions(f); err != nil {
		return ierr(agent.StageConfiguring, CodeWriteFailed, "re-read the partition table of %s: %w", disk.Path, err)
	}
	progress(agent.StageConfiguring, 100, "partition table re-read", nil)

	secs := max(time.Since(start).Seconds(), 1e-3)
	details := map[string]any{
		"disk": disk.Path, "format": format, "image_sha256": got, "written_sha256": hex.EncodeToString(p.wHash.Sum(nil)),
		"bytes_downloaded": p.downloaded.Load(), "bytes_written": written, "seconds": secs,
		"speed_mbps": float64(p.downloaded.Load()) * 8 / 1e6 / secs, "resumes": body.resumes,
		"direct_io": w.directUsed,
	}
	if seeded != "" {
		details["cloud_init"] = seeded
	}
	// The message repeats the written hash: the region keeps the final
	// message in the task's timeline, not (today) the details.
	progress(agent.StageCompleted, 100, fmt.Sprintf("wrote %d bytes to %s, written_sha256 %s", written, disk.Path, details["written_sha256"]), details)
	return nil
}

// seed writes the cloud-init NoCloud seed (SeedNoCloud) after the image
// if the plan asks for one (hostname, SSH keys, a phone-home URL or seed
// files), and says what happened for the final details ("" when not
// asked). A seed that cannot be written does not fail the install: the
// image is written and verified, and may well configure itself; the
// details say why.
func (im *Image) seed(f *os.File, disk Disk, written int64, plan agent.Plan, progress agent.ProgressFunc, log *slog.Logger) string {
	if plan.Hostname == "" && len(plan.SSHAuthorizedKeys) == 0 && plan.PhoneHomeURL == "" && plan.SeedUserData == "" && plan.SeedNetworkConfig == "" {
		return ""
	}
	progress(agent.StageConfiguring, 50, "writing the cloud-init NoCloud seed", nil)
	size := disk.SizeBytes
	if size <= 0 {
		size = written
	}
	off, err := SeedNoCloud(f, size, written, NoCloud{
		InstanceID: plan.TaskID, Hostname: plan.Hostname,
		SSHAuthorizedKeys: plan.SSHAuthorizedKeys, PhoneHomeURL: plan.PhoneHomeURL,
		UserDataFile: seedFile(plan.SeedUserData), NetworkConfig: seedFile(plan.SeedNetworkConfig),
	})
	if err != nil {
		log.Warn("no cloud-init seed written", "disk", disk.Path, "err", err)
		return "not_seeded: " + err.Error()
	}
	log.Info("cloud-init NoCloud seed written", "disk", disk.Path, "offset", off)
	return fmt.Sprintf("seeded: CIDATA partition at byte %d", off)
}

// seedFile is a seed file the plan carries, nil if none.
func seedFile(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func wipeHead(f *os.File) error {
	if _, err := f.WriteAt(make([]byte, 1<<20), 0); err != nil {
		return err
	}
	return f.Sync()
}

// Magic bytes of the compressed formats.
var (
	magicGzip = []byte{0x1f, 0x8b}
	magicXZ   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// formatOf names the format of an image by its first bytes: "gzip",
// "xz", "zstd" or "raw".
func formatOf(head []byte) string {
	switch {
	case bytes.HasPrefix(head, magicGzip):
		return "gzip"
	case bytes.HasPrefix(head, magicXZ):
		return "xz"
	case bytes.HasPrefix(head, magicZstd):
		return "zstd"
	}
	return "raw"
}

// zstdFastWindow: a zstd frame with a window up to this size is decoded
// with a history of twice its window (zstd.WithDecoderLowmem(false)),
// which moves the window down once per window of output instead of once
// per MiB (8× the data moved for the common 8 MiB window: a third of the
// decoder's CPU time). Larger windows (zstd --long, --ultra) keep the low
// memory history: the agent runs in RAM.
const zstdFastWindow = 32 << 20

// openDecompressor returns a streaming reader of the raw image in r,
// compressed in format; head is the image's first bytes.
func openDecompressor(format string, r io.Reader, head []byte) (io.ReadCloser, error) {
	switch format {
	case "gzip":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, nil
	case "xz":
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("xz: %w", err)
		}
		return io.NopCloser(xr), nil
	case "zstd":
		// Concurrency 1 decodes in the caller's goroutine, which costs
		// the least CPU per byte (the concurrent decoder's own goroutines
		// cost about half as much again): the pipeline already runs the
		// fetch, both hashes and the write beside it.
		var h zstd.Header
		fast := h.Decode(head) == nil && !h.SingleSegment && h.WindowSize <= zstdFastWindow
		zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(!fast))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return nil, fmt.Errorf("%w: no decompressor for %q", errors.ErrUnsupported, format)
}

// writeError is a failure of the target disk (not of the download).
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// directAlign is the size and alignment of O_DIRECT writes (memory,
// offset and length): 4 KiB suits both 512-byte and 4Kn devices.
const directAlign = 4096

// chunkWriter writes the pipeline's blocks (fixed-size chunks at
// chunk-aligned offsets) to the target disk (writeBlocks, pipeline.go).
//
// With an O_DIRECT descriptor, every chunk's 4 KiB-aligned part is
// written through it from 4 KiB-aligned memory, and only the stream's
// last < 4 KiB through the buffered one. An EINVAL from an O_DIRECT write
// (the file system or device refuses it) switches to buffered writes for
// the rest of the stream.
type chunkWriter struct {
	f      *os.File // buffered
	direct *os.File // O_DIRECT, or nil; owned by the caller
	log    *slog.Logger
	size   int
	// directUsed: at least one O_DIRECT write succeeded. Written by the
	// write goroutine; read after the pipeline has ended.
	directUsed bool
}

func newChunkWriter(f, direct *os.File, size int, log *slog.Logger) *chunkWriter {
	if size <= 0 {
		size = 4 << 20
	}
	size = (size + directAlign - 1) &^ (directAlign - 1)
	return &chunkWriter{f: f, direct: direct, log: log, size: size}
}

// alignedBuffer returns a directAlign-aligned buffer (O_DIRECT needs it).
func alignedBuffer(size int) []byte {
	raw := make([]byte, size+directAlign)
	off := 0
	if rem := int(uintptrOf(raw) & (directAlign - 1)); rem != 0 {
		off = directAlign - rem
	}
	return raw[off : off+size : off+size]
}

// writeChunk writes p at off: its aligned head through the O_DIRECT
// descriptor when there is one, the rest through the buffered one. off is
// aligned whenever direct is in use: every chunk but the last is a full
// chunk, a multiple of directAlign.
func (w *chunkWriter) writeChunk(p []byte, off int64) error {
	if w.direct != nil && off%directAlign == 0 {
		if n := len(p) &^ (directAlign - 1); n > 0 {
			m, err := w.direct.WriteAt(p[:n], off)
			if m > 0 {
				w.directUsed = true
			}
			p, off = p[m:], off+int64(m)
			switch {
			case errors.Is(err, syscall.EINVAL):
				w.log.Info("O_DIRECT write refused, writing buffered", "disk", w.f.Name(), "offset", off, "err", err)
				w.direct = nil
			case err != nil:
				return err
			}
		}
	}
	if len(p) == 0 {
		return nil
	}
	_, err := w.f.WriteAt(p, off)
	return err
}

// fill reads until buf is full, the stream ends (io.EOF, returned as is)
// or fails.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
