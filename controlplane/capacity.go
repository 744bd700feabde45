package controlplane

import (
	"net/http"

	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/task"
)

// Defaults of Config.MaxActiveTasks and Config.MaxActiveTasksPerRegion.
const (
	DefaultMaxActiveTasks          = 100_000
	DefaultMaxActiveTasksPerRegion = 20_000
)

// Defaults of Config.RateLimit (requests a second) and Config.RateBurst:
// a person or a dashboard stays far below; automation that moves
// thousands of tasks raises them (or uses the batch and bulk calls).
const (
	DefaultRateLimit = 50
	DefaultRateBurst = 100
)

// admission hands out the free slots under the active-task caps to one
// request's creates, in order. It counts from the view when the request
// starts; the view already holds this replica's earlier creates (each
// create waits for the view to reach its write before it answers).
type admission struct {
	max, maxRegion int // negative: no cap
	total          int
	byRegion       map[string]int
}

// admission counts the active tasks for one request. Until the view is
// first filled it cannot count, so a capped create is
// refused with 503 and Retry-After (as a list is) instead of passing
// every cap after a restart.
func (s *Server) admission(w http.ResponseWriter) (*admission, error) {
	a := &admission{max: s.cfg.MaxActiveTasks, maxRegion: s.cfg.MaxActiveTasksPerRegion}
	if a.max >= 0 || a.maxRegion >= 0 {
		if !s.tasksSynced() {
			w.Header().Set("Retry-After", "1")
			return nil, httpjson.Errorf(http.StatusServiceUnavailable, httpjson.CodeUnavailable,
				"task cache is loading: the active-task caps cannot be checked yet")
		}
		a.total, a.byRegion = s.view.CountActive()
	}
	return a, nil
}

// admit takes a slot for a task in region, or says which cap is full.
func (a *admission) admit(req task.CreateRequest) error {
	if a.max >= 0 && a.total >= a.max {
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeCapacity,
			"too many active tasks (%d, the most allowed): wait for some to end or cancel some", a.max)
	}
	if a.maxRegion >= 0 && a.byRegion[req.RegionID] >= a.maxRegion {
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeCapacity,
			"too many active tasks in region %q (%d, the most allowed per region): wait for some to end or cancel some", req.RegionID, a.maxRegion)
	}
	a.total++
	if a.byRegion != nil {
		a.byRegion[req.RegionID]++
	}
	return nil
}
