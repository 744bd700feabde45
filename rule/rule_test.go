package rule_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/hardware"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/rule"
	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
)

var server = &hardware.Info{
	CPU:    hardware.CPU{Cores: 32},
	Memory: hardware.Memory{TotalGB: 256},
	Disks: []hardware.Disk{{Device: "/dev/nvme0n1", SizeGB: 3840, Type: hardware.DiskNVMe},
		{Device: "/dev/sda", SizeGB: 480, Type: hardware.DiskSSD}},
	Network: []hardware.NIC{{Interface: "eno1", Speed: "1000Mb/s"}, {Interface: "ens1f0", Speed: "25Gbps"}},
	System:  hardware.System{Vendor: "Dell Inc.", Product: "PowerEdge R650", Serial: "ABC1234"},
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name  string
		r     rule.Rule
		field string
	}{
		{"good", rule.Rule{Name: "db-nodes", MinCores: 16}, ""},
		{"bad name", rule.Rule{Name: "DB nodes", MinCores: 16}, "name"},
		{"bad region", rule.Rule{Name: "a", Region: "DC 1", MinCores: 1}, "region"},
		{"negative", rule.Rule{Name: "a", MinCores: -1}, "min_cores"},
		{"max below min", rule.Rule{Name: "a", MinCores: 8, MaxCores: 4}, "max_cores"},
		{"memory max below min", rule.Rule{Name: "a", MinMemoryGB: 64, MaxMemoryGB: 32}, "max_memory_gb"},
		{"disk type", rule.Rule{Name: "a", DiskType: "tape"}, "disk_type"},
		{"bad pattern", rule.Rule{Name: "a", Vendor: "[dell"}, "vendor"},
		{"control char", rule.Rule{Name: "a", Model: "x\x1b[2J"}, "model"},
		{"no condition", rule.Rule{Name: "a", Region: "dc1"}, "rule"},
		{"expected hardware is a condition", rule.Rule{Name: "asset-db", MatchExpected: true}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.Validate()
			if tc.field == "" {
				require.NoError(t, err)
				return
			}
			var ve *rule.ValidationError
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tc.field, ve.Field)
			assert.ErrorIs(t, err, rule.ErrInvalid)
		})
	}
}

