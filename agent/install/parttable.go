package install

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"unicode/utf16"
)

// This file finds room for one more partition after a just-written disk
// image and plans the partition table changes that add it, for GPT and MBR.
// Planning only reads; every change comes back as a list of writes so that
// nothing touches the disk unless the whole plan succeeded.
//
// Sectors are 512 bytes (sectorSize); 4Kn disks are not handled.

// ErrBadPartitionTable means the image's partition table is damaged (bad
// signature, CRC or geometry), so adding a partition would be a guess.
var ErrBadPartitionTable = errors.New("damaged partition table")

const (
	alignSectors = 2048 // 1 MiB: what partitioning tools align to

	gptSignature       = "EFI PART"
	gptMinHeaderSize   = 92
	gptMaxEntriesBytes = 4 << 20 // far more than any real table (128 × 128 B = 16 KiB)

	mbrTypeGPTProtective = 0xEE
	mbrTypeFAT16LBA      = 0x0E // LBA-addressed FAT; OSes size FAT12/16 by cluster count, not by type
)

// Microsoft basic data partition type, EBD0A0A2-B9E5-4433-87C0-68B6B72699C7,
// in GPT's mixed-endian layout (first three fields little-endian).
var gptTypeBasicData = [16]byte{
	0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44,
	0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
}

// diskWrite is one planned write.
type diskWrite struct {
	off  int64
	data []byte
}

// partPlan places the new partition and lists the table writes that add it,
// in a crash-safe order (the old table stays valid until the last step that
// matters).
type partPlan struct {
	kind   string // "gpt" or "mbr"
	start  int64  // first LBA
	writes []diskWrite
}

// planPartition reads the table at the head of r and plans a partition of
// sectors sectors after the last one, on a disk of diskLBAs sectors whose
// first imageLBAs sectors hold the image.
func planPartition(r io.ReaderAt, diskLBAs, imageLBAs, sectors int64, name string) (partPlan, error) {
	mbr := make([]byte, sectorSize)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return partPlan{}, fmt.Errorf("read MBR: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return partPlan{}, fmt.Errorf("no partition table (no MBR signature): %w", ErrNoRoomForSeed)
	}
	for i := range 4 {
		if mbr[446+16*i+4] == mbrTypeGPTProtective {
			return planGPT(r, mbr, diskLBAs, imageLBAs, sectors, name)
		}
	}
	return planMBR(mbr, diskLBAs, sectors)
}

func alignUp(lba int64) int64 { return (lba + alignSectors - 1) / alignSectors * alignSectors }

// gptHeader holds the fields of a GPT header we use.
type gptHeader struct {
	size                              uint32
	myLBA, altLBA                     uint64
	firstUsable, lastUsable           uint64
	entriesLBA                        uint64
	numEntries, entrySize, entriesCRC uint32
}

func parseGPTHeader(b []byte) (gptHeader, error) {
	le := binary.LittleEndian
	if string(b[:8]) != gptSignature {
		return gptHeader{}, fmt.Errorf("protective MBR but no %q at LBA 1: %w", gptSignature, ErrBadPartitionTable)
	}
	h := gptHeader{
		size:        le.Uint32(b[12:]),
		myLBA:       le.Uint64(b[24:]),
		altLBA:      le.Uint64(b[32:]),
		firstUsable: le.Uint64(b[40:]),
		lastUsable:  le.Uint64(b[48:]),
		entriesLBA:  le.Uint64(b[72:]),
		numEntries:  le.Uint32(b[80:]),
		entrySize:   le.Uint32(b[84:]),
		entriesCRC:  le.Uint32(b[88:]),
	}
	if h.size < gptMinHeaderSize || h.size > sectorSize {
		return h, fmt.Errorf("GPT header size %d: %w", h.size, ErrBadPartitionTable)
	}
	if got, want := gptHeaderCRC(b, h.size), le.Uint32(b[16:]); got != want {
		return h, fmt.Errorf("GPT header CRC %#08x, computed %#08x: %w", want, got, ErrBadPartitionTable)
	}
	if h.myLBA != 1 {
		return h, fmt.Errorf("GPT primary header says it is at LBA %d: %w", h.myLBA, ErrBadPartitionTable)
	}
	if h.entrySize < 128 || h.entrySize%8 != 0 || h.numEntries == 0 ||
		uint64(h.numEntries)*uint64(h.entrySize) > gptMaxEntriesBytes {
		return h, fmt.Errorf("GPT entries %d × %d bytes: %w", h.numEntries, h.entrySize, ErrBadPartitionTable)
	}
	if h.entriesLBA < 2 || h.firstUsable < h.entriesLBA+h.entriesSectors() || h.lastUsable < h.firstUsable {
		return h, fmt.Errorf("GPT geometry (entries at %d, usable %d-%d): %w",
			h.entriesLBA, h.firstUsable, h.lastUsable, ErrBadPartitionTable)
	}
	return h, nil
}

