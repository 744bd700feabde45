package task_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/task"
)

// testKeys are real public keys of every type (ssh-keygen; the sk- ones
// built by hand, which needs a security key otherwise), a 4096-bit RSA key
// among them: 741 bytes, longer than a tag may be.
func testKeys(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/authorized_keys")
	require.NoError(t, err)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

const (
	sha512Hash   = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
	userDataText = "#cloud-config\npackages: [htop]\nruncmd:\n  - [touch, /etc/operator-was-here]\n"
)

func staticRequest(t *testing.T, mac string) task.CreateRequest {
	req := validRequest(mac)
	req.Network = &task.Network{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"1.1.1.1", "2606:4700:4700::1111"},
		VLANID: 100, Bond: &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "802.3ad"}}
	req.Hostname = "web-01.dc1.example.com"
	req.SSHKeys = testKeys(t)
	req.RootPasswordHash = sha512Hash
	req.UserData = userDataText
	return req
}

func TestCreateMachineConfig(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		req := staticRequest(t, "00:1a:2b:3c:4d:01")
		created, err := svc.Create(ctx, req)
		require.NoError(t, err)
		got, err := svc.Get(ctx, created.ID)
		require.NoError(t, err)
		m := got.Metadata
		assert.Equal(t, "static", m.NetworkConfig, "the old field follows the mode")
		assert.Equal(t, req.Network, m.Network)
		assert.Equal(t, "web-01.dc1.example.com", m.EffectiveHostname())
		assert.Equal(t, testKeys(t), m.SSHAuthorizedKeys())
		assert.Equal(t, sha512Hash, m.RootPasswordHash)
		assert.Equal(t, userDataText, m.UserData)
		assert.True(t, req.SameAs(got), "an idempotent repeat is the same request")
		other := req
		other.Network = &task.Network{Mode: "static", Address: "10.0.0.6/24"}
		assert.False(t, other.SameAs(got))

		// The JSON field names of the API.
		b, err := json.Marshal(m)
		require.NoError(t, err)
		var raw map[string]any
		require.NoError(t, json.Unmarshal(b, &raw))
		assert.Equal(t, map[string]any{"mode": "static", "address": "10.0.0.5/24", "gateway": "10.0.0.1",
			"dns": []any{"1.1.1.1", "2606:4700:4700::1111"}, "vlan_id": float64(100),
			"bond": map[string]any{"name": "bond0", "interfaces": []any{"eno1", "eno2"}, "mode": "802.3ad"}}, raw["network"])
		for _, k := range []string{"hostname", "ssh_keys", "root_password_hash", "user_data"} {
			assert.Contains(t, raw, k)
		}
	})
}

