package controlplane_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/internal/etcdtest"
)

const (
	// A 4096-bit RSA key: longer than a tag's 256 bytes.
	rsa4096Key = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAACAQCQrl48VLhB6/O1wM/Zj2UY4eM/7sQ3gcj/ykCkSGVzX87+b7mkWj8UNG+w7js0VsQnULc+ZsSW2yXYYx+T3JIbGo7SaVYqP9NQUbp4GbW3j19GxAzlCjvuWFRDxiNgDqhgC1dBkx+2+fejn1OAHCKO0YIxMz82+fYi+RgWJua6ga21PjxIFh21lNNbqZM03Dkaf7Us7M6uSKkvQSZjbDFCz32noNsR/gRJZ3dnY6xQ14yWRzdhJzrXZwy3H70zzJeEli8kwoKfCQezalSgAYoTjha4/PkLXVjvAWxAh6yUn3tGzo7ekmmJlCMc6tYvT0yi1PXv4xdyXh7v8VAUIhMdQPx4tuaS7mVSiXV4kt4Tr3D91ta/LamaNZrxw7aaiqp4oLXf8+bEnDlrtnjO7d7oQTrtk+FPcDmrdlj3pxqzUk4M/PemDFNv7Ec7lpurAmblVfKIGpReJkW4KrJYGCwqVpw+5huXf4iJWn7DsXX00xTFdiiRnM91Ird+6dMoIfwb18FOIDG4eUqxmvAktyx+gDBOAewutGxbIgn9jXBg2nfO/CQlBiPUd/OE7uLJmNC8IucujAXp2E0NJLrdrKBxaeRCnMdTr9KwtWb8auPeyDUcqv6MgnndiV2owxxzZvouOC9a4HjVkJoBGqgFsYzjIvEzAdTBuDoMrZUR0HuvPQ== ops@example.com"
	sha512Hash = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
	edKey      = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example.com"
)

func staticBody(mac string) map[string]any {
	b := createBody(mac)
	delete(b, "network_config")
	b["network"] = map[string]any{"mode": "static", "address": "10.0.0.5/24", "gateway": "10.0.0.1",
		"dns": []string{"1.1.1.1", "9.9.9.9"}, "vlan_id": 100,
		"bond": map[string]any{"name": "bond0", "interfaces": []string{"eno1", "eno2"}, "mode": "802.3ad"}}
	b["hostname"] = "web-01.dc1.example.com"
	b["ssh_keys"] = []string{edKey}
	b["root_password_hash"] = sha512Hash
	b["user_data"] = "#cloud-config\npackages: [nginx]\n"
	return b
}

