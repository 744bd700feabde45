package region

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// CatalogDir is the directory of the boot directory where a region keeps
// the catalogue images it downloaded: CatalogDir/<id>/image.<format>,
// beside a SHA256SUMS naming it once it is verified.
const CatalogDir = "catalog"

// DefaultMaxImageBytes bounds one catalogue image's download unless
// Config.MaxImageBytes says otherwise.
const DefaultMaxImageBytes = 64 << 30

// ReasonChecksumMismatch is the reason of an image whose bytes do not have
// the SHA-256 the catalogue holds.
const ReasonChecksumMismatch = "checksum mismatch"

// images keeps the region's copies of the catalogue images meant for it:
// its leader downloads each once (to a temporary file, hashing while it
// streams, renamed into place once verified), offers the ready ones in
// the catalogue, reports every one's state in the capabilities, and
// removes a copy when its record goes. A standby leaves them alone. An
// installer record (osimage.FormatInstaller) is its kernel and initrd,
// verified alike and offered as an installer.
type images struct {
	st       store.Store
	region   string
	bootDir  string
	bootURL  string // where boot clients fetch an installer's files
	maxBytes int64
	client   *http.Client
	retry    time.Duration
	log      *slog.Logger
	leading  func() bool
	catalog  *Catalogue
	publish  func() // the capabilities changed

	wake chan struct{}

	mu     sync.Mutex
	want   map[string]osimage.Image // the catalogue's images for the region
	have   map[string]osimage.Image // the records the states are of
	states map[string]task.ImageState
	final  map[string]bool // failures not worth retrying (checksum, size)
	// current is the image being downloaded and how to stop it.
	current       string
	cancelCurrent context.CancelFunc
}

func (m *images) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// run follows the catalogue and reconciles the copies with it until ctx
// ends.
func (m *images) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		osimage.Follow(ctx, m.st, m.log, m.catalogueChanged)
	}()
	defer wg.Wait()
	tick := time.NewTicker(m.retry)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
			m.reconcile(ctx, false)
		case <-tick.C:
			m.reconcile(ctx, true)
		}
	}
}

// catalogueChanged is Follow's hook: it records what is wanted, stops a
// download no longer wanted, and wakes the reconciler.
func (m *images) catalogueChanged(all []osimage.Image) {
	want := map[string]osimage.Image{}
	for _, img := range all {
		if img.AppliesTo(m.region) {
			want[img.ID] = img
		}
	}
	m.mu.Lock()
	m.want = want
	if m.current != "" {
		if w, ok := want[m.current]; !ok || !sameCopy(w, m.have[m.current]) {
			m.cancelCurrent()
		}
	}
	m.mu.Unlock()
	m.poke()
}

// sameCopy reports whether a copy of a is a copy of b.
func sameCopy(a, b osimage.Image) bool {
	return a.URL == b.URL && a.SHA256 == b.SHA256 && a.Format == b.Format &&
		a.InitrdURL == b.InitrdURL && a.InitrdSHA256 == b.InitrdSHA256 &&
		a.OSType == b.OSType && a.OSVersion == b.OSVersion
}

