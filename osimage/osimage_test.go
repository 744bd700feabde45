package osimage_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
)

func valid() osimage.Image {
	return osimage.Image{ID: "ubuntu-24.04-amd64", URL: "https://images.example/u.raw.zst", SHA256: strings.Repeat("AB", 32),
		Format: "raw.zst", OSType: "ubuntu", OSVersion: "24.04", Arch: "amd64"}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*osimage.Image)
		field string
	}{
		{"valid", func(*osimage.Image) {}, ""},
		{"one region", func(m *osimage.Image) { m.Region = "dc1" }, ""},
		{"id with a slash", func(m *osimage.Image) { m.ID = "a/b" }, "id"},
		{"id too long", func(m *osimage.Image) { m.ID = strings.Repeat("a", 64) }, "id"},
		{"id starting with a dot", func(m *osimage.Image) { m.ID = ".hidden" }, "id"},
		{"bad region", func(m *osimage.Image) { m.Region = "-dc" }, "region"},
		{"no url", func(m *osimage.Image) { m.URL = "" }, "url"},
		{"ftp", func(m *osimage.Image) { m.URL = "ftp://h/x" }, "url"},
		{"no host", func(m *osimage.Image) { m.URL = "http:///x" }, "url"},
		{"credentials", func(m *osimage.Image) { m.URL = "https://u:p@h/x" }, "url"},
		{"sha256 short", func(m *osimage.Image) { m.SHA256 = "ab" }, "sha256"},
		{"sha256 not hex", func(m *osimage.Image) { m.SHA256 = strings.Repeat("g", 64) }, "sha256"},
		{"qcow2", func(m *osimage.Image) { m.Format = "qcow2" }, "format"},
		{"os type", func(m *osimage.Image) { m.OSType = "Ubuntu" }, "os_type"},
		{"os version", func(m *osimage.Image) { m.OSVersion = "24 04" }, "os_version"},
		{"arch", func(m *osimage.Image) { m.Arch = "" }, "arch"},
		{"installer", func(m *osimage.Image) {
			m.Format, m.InitrdURL, m.InitrdSHA256 = osimage.FormatInstaller, "http://h/initrd", strings.Repeat("ab", 32)
		}, ""},
		{"installer without an initrd", func(m *osimage.Image) { m.Format = osimage.FormatInstaller }, "initrd_url"},
		{"installer, bad initrd sum", func(m *osimage.Image) {
			m.Format, m.InitrdURL, m.InitrdSHA256 = osimage.FormatInstaller, "http://h/initrd", "abc"
		}, "initrd_sha256"},
		{"installer, ftp initrd", func(m *osimage.Image) {
			m.Format, m.InitrdURL, m.InitrdSHA256 = osimage.FormatInstaller, "ftp://h/initrd", strings.Repeat("ab", 32)
		}, "initrd_url"},
		{"an image has no initrd", func(m *osimage.Image) { m.InitrdSHA256 = strings.Repeat("ab", 32) }, "initrd_sha256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := valid()
			tc.edit(&m)
			err := m.Validate()
			if tc.field == "" {
				require.NoError(t, err)
				assert.Equal(t, strings.Repeat("ab", 32), m.SHA256, "normalised to lowercase")
				return
			}
			var ve *osimage.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tc.field, ve.Field)
			assert.ErrorIs(t, err, osimage.ErrInvalid)
		})
	}
}

func TestServiceConflictsAndFollow(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	svc := osimage.NewService(st, func() time.Time { return time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC) })

	var mu sync.Mutex
	var seen [][]string
	fctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		osimage.Follow(fctx, st, nil, func(all []osimage.Image) {
			ids := []string{}
			for _, m := range all {
				ids = append(ids, m.ID)
			}
			mu.Lock()
			seen = append(seen, ids)
			mu.Unlock()
		})
	}()
	t.Cleanup(func() { stop(); <-done })
	last := func() []string {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return nil
		}
		return seen[len(seen)-1]
	}
	require.Eventually(t, func() bool { return last() != nil }, 10*time.Second, 10*time.Millisecond)
	assert.Empty(t, last())

	dc1 := valid()
	dc1.ID, dc1.Region = "u-dc1", "dc1"
	got, err := svc.Create(ctx, dc1, "token:ada")
	require.NoError(t, err)
	assert.Equal(t, "token:ada", got.CreatedBy)
	dc2 := dc1
	dc2.ID, dc2.Region = "u-dc2", "dc2"
	_, err = svc.Create(ctx, dc2, "token:ada")
	require.NoError(t, err, "the same OS in another region")

	for name, m := range map[string]osimage.Image{
		"id taken":                 dc1,
		"same OS, every region":    func() osimage.Image { m := dc1; m.ID, m.Region = "u-all", ""; return m }(),
		"same OS, the same region": func() osimage.Image { m := dc1; m.ID = "u-dc1b"; return m }(),
	} {
		_, err := svc.Create(ctx, m, "token:ada")
		assert.ErrorIs(t, err, osimage.ErrConflict, name)
	}
	res, err := st.List(ctx, osimage.Prefix, store.ListOptions{})
	require.NoError(t, err)
	assert.Len(t, res.KVs, 2, "nothing written by a refusal")

	require.Eventually(t, func() bool { return strings.Join(last(), ",") == "u-dc1,u-dc2" }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, svc.Delete(ctx, "u-dc1"))
	require.Eventually(t, func() bool { return strings.Join(last(), ",") == "u-dc2" }, 10*time.Second, 10*time.Millisecond)
	err = svc.Delete(ctx, "u-dc1")
	assert.True(t, errors.Is(err, osimage.ErrNotFound), "%v", err)
	_, err = svc.Get(ctx, "u-dc1")
	assert.ErrorIs(t, err, osimage.ErrNotFound)
}

// Registrations racing for the same OS under different IDs: exactly one
// wins, the others are conflicts, whatever the interleaving of their
// reads and writes (the guard key is in every transaction).
func TestRacingRegistrationsOfOneOS(t *testing.T) {
	for name, st := range map[string]store.Store{"memory": memory.New(), "etcd": etcdtest.NewStore(t)} {
		t.Run(name, func(t *testing.T) {
			t.Cleanup(func() { st.Close() })
			svc := osimage.NewService(st, nil)
			const n = 8
			errs := make(chan error, n)
			var start sync.WaitGroup
			start.Add(1)
			for i := range n {
				go func() {
					start.Wait()
					m := valid()
					m.ID, m.Region = fmt.Sprintf("race-%d", i), ""
					_, err := svc.Create(context.Background(), m, "token:ada")
					errs <- err
				}()
			}
			start.Done()
			won := 0
			for range n {
				if err := <-errs; err == nil {
					won++
				} else {
					assert.ErrorIs(t, err, osimage.ErrConflict)
				}
			}
			assert.Equal(t, 1, won, "one registration of the OS wins")
			res, err := st.List(context.Background(), osimage.Prefix, store.ListOptions{})
			require.NoError(t, err)
			assert.Len(t, res.KVs, 1, "one image registered")
		})
	}
}
