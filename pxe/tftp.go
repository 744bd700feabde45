package pxe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/lpmos/lpmos"
)

// TFTPConfig configures a TFTPServer. The zero value serves the iPXE
// binaries of Debian's ipxe package on port 69.
type TFTPConfig struct {
	// Root is the directory served, through Dir (no symbolic links out of
	// it); lpmos.DefaultIPXEDir if empty and Files is nil.
	Root string
	// Files, if set, is served instead of Root, for instance an Overlay of
	// Dirs. Names reach it cleaned by CleanPath; symbolic links are its own
	// business (a Dir refuses links out of its root, os.DirFS does not).
	Files fs.FS
	// Addr is the UDP address to listen on, ":69" if empty. A host-less or
	// IPv4 address listens on IPv4 only, which is what PXE uses.
	Addr string
	// Conn, if set, is used instead of listening on Addr (a test seam, or a
	// socket opened in another network namespace). The server owns it and
	// closes it when Serve returns or on Close.
	Conn net.PacketConn
	// Logger receives refused requests (warn), finished transfers (info) and
	// aborted ones; slog.Default() if nil.
	Logger *slog.Logger
	// Timeout is how long a transfer waits for an acknowledgement before it
	// retransmits, 1s if zero. A client's RFC 2349 timeout option replaces
	// it for its own transfer.
	Timeout time.Duration
	// Retries is how many timeouts in a row a transfer survives before it
	// gives up, 5 if zero.
	Retries int
	// MaxBlockSize caps the negotiated blksize, 1468 if zero: 1468 bytes of
	// data plus TFTP, UDP and IPv4 headers fit a 1500-byte MTU with room for
	// a VLAN tag or tunnel. Without a blksize option blocks are 512 bytes.
	MaxBlockSize int
	// MaxWindowSize caps the negotiated RFC 7440 windowsize, 64 if zero.
	// A transfer buffers one window of blocks.
	MaxWindowSize int
	// MaxTransfers bounds the transfers in flight, 64 if zero. A request
	// beyond it waits for a free slot (see MaxQueued and QueueWait).
	MaxTransfers int
	// MaxQueued bounds the requests waiting for a transfer slot, 1024 if
	// zero; negative: none wait. QueueWait is how long one waits, 5 s if
	// zero. A request that finds the queue full, or waited QueueWait, is
	// answered with a "server busy" error packet. Waiting, not refusing,
	// is what a boot storm needs: a PXE ROM treats an error packet as the
	// end of its network boot, while a request that waits is served as
	// soon as a transfer ends (its repeated requests meanwhile are
	// absorbed), typically within milliseconds.
	MaxQueued int
	QueueWait time.Duration
	// RefusalLogLimit is how many refused requests and failed transfers
	// are logged per minute (20 if zero; negative: all); the others are
	// counted and the count logged with the next line.
	RefusalLogLimit int
	// Trace, if set, is told of every read request and what became of it
	// (a region keeps it in the machine's boot trace). It is called from
	// the goroutine that handled the request and must not block.
	Trace func(TFTPTrace)
}

// TFTPTrace describes one TFTP read request and what became of it.
type TFTPTrace struct {
	Client   net.IP
	File     string // as requested
	Bytes    int64  // data sent
	Duration time.Duration
	Outcome  TFTPOutcome
	Err      error // why it was refused or failed
}

// TFTPOutcome is what became of a TFTP request.
type TFTPOutcome string

// The outcomes of TFTP requests.
const (
	TFTPComplete TFTPOutcome = "complete" // the file was sent
	TFTPProbe    TFTPOutcome = "probe"    // the client asked for the size only (EDK2), and comes back for the file
	TFTPNotFound TFTPOutcome = "not_found"
	TFTPRefused  TFTPOutcome = "refused" // a bad path or mode, a write request
	TFTPBusy     TFTPOutcome = "busy"    // too many transfers
	TFTPFailed   TFTPOutcome = "failed"  // the transfer broke off
	TFTPStopped  TFTPOutcome = "stopped" // the server shut down
)

