package agent_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
)

const (
	testTask  = "3f2b9c1e-8d4a-4b6e-9f1a-2c3d4e5f6a7b"
	testToken = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func TestParseCmdline(t *testing.T) {
	good := "lpmos.region=http://10.0.0.1:8081 lpmos.mac=52:54:00:12:34:56 lpmos.task=" + testTask + " lpmos.token=" + testToken
	tests := []struct {
		name    string
		line    string
		wantErr string
	}{
		{"BIOS line", good + " console=tty0 console=ttyS0 initrd=initrd.img", ""},
		{"UEFI line starts with the image name", "vmlinuz " + good + " initrd=initrd.img\n", ""},
		{"dashed MAC", strings.Replace(good, "52:54:00:12:34:56", "52-54-00-12-34-56", 1), ""},
		{"https region with a path", strings.Replace(good, "http://10.0.0.1:8081", "https://region.dc1.example/lpmos/", 1), ""},
		{"quoted value", strings.Replace(good, "lpmos.token="+testToken, `lpmos.token="`+testToken+`"`, 1), ""},
		{"empty", "", "lpmos.region is missing"},
		{"no token", strings.Replace(good, "lpmos.token="+testToken, "", 1), "lpmos.token is missing"},
		{"ftp region", strings.Replace(good, "http://", "ftp://", 1), "not an http(s)"},
		{"region without host", strings.Replace(good, "http://10.0.0.1:8081", "http://", 1), "not an http(s)"},
		{"bad MAC", strings.Replace(good, "52:54:00:12:34:56", "52:54:00:12:34", 1), "lpmos.mac"},
		{"bad task", strings.Replace(good, testTask, "../../etc", 1), "lpmos.task"},
		{"short token", strings.Replace(good, testToken, "abc", 1), "16..1024"},
		{"token with a quote", strings.Replace(good, testToken, testToken+`'x`, 1), "outside"},
		{"repeated key", good + " lpmos.mac=52:54:00:12:34:57", "given twice"},
		{"inventory with a task", good + " lpmos.mode=inventory", "lpmos.task is given in inventory mode"},
		{"unknown mode", good + " lpmos.mode=rescue", `lpmos.mode "rescue"`},
		{"pinned https region", strings.Replace(good, "http://", "https://", 1) + " lpmos.region_cert_sha256=" + strings.Repeat("c0", 32), ""},
		{"pin on plain http", good + " lpmos.region_cert_sha256=" + strings.Repeat("c0", 32), "refusing plain HTTP"},
		{"pin not hex", strings.Replace(good, "http://", "https://", 1) + " lpmos.region_cert_sha256=" + strings.Repeat("zz", 32), "64 lowercase hex digits"},
		{"trace parent", good + " lpmos.traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""},
		{"trace parent garbage", good + " lpmos.traceparent=00-4bf92f35", "lpmos.traceparent"},
		{"trace parent uppercase", good + " lpmos.traceparent=00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", "lpmos.traceparent"},
		{"pin too short", strings.Replace(good, "http://", "https://", 1) + " lpmos.region_cert_sha256=c0ffee", "64 lowercase hex digits"},
		{"a region pair", strings.Replace(good, "http://10.0.0.1:8081", "http://10.0.0.1:8081,http://10.0.0.2:8081/", 1), ""},
		{"a bad second region URL", strings.Replace(good, "http://10.0.0.1:8081", "http://10.0.0.1:8081,ftp://10.0.0.2", 1), "not an http(s)"},
		{"an empty second region URL", strings.Replace(good, "http://10.0.0.1:8081", "http://10.0.0.1:8081,", 1), "lpmos.region is missing"},
		{"a pinned pair with an http process", strings.Replace(good, "http://10.0.0.1:8081", "https://10.0.0.1:8443,http://10.0.0.2:8081", 1) + " lpmos.region_cert_sha256=" + strings.Repeat("c0", 32), "refusing plain HTTP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := agent.ParseCmdline(tt.line)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, agent.ErrInvalidConfig)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "52:54:00:12:34:56", cfg.MAC.String())
			assert.Equal(t, testTask, cfg.TaskID)
			assert.Equal(t, testToken, cfg.Token)
			assert.NotContains(t, cfg.RegionURL[len("https://"):], "//")
			assert.False(t, strings.HasSuffix(cfg.RegionURL, "/"))
			if strings.Contains(tt.line, ",http") {
				assert.Equal(t, "http://10.0.0.1:8081", cfg.RegionURL)
				assert.Equal(t, []string{"http://10.0.0.2:8081"}, cfg.OtherRegionURLs)
			}
		})
	}
}

func TestParseCmdlineInventory(t *testing.T) {
	cfg, err := agent.ParseCmdline("vmlinuz lpmos.region=http://10.0.0.1:8081 lpmos.mac=52:54:00:12:34:56 lpmos.mode=inventory lpmos.token=" + testToken)
	require.NoError(t, err)
	assert.Equal(t, agent.ModeInventory, cfg.Mode)
	assert.Empty(t, cfg.TaskID)
	_, err = agent.ParseCmdline("lpmos.region=http://10.0.0.1:8081 lpmos.mac=52:54:00:12:34:56 lpmos.mode=inventory")
	require.ErrorContains(t, err, "lpmos.token is missing", "an inventory agent still needs its token")
}