// The older network_config string and the hostname and ssh_key tags keep
// working, and combine with the fields as the README says.
func TestMachineConfigCombines(t *testing.T) {
	keys := testKeys(t)
	tests := []struct {
		name       string
		edit       func(r *task.CreateRequest)
		netConfig  string
		network    *task.Network
		hostname   string
		sshKeys    []string
		effNetwork task.Network
	}{
		{"nothing: dhcp", func(r *task.CreateRequest) {}, "dhcp", nil, "", nil, task.Network{Mode: "dhcp"}},
		{"network_config dhcp alone", func(r *task.CreateRequest) { r.NetworkConfig = "dhcp" }, "dhcp", nil, "", nil, task.Network{Mode: "dhcp"}},
		{"mode from network_config", func(r *task.CreateRequest) {
			r.NetworkConfig = "static"
			r.Network = &task.Network{Address: "10.0.0.5/24"}
		}, "static", &task.Network{Mode: "static", Address: "10.0.0.5/24"}, "", nil, task.Network{Mode: "static", Address: "10.0.0.5/24"}},
		{"mode without network_config", func(r *task.CreateRequest) {
			r.Network = &task.Network{Mode: "static", Address: "192.168.7.9/23", DNS: []string{}}
		}, "static", &task.Network{Mode: "static", Address: "192.168.7.9/23"}, "", nil, task.Network{Mode: "static", Address: "192.168.7.9/23"}},
		{"dhcp on a vlan", func(r *task.CreateRequest) {
			r.Network = &task.Network{VLANID: 7, DNS: []string{"9.9.9.9"}}
		}, "dhcp", &task.Network{Mode: "dhcp", VLANID: 7, DNS: []string{"9.9.9.9"}}, "", nil, task.Network{Mode: "dhcp", VLANID: 7, DNS: []string{"9.9.9.9"}}},
		{"bond mode defaults", func(r *task.CreateRequest) {
			r.Network = &task.Network{Bond: &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}}}
		}, "dhcp", &task.Network{Mode: "dhcp", Bond: &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "active-backup"}}, "", nil,
			task.Network{Mode: "dhcp", Bond: &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "active-backup"}}},
		{"hostname tag alone", func(r *task.CreateRequest) { r.Tags = map[string]string{"hostname": "web-02"} }, "dhcp", nil, "web-02", nil, task.Network{Mode: "dhcp"}},
		{"hostname field and same tag", func(r *task.CreateRequest) {
			r.Hostname = "web-02"
			r.Tags = map[string]string{"hostname": "web-02"}
		}, "dhcp", nil, "web-02", nil, task.Network{Mode: "dhcp"}},
		{"ssh_key tag joins the keys", func(r *task.CreateRequest) {
			r.SSHKeys = keys[:2]
			r.Tags = map[string]string{"ssh_key": keys[3]}
		}, "dhcp", nil, "", []string{keys[0], keys[1], keys[3]}, task.Network{Mode: "dhcp"}},
		{"ssh_key tag already listed", func(r *task.CreateRequest) {
			r.SSHKeys = keys[:2]
			r.Tags = map[string]string{"ssh_key": keys[1]}
		}, "dhcp", nil, "", keys[:2], task.Network{Mode: "dhcp"}},
		{"ssh_key tag alone", func(r *task.CreateRequest) { r.Tags = map[string]string{"ssh_key": keys[3]} }, "dhcp", nil, "", []string{keys[3]}, task.Network{Mode: "dhcp"}},
	}
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				req := validRequest("00:1a:2b:3c:4e:" + string("0123456789abcdef"[i/16]) + string("0123456789abcdef"[i%16]))
				tt.edit(&req)
				created, err := svc.Create(ctx, req)
				require.NoError(t, err)
				m := created.Metadata
				assert.Equal(t, tt.netConfig, m.NetworkConfig)
				assert.Equal(t, tt.network, m.Network)
				assert.Equal(t, tt.hostname, m.Hostname)
				assert.Equal(t, tt.hostname, m.EffectiveHostname())
				assert.Equal(t, tt.sshKeys, m.SSHKeys)
				assert.Equal(t, tt.effNetwork, m.EffectiveNetwork())
			})
		}
	})
}

// Metadata written before the fields existed reads through the old ones.
func TestMetadataFallsBackToTags(t *testing.T) {
	m := task.Metadata{NetworkConfig: "static", Tags: map[string]string{"hostname": "old", "ssh_key": "ssh-ed25519 AAAA"}}
	assert.Equal(t, task.Network{Mode: "static"}, m.EffectiveNetwork())
	assert.Equal(t, "old", m.EffectiveHostname())
	assert.Equal(t, []string{"ssh-ed25519 AAAA"}, m.SSHAuthorizedKeys())
	assert.Equal(t, task.Network{Mode: "dhcp"}, (&task.Metadata{}).EffectiveNetwork())
}

