package store

import (
	"context"
	"log/slog"
	"time"
)

// Follow runs a list-then-watch loop until ctx ends. fill lists what it
// needs and watches from the listing's revision; whenever it returns (the
// history it watched from was compacted, or the watch broke), Follow logs
// why and runs it again after a backoff (100 ms doubling to 5 s), so a
// watcher never gives up while its owner lives. It returns when ctx ends.
func Follow(ctx context.Context, log *slog.Logger, what string, fill func(context.Context) error) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := fill(ctx)
		if ctx.Err() != nil {
			return
		}
		log.Warn(what+" ended; listing again", "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
