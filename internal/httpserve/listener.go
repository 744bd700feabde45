package httpserve

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Listener caps the connections it has handed out and that are still
// open: in total and per source IP address. A connection over a cap is
// accepted and closed at once (rather than left in the kernel's backlog,
// which would stall well-behaved clients along with the flood) and Accept
// waits for the next one.
type Listener struct {
	net.Listener
	max, perSource int // <= 0: no cap
	log            *slog.Logger
	warn           rate.Sometimes

	mu       sync.Mutex
	open     int
	bySource map[netip.Addr]int
	refused  uint64
}

// NewListener wraps ln. maxConns caps all connections, perSource those from
// one IP address; zero or negative disables a cap. Refusals are logged to
// log (at most every 10 s) when it is not nil.
func NewListener(ln net.Listener, maxConns, perSource int, log *slog.Logger) *Listener {
	return &Listener{
		Listener: ln, max: maxConns, perSource: perSource, log: log,
		warn:     rate.Sometimes{Interval: 10 * time.Second},
		bySource: map[netip.Addr]int{},
	}
}

// Accept returns the next connection within the caps.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := sourceOf(c.RemoteAddr())
		if l.acquire(src) {
			return &conn{Conn: c, release: sync.OnceFunc(func() { l.release(src) })}, nil
		}
		_ = c.Close()
	}
}

// Open reports how many connections are open, in total and from src.
func (l *Listener) Open(src netip.Addr) (total, fromSrc int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open, l.bySource[src.Unmap()]
}

// Refused is how many connections were closed for being over a cap.
func (l *Listener) Refused() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

func (l *Listener) acquire(src netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	overTotal := l.max > 0 && l.open >= l.max
	overSource := l.perSource > 0 && l.bySource[src] >= l.perSource
	if overTotal || overSource {
		l.refused++
		if l.log != nil {
			refused := l.refused
			l.warn.Do(func() {
				l.log.Warn("refusing connections over the cap", "addr", l.Addr().String(), "source", src.String(),
					"open", l.open, "max", l.max, "from_source", l.bySource[src], "max_per_source", l.perSource, "refused_total", refused)
			})
		}
		return false
	}
	l.open++
	l.bySource[src]++
	return true
}

func (l *Listener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
}

// sourceOf is the IP address a connection comes from; connections that
// are not TCP/IP (a Unix socket in a test) share the zero address.
func sourceOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// conn gives its slot back when it is closed, once however often Close is
// called (net/http and TLS may both close it).
type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// ReadFrom keeps net/http's sendfile path for boot files and images:
// without it, the wrapper would hide the TCP connection's ReadFrom.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

// CloseWrite lets net/http half-close a connection it is done with, so the
// client reads the whole answer before the connection goes.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

type writerOnly struct{ io.Writer }
