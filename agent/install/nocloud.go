package install

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// NoCloud is the cloud-init NoCloud seed written after an image.
type NoCloud struct {
	InstanceID        string   // meta-data instance-id (the task ID); required
	Hostname          string   // meta-data local-hostname and user-data hostname; optional
	SSHAuthorizedKeys []string // user-data ssh_authorized_keys; optional
	PhoneHomeURL      string   // user-data phone_home.url; optional
	// UserDataFile, if set, is the user-data file as is (the region
	// rendered it, agent.Plan.SeedUserData); SSHAuthorizedKeys and
	// PhoneHomeURL are then unused.
	UserDataFile []byte
	// NetworkConfig, if set, is the seed's network-config file (netplan
	// version 2, agent.Plan.SeedNetworkConfig); without it cloud-init
	// falls back to DHCP.
	NetworkConfig []byte
}

// ErrNoRoomForSeed means the disk has no place for the seed partition: no
// partition table, no free slot, or less free space after the last
// partition than the seed needs.
var ErrNoRoomForSeed = errors.New("no room for the cloud-init seed partition")

// seedLabel is the file system label cloud-init's NoCloud source looks for.
const seedLabel = "CIDATA"

// yamlString quotes s as a JSON string, which is also a valid YAML
// double-quoted scalar: URLs with '&', '#', ': ' or quotes stay one value.
func yamlString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep '&' as '&' (cloud-init reads it as YAML, either works)
	_ = enc.Encode(s)        // a string always encodes
	return string(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

// MetaData is the seed's meta-data file.
func (n NoCloud) MetaData() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "instance-id: %s\n", yamlString(n.InstanceID))
	if n.Hostname != "" {
		fmt.Fprintf(&b, "local-hostname: %s\n", yamlString(n.Hostname))
	}
	return b.Bytes()
}

// UserData is the seed's user-data file, a #cloud-config document.
func (n NoCloud) UserData() []byte {
	if n.UserDataFile != nil {
		return n.UserDataFile
	}
	var b bytes.Buffer
	b.WriteString("#cloud-config\n")
	if n.Hostname != "" {
		fmt.Fprintf(&b, "hostname: %s\n", yamlString(n.Hostname))
	}
	if len(n.SSHAuthorizedKeys) > 0 {
		b.WriteString("ssh_authorized_keys:\n")
		for _, k := range n.SSHAuthorizedKeys {
			fmt.Fprintf(&b, "  - %s\n", yamlString(k))
		}
	}
	if n.PhoneHomeURL != "" {
		// A test stand-in greps the `  url: "..."` line: keep its shape.
		fmt.Fprintf(&b, "phone_home:\n  url: %s\n  post: [instance_id, hostname]\n  tries: 10\n", yamlString(n.PhoneHomeURL))
	}
	return b.Bytes()
}

// files are the seed's files.
func (n NoCloud) files() []fatFile {
	files := []fatFile{
		{Name: "meta-data", Data: n.MetaData()},
		{Name: "user-data", Data: n.UserData()},
	}
	if n.NetworkConfig != nil {
		files = append(files, fatFile{Name: "network-config", Data: n.NetworkConfig})
	}
	return files
}

// SeedNoCloud adds the seed to disk f (a block device or regular file of
// diskSize bytes; for a regular file diskSize may exceed its current length:
// extend it), which holds a just-written image of imageSize bytes. It
// returns the byte offset of the new partition.
//
// The seed is a 1 MiB FAT12 file system labelled CIDATA in a new partition,
// 1 MiB aligned after the image's last partition. On GPT the backup table
// moves to the end of the disk. f must be open for reading and writing,
// without O_DIRECT. Nothing is written unless the whole plan succeeded.
// Sectors are 512 bytes; 4Kn disks are not handled.
func SeedNoCloud(f *os.File, diskSize, imageSize int64, seed NoCloud) (offset int64, err error) {
	if seed.InstanceID == "" {
		return 0, errors.New("nocloud seed: instance ID is required")
	}
	if imageSize < 2*sectorSize || diskSize < imageSize {
		return 0, fmt.Errorf("nocloud seed: image of %d bytes on a disk of %d bytes", imageSize, diskSize)
	}
	diskLBAs := diskSize / sectorSize
	imageLBAs := (imageSize + sectorSize - 1) / sectorSize

	plan, err := planPartition(f, diskLBAs, imageLBAs, fatTotalSectors, "cidata")
	if err != nil {
		return 0, fmt.Errorf("nocloud seed on %s: %w", f.Name(), err)
	}
	var id [4]byte
	if _, err := rand.Read(id[:]); err != nil {
		return 0, fmt.Errorf("nocloud seed: volume ID: %w", err)
	}
	hidden := uint32(0)
	if plan.start <= 0xFFFFFFFF {
		hidden = uint32(plan.start)
	}
	fs, err := buildFAT12(fatParams{
		Label:         seedLabel,
		VolumeID:      binary.LittleEndian.Uint32(id[:]),
		HiddenSectors: hidden,
		ModTime:       time.Now(),
	}, seed.files())
	if err != nil {
		return 0, fmt.Errorf("nocloud seed: %w", err)
	}
	if err := ensureSize(f, diskSize); err != nil {
		return 0, fmt.Errorf("nocloud seed: %w", err)
	}

	offset = plan.start * sectorSize
	// The file system first: the partition that points at it comes after.
	writes := append([]diskWrite{{offset, fs}}, plan.writes...)
	for _, w := range writes {
		if _, err := f.WriteAt(w.data, w.off); err != nil {
			return 0, fmt.Errorf("nocloud seed: write %d bytes at %d: %w", len(w.data), w.off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("nocloud seed: sync: %w", err)
	}
	return offset, nil
}

// ensureSize extends a regular file to size bytes, and checks that a block
// device is at least that large.
func ensureSize(f *os.File, size int64) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if st.Mode().IsRegular() {
		if st.Size() < size {
			if err := f.Truncate(size); err != nil {
				return fmt.Errorf("extend %s to %d bytes: %w", f.Name(), size, err)
			}
		}
		return nil
	}
	// A block device's size shows only through seeking; put the offset back.
	cur, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return fmt.Errorf("seek: %w", err)
	}
	end, err := f.Seek(0, io.SeekEnd)
	if _, err2 := f.Seek(cur, io.SeekStart); err == nil {
		err = err2
	}
	if err != nil {
		return fmt.Errorf("size of %s: %w", f.Name(), err)
	}
	if end < size {
		return fmt.Errorf("%s has %d bytes, not %d: %w", f.Name(), end, size, ErrNoRoomForSeed)
	}
	return nil
}