// trace hands one request's fate to TFTPConfig.Trace.
func (s *TFTPServer) trace(client *net.UDPAddr, file string, bytes int64, took time.Duration, out TFTPOutcome, err error) {
	if s.cfg.Trace == nil || client == nil {
		return
	}
	s.cfg.Trace(TFTPTrace{Client: client.IP, File: file, Bytes: bytes, Duration: took, Outcome: out, Err: err})
}

// TFTPServer is a read-only TFTP server for boot files; see the package
// documentation for what it implements.
type TFTPServer struct {
	cfg    TFTPConfig
	fsys   fs.FS
	log    *slog.Logger
	refuse *logLimiter // client-caused warnings
	conn   net.PacketConn
	cm     *ipv4.PacketConn // non-nil when the destination of requests is read from control messages
	bindIP net.IP           // the listener's own IP when it is not a wildcard
	slots  chan struct{}    // one token per transfer in flight
	admit  chan struct{}    // one token per transfer in flight or waiting for a slot

	stats tftpCounters

	mu      sync.Mutex
	active  map[string]*activeTransfer // by client address
	serving bool
	closed  bool
	wg      sync.WaitGroup
}

// NewTFTPServer checks the root and starts listening (so a busy port is an
// error here, not in Serve). The root must exist and hold at least one of
// lpmos.IPXEBinaries; a binary that exists but cannot be served, such as Debian's
// ipxe.efi symbolic link to /boot, is logged as a warning.
func NewTFTPServer(cfg TFTPConfig) (*TFTPServer, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Addr == "" {
		cfg.Addr = ":69"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.MaxBlockSize <= 0 {
		cfg.MaxBlockSize = 1468
	}
	cfg.MaxBlockSize = min(max(cfg.MaxBlockSize, minBlockSize), maxBlockSize)
	if cfg.MaxWindowSize <= 0 {
		cfg.MaxWindowSize = 64
	}
	cfg.MaxWindowSize = min(cfg.MaxWindowSize, maxWindowSize)
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = 64
	}
	if cfg.MaxQueued == 0 {
		cfg.MaxQueued = 1024
	}
	cfg.MaxQueued = max(cfg.MaxQueued, 0)
	if cfg.QueueWait <= 0 {
		cfg.QueueWait = 5 * time.Second
	}

	s := &TFTPServer{
		cfg:    cfg,
		fsys:   cfg.Files,
		log:    cfg.Logger.With("component", "tftp"),
		refuse: newLogLimiter(cfg.RefusalLogLimit),
		slots:  make(chan struct{}, cfg.MaxTransfers),
		admit:  make(chan struct{}, cfg.MaxTransfers+cfg.MaxQueued),
		active: map[string]*activeTransfer{},
	}
	where := "the configured file system"
	if s.fsys == nil {
		if cfg.Root == "" {
			cfg.Root = lpmos.DefaultIPXEDir
		}
		fi, err := os.Stat(cfg.Root)
		if err != nil {
			return nil, fmt.Errorf("pxe: TFTP root: %w; the iPXE binaries (%s) come from the Debian package ipxe (apt-get install ipxe)",
				err, strings.Join(lpmos.IPXEBinaries(), ", "))
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("pxe: TFTP root %s is not a directory", cfg.Root)
		}
		s.fsys = Dir(cfg.Root)
		where = cfg.Root
	}
	found, refused := checkIPXE(s.fsys)
	for name, err := range refused {
		s.log.Warn("iPXE binary cannot be served; copy it into the root (cp -L) or serve an Overlay",
			"file", name, "root", where, "err", err)
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("pxe: TFTP root: %w", noIPXEError(where))
	}
	s.log.Debug("tftp root checked", "root", where, "ipxe", found)

	if err := s.listen(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *TFTPServer) listen() error {
	conn := s.cfg.Conn
	if conn == nil {
		host, _, err := net.SplitHostPort(s.cfg.Addr)
		if err != nil {
			return fmt.Errorf("pxe: TFTP address %q: %w", s.cfg.Addr, err)
		}
		network := "udp"
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.To4() != nil) {
			network = "udp4"
		} else if ip != nil {
			network = "udp6"
		}
		conn, err = net.ListenPacket(network, s.cfg.Addr)
		if err != nil {
			return fmt.Errorf("pxe: TFTP listen: %w", err)
		}
	}
	s.conn = conn
	// Replies must come from the address the client sent its request to, or
	// a multi-homed region answers relayed clients from whatever address
	// routing picks and strict clients drop the reply. A wildcard IPv4
	// socket learns that address from IP_PKTINFO; a socket bound to one
	// address uses it.
	if ua, ok := conn.LocalAddr().(*net.UDPAddr); ok {
		if !ua.IP.IsUnspecified() {
			s.bindIP = ua.IP
		} else if uc, ok := conn.(*net.UDPConn); ok && ua.IP.To4() != nil {
			p := ipv4.NewPacketConn(uc)
			if err := p.SetControlMessage(ipv4.FlagDst, true); err == nil {
				s.cm = p
			}
		}
	}
	return nil
}

