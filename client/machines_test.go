package client_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/client"
	"github.com/lpmos/lpmos/controlplane"
	"github.com/lpmos/lpmos/controlplane/auth"
	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/task"
)

const adminToken = "admin-token-0123456789"

// withMachines gives the control plane a BMC key and an admin token.
func withMachines(t *testing.T) func(*controlplane.Config) {
	s, err := machine.NewSealer([]byte(strings.Repeat("m", machine.KeySize)))
	require.NoError(t, err)
	return func(c *controlplane.Config) {
		c.BMCSealer = s
		c.Auth.Tokens = append(c.Auth.Tokens, auth.StaticToken{Token: adminToken, Subject: "ada", Role: auth.RoleAdmin})
	}
}

func TestMachines(t *testing.T) {
	cp := startCP(t, nil, withMachines(t))
	ctx := context.Background()
	op, viewer := cp.client(operatorToken), cp.client(viewerToken)
	region := "dc1"

	m, err := op.RegisterMachine(ctx, "52:54:00:bb:00:01", client.MachineInput{Region: &region, Tags: map[string]string{"rack": "r1"},
		BMC:      &machine.BMCInput{Driver: machine.DriverIPMI, Address: "10.0.9.1:623", Username: "admin", Password: "pw-1"},
		Expected: &hardware.Expected{Cores: 8, Serial: "SN1"}})
	require.NoError(t, err)
	assert.True(t, m.Registered)
	assert.True(t, m.BMC.HasPassword)
	assert.Equal(t, 8, m.Expected.Cores)
	_, err = op.RegisterMachine(ctx, "52:54:00:bb:00:01", client.MachineInput{})
	assert.ErrorIs(t, err, client.ErrConflict)
	_, err = op.RegisterMachine(ctx, "52:54:00:bb:00:02", client.MachineInput{BMC: &machine.BMCInput{Driver: "telnet", Address: "h"}})
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "bmc.driver", ae.Field)
	_, err = op.RegisterMachine(ctx, "52:54:00:bb:00:02", client.MachineInput{Tags: map[string]string{"rack": "r2"}})
	require.NoError(t, err)

	// The list is fed by a watch: the new records appear shortly.
	var page *machine.Page
	require.Eventually(t, func() bool {
		page, err = viewer.Machines(ctx, client.MachineFilter{MACPrefix: "52:54:00:bb"})
		return err == nil && len(page.Machines) == 2
	}, 10*time.Second, 20*time.Millisecond)
	page, err = viewer.Machines(ctx, client.MachineFilter{Tags: map[string]string{"rack": "r2"}})
	require.NoError(t, err)
	require.Len(t, page.Machines, 1)
	assert.Equal(t, "52:54:00:bb:00:02", page.Machines[0].MAC.String())
	page, err = viewer.Machines(ctx, client.MachineFilter{Limit: 1})
	require.NoError(t, err)
	assert.Len(t, page.Machines, 1)
	assert.Equal(t, "52:54:00:bb:00:01", page.Next)
	_, err = viewer.Machines(ctx, client.MachineFilter{MACPrefix: "zz"})
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "mac_prefix", ae.Field)

	// Update: the BMC and the expected hardware removed, tags replaced.
	m, err = op.UpdateMachine(ctx, "52:54:00:bb:00:01", client.MachineInput{RemoveBMC: true, RemoveExpected: true, Tags: map[string]string{"rack": "r9"}})
	require.NoError(t, err)
	assert.Nil(t, m.BMC)
	assert.Nil(t, m.Expected)
	assert.Equal(t, map[string]string{"rack": "r9"}, m.Tags)
	_, err = op.PowerMachine(ctx, "52:54:00:bb:00:01", "on")
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, controlplane.CodeNoBMC, ae.Code)
	_, err = viewer.UpdateMachine(ctx, "52:54:00:bb:00:01", client.MachineInput{Region: &region})
	assert.ErrorIs(t, err, client.ErrForbidden)

	_, err = op.UpdateMachine(ctx, "52:54:00:bb:00:01", client.MachineInput{BMC: &machine.BMCInput{Driver: machine.DriverIPMI, Address: "10.0.9.1", Password: "pw-2"}})
	require.NoError(t, err)
	req, err := op.PowerMachine(ctx, "52:54:00:bb:00:01", "cycle")
	require.NoError(t, err)
	assert.Equal(t, "cycle", req.Action)
	assert.Equal(t, "dc1", req.Region)

	// A task from the machine: MAC and region filled in.
	created, err := op.CreateForMachine(ctx, "52:54:00:bb:00:01", task.CreateRequest{OSType: "ubuntu", OSVersion: "22.04"})
	require.NoError(t, err)
	d, err := viewer.Machine(ctx, "52:54:00:bb:00:01")
	require.NoError(t, err)
	require.Len(t, d.Tasks, 1)
	assert.Equal(t, created.TaskID, d.Tasks[0].TaskID)
	assert.Equal(t, "cycle", d.PendingPower.Action)
	got, err := viewer.Get(ctx, created.TaskID)
	require.NoError(t, err)
	assert.Equal(t, d.MAC, got.Metadata.TargetMAC)
	assert.Equal(t, "dc1", got.Metadata.RegionID)

	assert.ErrorIs(t, op.DeleteMachine(ctx, "52:54:00:bb:00:01"), client.ErrConflict, "active task")
	require.NoError(t, op.DeleteMachine(ctx, "52:54:00:bb:00:02"))
	_, err = viewer.Machine(ctx, "52:54:00:bb:00:02")
	assert.ErrorIs(t, err, client.ErrNotFound)
}

func TestRules(t *testing.T) {
	cp := startCP(t, nil, withMachines(t))
	ctx := context.Background()
	admin, op := cp.client(adminToken), cp.client(operatorToken)

	r, err := admin.PutRule(ctx, rule.Rule{Name: "small-vms", Region: "dc1", MaxCores: 4, UpdatedBy: "forged"})
	require.NoError(t, err)
	assert.Equal(t, "token:ada", r.UpdatedBy, "the server says who")
	_, err = admin.PutRule(ctx, rule.Rule{Name: "asset-db", MatchExpected: true})
	require.NoError(t, err)
	_, err = admin.PutRule(ctx, rule.Rule{Name: "bad", MinCores: 8, MaxCores: 4})
	var ae *client.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, "max_cores", ae.Field)
	_, err = op.PutRule(ctx, rule.Rule{Name: "mine", MinCores: 1})
	assert.ErrorIs(t, err, client.ErrForbidden, "rules are for admins")

	rules, err := op.Rules(ctx)
	require.NoError(t, err)
	var names []string
	for _, r := range rules {
		names = append(names, r.Name)
	}
	assert.Equal(t, []string{"asset-db", "small-vms"}, names)
	got, err := op.Rule(ctx, "asset-db")
	require.NoError(t, err)
	assert.True(t, got.MatchExpected)

	require.NoError(t, admin.DeleteRule(ctx, "asset-db"))
	assert.ErrorIs(t, admin.DeleteRule(ctx, "asset-db"), client.ErrNotFound)
	_, err = op.Rule(ctx, "asset-db")
	assert.ErrorIs(t, err, client.ErrNotFound)
}
