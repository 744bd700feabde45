package pxe

import (
	"log/slog"
	"sync"
	"time"
)

// refusalLogInterval is the window RefusalLogLimit counts lines in.
const refusalLogInterval = time.Minute

// defaultRefusalLogLimit is RefusalLogLimit's default.
const defaultRefusalLogLimit = 20

// logLimiter bounds the log lines that clients can cause: a machine stuck
// in a boot loop, or anyone on the boot network, can send refused requests
// as fast as the link allows, and each used to write a line. At most limit
// lines are logged per interval; the rest are counted, and the count is
// logged before the next line that gets through. It needs no goroutine:
// the clock is read when a line is offered.
type logLimiter struct {
	limit    int // negative: no limit
	interval time.Duration
	now      func() time.Time

	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

func newLogLimiter(limit int) *logLimiter {
	if limit == 0 {
		limit = defaultRefusalLogLimit
	}
	return &logLimiter{limit: limit, interval: refusalLogInterval, now: time.Now}
}

// allow reports whether a line may be logged now and, if so, how many were
// suppressed since the last one that was.
func (l *logLimiter) allow() (ok bool, suppressed int) {
	if l.limit < 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.start.IsZero() || now.Sub(l.start) >= l.interval || now.Before(l.start) {
		l.start, l.n = now, 0
	}
	if l.n >= l.limit {
		l.suppressed++
		return false, 0
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// warn logs a line a client caused, if the limit allows.
func (l *logLimiter) warn(log *slog.Logger, msg string, args ...any) {
	ok, suppressed := l.allow()
	if !ok {
		return
	}
	if suppressed > 0 {
		log.Warn("refused requests not logged (log rate limit)", "suppressed", suppressed, "limit", l.limit, "per", l.interval)
	}
	log.Warn(msg, args...)
}