// Addr is the address the server listens on.
func (s *TFTPServer) Addr() net.Addr { return s.conn.LocalAddr() }

// Close releases the socket of a server whose Serve was never called; it is
// not needed after Serve.
func (s *TFTPServer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving || s.closed {
		return nil
	}
	s.closed = true
	return s.conn.Close()
}

// Serve answers requests until ctx ends, then stops every transfer, waits
// for them and closes the socket. It returns nil when ctx ended and an error
// if the socket failed. It may be called once.
func (s *TFTPServer) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.serving || s.closed {
		s.mu.Unlock()
		return errors.New("pxe: TFTP server already served or closed")
	}
	s.serving = true
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel() // stops the transfers if the socket failed
		s.wg.Wait()
		s.conn.Close()
	}()
	stop := context.AfterFunc(ctx, func() { s.conn.SetReadDeadline(time.Now()) })
	defer stop()

	s.log.Info("tftp serving", "addr", s.conn.LocalAddr().String())
	buf := make([]byte, 2048) // requests are small; longer ones are malformed
	for {
		n, src, dst, err := s.read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("pxe: TFTP read: %w", err)
		}
		client, ok := src.(*net.UDPAddr)
		if !ok || n == len(buf) {
			continue
		}
		s.handle(ctx, buf[:n], client, dst)
	}
}

func (s *TFTPServer) read(buf []byte) (int, net.Addr, net.IP, error) {
	if s.cm != nil {
		n, cm, src, err := s.cm.ReadFrom(buf)
		var dst net.IP
		if cm != nil {
			dst = cm.Dst
		}
		return n, src, dst, err
	}
	n, src, err := s.conn.ReadFrom(buf)
	return n, src, nil, err
}

