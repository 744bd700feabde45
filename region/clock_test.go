package region_test

import (
	"context"
	"io"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/region"
	"github.com/lpmos/lpmos/task"
)

// TestEndedTasksAreForgottenOnTheRegionsClock: a machine whose task ended
// is still answered for a while (so its script can send it to its disk or
// power it off), measured on Config.Now.
func TestEndedTasksAreForgottenOnTheRegionsClock(t *testing.T) {
	start := time.Now()
	var ahead atomic.Int64 // the test moves the clock forward
	now := func() time.Time { return start.Add(time.Duration(ahead.Load())) }
	l := startRegion(t, memStore(t), func(c *region.Config) { c.Now = now })
	ctx := context.Background()
	mac, err := lpmos.ParseMAC("52:54:00:00:02:01")
	require.NoError(t, err)
	tk := l.create(mac.String())
	l.waitStatus(tk.ID, task.StatusReady)
	_, err = l.svc.Cancel(ctx, tk.ID, "ops", "not needed")
	require.NoError(t, err)

	policy := l.reg.DHCPPolicy()
	req := dhcp.Request{MAC: mac, IsPXE: true, HasArch: true, Firmware: lpmos.FirmwareBIOS}
	// Assertions collected per try (EventuallyWithT): a failing call is
	// reported as itself, not as a condition that never held.
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := http.Get(l.ts.URL + "/boot/" + mac.String() + ".ipxe")
		if !assert.NoError(c, err) {
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got, err := policy.Boot(ctx, req)
		assert.NoError(c, err)
		assert.False(c, got.Ignore)
		assert.Contains(c, string(body), "was cancelled")
	}, 10*time.Second, 10*time.Millisecond, "the machine of an ended task is answered")

	ahead.Add(int64(6*time.Hour + time.Minute))
	got, err := policy.Boot(ctx, req)
	require.NoError(t, err)
	require.True(t, got.Ignore, "forgotten after six hours on the region's clock")
	_, body := getText(t, l.ts.URL+"/boot/"+mac.String()+".ipxe")
	require.Contains(t, body, "has no active task")
}
