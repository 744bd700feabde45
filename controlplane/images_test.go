package controlplane_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/osimage"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

func imageKeys(t *testing.T, st store.Store) map[string]string {
	res, err := st.List(context.Background(), osimage.Prefix, store.ListOptions{})
	require.NoError(t, err)
	out := map[string]string{}
	for _, kv := range res.KVs {
		out[kv.Key] = string(kv.Value)
	}
	return out
}

const testSum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func imageBody(id string) map[string]any {
	return map[string]any{"id": id, "url": "http://images.example/" + id + ".raw.zst", "sha256": testSum,
		"format": "raw.zst", "os_type": "ubuntu", "os_version": "24.04", "arch": "amd64"}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
			continue
		}
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

func TestAPIImages(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	cp := startCP(t, st)
	ctx := context.Background()

	good := with(imageBody("ubuntu-24.04-amd64"), "region", "dc1")
	code, body := cp.do("POST", "/api/v1/images", adminToken, good)
	require.Equal(t, http.StatusCreated, code, "%v", body)
	assert.Equal(t, "token:ada", body["created_by"])
	assert.Equal(t, []any{map[string]any{"region_id": "dc1", "state": "pending"}}, body["regions"],
		"a region that has not reported the image has it pending")

	base := imageKeys(t, st)
	require.Len(t, base, 1)
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		field                     string
	}{
		{"operator cannot register", "POST", "/api/v1/images", operatorToken, imageBody("x"), 403, ""},
		{"viewer cannot delete", "DELETE", "/api/v1/images/ubuntu-24.04-amd64", viewerToken, nil, 403, ""},
		{"bad id", "POST", "/api/v1/images", adminToken, imageBody("Bad Name"), 400, "id"},
		{"no id", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "id", nil), 400, "id"},
		{"bad region", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "region", "DC 1"), 400, "region"},
		{"no url", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "url", nil), 400, "url"},
		{"ftp url", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "url", "ftp://images.example/x.raw"), 400, "url"},
		{"file url", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "url", "file:///etc/passwd"), 400, "url"},
		{"url with credentials", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "url", "http://u:p@images.example/x"), 400, "url"},
		{"short sha256", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "sha256", "abc123"), 400, "sha256"},
		{"sha256 not hex", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "sha256", strings.Repeat("zz", 32)), 400, "sha256"},
		{"unknown format", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "format", "qcow2"), 400, "format"},
		{"bad os_type", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "os_type", "Ubuntu!"), 400, "os_type"},
		{"bad os_version", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "os_version", ""), 400, "os_version"},
		{"initrd of an image", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "initrd_url", "http://images.example/initrd"), 400, "initrd_url"},
		{"installer without its initrd", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "format", "installer"), 400, "initrd_url"},
		{"unknown arch", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "arch", "riscv"), 400, "arch"},
		{"unknown field", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "checksum", testSum), 400, ""},
		{"created_by is the server's", "POST", "/api/v1/images", adminToken, with(imageBody("x"), "created_by", "mallory"), 400, ""},
		{"malformed", "POST", "/api/v1/images", adminToken, `{"id":`, 400, ""},
		{"duplicate id", "POST", "/api/v1/images", adminToken, with(good, "os_version", "25.04"), 409, ""},
		{"same OS for every region", "POST", "/api/v1/images", adminToken, imageBody("other"), 409, ""},
		{"get bad id", "GET", "/api/v1/images/Bad%20Name", viewerToken, nil, 400, "id"},
		{"get unknown", "GET", "/api/v1/images/nope", viewerToken, nil, 404, ""},
		{"delete unknown", "DELETE", "/api/v1/images/nope", adminToken, nil, 404, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := cp.do(tc.method, tc.path, tc.token, tc.body)
			require.Equal(t, tc.status, code, "%v", body)
			if tc.field != "" {
				assert.Equal(t, tc.field, body["error"].(map[string]any)["field"])
			}
			if tc.name == "unknown field" {
				assert.Contains(t, body["error"].(map[string]any)["message"], `"checksum"`)
			}
			assert.Equal(t, base, imageKeys(t, st), "nothing written")
		})
	}

	// The same OS in another region is another image.
	code, body = cp.do("POST", "/api/v1/images", adminToken, with(imageBody("ubuntu-24.04-dc2"), "region", "dc2", "sha256", strings.ToUpper(testSum)))
	require.Equal(t, http.StatusCreated, code, "%v", body)
	assert.Equal(t, testSum, body["sha256"], "stored in lowercase")

	// A region's report shows in the image, and a copy not ready is why a
	// task for its OS is refused.
	caps, _ := json.Marshal(task.Capabilities{
		OS:     []task.OSOffering{{Type: "debian", Version: "12", Kind: "installer"}},
		Images: []task.ImageState{{ID: "ubuntu-24.04-amd64", OSType: "ubuntu", OSVersion: "24.04", State: task.ImageFailed, Reason: "checksum mismatch"}},
	})
	_, err := st.Put(ctx, task.RegionCapabilitiesKey("dc1"), caps)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		code, body := cp.do("GET", "/api/v1/images/ubuntu-24.04-amd64", viewerToken, nil)
		require.Equal(t, http.StatusOK, code)
		regions, _ := body["regions"].([]any)
		return len(regions) == 1 && regions[0].(map[string]any)["state"] == "failed"
	}, 10*time.Second, 20*time.Millisecond)
	code, body = cp.do("GET", "/api/v1/images/ubuntu-24.04-amd64", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	assert.Equal(t, "checksum mismatch", body["regions"].([]any)[0].(map[string]any)["reason"])

	req := with(createBody("00:1a:2b:3c:4d:71"), "os_version", "24.04")
	code, body = cp.do("POST", "/api/v1/tasks", operatorToken, req)
	require.Equal(t, http.StatusBadRequest, code, "%v", body)
	assert.Equal(t, "os_version", body["error"].(map[string]any)["field"])
	assert.Contains(t, body["error"].(map[string]any)["message"], "image ubuntu-24.04-amd64 is failed (checksum mismatch)")

	code, body = cp.do("GET", "/api/v1/images", viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	require.Len(t, body["images"], 2)

	code, _ = cp.do("DELETE", "/api/v1/images/ubuntu-24.04-amd64", adminToken, nil)
	require.Equal(t, http.StatusNoContent, code)
	code, _ = cp.do("GET", "/api/v1/images/ubuntu-24.04-amd64", viewerToken, nil)
	require.Equal(t, http.StatusNotFound, code)
	assert.Len(t, imageKeys(t, st), 1)
	assert.Contains(t, cp.audit.String(), "image.create")
	assert.Contains(t, cp.audit.String(), "image.delete")
}
