package region_test

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/task"
)

const (
	edKey      = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin@example.com"
	ecdsaKey   = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= ops@bastion"
	rootHash   = "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG."
	opUserData = "#cloud-config\npackages: [nginx]\n"
)

func staticRequest(mac, osType, osVersion string) task.CreateRequest {
	return task.CreateRequest{
		RegionID: "dc1", TargetMAC: mac, OSType: osType, OSVersion: osVersion, CreatedBy: "ops",
		Network: &task.Network{Mode: "static", Address: "10.0.0.5/24", Gateway: "10.0.0.1", DNS: []string{"1.1.1.1"}, VLANID: 100},
		// The hostname tag and the field agree; the tag's key joins the list.
		Hostname: "web-01.dc1.example.com", SSHKeys: []string{edKey},
		Tags:             map[string]string{"hostname": "web-01.dc1.example.com", "ssh_key": ecdsaKey},
		RootPasswordHash: rootHash, UserData: opUserData,
	}
}

// A task with a static network gets answer files that configure it (a
// static task could not render before: 500), whichever installer fetches
// them.
func TestStaticTaskAnswerFiles(t *testing.T) {
	l := startRegion(t, memStore(t))
	ctx := context.Background()
	const mac = "52:54:00:00:00:51"
	tk, err := l.svc.Create(ctx, staticRequest(mac, "debian", "12"))
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.report(tk.ID, mac, token)
	_, err = l.svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	var script string
	require.Eventually(t, func() bool {
		_, script = getText(t, l.ts.URL+"/boot/"+mac+".ipxe")
		return strings.Contains(script, "preseed.cfg")
	}, 10*time.Second, 20*time.Millisecond, "installer script after approval:\n%s", script)
	m := regexp.MustCompile(`url=(\S+/)preseed\.cfg`).FindStringSubmatch(script)
	require.NotNil(t, m, script)

	files := map[string]string{}
	for _, name := range []string{"preseed.cfg", "ks.cfg", "user-data", "meta-data"} {
		code, body := getText(t, m[1]+name)
		require.Equal(t, http.StatusOK, code, "%s: %s", name, body)
		files[name] = body
	}
	ps := files["preseed.cfg"]
	for _, want := range []string{
		"d-i netcfg/get_ipaddress string 10.0.0.5\n", "d-i netcfg/get_netmask string 255.255.255.0\n",
		"d-i netcfg/get_gateway string 10.0.0.1\n", "d-i netcfg/get_nameservers string 1.1.1.1\n",
		"d-i netcfg/vlan_id string 100\n", "d-i netcfg/hostname string web-01.dc1.example.com\n",
		"d-i passwd/root-password-crypted password " + rootHash + "\n",
	} {
		assert.Contains(t, ps, want)
	}
	assert.Contains(t, files["ks.cfg"], "network --device="+mac+" --bootproto=static --ip=10.0.0.5 --netmask=255.255.255.0 --gateway=10.0.0.1 --nameserver=1.1.1.1 --vlanid=100 --hostname=web-01.dc1.example.com --activate\n")
	assert.Contains(t, files["ks.cfg"], "rootpw --iscrypted "+rootHash+"\n")
	assert.Contains(t, files["ks.cfg"], "printf '%s\\n' '"+edKey+"' '"+ecdsaKey+"' > /root/.ssh/authorized_keys\n", "every key, the tag's too")
	assert.Contains(t, files["meta-data"], "local-hostname: \"web-01.dc1.example.com\"\n")

	var ai struct {
		Autoinstall struct {
			Network struct {
				Vlans map[string]struct {
					ID        int      `yaml:"id"`
					Addresses []string `yaml:"addresses"`
				} `yaml:"vlans"`
			} `yaml:"network"`
			UserData map[string]any `yaml:"user-data"`
		} `yaml:"autoinstall"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(files["user-data"]), &ai), files["user-data"])
	assert.Equal(t, []string{"10.0.0.5/24"}, ai.Autoinstall.Network.Vlans["vlan100"].Addresses)
	assert.Equal(t, []any{"nginx"}, ai.Autoinstall.UserData["packages"], "the operator's user-data is merged in")
	assert.Equal(t, "web-01", ai.Autoinstall.UserData["hostname"])
}

// An image install's plan carries the NoCloud seed's files the region
// rendered: the static network as network-config, user-data with the
// root password and the operator's cloud-config merged in.
func TestImagePlanCarriesSeedFiles(t *testing.T) {
	l := startRegion(t, memStore(t))
	ctx := context.Background()
	const mac = "52:54:00:00:00:52"
	tk, err := l.svc.Create(ctx, staticRequest(mac, "ubuntu", "24.04"))
	require.NoError(t, err)
	l.waitStatus(tk.ID, task.StatusReady)
	_, token := l.boot(mac)
	l.report(tk.ID, mac, token)
	_, err = l.svc.Approve(ctx, tk.ID, "ops", "")
	require.NoError(t, err)
	var body map[string]any
	require.Eventually(t, func() bool {
		_, body = l.call("GET", agent.PathApproval+mac+"?wait=0", token, nil)
		return body["approved"] == true
	}, 10*time.Second, 20*time.Millisecond)
	plan := body["plan"].(map[string]any)
	require.Equal(t, "image", plan["method"])
	assert.Equal(t, "web-01.dc1.example.com", plan["hostname"])
	assert.Equal(t, []any{edKey, ecdsaKey}, plan["ssh_authorized_keys"])

	var nc struct {
		Version int `yaml:"version"`
		Vlans   map[string]struct {
			ID     int      `yaml:"id"`
			Link   string   `yaml:"link"`
			Addrs  []string `yaml:"addresses"`
			Routes []struct {
				To, Via string
			} `yaml:"routes"`
		} `yaml:"vlans"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(plan["seed_network_config"].(string)), &nc))
	assert.Equal(t, 2, nc.Version)
	assert.Equal(t, 100, nc.Vlans["vlan100"].ID)
	assert.Equal(t, "lpmos0", nc.Vlans["vlan100"].Link)
	assert.Equal(t, []string{"10.0.0.5/24"}, nc.Vlans["vlan100"].Addrs)

	ud := plan["seed_user_data"].(string)
	require.True(t, strings.HasPrefix(ud, "#cloud-config\n"), ud)
	var u struct {
		Hostname  string   `yaml:"hostname"`
		FQDN      string   `yaml:"fqdn"`
		Keys      []string `yaml:"ssh_authorized_keys"`
		Packages  []string `yaml:"packages"`
		PhoneHome struct {
			URL string `yaml:"url"`
		} `yaml:"phone_home"`
		Chpasswd struct {
			Users []map[string]string `yaml:"users"`
		} `yaml:"chpasswd"`
	}
	require.NoError(t, yaml.Unmarshal([]byte(ud), &u), ud)
	assert.Equal(t, "web-01", u.Hostname)
	assert.Equal(t, "web-01.dc1.example.com", u.FQDN)
	assert.Equal(t, []string{edKey, ecdsaKey}, u.Keys)
	assert.Equal(t, []string{"nginx"}, u.Packages)
	assert.Equal(t, plan["phone_home_url"], u.PhoneHome.URL)
	assert.Equal(t, []map[string]string{{"name": "root", "password": rootHash, "type": "hash"}}, u.Chpasswd.Users)

	// A plain DHCP image task leaves the seed to the agent, as before.
	const mac2 = "52:54:00:00:00:53"
	tk2 := l.create(mac2)
	l.waitStatus(tk2.ID, task.StatusReady)
	_, token2 := l.boot(mac2)
	l.report(tk2.ID, mac2, token2)
	_, err = l.svc.Approve(ctx, tk2.ID, "ops", "")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, body = l.call("GET", agent.PathApproval+mac2+"?wait=0", token2, nil)
		return body["approved"] == true
	}, 10*time.Second, 20*time.Millisecond)
	plan = body["plan"].(map[string]any)
	assert.NotContains(t, plan, "seed_user_data")
	assert.NotContains(t, plan, "seed_network_config")
}