func TestMatch(t *testing.T) {
	cases := []struct {
		name     string
		r        rule.Rule
		expected *hardware.Expected
		ok       bool
		why      string
	}{
		{"cores", rule.Rule{MinCores: 16, MaxCores: 64}, nil, true, ""},
		{"too few cores", rule.Rule{MinCores: 64}, nil, false, "32 cores < 64"},
		{"too much memory", rule.Rule{MaxMemoryGB: 128}, nil, false, "256 GB memory > 128"},
		{"disk count", rule.Rule{MinDisks: 2, MaxDisks: 2}, nil, true, ""},
		{"big NVMe", rule.Rule{DiskType: hardware.DiskNVMe, MinDiskGB: 3000}, nil, true, ""},
		{"big SSD", rule.Rule{DiskType: hardware.DiskSSD, MinDiskGB: 1000}, nil, false, "no SSD disk of at least 1000 GB"},
		{"25G NIC", rule.Rule{MinNICMbps: 25000}, nil, true, ""},
		{"100G NIC", rule.Rule{MinNICMbps: 100000}, nil, false, "no NIC at 100000"},
		{"vendor pattern", rule.Rule{Vendor: "dell*", Model: "PowerEdge R6?0"}, nil, true, ""},
		{"serial pattern", rule.Rule{Serial: "XYZ*"}, nil, false, `serial "ABC1234" does not match "XYZ*"`},
		{"as expected", rule.Rule{MatchExpected: true}, &hardware.Expected{Cores: 32, MemoryGB: 256, Disks: 2, Serial: "abc1234"}, true, ""},
		{"a disk short of expected", rule.Rule{MatchExpected: true, MinCores: 8}, &hardware.Expected{Disks: 3}, false, "2 disks, expected 3"},
		{"nothing expected", rule.Rule{MatchExpected: true}, nil, false, "the machine's record states no expected hardware"},
		{"expectation unused without match_expected", rule.Rule{MinCores: 8}, &hardware.Expected{Disks: 3}, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := tc.r.Match(server, tc.expected)
			assert.Equal(t, tc.ok, ok, why)
			if tc.why != "" {
				assert.Contains(t, strings.Join(why, "; "), tc.why)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	rules := []rule.Rule{
		{Name: "big", MinCores: 64},
		{Name: "dc2-only", Region: "dc2", MinCores: 1},
		{Name: "dell", Vendor: "dell*", MinMemoryGB: 128},
		{Name: "named", OnlyNamed: true, MinCores: 1},
	}
	d := rule.Evaluate(rules, "dc1", nil, server, nil)
	assert.Equal(t, "rule:dell", d.Approver)

	d = rule.Evaluate(rules[:1], "dc1", nil, server, nil)
	assert.Empty(t, d.Approver)
	assert.Equal(t, 1, d.Applied)
	assert.Equal(t, []string{"big: 32 cores < 64"}, d.Reasons)

	d = rule.Evaluate([]rule.Rule{rules[1], rules[3]}, "dc1", nil, server, nil)
	assert.Zero(t, d.Applied, "another region's rule and a rule only for tasks naming it do not apply")
	d = rule.Evaluate([]rule.Rule{rules[1], rules[3]}, "dc1", map[string]string{rule.TaskTag: "named"}, server, nil)
	assert.Equal(t, "rule:named", d.Approver)

	asset := []rule.Rule{{Name: "asset-db", MatchExpected: true}}
	d = rule.Evaluate(asset, "dc1", nil, server, &hardware.Expected{Serial: "ABC1234", Cores: 32})
	assert.Equal(t, "rule:asset-db", d.Approver)
	d = rule.Evaluate(asset, "dc1", nil, server, &hardware.Expected{Serial: "OTHER"})
	assert.Equal(t, []string{`asset-db: serial "ABC1234", expected "OTHER"`}, d.Reasons)
}

func TestServiceAndView(t *testing.T) {
	st := memory.New()
	t.Cleanup(func() { st.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	svc := rule.NewService(st, nil)
	v := rule.NewView(st, nil)
	done := make(chan struct{})
	go func() { defer close(done); _ = v.Run(ctx) }()
	defer func() { cancel(); <-done }()

	_, err := svc.Put(ctx, rule.Rule{Name: "db", MinCores: 16}, "token:otto")
	require.NoError(t, err)
	_, err = svc.Put(ctx, rule.Rule{Name: "bad", MinCores: -1}, "token:otto")
	require.ErrorIs(t, err, rule.ErrInvalid)
	got, err := svc.Get(ctx, "db")
	require.NoError(t, err)
	assert.Equal(t, "token:otto", got.UpdatedBy)
	require.Eventually(t, func() bool { return len(v.Rules()) == 1 }, 5*time.Second, 10*time.Millisecond)

	require.NoError(t, svc.Delete(ctx, "db"))
	require.ErrorIs(t, svc.Delete(ctx, "db"), rule.ErrNotFound)
	_, err = svc.Get(ctx, "db")
	require.ErrorIs(t, err, rule.ErrNotFound)
	require.Eventually(t, func() bool { return len(v.Rules()) == 0 }, 5*time.Second, 10*time.Millisecond)
	all, err := svc.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, all)
}

// TestRuleCapHoldsUnderRacingCreates: creates racing for the last free
// place take it once, on both stores; replacing a rule at the cap works.
func TestRuleCapHoldsUnderRacingCreates(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   func(t *testing.T) store.Store
	}{
		{"memory", func(t *testing.T) store.Store {
			st := memory.New()
			t.Cleanup(func() { st.Close() })
			return st
		}},
		{"etcd", func(t *testing.T) store.Store { return etcdtest.NewStore(t) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "etcd" && testing.Short() {
				t.Skip("embedded etcd in the full run")
			}
			ctx := context.Background()
			st := tc.st(t)
			svc := rule.NewService(st, nil)
			for i := range rule.MaxRules - 1 {
				_, err := svc.Put(ctx, rule.Rule{Name: fmt.Sprintf("r%03d", i), MinCores: 1}, "admin")
				require.NoError(t, err)
			}
			const racers = 8
			errs := make(chan error, racers)
			var wg sync.WaitGroup
			for i := range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := svc.Put(ctx, rule.Rule{Name: fmt.Sprintf("last-%d", i), MinCores: 2}, "admin")
					errs <- err
				}()
			}
			wg.Wait()
			close(errs)
			var ok int
			for err := range errs {
				if err == nil {
					ok++
				} else {
					require.ErrorIs(t, err, rule.ErrConflict)
				}
			}
			assert.Equal(t, 1, ok, "one racer takes the last place")
			res, err := st.List(ctx, rule.Prefix, store.ListOptions{})
			require.NoError(t, err)
			assert.Equal(t, rule.MaxRules, len(res.KVs), "rules stored")

			_, err = svc.Put(ctx, rule.Rule{Name: "r000", MinCores: 4}, "admin")
			require.NoError(t, err, "a replacement at the cap")
			got, err := svc.Get(ctx, "r000")
			require.NoError(t, err)
			assert.Equal(t, 4, got.MinCores)
			_, err = svc.Put(ctx, rule.Rule{Name: "one-too-many", MinCores: 1}, "admin")
			require.ErrorIs(t, err, rule.ErrConflict)
		})
	}
}
