// Package sim runs simulated machines against a real region: each one boots
// the way a server does, over the region's HTTP endpoints — it fetches its
// iPXE script, reads the agent's kernel command line from it, and runs the
// real agent runner with the demo installer, which writes nothing. The
// all-in-one binary's --simulate N uses it to show the whole flow on a
// laptop; load tests use it to drive many machines.
//
// It never touches the store or the region's internals: a simulated machine
// is indistinguishable from a real one to the region, but for its MAC.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/agent/install"
	"github.com/lpmos/lpmos/hardware"
)

// Machine is one simulated server.
type Machine struct {
	MAC lpmos.MAC
	// RegionURL is where it fetches its boot script, as iPXE does: the
	// region's boot URL (plain HTTP when the region serves TLS; the agent
	// then follows the script's https URL and pin).
	RegionURL string
	// Hardware is what it reports (default: a plausible server derived
	// from the MAC).
	Hardware *hardware.Info
	// Speed scales the demo install (default 1: about 20 s).
	Speed float64
	// PollInterval is how often it retries booting while it has no task
	// (default 3 s), like a machine stuck in a PXE retry loop.
	PollInterval time.Duration
	Logger       *slog.Logger
	// Client makes every request of the machine, its boot and its agent's
	// (default: a client of its own). The region binds the agent's token
	// to the address the script was fetched from, so a load test that
	// gives each machine its own source address does it here.
	Client *http.Client
}

// bootTimeout bounds one script fetch.
const bootTimeout = 30 * time.Second

// MACs returns n locally administered MACs 02:00:00:00:xx:xx, stable across
// runs so that tasks can be created for them in advance.
func MACs(n int) []lpmos.MAC {
	out := make([]lpmos.MAC, n)
	for i := range out {
		out[i] = MAC(i)
	}
	return out
}

// MAC returns the i-th of the MACs MACs returns (i < 65535).
func MAC(i int) lpmos.MAC { return lpmos.MAC{0x02, 0, 0, 0, byte((i + 1) >> 8), byte(i + 1)} }

func (m *Machine) hardware() hardware.Info {
	if m.Hardware != nil {
		return *m.Hardware
	}
	n := int(m.MAC[5])
	cores := 8 << (n % 3)
	return hardware.Info{
		CPU:    hardware.CPU{Model: "Simulated Xeon", Vendor: "GenuineIntel", Cores: cores, Threads: 2 * cores, Sockets: 1},
		Memory: hardware.Memory{TotalGB: 16 * cores / 4},
		Disks: []hardware.Disk{
			{Device: "/dev/nvme0n1", SizeGB: 480, Type: hardware.DiskNVMe, Model: "Simulated NVMe", Serial: fmt.Sprintf("SIM%06d", n)},
			{Device: "/dev/sda", SizeGB: 2000, Type: hardware.DiskHDD, Model: "Simulated HDD"},
		},
		Network: []hardware.NIC{{Interface: "eth0", MAC: m.MAC.String(), Speed: "10Gbps", Driver: "sim"}},
		BIOS:    hardware.BIOS{Vendor: "LPMOS", Version: "sim-1"},
		System:  hardware.System{Vendor: "LPMOS", Product: "Simulated Server", Serial: fmt.Sprintf("SIM-%s", m.MAC.Dashed())},
	}
}

var kernelLine = regexp.MustCompile(`(?m)^kernel (.*)$`)

// boot fetches the machine's script; ok is false when it is not an agent
// boot (no task, or local boot after completion).
func (m *Machine) boot(ctx context.Context) (agent.Config, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.RegionURL+"/boot/"+m.MAC.String()+".ipxe?platform=pcbios", nil)
	if err != nil {
		return agent.Config{}, false, err
	}
	resp, err := m.Client.Do(req)
	if err != nil {
		return agent.Config{}, false, err
	}
	defer resp.Body.Close()
	script, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil || resp.StatusCode != http.StatusOK {
		return agent.Config{}, false, err
	}
	k := kernelLine.FindSubmatch(script)
	if k == nil {
		return agent.Config{}, false, nil
	}
	cfg, err := agent.ParseCmdline("vmlinuz " + string(k[1]))
	if err != nil {
		return agent.Config{}, false, nil // an installer's kernel line, not the agent's
	}
	return cfg, true, nil
}

func (m *Machine) defaults() {
	if m.PollInterval <= 0 {
		m.PollInterval = 3 * time.Second
	}
	if m.Logger == nil {
		m.Logger = slog.Default()
	}
	if m.Client == nil {
		m.Client = &http.Client{}
	}
}

// Run boots the machine again and again until ctx ends: whenever the
// region gives it the agent, it runs the agent to the end.
func (m *Machine) Run(ctx context.Context) error {
	m.defaults()
	log := m.Logger.With("sim_mac", m.MAC.String())
	hw := m.hardware()
	for ctx.Err() == nil {
		cfg, ok, _ := m.boot(ctx)
		if ok {
			cfg.Logger = log
			if err := m.runAgent(ctx, cfg, hw); err != nil && !errors.Is(err, agent.ErrRejected) && ctx.Err() == nil {
				log.Warn("simulated agent ended with an error", "err", err)
			}
		}
		if !sleep(ctx, m.PollInterval) {
			break
		}
	}
	return nil
}

// RunOnce boots the machine until the region gives it the agent, runs the
// agent to the end and returns its outcome: nil when the install
// completed, agent.ErrRejected when the operator rejected or cancelled the
// task, ctx's error when ctx ended first. A load test runs each machine's
// one install this way.
func (m *Machine) RunOnce(ctx context.Context) error {
	m.defaults()
	log := m.Logger.With("sim_mac", m.MAC.String())
	for {
		cfg, ok, _ := m.boot(ctx)
		if ok {
			cfg.Logger = log
			return m.runAgent(ctx, cfg, m.hardware())
		}
		if !sleep(ctx, m.PollInterval) {
			return ctx.Err()
		}
	}
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (m *Machine) runAgent(ctx context.Context, cfg agent.Config, hw hardware.Info) error {
	hc := m.Client
	if cfg.RegionCertSHA256 != "" {
		// Like the real agent, it talks to an HTTPS region only through
		// the pin its script gave it.
		var err error
		if hc, err = PinClient(m.Client, cfg.RegionCertSHA256); err != nil {
			return err
		}
	}
	cfg.HTTPClient = NetHTTP{hc}
	client, err := agent.NewClient(cfg)
	if err != nil {
		return err
	}
	defer client.Close()
	demo := install.Demo{Speed: m.Speed}
	r, err := agent.NewRunner(agent.RunnerConfig{
		Client:     client,
		Collector:  agent.CollectorFunc(func(context.Context) (hardware.Info, error) { hw.CollectedAt = time.Now().UTC(); return hw, nil }),
		Installers: map[string]agent.Installer{"image": demo, "installer": demo},
		Logger:     cfg.Logger,
	})
	if err != nil {
		return err
	}
	return r.Run(ctx)
}