func (h gptHeader) entriesBytes() int64 { return int64(h.numEntries) * int64(h.entrySize) }
func (h gptHeader) entriesSectors() uint64 {
	return uint64((h.entriesBytes() + sectorSize - 1) / sectorSize)
}

// gptHeaderCRC is the CRC32 of the first size bytes of b with the CRC field
// taken as zero.
func gptHeaderCRC(b []byte, size uint32) uint32 {
	c := bytes.Clone(b[:size])
	clear(c[16:20])
	return crc32.ChecksumIEEE(c)
}

func planGPT(r io.ReaderAt, mbr []byte, diskLBAs, imageLBAs, sectors int64, name string) (partPlan, error) {
	le := binary.LittleEndian
	hb := make([]byte, sectorSize)
	if _, err := r.ReadAt(hb, sectorSize); err != nil {
		return partPlan{}, fmt.Errorf("read GPT header: %w", err)
	}
	h, err := parseGPTHeader(hb)
	if err != nil {
		return partPlan{}, err
	}
	if int64(h.entriesLBA+h.entriesSectors()) > imageLBAs {
		return partPlan{}, fmt.Errorf("GPT entries end past the image: %w", ErrBadPartitionTable)
	}
	// Read whole sectors: the backup copy is written as whole sectors too.
	entries := make([]byte, h.entriesSectors()*sectorSize)
	if _, err := r.ReadAt(entries, int64(h.entriesLBA)*sectorSize); err != nil {
		return partPlan{}, fmt.Errorf("read GPT entries: %w", err)
	}
	if got := crc32.ChecksumIEEE(entries[:h.entriesBytes()]); got != h.entriesCRC {
		return partPlan{}, fmt.Errorf("GPT entries CRC %#08x, computed %#08x: %w", h.entriesCRC, got, ErrBadPartitionTable)
	}

	// The last used LBA and the first free slot.
	lastUsed := int64(h.firstUsable) - 1
	free := -1
	guids := map[[16]byte]bool{}
	for i := range int(h.numEntries) {
		e := entries[i*int(h.entrySize):]
		if allZero(e[:16]) {
			if free < 0 {
				free = i
			}
			continue
		}
		guids[[16]byte(e[16:32])] = true
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first || last > 1<<62 {
			return partPlan{}, fmt.Errorf("GPT entry %d spans %d-%d: %w", i+1, first, last, ErrBadPartitionTable)
		}
		lastUsed = max(lastUsed, int64(last))
	}
	if free < 0 {
		return partPlan{}, fmt.Errorf("all %d GPT entries are used: %w", h.numEntries, ErrNoRoomForSeed)
	}

	// New layout: backup header in the disk's last LBA, backup entries just
	// before it, usable space up to them.
	lastLBA := diskLBAs - 1
	backupEntriesLBA := lastLBA - int64(h.entriesSectors())
	lastUsable := backupEntriesLBA - 1
	start := alignUp(lastUsed + 1)
	end := start + sectors - 1
	if end > lastUsable {
		return partPlan{}, fmt.Errorf("GPT: partition of %d sectors at LBA %d would end at %d, past the last usable LBA %d: %w",
			sectors, start, end, lastUsable, ErrNoRoomForSeed)
	}

	e := entries[free*int(h.entrySize) : (free+1)*int(h.entrySize)]
	copy(e[0:16], gptTypeBasicData[:])
	for {
		g, err := randomGUID()
		if err != nil {
			return partPlan{}, err
		}
		if !guids[g] && !bytes.Equal(g[:], hb[56:72]) {
			copy(e[16:32], g[:])
			break
		}
	}
	le.PutUint64(e[32:], uint64(start))
	le.PutUint64(e[40:], uint64(end))
	le.PutUint64(e[48:], 0)
	clear(e[56:])
	for i, u := range utf16.Encode([]rune(name)) {
		if 56+2*i+2 > len(e) {
			break
		}
		le.PutUint16(e[56+2*i:], u)
	}
	entriesCRC := crc32.ChecksumIEEE(entries[:h.entriesBytes()])

	primary := bytes.Clone(hb)
	le.PutUint64(primary[32:], uint64(lastLBA))
	le.PutUint64(primary[48:], uint64(lastUsable))
	le.PutUint32(primary[88:], entriesCRC)
	le.PutUint32(primary[16:], gptHeaderCRC(primary, h.size))

	backup := bytes.Clone(primary)
	le.PutUint64(backup[24:], uint64(lastLBA))
	le.PutUint64(backup[32:], 1)
	le.PutUint64(backup[72:], uint64(backupEntriesLBA))
	le.PutUint32(backup[16:], gptHeaderCRC(backup, h.size))

	// Order: the backup first (nothing points at it yet), then the primary
	// entries and header that point at it, then the stale backup goes.
	writes := []diskWrite{
		{backupEntriesLBA * sectorSize, entries},
		{lastLBA * sectorSize, backup},
		{int64(h.entriesLBA) * sectorSize, entries},
		{sectorSize, primary},
	}

	// The protective MBR covered the image: make it cover the disk.
	for i := range 4 {
		p := mbr[446+16*i:]
		if p[4] != mbrTypeGPTProtective || le.Uint32(p[8:]) != 1 {
			continue
		}
		size := int64(le.Uint32(p[12:]))
		want := min(diskLBAs-1, 0xFFFFFFFF)
		if size != want && size >= min(imageLBAs-1, int64(h.altLBA), 0xFFFFFFFF) {
			m := bytes.Clone(mbr)
			le.PutUint32(m[446+16*i+12:], uint32(want))
			writes = append(writes, diskWrite{0, m})
		}
		break
	}

	// Zero the old backup header (at the image's end) so that no tool finds
	// two disagreeing backups, unless it is where something new now lives.
	old := int64(h.altLBA)
	if old > lastUsed && old < backupEntriesLBA && (old < start || old > end) {
		ob := make([]byte, sectorSize)
		if _, err := r.ReadAt(ob, old*sectorSize); err == nil && string(ob[:8]) == gptSignature {
			writes = append(writes, diskWrite{old * sectorSize, make([]byte, sectorSize)})
		}
	}
	return partPlan{kind: "gpt", start: start, writes: writes}, nil
}