// handle answers one packet that reached the listening port. Only RRQs start
// transfers; other packets get at most an error packet, and nothing here
// blocks or starts a goroutine beyond the bounded transfers.
func (s *TFTPServer) handle(ctx context.Context, pkt []byte, client *net.UDPAddr, dst net.IP) {
	req, err := parseRequest(pkt)
	if err != nil {
		// Stray DATA/ACK/ERROR packets to port 69 are not answered, so the
		// server cannot be used to bounce packets.
		s.log.Debug("tftp ignored packet", "client", client.String(), "err", err)
		return
	}
	log := s.log.With("client", client.String(), "file", req.filename)
	reply := func(code uint16, msg string) {
		s.conn.WriteTo(errorPacket(code, msg), client)
	}
	if req.op == opWRQ {
		s.stats.refused.Add(1)
		s.refuse.warn(log, "tftp write request refused: read-only server")
		s.trace(client, req.filename, 0, 0, TFTPRefused, errors.New("write request to a read-only server"))
		reply(errAccessViolation, "access violation: read-only server")
		return
	}
	if req.mode != "octet" && req.mode != "netascii" {
		s.stats.refused.Add(1)
		s.refuse.warn(log, "tftp request refused: unsupported mode", "mode", req.mode)
		s.trace(client, req.filename, 0, 0, TFTPRefused, fmt.Errorf("unsupported transfer mode %q", req.mode))
		reply(errIllegalOp, "unsupported transfer mode")
		return
	}
	name, err := CleanPath(req.filename)
	if err != nil {
		s.stats.refused.Add(1)
		s.refuse.warn(log, "tftp request refused", "err", err)
		s.trace(client, req.filename, 0, 0, TFTPRefused, err)
		reply(errAccessViolation, "access violation")
		return
	}

	key := client.String()
	s.mu.Lock()
	if a := s.active[key]; a != nil {
		// Usually the client repeated its request because our first answer
		// was lost or slow, and the running transfer retransmits it. But an
		// EDK2 tsize probe aborts with error 8 and asks again from the same
		// port at once, maybe before the transfer has read the error: keep
		// the request for when the transfer ends that way.
		a.next = &transferRequest{req: req, name: name, dst: dst, log: log}
		s.mu.Unlock()
		log.Debug("tftp repeated request while a transfer runs")
		return
	}
	busy := func() {
		s.stats.busy.Add(1)
		s.refuse.warn(log, "tftp request refused: too many transfers", "max", s.cfg.MaxTransfers, "queued", s.cfg.MaxQueued)
		s.trace(client, req.filename, 0, 0, TFTPBusy, fmt.Errorf("%d transfers running, %d waiting", s.cfg.MaxTransfers, s.cfg.MaxQueued))
		reply(errNotDefined, "server busy, try again later")
	}
	select {
	case s.admit <- struct{}{}:
	default:
		s.mu.Unlock()
		busy()
		return
	}
	a := &activeTransfer{}
	s.active[key] = a
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer func() {
			<-s.admit
			s.wg.Done()
		}()
		// Wait for a slot; the client's repeated requests meanwhile
		// land in a.next and are dropped below (not aborted by it).
		select {
		case s.slots <- struct{}{}:
		default:
			timer := time.NewTimer(s.cfg.QueueWait)
			select {
			case s.slots <- struct{}{}:
				timer.Stop()
			case <-timer.C:
				s.mu.Lock()
				delete(s.active, key)
				s.mu.Unlock()
				busy()
				return
			case <-ctx.Done():
				timer.Stop()
				s.mu.Lock()
				delete(s.active, key)
				s.mu.Unlock()
				return
			}
		}
		defer func() { <-s.slots }()
		tr := &transferRequest{req: req, name: name, dst: dst, log: log}
		for tr != nil {
			abortedByClient := s.transfer(ctx, tr.log, tr.req, tr.name, client, s.localIP(tr.dst))
			s.mu.Lock()
			tr, a.next = a.next, nil
			if !abortedByClient || ctx.Err() != nil {
				tr = nil
			}
			if tr == nil {
				delete(s.active, key)
			}
			s.mu.Unlock()
		}
	}()
}

// activeTransfer is the state of a client address with a transfer running.
type activeTransfer struct {
	next *transferRequest // a request that came in meanwhile, from the same address
}

type transferRequest struct {
	req  request
	name string
	dst  net.IP
	log  *slog.Logger
}

// localIP is the address a transfer answers from: the request's destination
// when it is a unicast address of ours, else the listener's own address, else
// whatever routing picks.
func (s *TFTPServer) localIP(dst net.IP) net.IP {
	if dst != nil && (dst.IsGlobalUnicast() || dst.IsLoopback()) {
		return dst
	}
	return s.bindIP
}

