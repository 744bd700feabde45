package main

import (
	"context"
	"flag"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos/client"
)

func regionsList(fs *flag.FlagSet) runner {
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		regions, err := c.Regions(ctx)
		if err != nil {
			return err
		}
		if a.g.output == "json" {
			if regions == nil {
				regions = []client.Region{}
			}
			return a.json(struct {
				Regions []client.Region `json:"regions"`
			}{regions})
		}
		now := time.Now()
		rows := make([][]string, len(regions))
		for i, r := range regions {
			heartbeat := "-"
			if t, err := time.Parse(time.RFC3339Nano, r.LastHeartbeat); err == nil {
				heartbeat = age(now, t) + " ago"
			}
			var oss []string
			if r.Capabilities != nil {
				for _, o := range r.Capabilities.OS {
					oss = append(oss, o.Type+" "+o.Version)
				}
			}
			active := "-"
			if r.ActiveTasks != nil {
				n := 0
				var parts []string
				for _, st := range slices.Sorted(maps.Keys(r.ActiveTasks)) {
					n += r.ActiveTasks[st]
					parts = append(parts, string(st)+"="+strconv.Itoa(r.ActiveTasks[st]))
				}
				active = strconv.Itoa(n)
				if n > 0 {
					active += " (" + strings.Join(parts, ",") + ")"
				}
			}
			rows[i] = []string{r.ID, r.Status, heartbeat, orDash(strings.Join(oss, ", ")), active}
		}
		return a.table([]string{"REGION", "STATUS", "HEARTBEAT", "OS", "ACTIVE TASKS"}, rows)
	}
}