func TestCreateRejectsBadMachineConfig(t *testing.T) {
	keys := testKeys(t)
	many := make([]string, task.MaxSSHKeys+1)
	for i := range many {
		many[i] = keys[3]
	}
	static := func(edit func(n *task.Network)) func(r *task.CreateRequest) {
		return func(r *task.CreateRequest) {
			r.Network = &task.Network{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.0.1"}
			edit(r.Network)
		}
	}
	tests := []struct {
		name  string
		edit  func(r *task.CreateRequest)
		field string
	}{
		{"static without address (old field)", func(r *task.CreateRequest) { r.NetworkConfig = "static" }, "network.address"},
		{"static without address", static(func(n *task.Network) { n.Address = "" }), "network.address"},
		{"mode unknown", static(func(n *task.Network) { n.Mode = "bonded" }), "network.mode"},
		{"mode against network_config", func(r *task.CreateRequest) {
			r.NetworkConfig = "dhcp"
			r.Network = &task.Network{Mode: "static", Address: "10.0.0.5/24"}
		}, "network.mode"},
		{"bad network_config with network", func(r *task.CreateRequest) {
			r.NetworkConfig = "bonded"
			r.Network = &task.Network{Mode: "dhcp"}
		}, "network_config"},
		{"address without prefix", static(func(n *task.Network) { n.Address = "10.0.0.5" }), "network.address"},
		{"address not an IP", static(func(n *task.Network) { n.Address = "web/24" }), "network.address"},
		{"address IPv6", static(func(n *task.Network) { n.Address = "2001:db8::5/64" }), "network.address"},
		{"address /0", static(func(n *task.Network) { n.Address = "10.0.0.5/0"; n.Gateway = "" }), "network.address"},
		{"address is the network", static(func(n *task.Network) { n.Address = "10.0.0.0/24" }), "network.address"},
		{"address is broadcast", static(func(n *task.Network) { n.Address = "10.0.0.255/24" }), "network.address"},
		{"address with spaces", static(func(n *task.Network) { n.Address = "10.0.0.5/24 --nameserver=x" }), "network.address"},
		{"gateway outside subnet", static(func(n *task.Network) { n.Gateway = "10.0.1.1" }), "network.gateway"},
		{"gateway is the address", static(func(n *task.Network) { n.Gateway = "10.0.0.5" }), "network.gateway"},
		{"gateway IPv6", static(func(n *task.Network) { n.Gateway = "fe80::1" }), "network.gateway"},
		{"gateway garbage", static(func(n *task.Network) { n.Gateway = "router" }), "network.gateway"},
		{"dhcp with address", func(r *task.CreateRequest) { r.Network = &task.Network{Mode: "dhcp", Address: "10.0.0.5/24"} }, "network.address"},
		{"dhcp with gateway", func(r *task.CreateRequest) { r.Network = &task.Network{Gateway: "10.0.0.1"} }, "network.gateway"},
		{"too many dns", static(func(n *task.Network) { n.DNS = []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4", "9.9.9.9"} }), "network.dns"},
		{"dns name", static(func(n *task.Network) { n.DNS = []string{"1.1.1.1", "dns.example.com"} }), "network.dns[1]"},
		{"dns zone", static(func(n *task.Network) { n.DNS = []string{"fe80::1%eth0"} }), "network.dns[0]"},
		{"vlan 0 is none, 4095 is out", static(func(n *task.Network) { n.VLANID = 4095 }), "network.vlan_id"},
		{"vlan negative", static(func(n *task.Network) { n.VLANID = -1 }), "network.vlan_id"},
		{"bond one nic", static(func(n *task.Network) { n.Bond = &task.Bond{Name: "bond0", Interfaces: []string{"eno1"}} }), "network.bond.interfaces"},
		{"bond no name", static(func(n *task.Network) { n.Bond = &task.Bond{Interfaces: []string{"eno1", "eno2"}} }), "network.bond.name"},
		{"bond bad nic", static(func(n *task.Network) { n.Bond = &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno 2"}} }), "network.bond.interfaces[1]"},
		{"bond long nic", static(func(n *task.Network) {
			n.Bond = &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "enp0s31f6abcdefgh"}}
		}), "network.bond.interfaces[1]"},
		{"bond nic twice", static(func(n *task.Network) { n.Bond = &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno1"}} }), "network.bond.interfaces[1]"},
		{"bond mode", static(func(n *task.Network) {
			n.Bond = &task.Bond{Name: "bond0", Interfaces: []string{"eno1", "eno2"}, Mode: "lacp"}
		}), "network.bond.mode"},
		{"hostname", func(r *task.CreateRequest) { r.Hostname = "Web_01" }, "hostname"},
		{"hostname against tag", func(r *task.CreateRequest) {
			r.Hostname = "web-01"
			r.Tags = map[string]string{"hostname": "web-02"}
		}, "hostname"},
		{"too many keys", func(r *task.CreateRequest) { r.SSHKeys = many }, "ssh_keys"},
		{"keys and tag over the cap", func(r *task.CreateRequest) {
			r.SSHKeys = many[:task.MaxSSHKeys]
			r.Tags = map[string]string{"ssh_key": keys[0]}
		}, "ssh_keys"},
		{"key too long", func(r *task.CreateRequest) {
			r.SSHKeys = []string{keys[0], keys[3] + " " + strings.Repeat("c", task.MaxSSHKeyLen)}
		}, "ssh_keys[1]"},
		{"key not a key", func(r *task.CreateRequest) { r.SSHKeys = []string{"hunter2"} }, "ssh_keys[0]"},
		{"key options", func(r *task.CreateRequest) { r.SSHKeys = []string{`command="/bin/sh" ` + keys[3]} }, "ssh_keys[0]"},
		{"key two lines", func(r *task.CreateRequest) { r.SSHKeys = []string{keys[3] + "\n" + keys[4]} }, "ssh_keys[0]"},
		{"key type mismatch", func(r *task.CreateRequest) {
			r.SSHKeys = []string{"ssh-rsa" + strings.TrimPrefix(keys[3], "ssh-ed25519")}
		}, "ssh_keys[0]"},
		{"key cut short", func(r *task.CreateRequest) { r.SSHKeys = []string{"ssh-ed25519 AAAA"} }, "ssh_keys[0]"},
		{"clear password", func(r *task.CreateRequest) { r.RootPasswordHash = "hunter2" }, "root_password_hash"},
		{"password looking like a hash", func(r *task.CreateRequest) { r.RootPasswordHash = "$6$hunter2" }, "root_password_hash"},
		{"md5 crypt", func(r *task.CreateRequest) { r.RootPasswordHash = "$1$abcdefgh$0123456789abcdefghijkl" }, "root_password_hash"},
		{"hash with newline", func(r *task.CreateRequest) { r.RootPasswordHash = sha512Hash + "\nd-i x" }, "root_password_hash"},
		{"user-data not cloud-config", func(r *task.CreateRequest) { r.UserData = "#!/bin/sh\nreboot\n" }, "user_data"},
		{"user-data bad YAML", func(r *task.CreateRequest) { r.UserData = "#cloud-config\nruncmd: [a\n" }, "user_data"},
		{"user-data a list", func(r *task.CreateRequest) { r.UserData = "#cloud-config\n- a\n" }, "user_data"},
		{"user-data empty document", func(r *task.CreateRequest) { r.UserData = "#cloud-config\n" }, "user_data"},
		{"user-data duplicate key", func(r *task.CreateRequest) { r.UserData = "#cloud-config\npackages: [a]\npackages: [b]\n" }, "user_data"},
		{"user-data two documents", func(r *task.CreateRequest) { r.UserData = "#cloud-config\na: 1\n---\nb: 2\n" }, "user_data"},
		{"user-data too long", func(r *task.CreateRequest) {
			r.UserData = "#cloud-config\nwrite_files: [{path: /x, content: " + strings.Repeat("x", task.MaxUserDataLen) + "}]\n"
		}, "user_data"},
		{"user-data not UTF-8", func(r *task.CreateRequest) { r.UserData = "#cloud-config\na: \xff\n" }, "user_data"},
	}
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		_, err := svc.Create(ctx, validRequest("00:1a:2b:3c:4d:01"))
		require.NoError(t, err)
		before, rev := dump(t, st)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				req := validRequest("00:1a:2b:3c:4d:5e")
				tt.edit(&req)
				_, err := svc.Create(ctx, req)
				require.ErrorIs(t, err, task.ErrInvalid)
				var ve *task.ValidationError
				require.ErrorAs(t, err, &ve)
				assert.Equal(t, tt.field, ve.Field, ve.Error())
				if req.RootPasswordHash != "" {
					assert.NotContains(t, ve.Error(), "hunter2", "a password is never repeated")
				}
				after, rev2 := dump(t, st)
				assert.Equal(t, rev, rev2, "nothing written")
				assert.Equal(t, before, after)
			})
		}
	})
}

func TestPasswordHashFormats(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store, svc *task.Service) {
		ctx := ctxT(t)
		for i, h := range []string{
			sha512Hash,
			"$6$rounds=5000$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.",
			"$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM.",
			"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$GmcwIgvdUC9qLWcKCi6gklUa1dM3ziD43YxYNURLKy0",
			"$2b$12$abcdefghijklmnopqrstuuT1Iwu6o8Wx7BoOyIMHfgVJq6JO/IJhW",
		} {
			req := validRequest("00:1a:2b:3c:4f:0" + string("0123456789"[i]))
			req.RootPasswordHash = h
			created, err := svc.Create(ctx, req)
			require.NoError(t, err, h)
			assert.Equal(t, h, created.Metadata.RootPasswordHash)
		}
	})
}