// transfer sends one file from its own socket (a new transfer ID). It
// reports whether the client ended it with an error packet.
func (s *TFTPServer) transfer(ctx context.Context, log *slog.Logger, req request, name string, client *net.UDPAddr, local net.IP) (abortedByClient bool) {
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: local}, client)
	if err != nil {
		s.stats.failed.Add(1)
		log.Warn("tftp transfer socket", "err", err)
		s.trace(client, req.filename, 0, 0, TFTPFailed, err)
		return false
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	f, fi, err := openRegular(s.fsys, name)
	if err != nil {
		code, msg := errFileNotFound, "file not found"
		if errors.Is(err, ErrOutsideRoot) || errors.Is(err, ErrInvalidPath) || errors.Is(err, fs.ErrPermission) {
			code, msg = errAccessViolation, "access violation"
		}
		s.stats.notFound.Add(1)
		s.refuse.warn(log, "tftp request refused", "err", err)
		out := TFTPNotFound
		if code == errAccessViolation {
			out = TFTPRefused
		}
		s.trace(client, req.filename, 0, 0, out, err)
		conn.Write(errorPacket(code, msg))
		return false
	}
	defer f.Close()

	t := &sender{
		conn:    conn,
		blksize: defBlockSize,
		window:  1,
		timeout: s.cfg.Timeout,
		retries: s.cfg.Retries,
	}
	var r io.Reader = f
	if req.mode == "netascii" {
		r = newNetasciiReader(f)
	}
	t.r = r
	oack := t.negotiate(req, fi.Size(), s.cfg.MaxBlockSize, s.cfg.MaxWindowSize)

	start := time.Now()
	err = t.run(oack)
	took := time.Since(start)
	s.stats.bytes.Add(uint64(t.sent))
	attrs := []any{"bytes", t.sent, "blksize", t.blksize, "windowsize", t.window,
		"duration", took.Round(time.Millisecond)}
	var ce *clientError
	abortedByClient = errors.As(err, &ce)
	switch {
	case err == nil:
		s.stats.completed.Add(1)
		s.stats.durationNs.Add(uint64(took))
		log.Info("tftp transfer complete", attrs...)
		s.trace(client, req.filename, t.sent, took, TFTPComplete, nil)
	case ctx.Err() != nil:
		s.stats.stopped.Add(1)
		log.Info("tftp transfer stopped: server shutting down", attrs...)
		s.trace(client, req.filename, t.sent, took, TFTPStopped, err)
	case abortedByClient && ce.code == errOptionsRefused && t.sent == 0:
		// EDK2 asks for the tsize and aborts; it comes back for the file.
		s.stats.probes.Add(1)
		log.Debug("tftp client ended the transfer after the option negotiation (a tsize probe)", "client_msg", ce.msg)
		s.trace(client, req.filename, 0, took, TFTPProbe, nil)
	default:
		s.stats.failed.Add(1)
		s.refuse.warn(log, "tftp transfer failed", append(attrs, "err", err)...)
		s.trace(client, req.filename, t.sent, took, TFTPFailed, err)
	}
	return abortedByClient
}

// negotiate applies the client's options (RFC 2347) and returns what goes
// into the OACK, in the order the client asked. Unknown options and invalid
// values are left out, which RFC 2347 allows.
func (t *sender) negotiate(req request, size int64, maxBlk, maxWin int) []option {
	var oack []option
	seen := map[string]bool{}
	for _, o := range req.options {
		if seen[o.name] {
			continue
		}
		v, err := strconv.Atoi(o.value)
		switch o.name {
		case "blksize":
			if err != nil || v < minBlockSize {
				continue
			}
			t.blksize = min(v, maxBlk)
			oack = append(oack, option{o.name, strconv.Itoa(t.blksize)})
		case "tsize":
			// The size of a netascii transfer is not known before it is
			// translated; tftp-hpa leaves tsize out for it too.
			if req.mode != "octet" {
				continue
			}
			oack = append(oack, option{o.name, strconv.FormatInt(size, 10)})
		case "timeout":
			if err != nil || v < minTimeoutSecs || v > maxTimeoutSecs {
				continue
			}
			t.timeout = time.Duration(v) * time.Second
			oack = append(oack, option{o.name, strconv.Itoa(v)})
		case "windowsize":
			if err != nil || v < 1 || v > maxWindowSize {
				continue
			}
			t.window = min(v, maxWin)
			oack = append(oack, option{o.name, strconv.Itoa(t.window)})
		default:
			continue
		}
		seen[o.name] = true
	}
	return oack
}

