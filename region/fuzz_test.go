package region_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
	"github.com/lpmos/lpmos/task"
)

// fuzzMachine is the one machine the agent API fuzzer speaks for: its
// token is valid for its current task, which is provisioned again once a
// fuzzed status ends it.
type fuzzMachine struct {
	tb     testing.TB
	st     store.Store
	svc    *task.Service
	h      http.Handler
	mac    string
	taskID string
	token  string
}

// fuzzAddr is the address the machine boots and calls from (the token
// is bound to it).
const fuzzAddr = "192.0.2.10:4242"

func startFuzzRegion(f *testing.F) *fuzzMachine {
	f.Helper()
	st := memory.New()
	f.Cleanup(func() { st.Close() })
	bootDir, _ := writeBootDir(f)
	reg, err := region.New(region.Config{
		RegionID: "dc1", Store: st, PublicURL: "http://region.example:8080", BootDir: bootDir,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// Progress held back would be flushed by the region's loop in the
		// middle of a later input and look like a refused request writing
		// to the store: with this interval nothing is ever held back long
		// enough to be flushed during a run.
		ProgressInterval: 24 * time.Hour,
	})
	require.NoError(f, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	f.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-reg.Synced():
	case <-time.After(10 * time.Second):
		f.Fatal("the region never synced with its store")
	}
	m := &fuzzMachine{tb: f, st: st, svc: task.NewService(st, task.Config{}), h: reg.Handler(), mac: "52:54:00:fa:22:01"}
	m.provision()
	return m
}

// provision creates a task for the machine and boots it for a token.
func (m *fuzzMachine) provision() {
	tk, err := m.svc.Create(context.Background(), task.CreateRequest{
		RegionID: "dc1", TargetMAC: m.mac, OSType: "ubuntu", OSVersion: "24.04", CreatedBy: "fuzz",
	})
	require.NoError(m.tb, err)
	m.taskID = tk.ID
	// The region answers 503 until its watch shows the task ready.
	require.Eventually(m.tb, func() bool {
		req := httptest.NewRequest("GET", "/boot/"+m.mac+".ipxe", nil)
		req.RemoteAddr = fuzzAddr
		rec := httptest.NewRecorder()
		m.h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			return false
		}
		match := tokenRe.FindStringSubmatch(rec.Body.String())
		if match == nil {
			return false
		}
		m.token = match[1]
		return true
	}, 10*time.Second, 5*time.Millisecond)
}

// ensure approves the machine's task once a fuzzed report put it up for
// approval (so progress and status calls get past the state checks too),
// and provisions the machine again once a fuzzed call ended its task.
func (m *fuzzMachine) ensure() {
	tk, err := m.svc.Get(context.Background(), m.taskID)
	require.NoError(m.tb, err)
	switch {
	case tk.Status == task.StatusPendingApproval:
		_, err := m.svc.Approve(context.Background(), tk.ID, "fuzz", "")
		require.NoError(m.tb, err)
	case tk.Status.Terminal():
		m.provision()
	}
}

// FuzzAgentAPI posts fuzzed bodies to the agent endpoints, with the
// machine's valid token, a wrong one or none. "$MAC" and "$TASK" in a
// body stand for the machine's MAC and current task, so the fuzzer reaches
// past the authentication. The region never answers 5xx, always answers
// an error as JSON with a code, and writes nothing to the store when it
// refuses.
func FuzzAgentAPI(f *testing.F) {
	for _, b := range []string{
		`{"mac_address":"$MAC","task_id":"$TASK","hardware":{"cpu":{"cores":2}}}`,
		`{"mac_address":"$MAC","hardware":{"disks":[{"device":"/dev/vda","size_gb":-1}]}}`,
		`{"mac_address":"$MAC","task_id":"$TASK","stage":"downloading","percentage":40}`,
		`{"mac_address":"$MAC","stage":"completed","percentage":100,"details":{"a":[1,{"b":null}]}}`,
		`{"mac_address":"$MAC","stage":"writing","percentage":-7}`,
		`{"mac_address":"$MAC","status":"failed","code":"disk","stage":"writing","message":"boom"}`,
		`{"mac_address":"$MAC","status":"completed"}`,
		`{"mac_address":"$MAC","status":"pending"}`,
		`{"mac_address":"not-a-mac"}`,
		`{"mac_address":"$MAC","task_id":"other"}`,
		`{"mac_address":"$MAC","unknown":1}`,
		`{"mac_address":"$MAC"} {}`,
		`[]`, `null`, `{`, ``, "\x00\xff",
	} {
		for endpoint := range uint8(3) {
			f.Add(endpoint, uint8(0), b)
		}
		f.Add(uint8(0), uint8(1), b)
		f.Add(uint8(2), uint8(2), b)
	}
	m := startFuzzRegion(f)
	paths := []string{agent.PathReport, agent.PathProgress, agent.PathStatus}
	f.Fuzz(func(t *testing.T, endpoint, auth uint8, body string) {
		m.tb = t
		m.ensure()
		body = strings.NewReplacer("$MAC", m.mac, "$TASK", m.taskID).Replace(body)
		req := httptest.NewRequest("POST", paths[int(endpoint)%len(paths)], strings.NewReader(body))
		req.RemoteAddr = fuzzAddr
		req.Header.Set("Content-Type", "application/json")
		switch auth % 3 {
		case 0:
			req.Header.Set("Authorization", "Bearer "+m.token)
		case 1:
			req.Header.Set("Authorization", "Bearer 0123456789abcdef")
		}
		before := dump(t, m.st)
		rec := httptest.NewRecorder()
		m.h.ServeHTTP(rec, req)
		require.Less(t, rec.Code, 500, "%s", rec.Body)
		if rec.Code >= 400 {
			requireErrorBody(t, rec)
			require.Equal(t, before, dump(t, m.st), "a refused request wrote to the store")
		}
	})
}

// requireErrorBody checks an error answer is the API's JSON error.
func requireErrorBody(t *testing.T, rec *httptest.ResponseRecorder) {
	t.Helper()
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"), "%s", rec.Body)
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e), "%s", rec.Body)
	require.NotEmpty(t, e.Error.Code, "%s", rec.Body)
}
