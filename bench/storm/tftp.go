package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// TFTP opcodes (RFC 1350, 2347).
const (
	opRRQ   = 1
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// tftpGet fetches file from server as a PXE ROM does: from the leased
// address, RRQ with blksize (and tsize, which PXE ROMs ask for) and no
// windowsize, then one ACK per block (lock-step). Every packet it sends is
// sent again after each of waits when nothing answers; the transfer fails
// after the last. It returns the bytes received.
func tftpGet(ctx context.Context, local net.IP, server *net.UDPAddr, file string, blksize int, waits []time.Duration) (int, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: local})
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	defer stop()

	rrq := binary.BigEndian.AppendUint16(nil, opRRQ)
	for _, s := range []string{file, "octet", "tsize", "0", "blksize", strconv.Itoa(blksize)} {
		rrq = append(append(rrq, s...), 0)
	}
	var (
		peer     *net.UDPAddr // the server's transfer port, once it answered
		out      = rrq        // what to send again on a timeout
		size     = 512        // block size until an OACK says otherwise
		next     = uint16(1)  // the block expected
		received int
		buf      = make([]byte, 65536)
		resend   = true // false after a duplicate, which needs no answer
	)
	send := func() error {
		to := server
		if peer != nil {
			to = peer
		}
		_, err := conn.WriteToUDP(out, to)
		return err
	}
	for {
		if resend {
			if err := send(); err != nil {
				return received, fmt.Errorf("sending: %w", err)
			}
		}
		resend = true
		var pkt []byte
		for try := 0; pkt == nil; {
			_ = conn.SetReadDeadline(time.Now().Add(waits[try]))
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				if ctx.Err() != nil {
					return received, ctx.Err()
				}
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					return received, err
				}
				if try++; try == len(waits) {
					return received, fmt.Errorf("timed out waiting for block %d after %d tries", next, try)
				}
				if err := send(); err != nil {
					return received, fmt.Errorf("sending: %w", err)
				}
				continue
			}
			if !from.IP.Equal(server.IP) || (peer != nil && from.Port != peer.Port) || n < 4 {
				continue // not from our transfer
			}
			if peer == nil {
				peer = from
			}
			pkt = buf[:n]
		}
		switch binary.BigEndian.Uint16(pkt) {
		case opERROR:
			msg, _, _ := bytes.Cut(pkt[4:], []byte{0})
			return received, fmt.Errorf("server error %d: %s", binary.BigEndian.Uint16(pkt[2:]), msg)
		case opOACK:
			if next != 1 {
				resend = false // a late duplicate: block 1 came already
				continue
			}
			fields := bytes.Split(bytes.TrimSuffix(pkt[2:], []byte{0}), []byte{0})
			for i := 0; i+1 < len(fields); i += 2 {
				if string(bytes.ToLower(fields[i])) == "blksize" {
					if size, err = strconv.Atoi(string(fields[i+1])); err != nil || size < 8 || size > blksize {
						return received, fmt.Errorf("bad blksize %q in OACK", fields[i+1])
					}
				}
			}
			out = binary.BigEndian.AppendUint32(nil, opACK<<16)
		case opDATA:
			block := binary.BigEndian.Uint16(pkt[2:])
			if block != next {
				resend = false // a duplicate of an older block; wait for ours
				continue
			}
			data := len(pkt) - 4
			received += data
			out = binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
			next++
			if data < size {
				_ = send() // the last ACK; the server may resend if lost
				return received, nil
			}
		default:
			return received, fmt.Errorf("unexpected TFTP opcode %d", binary.BigEndian.Uint16(pkt))
		}
	}
}
