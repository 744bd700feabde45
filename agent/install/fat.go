package install

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf16"
)

// This file builds a tiny FAT12 file system in memory: just enough for the
// cloud-init NoCloud seed (a label and a few small files in the root
// directory). It is not a general FAT writer: no subdirectories, no
// FAT16/32, no fragmentation.

const (
	sectorSize = 512 // 512-byte logical sectors throughout; 4Kn disks are not handled

	fatTotalSectors     = 2048 // 1 MiB: room for user-data with many keys
	fatSectorsPerClust  = 1
	fatReservedSectors  = 1
	fatNumFATs          = 2
	fatRootEntries      = 512 // 32 sectors; the conventional size
	fatMedia            = 0xF8
	fatDirEntrySize     = 32
	fatMaxFAT12Clusters = 4084 // FAT12 means fewer than 4085 clusters
)

// errFATFull means the files do not fit in the seed file system.
var errFATFull = errors.New("files do not fit in the seed file system")

// fatFile is one file of the root directory.
type fatFile struct {
	Name string // long name, e.g. "meta-data"
	Data []byte
}

// fatParams are the few things that vary between two seeds.
type fatParams struct {
	Label         string    // volume label, at most 11 characters
	VolumeID      uint32    // serial number
	HiddenSectors uint32    // the partition's first LBA (0 if it does not fit)
	ModTime       time.Time // timestamp of every directory entry
}

// fatLayout is the geometry derived from the constants.
type fatLayout struct {
	fatSectors  int // sectors per FAT
	rootSectors int
	dataStart   int // first sector of cluster 2
	clusters    int // number of data clusters
}

func newFATLayout() fatLayout {
	rootSectors := fatRootEntries * fatDirEntrySize / sectorSize
	fatSectors := 1
	for {
		dataSectors := fatTotalSectors - fatReservedSectors - fatNumFATs*fatSectors - rootSectors
		clusters := dataSectors / fatSectorsPerClust
		need := ((clusters+2)*3 + 1) / 2 // 12 bits per entry, two reserved entries
		if need <= fatSectors*sectorSize {
			return fatLayout{
				fatSectors:  fatSectors,
				rootSectors: rootSectors,
				dataStart:   fatReservedSectors + fatNumFATs*fatSectors + rootSectors,
				clusters:    clusters,
			}
		}
		fatSectors++
	}
}

// buildFAT12 returns a complete FAT12 image of fatTotalSectors sectors with
// p.Label as volume label (in the boot sector and as a root directory
// entry, since tools read either) and files in the root directory, each
// under a VFAT long name with a generated 8.3 alias.
func buildFAT12(p fatParams, files []fatFile) ([]byte, error) {
	l := newFATLayout()
	if l.clusters > fatMaxFAT12Clusters {
		return nil, fmt.Errorf("fat: %d clusters is too many for FAT12", l.clusters)
	}
	label, err := fatLabel(p.Label)
	if err != nil {
		return nil, err
	}
	img := make([]byte, fatTotalSectors*sectorSize)
	writeBootSector(img[:sectorSize], l, p, label)

	fat := make([]byte, l.fatSectors*sectorSize)
	setFAT12(fat, 0, 0xF00|fatMedia)
	setFAT12(fat, 1, 0xFFF)

	root := make([]byte, 0, l.rootSectors*sectorSize)
	date, tod := fatTimestamp(p.ModTime)
	root = append(root, dirEntry(label, 0x08, 0, 0, date, tod)...)

	clusterBytes := fatSectorsPerClust * sectorSize
	next := 2 // next free cluster
	seen := map[string]bool{}
	for _, f := range files {
		if err := checkLongName(f.Name); err != nil {
			return nil, err
		}
		if seen[strings.ToLower(f.Name)] {
			return nil, fmt.Errorf("fat: duplicate file name %q", f.Name)
		}
		seen[strings.ToLower(f.Name)] = true
		short := shortAlias(f.Name, len(seen))
		n := (len(f.Data) + clusterBytes - 1) / clusterBytes
		if next+n > l.clusters+2 {
			return nil, fmt.Errorf("fat: %q (%d bytes): %w", f.Name, len(f.Data), errFATFull)
		}
		first := 0
		if n > 0 {
			first = next
			for c := next; c < next+n; c++ {
				v := c + 1
				if c == next+n-1 {
					v = 0xFFF // end of chain
				}
				setFAT12(fat, c, v)
			}
			off := (l.dataStart + (first-2)*fatSectorsPerClust) * sectorSize
			copy(img[off:], f.Data)
			next += n
		}
		lfn := lfnEntries(f.Name, short)
		if len(root)+len(lfn)+fatDirEntrySize > cap(root) {
			return nil, fmt.Errorf("fat: root directory: %w", errFATFull)
		}
		root = append(root, lfn...)
		root = append(root, dirEntry(short, 0x20, uint16(first), uint32(len(f.Data)), date, tod)...)
	}

	for i := range fatNumFATs {
		copy(img[(fatReservedSectors+i*l.fatSectors)*sectorSize:], fat)
	}
	copy(img[(fatReservedSectors+fatNumFATs*l.fatSectors)*sectorSize:], root)
	return img, nil
}

