package agent_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/hardware"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testConfig(url string) agent.Config {
	mac, _ := lpmos.ParseMAC("52:54:00:12:34:56")
	return agent.Config{RegionURL: url, MAC: mac, TaskID: testTask, Token: testToken, Logger: quiet,
		RequestTimeout: 2 * time.Second, ApprovalWait: time.Second,
		Retry: agent.RetryPolicy{Initial: time.Millisecond, Max: 5 * time.Millisecond, Attempts: 5, MaxElapsed: 10 * time.Second}}
}

func newClient(t *testing.T, h http.HandlerFunc) *agent.Client {
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	c, err := agent.NewClient(testConfig(ts.URL))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func apiError(w http.ResponseWriter, status int, code string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, `{"error":{"code":"`+code+`","message":"nope"}}`)
}

func TestClientRetriesAndErrors(t *testing.T) {
	tests := []struct {
		name     string
		statuses []int // answers in order; the last repeats
		wantErr  error
		wantCode string
		calls    int32
	}{
		{"ok at once", []int{200}, nil, "", 1},
		{"5xx then ok", []int{503, 500, 200}, nil, "", 3},
		{"429 then ok", []int{429, 200}, nil, "", 2},
		{"401 is final", []int{401}, agent.ErrUnauthorized, "unauthorized", 1},
		{"409 is final", []int{409}, agent.ErrConflict, "conflict", 1},
		{"400 is final", []int{400}, nil, "invalid_request", 1},
		{"5xx gives up after the attempts", []int{502}, nil, "internal", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			c := newClient(t, func(w http.ResponseWriter, r *http.Request) {
				n := int(calls.Add(1))
				assert.Equal(t, "Bearer "+testToken, r.Header.Get("Authorization"))
				assert.Equal(t, "application/json", r.Header.Get("Content-Type"))
				var body agent.ProgressRequest
				assert.NoError(t, json.NewDecoder(r.Body).Decode(&body))
				assert.Equal(t, "52:54:00:12:34:56", body.MACAddress)
				assert.Equal(t, testTask, body.TaskID)
				st := tt.statuses[min(n-1, len(tt.statuses)-1)]
				if st == 200 {
					_, _ = io.WriteString(w, `{"status":"received"}`)
					return
				}
				apiError(w, st, map[int]string{400: "invalid_request", 401: "unauthorized", 409: "conflict"}[st]+map[bool]string{true: "internal"}[st >= 500])
			})
			err := c.Progress(context.Background(), "writing", 5, "", nil)
			assert.Equal(t, tt.calls, calls.Load())
			if tt.wantCode == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if tt.wantErr != nil {
				assert.ErrorIs(t, err, tt.wantErr)
			}
			var ae *agent.APIError
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, tt.wantCode, ae.Code)
		})
	}
}

// A traced task's agent carries the task's trace context on every call
// (and nothing when there is none).
func TestClientSendsTheTraceParent(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, want := range []string{tp, ""} {
		var got []string
		var mu sync.Mutex
		ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			got = append(got, r.Header.Get("traceparent"))
			mu.Unlock()
			_, _ = io.WriteString(w, `{"status":"received","next_action":"wait_for_approval"}`)
		}))
		cfg := testConfig(ts.URL)
		cfg.TraceParent = want
		c, err := agent.NewClient(cfg)
		require.NoError(t, err)
		_, err = c.Report(context.Background(), hardware.Info{})
		require.NoError(t, err)
		require.NoError(t, c.Progress(context.Background(), "writing", 5, "", nil))
		c.Close()
		ts.Close()
		assert.Equal(t, []string{want, want}, got)
	}
}

