package main_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The image catalogue from the command line against a real allinone: an
// image registered for every region is downloaded by its region and
// ready; one whose bytes are not what was registered fails with the
// reason; a bad SHA-256 is refused naming the field, a viewer may not
// register; delete removes it.
func TestImages(t *testing.T) {
	s := startServer(t, 0)
	img := bytes.Repeat([]byte("LPMOS catalogue image "), 4096)
	sum := sha256.Sum256(img)
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(img)
	}))
	t.Cleanup(files.Close)

	out := s.ok(t, "images", "register", "flatcar-4000-amd64", "--image-url", files.URL+"/flatcar.raw.gz",
		"--sha256", hex.EncodeToString(sum[:]), "--os", "flatcar", "--os-version", "4000")
	assert.Regexp(t, `(?m)^flatcar-4000-amd64\s+flatcar 4000\s+amd64\s+every region\s+dc1 pending$`, out)
	s.ok(t, "images", "register", "tampered", "--image-url", files.URL+"/other.raw",
		"--sha256", strings.Repeat("0", 64), "--os", "custom", "--os-version", "1", "--region", "dc1")

	require.Eventually(t, func() bool {
		out = s.ok(t, "images", "list")
		return strings.Contains(out, "dc1 ready") && strings.Contains(out, "dc1 failed")
	}, 30*time.Second, 100*time.Millisecond, "the region never settled both images")
	assert.Regexp(t, `(?m)^flatcar-4000-amd64\s+flatcar 4000\s+amd64\s+every region\s+dc1 ready$`, out)
	assert.Regexp(t, `(?m)^tampered\s+custom 1\s+amd64\s+region dc1\s+dc1 failed \(checksum mismatch\)$`, out)
	details := s.ok(t, "images", "get", "flatcar-4000-amd64")
	assert.Regexp(t, `(?m)^Format:\s+raw\.gz$`, details, "the format comes from the URL")
	assert.Regexp(t, `(?m)^In dc1:\s+ready, 90112 bytes$`, details)

	// A network installer: its kernel and initrd, each with its sum.
	s.ok(t, "images", "register", "debian-13-netboot", "--image-url", files.URL+"/linux", "--sha256", hex.EncodeToString(sum[:]),
		"--initrd-url", files.URL+"/initrd.gz", "--initrd-sha256", hex.EncodeToString(sum[:]), "--os", "debian", "--os-version", "13")
	require.Eventually(t, func() bool {
		return strings.Contains(s.ok(t, "images", "get", "debian-13-netboot"), "ready")
	}, 30*time.Second, 100*time.Millisecond, "the region never made the installer ready")
	details = s.ok(t, "images", "get", "debian-13-netboot")
	assert.Regexp(t, `(?m)^Format:\s+installer$`, details)
	assert.Regexp(t, `(?m)^In dc1:\s+ready, 180224 bytes$`, details)

	code, _, errOut := s.ctl(t, "images", "register", "x", "--image-url", files.URL+"/x.raw", "--sha256", "abc", "--os", "custom", "--os-version", "2")
	assert.Equal(t, 2, code, errOut)
	assert.Contains(t, errOut, "sha256")
	code, _, errOut = s.ctl(t, "images", "register", "flatcar-4000-amd64", "--image-url", files.URL+"/x.raw", "--sha256", hex.EncodeToString(sum[:]), "--os", "custom", "--os-version", "3")
	assert.Equal(t, 4, code, "registered twice: %s", errOut)
	code, _, errOut = run(t, []string{"LPMOS_URL=" + s.url, "LPMOS_TOKEN=" + viewerToken}, "images", "delete", "tampered")
	assert.Equal(t, 5, code, errOut)

	assert.Equal(t, "deleted image tampered\n", s.ok(t, "images", "delete", "tampered"))
	code, _, errOut = s.ctl(t, "images", "get", "tampered")
	assert.Equal(t, 3, code, errOut)
}