func writeBootSector(b []byte, l fatLayout, p fatParams, label [11]byte) {
	le := binary.LittleEndian
	copy(b[0:], []byte{0xEB, 0x3C, 0x90}) // jmp short 0x3E; nop
	copy(b[3:11], "LPMOS   ")
	le.PutUint16(b[0x0B:], sectorSize)
	b[0x0D] = fatSectorsPerClust
	le.PutUint16(b[0x0E:], fatReservedSectors)
	b[0x10] = fatNumFATs
	le.PutUint16(b[0x11:], fatRootEntries)
	le.PutUint16(b[0x13:], fatTotalSectors)
	b[0x15] = fatMedia
	le.PutUint16(b[0x16:], uint16(l.fatSectors))
	le.PutUint16(b[0x18:], 32) // sectors per track: unused, conventional
	le.PutUint16(b[0x1A:], 64) // heads: unused, conventional
	le.PutUint32(b[0x1C:], p.HiddenSectors)
	le.PutUint32(b[0x20:], 0) // total sectors fit the 16-bit field
	b[0x24] = 0x80            // drive number
	b[0x26] = 0x29            // extended boot signature: the next three fields are valid
	le.PutUint32(b[0x27:], p.VolumeID)
	copy(b[0x2B:0x36], label[:])
	copy(b[0x36:0x3E], "FAT12   ")
	// Boot code: not bootable; halt forever if someone tries.
	copy(b[0x3E:], []byte{0xFA, 0xF4, 0xEB, 0xFD}) // cli; hlt; jmp $-1
	b[510], b[511] = 0x55, 0xAA
}

// setFAT12 sets the 12-bit FAT entry of cluster c to v.
func setFAT12(fat []byte, c, v int) {
	off := c * 3 / 2
	if c%2 == 0 {
		fat[off] = byte(v)
		fat[off+1] = fat[off+1]&0xF0 | byte(v>>8)&0x0F
	} else {
		fat[off] = fat[off]&0x0F | byte(v<<4)
		fat[off+1] = byte(v >> 4)
	}
}

// fatLabel validates and space-pads a volume label.
func fatLabel(s string) ([11]byte, error) {
	var out [11]byte
	if s == "" || len(s) > 11 {
		return out, fmt.Errorf("fat: volume label %q must be 1 to 11 characters", s)
	}
	for _, r := range s {
		if r < 0x20 || r > 0x7E || strings.ContainsRune(`"*+,./:;<=>?[\]|`, r) || r >= 'a' && r <= 'z' {
			return out, fmt.Errorf("fat: volume label %q: only upper-case ASCII letters, digits and simple punctuation", s)
		}
	}
	copy(out[:], s+strings.Repeat(" ", 11-len(s)))
	return out, nil
}

