package main_test

import (
	"encoding/json"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/cmdtest"
	"github.com/lpmos/lpmos/internal/etcdtest"
)

// regionProc is one region process of a pair.
type regionProc struct {
	*cmdtest.Process
	addr string
}

func (r regionProc) health(t *testing.T) agent.Health {
	t.Helper()
	var h agent.Health
	resp, err := http.Get("http://" + r.addr + agent.PathHealth)
	if err != nil {
		return h
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return h
}

// script fetches a machine's boot script and returns the status and the
// answer's error code, if any.
func (r regionProc) script(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + r.addr + "/boot/52-54-00-00-ff-01.ipxe")
	require.NoError(t, err)
	defer resp.Body.Close()
	var body struct {
		Error struct{ Code string } `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Error.Code
}

// leaderOf waits until exactly one of procs says it leads and the others
// name it as their leader, and returns its index.
func leaderOf(t *testing.T, procs ...regionProc) int {
	t.Helper()
	leader := -1
	require.Eventually(t, func() bool {
		leader = -1
		var names []string
		for i, p := range procs {
			h := p.health(t)
			if h.Role == "leader" {
				if leader >= 0 {
					return false
				}
				leader = i
			}
			names = append(names, h.Leader)
		}
		if leader < 0 {
			return false
		}
		for _, n := range names {
			if n != procs[leader].health(t).Instance {
				return false
			}
		}
		return true
	}, 30*time.Second, 50*time.Millisecond, "no single leader")
	return leader
}

// Two processes run one region: one leads and answers machines, the
// other is a standby that answers them 503 until the leader dies (kill
// -9); then it leads within about the TTL. A leader stopped (SIGSTOP)
// past its TTL and continued finds itself a standby at once: it answers
// no machine as leader.
func TestRegionPairFailover(t *testing.T) {
	etcd := etcdtest.StartMember(t).ClientURL()
	const ttl = 2 * time.Second
	start := func(name string) regionProc {
		addr := cmdtest.FreeAddr(t)
		p := cmdtest.Start(t, bin, nil, "--etcd-endpoints", etcd, "--region", "dc1",
			"--region-listen", addr, "--region-url", "http://"+addr, "--instance-id", name,
			"--leader-ttl", ttl.String(), "--tftp-listen", "", "--boot-dir", t.TempDir())
		p.WaitOK("http://" + addr + agent.PathHealth)
		return regionProc{p, addr}
	}
	procs := []regionProc{start("a"), start("b")}
	l := leaderOf(t, procs...)
	leader, standby := procs[l], procs[1-l]

	code, _ := leader.script(t)
	assert.Equal(t, http.StatusOK, code, "the leader answers machines")
	code, errCode := standby.script(t)
	assert.Equal(t, http.StatusServiceUnavailable, code, "the standby asks machines to retry")
	assert.Equal(t, "standby", errCode)

	// kill -9: no resignation; the standby takes over once the lease
	// expired.
	killed := time.Now()
	leader.Signal(syscall.SIGKILL)
	require.Eventually(t, func() bool { return standby.health(t).Role == "leader" }, 10*ttl, 20*time.Millisecond,
		"the standby never took over")
	takeover := time.Since(killed)
	t.Logf("FAILOVER-TIMING kill9_takeover_s=%.2f leader_ttl_s=%.0f", takeover.Seconds(), ttl.Seconds())
	code, _ = standby.script(t)
	assert.Equal(t, http.StatusOK, code, "the new leader answers machines")

	// A third process joins as standby; the leader is stopped past its
	// TTL, the new standby takes over, and the stopped one, continued,
	// answers as a standby from its first request on.
	third := start("c")
	require.Equal(t, 0, leaderOf(t, standby, third), "the joining process is a standby")
	standby.Signal(syscall.SIGSTOP)
	require.Eventually(t, func() bool { return third.health(t).Role == "leader" }, 10*ttl, 20*time.Millisecond,
		"the standby never took over from the stopped leader")
	standby.Signal(syscall.SIGCONT)
	code, errCode = standby.script(t)
	assert.Equal(t, http.StatusServiceUnavailable, code, "the continued process does not answer as leader")
	assert.Equal(t, "standby", errCode)
	h := standby.health(t)
	assert.Equal(t, "standby", h.Role)
	assert.Equal(t, "c", h.Leader)
	code, _ = third.script(t)
	assert.Equal(t, http.StatusOK, code)
}