// clientError is an ERROR packet the client sent.
type clientError struct {
	code uint16
	msg  string
}

func (e *clientError) Error() string {
	return fmt.Sprintf("client sent error %d: %q", e.code, e.msg)
}

var errTimeout = errors.New("no acknowledgement: timed out")

// sender runs one RFC 1350/7440 read transfer over a connected socket: it
// sends a window of blocks, waits for the acknowledgement of the last one
// (or of the last one the client received in order) and continues from
// there, retransmitting the window when nothing comes within the timeout.
type sender struct {
	conn    *net.UDPConn
	r       io.Reader
	blksize int
	window  int
	timeout time.Duration
	retries int

	blocks [][]byte // DATA packets not yet acknowledged; blocks[0] is block base
	free   [][]byte
	base   uint64 // absolute number of blocks[0]; the first block is 1
	eof    bool   // the last, short block has been read
	sent   int64  // bytes acknowledged
	rbuf   [516]byte
}

func (t *sender) run(oack []option) error {
	t.base = 1
	if len(oack) > 0 {
		if err := t.exchange([][]byte{oackPacket(oack)}, func(ack uint16) bool { return ack == 0 }); err != nil {
			return err
		}
	}
	for {
		if err := t.fill(); err != nil {
			t.conn.Write(errorPacket(errNotDefined, "read error"))
			return err
		}
		if len(t.blocks) == 0 {
			return nil
		}
		var acked uint64
		err := t.exchange(t.blocks, func(ack uint16) bool {
			n, ok := ackedBlock(t.base, len(t.blocks), ack)
			// A repeated ACK of the previous window (n == base-1) is not
			// answered: the timeout retransmits, and answering duplicates
			// would start the Sorcerer's Apprentice (RFC 1123 4.2.3.1).
			if !ok || n < t.base {
				return false
			}
			acked = n
			return true
		})
		if err != nil {
			return err
		}
		done := int(acked - t.base + 1)
		for _, b := range t.blocks[:done] {
			t.sent += int64(len(b) - 4)
			t.free = append(t.free, b)
		}
		t.blocks = append(t.blocks[:0], t.blocks[done:]...)
		t.base = acked + 1
	}
}

// fill reads blocks until a window is buffered or the file ends.
func (t *sender) fill() error {
	for len(t.blocks) < t.window && !t.eof {
		var p []byte
		if n := len(t.free); n > 0 {
			p, t.free = t.free[n-1], t.free[:n-1]
		} else {
			p = make([]byte, 4+t.blksize)
		}
		p = p[:4+t.blksize]
		n, err := io.ReadFull(t.r, p[4:])
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			t.eof = true
		case err != nil:
			return err
		}
		num := t.base + uint64(len(t.blocks))
		p[0], p[1] = 0, byte(opDATA)
		p[2], p[3] = byte(wireBlock(num)>>8), byte(wireBlock(num))
		t.blocks = append(t.blocks, p[:4+n])
	}
	return nil
}

// exchange sends pkts and waits for an ACK that accept takes, resending
// them after each timeout up to the retry limit. Packets that are not
// accepted do not extend the wait.
func (t *sender) exchange(pkts [][]byte, accept func(uint16) bool) error {
	buf := t.rbuf[:]
	for try := 0; ; try++ {
		if try > t.retries {
			return errTimeout
		}
		for _, p := range pkts {
			if _, err := t.conn.Write(p); err != nil {
				return err
			}
		}
		if err := t.conn.SetReadDeadline(time.Now().Add(t.timeout)); err != nil {
			return err
		}
		for {
			n, err := t.conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return err
			}
			op, num, msg, ok := parseReply(buf[:n])
			switch {
			case !ok:
				continue
			case op == opERROR:
				return &clientError{code: num, msg: msg}
			case accept(num):
				return nil
			}
		}
	}
}
