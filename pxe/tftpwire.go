package pxe

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
)

// TFTP opcodes (RFC 1350, RFC 2347).
const (
	opRRQ   uint16 = 1
	opWRQ   uint16 = 2
	opDATA  uint16 = 3
	opACK   uint16 = 4
	opERROR uint16 = 5
	opOACK  uint16 = 6
)

// TFTP error codes (RFC 1350, RFC 2347).
const (
	errNotDefined      uint16 = 0
	errFileNotFound    uint16 = 1
	errAccessViolation uint16 = 2
	errIllegalOp       uint16 = 4
	errOptionsRefused  uint16 = 8
)

// Limits from RFC 2348 (blksize), RFC 2349 (timeout) and RFC 7440
// (windowsize).
const (
	minBlockSize   = 8
	maxBlockSize   = 65464
	maxWindowSize  = 65535
	minTimeoutSecs = 1
	maxTimeoutSecs = 255
	defBlockSize   = 512 // RFC 1350, when blksize is not negotiated
)

// option is one name/value pair of a request or OACK, name lower-cased.
type option struct{ name, value string }

// request is a parsed RRQ or WRQ.
type request struct {
	op       uint16
	filename string
	mode     string // lower-cased
	options  []option
}

var errMalformed = errors.New("malformed TFTP request")

// parseRequest parses an RRQ or WRQ: opcode, filename NUL, mode NUL, then
// option NUL value NUL pairs. An unpaired trailing string is ignored, as
// some clients pad requests.
func parseRequest(p []byte) (request, error) {
	if len(p) < 2 {
		return request{}, errMalformed
	}
	r := request{op: binary.BigEndian.Uint16(p)}
	if r.op != opRRQ && r.op != opWRQ {
		return request{}, errMalformed
	}
	fields := bytes.Split(p[2:], []byte{0})
	// Split leaves what follows the last NUL as the final field: it must be
	// empty, or the packet was not NUL-terminated.
	if len(fields) < 3 || len(fields[len(fields)-1]) != 0 {
		return request{}, errMalformed
	}
	fields = fields[:len(fields)-1]
	r.filename = string(fields[0])
	r.mode = strings.ToLower(string(fields[1]))
	for i := 2; i+1 < len(fields); i += 2 {
		r.options = append(r.options, option{strings.ToLower(string(fields[i])), string(fields[i+1])})
	}
	return r, nil
}

func errorPacket(code uint16, msg string) []byte {
	p := make([]byte, 4, 5+len(msg))
	binary.BigEndian.PutUint16(p, opERROR)
	binary.BigEndian.PutUint16(p[2:], code)
	p = append(p, msg...)
	return append(p, 0)
}

func oackPacket(opts []option) []byte {
	p := binary.BigEndian.AppendUint16(nil, opOACK)
	for _, o := range opts {
		p = append(p, o.name...)
		p = append(p, 0)
		p = append(p, o.value...)
		p = append(p, 0)
	}
	return p
}

func ackPacket(block uint16) []byte {
	p := binary.BigEndian.AppendUint16(nil, opACK)
	return binary.BigEndian.AppendUint16(p, block)
}

// parseReply reads an ACK or ERROR a client sent to a transfer.
func parseReply(p []byte) (op, num uint16, msg string, ok bool) {
	if len(p) < 4 {
		return 0, 0, "", false
	}
	op, num = binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
	if op == opERROR {
		msg, _, _ = strings.Cut(string(p[4:]), "\x00")
	}
	return op, num, msg, op == opACK || op == opERROR
}

// wireBlock is the 16-bit block number of absolute block n (the first data
// block is 1). After 65535 it rolls over to 0, the convention tftp-hpa,
// curl, iPXE and EDK2 follow.
func wireBlock(n uint64) uint16 { return uint16(n) }

// ackedBlock maps a 16-bit ACK onto the absolute block it acknowledges,
// given that blocks base..base+inflight-1 are in flight and base-1 was the
// last one acknowledged. ok is false for a number that matches none of
// base-1..base+inflight-1, such as an old duplicate. A result of base-1 is a
// repeated ACK of the previous window. The window is at most 65535 blocks
// wide, so the mapping is unambiguous.
func ackedBlock(base uint64, inflight int, ack uint16) (uint64, bool) {
	prev := base - 1
	off := uint16(ack - wireBlock(prev))
	if int(off) > inflight {
		return 0, false
	}
	return prev + uint64(off), true
}

// netasciiReader translates a file to netascii (RFC 764 as used by RFC
// 1350): LF becomes CR LF and CR becomes CR NUL.
type netasciiReader struct {
	r       *bufio.Reader
	pending int // the byte still owed after a CR, or -1
}

func newNetasciiReader(r io.Reader) *netasciiReader {
	return &netasciiReader{r: bufio.NewReader(r), pending: -1}
}

func (n *netasciiReader) Read(p []byte) (int, error) {
	i := 0
	for i < len(p) {
		if n.pending >= 0 {
			p[i] = byte(n.pending)
			n.pending = -1
			i++
			continue
		}
		c, err := n.r.ReadByte()
		if err != nil {
			if i > 0 {
				return i, nil
			}
			return 0, err
		}
		switch c {
		case '\n':
			p[i], n.pending = '\r', '\n'
		case '\r':
			p[i], n.pending = '\r', 0
		default:
			p[i] = c
		}
		i++
	}
	return i, nil
}