func checkLongName(s string) error {
	if s == "" || len(s) > 255 || s == "." || s == ".." {
		return fmt.Errorf("fat: bad file name %q", s)
	}
	for _, r := range s {
		if r < 0x20 || r > 0x7E || strings.ContainsRune(`"*/:<>?\|`, r) {
			return fmt.Errorf("fat: file name %q: only printable ASCII without \"*/:<>?\\|", s)
		}
	}
	return nil
}

// shortAlias makes the 8.3 alias stored beside a long name, the way
// Windows and Linux do: upper-case, characters invalid in short names
// dropped or replaced, base cut to six characters plus "~n". n makes it
// unique within the directory (n < 10 keeps the shape simple; a seed has a
// handful of files).
func shortAlias(long string, n int) [11]byte {
	base, ext := long, ""
	if i := strings.LastIndexByte(long, '.'); i > 0 {
		base, ext = long[:i], long[i+1:]
	}
	clean := func(s string, max int) string {
		var b strings.Builder
		for _, r := range strings.ToUpper(s) {
			switch {
			case r == ' ' || r == '.':
				continue
			case strings.ContainsRune("+,;=[]", r):
				r = '_'
			}
			if b.Len() < max {
				b.WriteRune(r)
			}
		}
		return b.String()
	}
	suffix := fmt.Sprintf("~%d", n)
	b := clean(base, 8-len(suffix))
	if b == "" {
		b = "_"
	}
	var out [11]byte
	copy(out[:], fmt.Sprintf("%-8s%-3s", b+suffix, clean(ext, 3)))
	return out
}

// lfnChecksum is the VFAT checksum of an 8.3 name that binds the long-name
// entries to their short entry.
func lfnChecksum(short [11]byte) byte {
	var sum byte
	for _, c := range short {
		sum = (sum&1)<<7 + sum>>1 + c
	}
	return sum
}

// lfnEntries returns the long-name directory entries for name, in on-disk
// order (last part first), 13 UTF-16 units per entry.
func lfnEntries(name string, short [11]byte) []byte {
	u := utf16.Encode([]rune(name))
	n := (len(u) + 12) / 13
	if len(u)%13 != 0 {
		u = append(u, 0x0000) // terminator, then 0xFFFF padding
		for len(u)%13 != 0 {
			u = append(u, 0xFFFF)
		}
	}
	sum := lfnChecksum(short)
	out := make([]byte, 0, n*fatDirEntrySize)
	for seq := n; seq >= 1; seq-- {
		e := make([]byte, fatDirEntrySize)
		e[0] = byte(seq)
		if seq == n {
			e[0] |= 0x40 // last logical entry
		}
		e[11] = 0x0F // attribute: long name
		e[13] = sum
		part := u[(seq-1)*13 : seq*13]
		offs := [13]int{1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30}
		for i, o := range offs {
			binary.LittleEndian.PutUint16(e[o:], part[i])
		}
		out = append(out, e...)
	}
	return out
}

func dirEntry(name [11]byte, attr byte, cluster uint16, size uint32, date, tod uint16) []byte {
	e := make([]byte, fatDirEntrySize)
	le := binary.LittleEndian
	copy(e[0:11], name[:])
	e[11] = attr
	le.PutUint16(e[14:], tod)  // creation time
	le.PutUint16(e[16:], date) // creation date
	le.PutUint16(e[18:], date) // access date
	le.PutUint16(e[22:], tod)  // modification time
	le.PutUint16(e[24:], date) // modification date
	le.PutUint16(e[26:], cluster)
	le.PutUint32(e[28:], size)
	return e
}

// fatTimestamp encodes t (UTC) as a FAT date and time, clamped to the range
// FAT can hold (1980-2107).
func fatTimestamp(t time.Time) (date, tod uint16) {
	t = t.UTC()
	if t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	if t.Year() > 2107 {
		t = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	date = uint16((t.Year()-1980)<<9 | int(t.Month())<<5 | t.Day())
	tod = uint16(t.Hour()<<11 | t.Minute()<<5 | t.Second()/2)
	return date, tod
}
