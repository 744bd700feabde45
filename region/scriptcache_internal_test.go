package region

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// A machine's agent script is rendered once per task and token: a fetch
// with the same ones gets the same bytes, another task or token (or a
// task that ended) renders again.
func TestAgentScriptsCachePerTaskAndToken(t *testing.T) {
	mac, other := mustMAC(t, "52:54:00:5c:00:01"), mustMAC(t, "52:54:00:5c:00:02")
	var c agentScripts
	renders := 0
	get := func(m lpmos.MAC, taskID, token string, peers []string) string {
		b, err := c.get(m, taskID, token, peers, func() ([]byte, error) {
			renders++
			return []byte(m.String() + " " + taskID + " " + token), nil
		})
		require.NoError(t, err)
		return string(b)
	}
	steps := []struct {
		name          string
		mac           lpmos.MAC
		taskID, token string
		peers         []string
		forget        bool
		rendered      bool
	}{
		{name: "first fetch", mac: mac, taskID: "t1", token: "a", rendered: true},
		{name: "again", mac: mac, taskID: "t1", token: "a"},
		{name: "another machine", mac: other, taskID: "t2", token: "b", rendered: true},
		{name: "first machine still cached", mac: mac, taskID: "t1", token: "a"},
		{name: "token replaced", mac: mac, taskID: "t1", token: "c", rendered: true},
		{name: "new task", mac: mac, taskID: "t3", token: "c", rendered: true},
		{name: "task ended", mac: mac, taskID: "t3", token: "c", forget: true, rendered: true},
		{name: "a standby joined", mac: mac, taskID: "t3", token: "c", peers: []string{"http://10.0.0.2:8081"}, rendered: true},
		{name: "same standby", mac: mac, taskID: "t3", token: "c", peers: []string{"http://10.0.0.2:8081"}},
		{name: "the standby left", mac: mac, taskID: "t3", token: "c", rendered: true},
	}
	for _, s := range steps {
		if s.forget {
			c.forget(s.mac)
		}
		before := renders
		assert.Equal(t, s.mac.String()+" "+s.taskID+" "+s.token, get(s.mac, s.taskID, s.token, s.peers), s.name)
		assert.Equal(t, s.rendered, renders > before, "%s: rendered", s.name)
	}
}

// A failed rendering is not cached.
func TestAgentScriptsCacheNoFailure(t *testing.T) {
	mac := mustMAC(t, "52:54:00:5c:00:03")
	var c agentScripts
	_, err := c.get(mac, "t1", "a", nil, func() ([]byte, error) { return nil, assert.AnError })
	require.ErrorIs(t, err, assert.AnError)
	b, err := c.get(mac, "t1", "a", nil, func() ([]byte, error) { return []byte("ok"), nil })
	require.NoError(t, err)
	assert.Equal(t, "ok", string(b))
}

// The script fetch limits default to the region's own; a configuration
// may raise them (a benchmark from one address), field by field.
func TestFetchLimitsDefaultsAndRaised(t *testing.T) {
	from := netip.MustParseAddr("192.0.2.7")
	now := time.Unix(1_700_000_000, 0)
	allowed := func(l FetchLimits, n int) int {
		f := newFetchLimits(l.or(DefaultFetchLimits()))
		ok := 0
		for range n {
			if f.perSource.allow(from, now) {
				ok++
			}
		}
		return ok
	}
	tests := []struct {
		name   string
		limits FetchLimits
		want   int
	}{
		{"defaults", FetchLimits{}, scriptSourceBurst},
		{"raised burst", FetchLimits{SourceBurst: 500}, 500},
		{"other fields raised only", FetchLimits{MACBurst: 1000, MACEvery: time.Millisecond}, scriptSourceBurst},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, allowed(tt.limits, 1000))
		})
	}
	assert.Equal(t, FetchLimits{MACBurst: 10, MACEvery: 2 * time.Second, SourceBurst: 60, SourceRate: 5}, DefaultFetchLimits())
}

func mustMAC(t *testing.T, s string) lpmos.MAC {
	t.Helper()
	m, err := lpmos.ParseMAC(s)
	require.NoError(t, err)
	return m
}
