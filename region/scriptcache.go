package region

import (
	"slices"
	"sync"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/ipxe"
)

// agentScripts caches each machine's rendered agent script. The script is
// a function of the machine, its task, its token and the region's
// configuration (which does not change while the region runs), so a
// machine that fetches it again with the same task and token (a reboot,
// iPXE retrying) is served the bytes rendered the first time instead of
// rendering and validating them again. Every decision before the script
// (task status, token binding, rate limits, the trace) is still made per
// fetch: only the rendering is cached.
type agentScripts struct {
	mu      sync.Mutex
	scripts map[lpmos.MAC]renderedAgent
}

type renderedAgent struct {
	taskID, token string
	peers         []string // the region's other processes it names
	body          []byte   // shared, never written after rendering
}

// get returns mac's script for taskID and token naming peers, rendering
// it with render when it is not cached.
func (c *agentScripts) get(mac lpmos.MAC, taskID, token string, peers []string, render func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	s, ok := c.scripts[mac]
	c.mu.Unlock()
	if ok && s.taskID == taskID && s.token == token && slices.Equal(s.peers, peers) {
		return s.body, nil
	}
	body, err := render()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.scripts == nil || len(c.scripts) >= maxClearTokens {
		c.scripts = map[lpmos.MAC]renderedAgent{}
	}
	c.scripts[mac] = renderedAgent{taskID: taskID, token: token, peers: peers, body: body}
	c.mu.Unlock()
	return body, nil
}

// forget drops mac's script (its task ended).
func (c *agentScripts) forget(mac lpmos.MAC) {
	c.mu.Lock()
	delete(c.scripts, mac)
	c.mu.Unlock()
}

// agentScript is task taskID's agent script for mac with token, from the
// cache when it was rendered before.
// The task's trace context (traceParent) is fixed for the task, so the
// cache need not key on it.
func (r *Region) agentScript(mac lpmos.MAC, taskID, token, traceParent string) ([]byte, error) {
	peers := r.otherRegionURLs()
	return r.agentScripts.get(mac, taskID, token, peers, func() ([]byte, error) {
		base := r.cfg.BootURL + "/boot/files/"
		return ipxe.Agent(ipxe.AgentParams{
			MAC: mac, TaskID: taskID, Token: token, RegionURL: r.cfg.PublicURL, OtherRegionURLs: peers, RegionCertSHA256: r.cfg.RegionCertSHA256,
			KernelURL: base + r.cfg.AgentKernel, InitrdURL: base + r.cfg.AgentInitrd,
			Consoles: r.cfg.AgentConsoles, ExtraArgs: r.cfg.AgentExtraArgs, TraceParent: traceParent,
		})
	})
}