// reconcile removes the copies whose records went (or changed) and, on
// the leader, fetches what is missing, one image at a time; with retry,
// it also tries again the failures worth another attempt.
func (m *images) reconcile(ctx context.Context, retry bool) {
	tried := map[string]bool{}
	for ctx.Err() == nil {
		m.mu.Lock()
		if m.want == nil { // the catalogue is not listed yet
			m.mu.Unlock()
			return
		}
		for id, had := range m.have {
			if w, ok := m.want[id]; !ok || !sameCopy(w, had) {
				m.forget(id)
			}
		}
		var next *osimage.Image
		if m.leading() {
			ids := make([]string, 0, len(m.want))
			for id := range m.want {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for _, id := range ids {
				s, ok := m.states[id]
				if !ok || retry && s.State == task.ImageFailed && !m.final[id] && !tried[id] {
					img := m.want[id]
					next = &img
					break
				}
			}
		}
		m.mu.Unlock()
		if next == nil {
			return
		}
		tried[next.ID] = true
		m.fetch(ctx, *next)
	}
}

// forget removes the copy of id; the caller holds mu.
func (m *images) forget(id string) {
	delete(m.have, id)
	delete(m.states, id)
	delete(m.final, id)
	m.catalog.setRegistered(id, nil)
	if err := os.RemoveAll(filepath.Join(m.bootDir, CatalogDir, id)); err != nil {
		m.log.Warn("remove a catalogue image", "image", id, "err", err)
	}
	m.log.Info("catalogue image removed", "image", id)
	m.publish()
}

// set records the state of img; the caller holds mu.
func (m *images) set(img osimage.Image, state, reason string, size int64) {
	m.have[img.ID] = img
	m.states[img.ID] = task.ImageState{ID: img.ID, OSType: img.OSType, OSVersion: img.OSVersion, State: state, Reason: reason, Bytes: size}
	if state == task.ImageReady {
		m.catalog.setRegistered(img.ID, m.entry(img, size))
	} else {
		m.catalog.setRegistered(img.ID, nil)
	}
	m.publish()
}

// entry is what the catalogue offers for a ready img: a disk image the
// agent writes, or an installer booted from the region's copies of its
// kernel and initrd (with the answer file of its OS family and the
// mirror of the built-in installer of its OS type).
func (m *images) entry(img osimage.Image, size int64) *Entry {
	rel := path.Join(CatalogDir, img.ID)
	if img.Format != osimage.FormatInstaller {
		return &Entry{OSType: img.OSType, OSVersion: img.OSVersion, Kind: KindImage,
			ImagePath: path.Join(rel, img.Files()[0].Name), SHA256: img.SHA256, Size: size}
	}
	e := &Entry{OSType: img.OSType, OSVersion: img.OSVersion, Kind: KindInstaller, Family: familyOf(img.OSType),
		KernelURL: m.bootURL + "/boot/files/" + rel + "/kernel", InitrdURL: m.bootURL + "/boot/files/" + rel + "/initrd"}
	for _, b := range builtinInstallers {
		if b.OSType == img.OSType {
			e.RepoURL, e.ISOURL = b.RepoURL, b.ISOURL
		}
	}
	return e
}

// verified returns the size of the copy of img in dir if its SHA256SUMS
// names every file with the record's sum and the files are there.
func verified(img osimage.Image, dir string) (int64, bool) {
	sums, err := readSHA256SUMS(filepath.Join(dir, "SHA256SUMS"))
	if err != nil {
		return 0, false
	}
	var size int64
	for _, f := range img.Files() {
		fi, err := os.Stat(filepath.Join(dir, f.Name))
		if sums[f.Name] != f.SHA256 || err != nil || !fi.Mode().IsRegular() {
			return 0, false
		}
		size += fi.Size()
	}
	return size, true
}

// fetch makes img ready: a copy verified before (its SHA256SUMS names
// the files with the record's sums) is taken as it is; otherwise it is
// downloaded.
func (m *images) fetch(ctx context.Context, img osimage.Image) {
	dir := filepath.Join(m.bootDir, CatalogDir, img.ID)
	if size, ok := verified(img, dir); ok {
		m.mu.Lock()
		m.set(img, task.ImageReady, "", size)
		m.mu.Unlock()
		return
	}
	if img.Format == osimage.FormatInstaller && familyOf(img.OSType) == "" {
		m.mu.Lock()
		m.final[img.ID] = true
		m.set(img, task.ImageFailed, "no installer answer file for OS type "+img.OSType+" (debian, ubuntu or a kickstart family)", 0)
		m.mu.Unlock()
		return
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m.mu.Lock()
	m.current, m.cancelCurrent = img.ID, cancel
	m.set(img, task.ImageDownloading, "", 0)
	m.mu.Unlock()
	m.log.Info("downloading catalogue image", "image", img.ID, "url", img.URL)
	size, err := m.download(dctx, img, dir)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.current, m.cancelCurrent = "", nil
	if ctx.Err() != nil {
		return // stopping: the next start looks again
	}
	if w, ok := m.want[img.ID]; !ok || !sameCopy(w, img) {
		m.forget(img.ID) // deleted or replaced meanwhile
		return
	}
	var fe *finalError
	switch {
	case err == nil:
		m.log.Info("catalogue image ready", "image", img.ID, "bytes", size)
		m.set(img, task.ImageReady, "", size)
	case errors.As(err, &fe):
		m.log.Error("catalogue image refused", "image", img.ID, "err", err)
		m.final[img.ID] = true
		m.set(img, task.ImageFailed, fe.reason, 0)
	default:
		m.log.Warn("catalogue image download failed; retrying later", "image", img.ID, "err", err)
		m.set(img, task.ImageFailed, err.Error(), 0)
	}
}

// finalError is a download failure that another attempt would repeat.
type finalError struct {
	reason string
	err    error
}

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// download fetches img's files into dir and writes its SHA256SUMS; on a
// failure it removes what it fetched of img.
func (m *images) download(ctx context.Context, img osimage.Image, dir string) (int64, error) {
	_ = os.RemoveAll(dir) // an unverified leftover
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	var total int64
	for _, f := range img.Files() {
		n, err := m.downloadFile(ctx, img.ID, f, dir, m.maxBytes-total)
		if err != nil {
			_ = os.RemoveAll(dir)
			return 0, err
		}
		total += n
	}
	return total, writeSums(dir, img)
}

// downloadFile streams f into a temporary file in dir, hashing it, and
// renames it into place once its SHA-256 is the record's; a mismatch
// removes it. At most limit bytes are taken.
func (m *images) downloadFile(ctx context.Context, id string, f osimage.File, dir string, limit int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", f.URL, resp.Status)
	}
	tooLarge := &finalError{reason: fmt.Sprintf("larger than %d bytes", m.maxBytes), err: fmt.Errorf("image %s: larger than %d bytes", id, m.maxBytes)}
	if resp.ContentLength > limit {
		return 0, tooLarge
	}
	tmp, err := os.CreateTemp(dir, ".download-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, limit+1))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", f.URL, err)
	}
	if n > limit {
		return 0, tooLarge
	}
	if sum := hex.EncodeToString(h.Sum(nil)); sum != f.SHA256 {
		return 0, &finalError{reason: ReasonChecksumMismatch,
			err: fmt.Errorf("image %s: %s: %s has SHA-256 %s, the catalogue says %s", id, ReasonChecksumMismatch, f.URL, sum, f.SHA256)}
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, f.Name)); err != nil {
		return 0, err
	}
	return n, nil
}

// writeSums writes dir/SHA256SUMS (through a temporary file and a rename)
// naming the verified image.
func writeSums(dir string, img osimage.Image) error {
	tmp, err := os.CreateTemp(dir, ".sums-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	for _, f := range img.Files() {
		fmt.Fprintf(w, "%s  %s\n", f.SHA256, f.Name)
	}
	err = w.Flush()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, "SHA256SUMS"))
}

// snapshot returns the images' states, sorted by ID.
func (m *images) snapshot() []task.ImageState {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]task.ImageState, 0, len(m.states))
	for _, s := range m.states {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b task.ImageState) int { return strings.Compare(a.ID, b.ID) })
	return out
}
