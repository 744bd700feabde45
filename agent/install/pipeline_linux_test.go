package install_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/internal/testimage"
)

// TestImagePipelineFailures: a failure of any stage of the write
// pipeline (the download, the disk) or the caller's cancel stops the
// others and Install returns the cause, for a raw image (fetch, hash and
// write) and a compressed one (fetch, two hashes, decompress and write),
// with blocks in flight in every stage.
func TestImagePipelineFailures(t *testing.T) {
	raw := image(3 << 20)
	for _, format := range []string{"raw", "zstd"} {
		data := testimage.Compress(t, format, raw)
		half := len(data) / 2
		tests := []struct {
			name string
			// serve answers a request after half of the image was served
			// on the first (which the handler then aborts); nil: the first
			// request is served in full.
			afterHalf func(w http.ResponseWriter, r *http.Request, cancel context.CancelFunc)
			disk      string
			wantStage string
			wantCode  string // "": context.Canceled
		}{
			{
				name: "download breaks, resume refused",
				afterHalf: func(w http.ResponseWriter, _ *http.Request, _ context.CancelFunc) {
					panic(http.ErrAbortHandler)
				},
				wantStage: agent.StageWriting, wantCode: install.CodeDownloadFailed,
			},
			{
				name: "cancelled mid-stream",
				afterHalf: func(_ http.ResponseWriter, r *http.Request, cancel context.CancelFunc) {
					cancel()
					<-r.Context().Done() // the installer hangs up
				},
			},
			{
				name: "disk full", disk: "/dev/full", // every write: ENOSPC
				wantStage: agent.StageWriting, wantCode: install.CodeDiskTooSmall,
			},
		}
		for _, tt := range tests {
			t.Run(format+"/"+tt.name, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var requests atomic.Int32
				ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("ETag", `"v1"`)
					if requests.Add(1) > 1 {
						http.Error(w, "gone", http.StatusGone) // a 4xx: no more retries
						return
					}
					w.Header().Set("Content-Length", strconv.Itoa(len(data)))
					if tt.afterHalf == nil {
						_, _ = w.Write(data)
						return
					}
					_, _ = w.Write(data[:half])
					w.(http.Flusher).Flush()
					tt.afterHalf(w, r, cancel)
				}))
				defer ts.Close()
				disk, lister := fileTarget(t)
				if tt.disk != "" {
					disk = tt.disk
				}
				im := &install.Image{Disks: lister, ChunkSize: 256 << 10, ResumeFor: 10 * time.Second, Logger: quiet}
				err := im.Install(ctx, agent.Plan{ImageURL: ts.URL + "/image", SHA256: hexSum(data), Disk: disk}, (&recorder{}).progress)
				if tt.wantCode == "" {
					require.ErrorIs(t, err, context.Canceled)
					return
				}
				var ie *agent.InstallError
				require.ErrorAs(t, err, &ie)
				assert.Equal(t, tt.wantCode, ie.Code, "%v", err)
				assert.Equal(t, tt.wantStage, ie.Stage)
			})
		}
	}
}
