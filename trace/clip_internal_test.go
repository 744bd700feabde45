package trace

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// clip bounds an event's texts and details, in a copy: the caller's map is
// neither kept nor changed.
func TestClip(t *testing.T) {
	long := strings.Repeat("x", maxText+10)
	many := map[string]string{}
	for i := range maxDetails + 4 {
		many[fmt.Sprintf("k%02d", i)] = "v"
	}
	firstSorted := map[string]string{}
	for i := range maxDetails {
		firstSorted[fmt.Sprintf("k%02d", i)] = "v"
	}
	tests := []struct {
		name string
		in   Event
		want Event
	}{
		{"no detail", Event{Message: "m"}, Event{Message: "m"}},
		{"small detail", Event{Detail: map[string]string{"a": "1", "b": "2"}}, Event{Detail: map[string]string{"a": "1", "b": "2"}}},
		{"long texts", Event{Message: long, Reason: long, Detail: map[string]string{"a": long}},
			Event{Message: long[:maxText] + "…", Reason: long[:maxText] + "…", Detail: map[string]string{"a": long[:maxText] + "…"}}},
		{"too many details: the first keys in order", Event{Detail: many}, Event{Detail: firstSorted}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before map[string]string
			if tt.in.Detail != nil {
				before = map[string]string{}
				for k, v := range tt.in.Detail {
					before[k] = v
				}
			}
			got := tt.in.clip()
			assert.Equal(t, tt.want, got)
			assert.Equal(t, before, tt.in.Detail, "the caller's map is unchanged")
			if got.Detail != nil {
				got.Detail["new"] = "x"
				assert.NotContains(t, tt.in.Detail, "new", "the clipped event has a map of its own")
			}
		})
	}
}