func planMBR(mbr []byte, diskLBAs, sectors int64) (partPlan, error) {
	le := binary.LittleEndian
	lastUsed := int64(0) // the MBR itself
	free := -1
	for i := range 4 {
		p := mbr[446+16*i:]
		typ, first, n := p[4], int64(le.Uint32(p[8:])), int64(le.Uint32(p[12:]))
		if typ == 0 && n == 0 {
			if free < 0 {
				free = i
			}
			continue
		}
		if p[0] != 0 && p[0] != 0x80 {
			return partPlan{}, fmt.Errorf("MBR entry %d has boot flag %#02x: %w", i+1, p[0], ErrBadPartitionTable)
		}
		// Logical partitions live inside their extended partition, so the
		// primary entries bound everything.
		lastUsed = max(lastUsed, first+n-1)
	}
	if free < 0 {
		return partPlan{}, fmt.Errorf("all 4 MBR primary entries are used: %w", ErrNoRoomForSeed)
	}
	start := alignUp(lastUsed + 1)
	end := start + sectors - 1
	if end > diskLBAs-1 || end > 0xFFFFFFFF {
		return partPlan{}, fmt.Errorf("MBR: partition of %d sectors at LBA %d would end at %d, past the disk's last LBA %d (or MBR's 2 TiB limit): %w",
			sectors, start, end, diskLBAs-1, ErrNoRoomForSeed)
	}
	m := bytes.Clone(mbr)
	p := m[446+16*free : 446+16*free+16]
	p[0] = 0
	copy(p[1:4], chs(start))
	p[4] = mbrTypeFAT16LBA
	copy(p[5:8], chs(end))
	le.PutUint32(p[8:], uint32(start))
	le.PutUint32(p[12:], uint32(sectors))
	return partPlan{kind: "mbr", start: start, writes: []diskWrite{{0, m}}}, nil
}

// chs encodes lba as an MBR cylinder/head/sector triple in the usual
// 255-head, 63-sector geometry, or the "use LBA" marker past cylinder 1023.
func chs(lba int64) []byte {
	const heads, spt = 255, 63
	c := lba / (heads * spt)
	if c > 1023 {
		return []byte{0xFE, 0xFF, 0xFF}
	}
	h := (lba / spt) % heads
	s := lba%spt + 1
	return []byte{byte(h), byte(s) | byte(c>>8)<<6, byte(c)}
}

// randomGUID is a version 4 GUID in GPT's mixed-endian layout (for random
// bytes the layout only decides where the version bits go).
func randomGUID() ([16]byte, error) {
	var g [16]byte
	if _, err := rand.Read(g[:]); err != nil {
		return g, fmt.Errorf("random GUID: %w", err)
	}
	g[7] = g[7]&0x0F | 0x40 // version 4 (high nibble of time_hi, stored little-endian)
	g[8] = g[8]&0x3F | 0x80 // RFC 4122 variant
	return g, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
