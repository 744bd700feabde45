package pxe

import (
	"sync/atomic"
	"time"
)

// TFTPStats are a TFTP server's counters since NewTFTPServer, for the
// caller to export (the package keeps no metrics registry). Every request
// (except one repeated while its transfer runs) ends in exactly one of
// Refused, Busy, NotFound, Completed, Failed, Probes and Stopped.
type TFTPStats struct {
	Refused  uint64 // write requests, unsupported modes, unsafe paths
	Busy     uint64 // refused because MaxTransfers were running
	NotFound uint64 // no such file, or not a regular file under the root
	// Transfers that started.
	Completed uint64        // the client acknowledged the whole file
	Failed    uint64        // timed out, or the client gave up with an error
	Probes    uint64        // the client ended it after the option negotiation (an EDK2 tsize probe)
	Stopped   uint64        // cut short because the server was stopping
	Bytes     uint64        // file bytes the clients acknowledged, in all transfers
	Duration  time.Duration // total duration of the completed transfers
	Active    int           // transfers running now
}

type tftpCounters struct {
	refused, busy, notFound                   atomic.Uint64
	completed, failed, probes, stopped, bytes atomic.Uint64
	durationNs                                atomic.Uint64
}

// Stats returns a snapshot of the server's counters.
func (s *TFTPServer) Stats() TFTPStats {
	c := &s.stats
	return TFTPStats{
		Refused: c.refused.Load(), Busy: c.busy.Load(), NotFound: c.notFound.Load(),
		Completed: c.completed.Load(), Failed: c.failed.Load(), Probes: c.probes.Load(), Stopped: c.stopped.Load(),
		Bytes: c.bytes.Load(), Duration: time.Duration(c.durationNs.Load()), Active: len(s.slots),
	}
}