func TestClientRetriesNetworkErrorsUntilCancelled(t *testing.T) {
	cfg := testConfig("http://127.0.0.1:1") // nothing listens there
	cfg.Retry = agent.RetryPolicy{Initial: time.Millisecond, Max: 2 * time.Millisecond, Attempts: 1 << 20, MaxElapsed: time.Hour}
	c, err := agent.NewClient(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = c.Report(ctx, hardware.Info{})
	require.ErrorIs(t, err, context.DeadlineExceeded)

	cfg.Retry.MaxElapsed = 50 * time.Millisecond
	c, err = agent.NewClient(cfg)
	require.NoError(t, err)
	_, err = c.Report(context.Background(), hardware.Info{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "giving up")
	assert.Contains(t, err.Error(), "connection refused")
}

func TestWaitApprovalPollsUntilDecided(t *testing.T) {
	tests := []struct {
		name    string
		final   agent.ApprovalResponse
		wantErr error
	}{
		{"approved", agent.ApprovalResponse{Approved: true, Status: "approved", NextAction: agent.ActionInstall, Plan: &agent.Plan{Method: "image"}}, nil},
		{"rejected", agent.ApprovalResponse{Status: "rejected", NextAction: agent.ActionPowerOff, Reason: "wrong rack"}, agent.ErrRejected},
		{"cancelled", agent.ApprovalResponse{Status: "cancelled", NextAction: agent.ActionPowerOff}, agent.ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var polls atomic.Int32
			c := newClient(t, func(w http.ResponseWriter, r *http.Request) {
				assert.Equal(t, agent.PathApproval+"52:54:00:12:34:56", r.URL.Path)
				assert.Equal(t, "1", r.URL.Query().Get("wait"))
				resp := agent.ApprovalResponse{Status: "pending_approval", NextAction: agent.ActionWaitForApproval}
				if polls.Add(1) >= 3 {
					resp = tt.final
				}
				_ = json.NewEncoder(w).Encode(resp)
			})
			got, err := c.WaitApproval(context.Background())
			assert.Equal(t, int32(3), polls.Load())
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				assert.Contains(t, err.Error(), tt.final.Reason)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "image", got.Plan.Method)
		})
	}
}

func TestHealth(t *testing.T) {
	c := newClient(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_ = json.NewEncoder(w).Encode(agent.Health{Status: "degraded", RegionID: "dc1"})
	})
	h, err := c.Health(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "degraded", h.Status)
}

// fakeRegion records the progress an agent sends.
type fakeRegion struct {
	mu       sync.Mutex
	progress []agent.ProgressRequest
	status   []agent.StatusRequest
	plan     agent.Plan
	refuse   int // answer progress with this status when set
}

func (f *fakeRegion) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case r.URL.Path == agent.PathReport:
		_ = json.NewEncoder(w).Encode(agent.ReportResponse{Status: "received", NextAction: agent.ActionWaitForApproval})
	case strings.HasPrefix(r.URL.Path, agent.PathApproval):
		plan := f.plan
		_ = json.NewEncoder(w).Encode(agent.ApprovalResponse{Approved: true, NextAction: agent.ActionInstall, Plan: &plan})
	case r.URL.Path == agent.PathProgress:
		var p agent.ProgressRequest
		_ = json.NewDecoder(r.Body).Decode(&p)
		if f.refuse != 0 {
			apiError(w, f.refuse, "conflict")
			return
		}
		f.progress = append(f.progress, p)
		_, _ = io.WriteString(w, `{}`)
	case r.URL.Path == agent.PathStatus:
		var s agent.StatusRequest
		_ = json.NewDecoder(r.Body).Decode(&s)
		f.status = append(f.status, s)
		_, _ = io.WriteString(w, `{}`)
	default:
		http.NotFound(w, r)
	}
}

// A region pair without a virtual IP: the agent knows both processes and
// turns to the next when the one it talks to answers as a standby or
// stops answering, and stays there.
func TestClientTurnsToTheRegionsOtherProcess(t *testing.T) {
	var standbyCalls, leaderCalls atomic.Int32
	standby := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		standbyCalls.Add(1)
		w.Header().Set("Retry-After", "0")
		apiError(w, http.StatusServiceUnavailable, agent.CodeStandby)
	}))
	t.Cleanup(standby.Close)
	leader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaderCalls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	}))
	t.Cleanup(leader.Close)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close() // nothing listens there any more

	tests := []struct {
		name    string
		first   string
		others  []string
		standby int32 // calls the standby gets
	}{
		{"standby first", standby.URL, []string{leader.URL}, 1},
		{"dead first", deadURL, []string{leader.URL}, 0},
		{"dead, then standby, then the leader", deadURL, []string{standby.URL, leader.URL}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			standbyCalls.Store(0)
			leaderCalls.Store(0)
			cfg := testConfig(tt.first)
			cfg.OtherRegionURLs = tt.others
			c, err := agent.NewClient(cfg)
			require.NoError(t, err)
			t.Cleanup(c.Close)
			require.NoError(t, c.Progress(context.Background(), "download", 1, "", nil))
			require.NoError(t, c.Progress(context.Background(), "download", 2, "", nil))
			assert.Equal(t, tt.standby, standbyCalls.Load(), "the standby is asked once, then left")
			assert.Equal(t, int32(2), leaderCalls.Load(), "both calls reach the leader")
		})
	}
}