// Bad per-machine configuration is refused with 400 naming the field, and
// nothing is written: no task for the machine exists afterwards.
func TestAPIMachineConfigErrors(t *testing.T) {
	st := etcdtest.NewStore(t)
	cp := startCP(t, st)
	const mac = "00:1a:2b:3c:4d:60"
	edit := func(f func(b map[string]any)) map[string]any {
		b := staticBody(mac)
		f(b)
		return b
	}
	net := func(f func(n map[string]any)) map[string]any {
		return edit(func(b map[string]any) { f(b["network"].(map[string]any)) })
	}
	tests := []struct {
		name  string
		body  any
		field string
	}{
		{"network_config static without an address", func() any {
			b := createBody(mac)
			b["network_config"] = "static"
			return b
		}(), "network.address"},
		{"static without address", net(func(n map[string]any) { delete(n, "address") }), "network.address"},
		{"address not CIDR", net(func(n map[string]any) { n["address"] = "10.0.0.5" }), "network.address"},
		{"gateway outside the subnet", net(func(n map[string]any) { n["gateway"] = "192.168.1.1" }), "network.gateway"},
		{"five name servers", net(func(n map[string]any) { n["dns"] = []string{"1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4", "9.9.9.9"} }), "network.dns"},
		{"vlan 4095", net(func(n map[string]any) { n["vlan_id"] = 4095 }), "network.vlan_id"},
		{"bond of one", net(func(n map[string]any) { n["bond"].(map[string]any)["interfaces"] = []string{"eno1"} }), "network.bond.interfaces"},
		{"bond NIC name", net(func(n map[string]any) { n["bond"].(map[string]any)["interfaces"] = []string{"eno1", "eno2; reboot"} }), "network.bond.interfaces[1]"},
		{"mode against network_config", edit(func(b map[string]any) { b["network_config"] = "dhcp" }), "network.mode"},
		{"hostname", edit(func(b map[string]any) { b["hostname"] = "web_01" }), "hostname"},
		{"hostname against the tag", edit(func(b map[string]any) { b["tags"] = map[string]string{"hostname": "web-02"} }), "hostname"},
		{"ssh key with options", edit(func(b map[string]any) { b["ssh_keys"] = []string{edKey, `command="sh" ` + edKey} }), "ssh_keys[1]"},
		{"clear-text password", edit(func(b map[string]any) { b["root_password_hash"] = "correct horse battery staple" }), "root_password_hash"},
		{"user_data a script", edit(func(b map[string]any) { b["user_data"] = "#!/bin/sh\nreboot\n" }), "user_data"},
		{"user_data not YAML", edit(func(b map[string]any) { b["user_data"] = "#cloud-config\npackages: [nginx\n" }), "user_data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := storeRevision(t, st)
			code, body := cp.do("POST", "/api/v1/tasks", operatorToken, tt.body)
			require.Equal(t, http.StatusBadRequest, code, "%v", body)
			e := body["error"].(map[string]any)
			assert.Equal(t, "invalid_request", e["code"])
			assert.Equal(t, tt.field, e["field"], "%v", e["message"])
			assert.NotContains(t, e["message"], "horse", "a password is never repeated")
			assert.Equal(t, before, storeRevision(t, st), "an error writes nothing")
			_, list := cp.do("GET", "/api/v1/tasks?mac="+mac, viewerToken, nil)
			assert.Empty(t, list["tasks"], "no task for the machine")
		})
	}
}

// A good static configuration is created and read back as given; the old
// network_config follows the mode.
func TestAPIMachineConfigCreated(t *testing.T) {
	cp := startCP(t, etcdtest.NewStore(t))
	keys := []string{edKey, rsa4096Key}
	b := staticBody("00:1a:2b:3c:4d:61")
	b["ssh_keys"] = keys
	b["tags"] = map[string]string{"hostname": "web-01.dc1.example.com"}
	code, body := cp.do("POST", "/api/v1/tasks", operatorToken, b)
	require.Equal(t, http.StatusCreated, code, "%v", body)
	id := body["task_id"].(string)

	code, got := cp.do("GET", "/api/v1/tasks/"+id, viewerToken, nil)
	require.Equal(t, http.StatusOK, code)
	md := got["metadata"].(map[string]any)
	assert.Equal(t, map[string]any{"mode": "static", "address": "10.0.0.5/24", "gateway": "10.0.0.1",
		"dns": []any{"1.1.1.1", "9.9.9.9"}, "vlan_id": float64(100),
		"bond": map[string]any{"name": "bond0", "interfaces": []any{"eno1", "eno2"}, "mode": "802.3ad"}}, md["network"])
	assert.Equal(t, "static", md["network_config"])
	assert.Equal(t, "web-01.dc1.example.com", md["hostname"])
	assert.Equal(t, []any{keys[0], keys[1]}, md["ssh_keys"])
	// A viewer sees that a password hash and user-data were set, not
	// what they are; an operator sees them.
	assert.Equal(t, controlplane.Redacted, md["root_password_hash"])
	assert.Equal(t, controlplane.Redacted, md["user_data"])
	code, got = cp.do("GET", "/api/v1/tasks/"+id, operatorToken, nil)
	require.Equal(t, http.StatusOK, code)
	md = got["metadata"].(map[string]any)
	assert.Equal(t, sha512Hash, md["root_password_hash"])
	assert.Equal(t, "#cloud-config\npackages: [nginx]\n", md["user_data"])

	// network_config alone keeps working.
	code, body = cp.do("POST", "/api/v1/tasks", operatorToken, createBody("00:1a:2b:3c:4d:62"))
	require.Equal(t, http.StatusCreated, code, "%v", body)
	_, got = cp.do("GET", "/api/v1/tasks/"+body["task_id"].(string), viewerToken, nil)
	md = got["metadata"].(map[string]any)
	assert.Equal(t, "dhcp", md["network_config"])
	assert.NotContains(t, md, "network")
}
