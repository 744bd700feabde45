package install_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/lpmos/lpmos/agent/install"
)

const (
	mib = 1 << 20
	// gptFillSectors makes partition 1 of an 8 MiB GPT image (sfdisk's
	// first LBA 2048) end at the last usable LBA 16350 (sfdisk would
	// otherwise stop at the 1 MiB boundary below it, LBA 14335).
	gptFillSectors = "14303"
	seedSectors    = 2048 // the seed partition: 1 MiB
	linuxFSType    = "0FC63DAF-8483-4772-8E79-3D69DE477DE4"
	basicDataGPT   = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
)

func TestNoCloudContent(t *testing.T) {
	const url = `http://10.0.0.1:8081/api/v1/agent/phone-home?token=a&b=c#x "q" 'y': z`
	tests := []struct {
		name     string
		seed     install.NoCloud
		metaData string
		userData string
	}{
		{
			name:     "only instance ID",
			seed:     install.NoCloud{InstanceID: "task-1"},
			metaData: "instance-id: \"task-1\"\n",
			userData: "#cloud-config\n",
		},
		{
			name: "everything",
			seed: install.NoCloud{
				InstanceID:        "task-2",
				Hostname:          "node-7",
				SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3Nza a@b", "ssh-rsa AAAAB3 c@d"},
				PhoneHomeURL:      "http://region:8081/phone-home/task-2",
			},
			metaData: "instance-id: \"task-2\"\nlocal-hostname: \"node-7\"\n",
			userData: "#cloud-config\n" +
				"hostname: \"node-7\"\n" +
				"ssh_authorized_keys:\n" +
				"  - \"ssh-ed25519 AAAAC3Nza a@b\"\n" +
				"  - \"ssh-rsa AAAAB3 c@d\"\n" +
				"phone_home:\n" +
				"  url: \"http://region:8081/phone-home/task-2\"\n" +
				"  post: [instance_id, hostname]\n" +
				"  tries: 10\n",
		},
		{
			name: "keys without hostname",
			seed: install.NoCloud{
				InstanceID:        "task-3",
				SSHAuthorizedKeys: []string{"ssh-ed25519 K x"},
			},
			metaData: "instance-id: \"task-3\"\n",
			userData: "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 K x\"\n",
		},
		{
			name:     "URL with & and quotes",
			seed:     install.NoCloud{InstanceID: "task-4", PhoneHomeURL: url},
			metaData: "instance-id: \"task-4\"\n",
			userData: "#cloud-config\nphone_home:\n" +
				`  url: "http://10.0.0.1:8081/api/v1/agent/phone-home?token=a&b=c#x \"q\" 'y': z"` + "\n" +
				"  post: [instance_id, hostname]\n  tries: 10\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.metaData, string(tt.seed.MetaData()))
			require.Equal(t, tt.userData, string(tt.seed.UserData()))

			// Both parse as YAML and give back exactly the values.
			var md map[string]string
			require.NoError(t, yaml.Unmarshal(tt.seed.MetaData(), &md))
			require.Equal(t, tt.seed.InstanceID, md["instance-id"])
			require.Equal(t, tt.seed.Hostname, md["local-hostname"])
			var ud struct {
				Hostname  string   `yaml:"hostname"`
				Keys      []string `yaml:"ssh_authorized_keys"`
				PhoneHome struct {
					URL   string   `yaml:"url"`
					Post  []string `yaml:"post"`
					Tries int      `yaml:"tries"`
				} `yaml:"phone_home"`
			}
			require.NoError(t, yaml.Unmarshal(tt.seed.UserData(), &ud))
			require.Equal(t, tt.seed.Hostname, ud.Hostname)
			require.Equal(t, tt.seed.SSHAuthorizedKeys, ud.Keys)
			require.Equal(t, tt.seed.PhoneHomeURL, ud.PhoneHome.URL)
		})
	}
}

// needTool fails (never skips) when a tool the test uses is missing.
func needTool(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not found: run ./scripts/test.sh, which installs scripts/test-packages.txt (fdisk, gdisk, dosfstools, mtools)", n)
		}
	}
}

// run runs a tool and returns its standard output; it fails the test on a
// non-zero exit.
func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	require.NoError(t, err, "%s %s\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), stdout.String(), stderr.String())
	return stdout.String()
}

// partitionImage makes a file of size bytes partitioned by the sfdisk
// script, with partition 1 filled with random bytes (returned).
func partitionImage(t *testing.T, size int64, script string) (path string, part1 []byte) {
	t.Helper()
	needTool(t, "sfdisk")
	path = filepath.Join(t.TempDir(), "image")
	require.NoError(t, os.WriteFile(path, nil, 0o644))
	require.NoError(t, os.Truncate(path, size))
	cmd := exec.Command("sfdisk", "--no-reread", "--no-tell-kernel", "-q", path)
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "sfdisk: %s", out)

	pt := sfdiskJSON(t, path)
	require.NotEmpty(t, pt.Partitions)
	p := pt.Partitions[0]
	if p.Type == "5" || p.Type == "f" { // an extended partition holds no data
		return path, nil
	}
	part1 = make([]byte, p.Size*512)
	r := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range part1 {
		part1[i] = byte(r.Uint32())
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(part1, p.Start*512)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	return path, part1
}

type sfdiskTable struct {
	Label      string `json:"label"`
	LastLBA    int64  `json:"lastlba"`
	Partitions []struct {
		Node     string `json:"node"`
		Start    int64  `json:"start"`
		Size     int64  `json:"size"`
		Type     string `json:"type"`
		UUID     string `json:"uuid"`
		Name     string `json:"name"`
		Bootable bool   `json:"bootable"`
	} `json:"partitions"`
}

func sfdiskJSON(t *testing.T, path string) sfdiskTable {
	t.Helper()
	var v struct {
		PT sfdiskTable `json:"partitiontable"`
	}
	require.NoError(t, json.Unmarshal([]byte(run(t, nil, "sfdisk", "--json", path)), &v))
	for i := range v.PT.Partitions {
		v.PT.Partitions[i].Node = strings.TrimPrefix(v.PT.Partitions[i].Node, path)
	}
	return v.PT
}

func TestSeedNoCloud(t *testing.T) {
	seed := install.NoCloud{
		InstanceID:        "task-0193",
		Hostname:          "node-1",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake test@lpmos"},
		PhoneHomeURL:      "http://10.0.0.1:8081/api/v1/agent/phone-home?token=abc&x=1",
	}
	const image, disk = 8 * mib, 64 * mib
	tests := []struct {
		name      string
		script    string
		gpt       bool
		extend    bool  // the disk file starts as long as the image
		wantStart int64 // LBA of the seed partition
		wantNode  string
		clean     bool // GPT: sgdisk -v has no warning or caution at all
	}{
		{
			// first-lba 34 (not sfdisk's 2048): a fixture sgdisk -v has
			// nothing to say about, so the result must have no warning at all.
			name:      "GPT, room inside the image",
			script:    "label: gpt\nfirst-lba: 34\nstart=2048, size=8192, type=" + linuxFSType + ", name=root\n",
			gpt:       true,
			wantStart: 10240,
			wantNode:  "2",
			clean:     true,
		},
		{
			// Without a size sfdisk ends the partition on a 1 MiB boundary
			// (LBA 14335), short of the last usable LBA 16350: the seed goes
			// over the image's old backup GPT (LBAs 16351-16383).
			name:      "GPT, sfdisk's aligned end, file extended",
			script:    "label: gpt\nstart=2048, type=" + linuxFSType + ", name=root\n",
			gpt:       true,
			extend:    true,
			wantStart: 14336,
			wantNode:  "2",
		},
		{
			// Up to the last usable LBA (16350): the seed starts past the image.
			name:      "GPT filling the image, file extended",
			script:    "label: gpt\nstart=2048, size=" + gptFillSectors + ", type=" + linuxFSType + ", name=root\n",
			gpt:       true,
			extend:    true,
			wantStart: 16384,
			wantNode:  "2",
		},
		{
			name:      "MBR",
			script:    "label: dos\nstart=2048, size=8192, type=83\n",
			wantStart: 10240,
			wantNode:  "2",
		},
		{
			name:      "MBR filling the image, file extended",
			script:    "label: dos\nstart=2048, type=83, bootable\n",
			extend:    true,
			wantStart: 16384,
			wantNode:  "2",
		},
		{
			// The extended partition (LBAs 6144-14335) bounds the logical one.
			name: "MBR with logical partitions",
			script: "label: dos\nstart=2048, size=4096, type=83\n" +
				"start=6144, size=8192, type=5\nstart=8192, size=2048, type=83\n",
			wantStart: 14336,
			wantNode:  "3",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			needTool(t, "sfdisk", "sgdisk", "blkid", "fsck.fat", "mtype")
			imgPath, part1 := partitionImage(t, image, tt.script)
			before := sfdiskJSON(t, imgPath)
			img, err := os.ReadFile(imgPath)
			require.NoError(t, err)

			path := filepath.Join(t.TempDir(), "disk")
			require.NoError(t, os.WriteFile(path, img, 0o644))
			if !tt.extend {
				require.NoError(t, os.Truncate(path, disk))
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			off, err := install.SeedNoCloud(f, disk, image, seed)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			require.Equal(t, tt.wantStart*512, off)
			checkSeededDisk(t, path, off, seed, disk)

			// The table: old partitions unchanged, the seed added.
			after := sfdiskJSON(t, path)
			var old []any
			for _, p := range after.Partitions {
				if p.Start != off/512 {
					old = append(old, p)
					continue
				}
				require.Equal(t, tt.wantNode, p.Node)
				require.Equal(t, int64(seedSectors), p.Size)
				if tt.gpt {
					require.Equal(t, basicDataGPT, p.Type)
					require.Equal(t, "cidata", p.Name)
				} else {
					require.Equal(t, "e", p.Type)
				}
			}
			var want []any
			for _, p := range before.Partitions {
				want = append(want, p)
			}
			require.Equal(t, want, old)
			require.Len(t, after.Partitions, len(before.Partitions)+1)

			raw, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Len(t, raw, disk)
			if part1 != nil {
				p := before.Partitions[0]
				require.True(t, bytes.Equal(part1, raw[p.Start*512:(p.Start+p.Size)*512]), "partition 1 changed")
			}
			out := run(t, nil, "sfdisk", "--verify", path)
			require.Contains(t, out, "No errors detected", out)
			require.NotRegexp(t, `(?i)warn|partition \d+:|overlap|not aligned|misaligned|invalid|corrupt`, out)
			if tt.gpt {
				require.Equal(t, int64(disk/512-34), after.LastLBA)
				out := run(t, nil, "sgdisk", "-v", path)
				require.Contains(t, out, "No problems found", out)
				// No warning of its own: only those the fixture had (sfdisk's
				// gap before LBA 2048, an unaligned end of partition 1).
				require.Equal(t, sgdiskNotes(run(t, nil, "sgdisk", "-v", imgPath)), sgdiskNotes(out), out)
				if tt.clean {
					require.Empty(t, sgdiskNotes(out), out)
				}
				// Exactly two GPT headers: LBA 1 and the disk's last LBA.
				var headers []int
				for lba := 0; lba < disk/512; lba++ {
					if string(raw[lba*512:lba*512+8]) == "EFI PART" {
						headers = append(headers, lba)
					}
				}
				require.Equal(t, []int{1, disk/512 - 1}, headers)
				// The protective MBR covers the whole disk now.
				require.Equal(t, byte(0xEE), raw[446+4])
				require.Equal(t, uint32(disk/512-1), binary.LittleEndian.Uint32(raw[446+12:]))
			}
		})
	}
}

// sgdiskNotes returns the first line of each warning, caution or problem
// paragraph of sgdisk -v output.
func sgdiskNotes(out string) []string {
	var notes []string
	for _, line := range strings.Split(out, "\n") {
		if regexp.MustCompile(`(?i)^(warning|caution|problem|error)`).MatchString(line) {
			notes = append(notes, line)
		}
	}
	return notes
}

// checkSeededDisk checks the seed file system at off in the disk image
// with blkid, fsck.fat and mtools.
func checkSeededDisk(t *testing.T, path string, off int64, seed install.NoCloud, disk int64) {
	t.Helper()
	probe := run(t, nil, "blkid", "-p", "-o", "export", "-O", strconv.FormatInt(off, 10), "-S", strconv.Itoa(seedSectors*512), path)
	require.Contains(t, probe, "\nTYPE=vfat\n", probe)
	require.Contains(t, probe, "\nLABEL=CIDATA\n", probe)

	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	part := filepath.Join(t.TempDir(), "cidata.img")
	require.NoError(t, os.WriteFile(part, raw[off:off+seedSectors*512], 0o644))
	// Clean means: exit 0, and nothing but the banner and the summary
	// (2 files, or 3 where fsck.fat counts the volume label entry; one
	// more with a network-config).
	out, err := exec.Command("fsck.fat", "-n", part).CombinedOutput()
	require.NoError(t, err, "fsck.fat: %s", out)
	var rest []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(line, "fsck.fat ") {
			rest = append(rest, line)
		}
	}
	require.Len(t, rest, 1, "fsck.fat said more than its banner and summary:\n%s", out)
	files := "[23]"
	if seed.NetworkConfig != nil {
		files = "[34]"
	}
	require.Regexp(t, `^`+regexp.QuoteMeta(part)+`: `+files+` files, \d+/\d+ clusters$`, rest[0])

	env := []string{"MTOOLS_SKIP_CHECK=1"}
	img := fmt.Sprintf("%s@@%d", path, off)
	require.Equal(t, string(seed.MetaData()), run(t, env, "mtype", "-i", img, "::meta-data"))
	require.Equal(t, string(seed.UserData()), run(t, env, "mtype", "-i", img, "::user-data"))
	if seed.NetworkConfig != nil {
		require.Equal(t, string(seed.NetworkConfig), run(t, env, "mtype", "-i", img, "::network-config"))
	}
	label := run(t, env, "mlabel", "-i", img, "-s", "::")
	require.Contains(t, label, "CIDATA")
}

// A seed the region rendered (a static network, the operator's user-data)
// is written as it came, network-config included.
func TestSeedNoCloudRenderedFiles(t *testing.T) {
	needTool(t, "sfdisk", "blkid", "fsck.fat", "mtype")
	seed := install.NoCloud{
		InstanceID: "task-0194", Hostname: "web-01",
		SSHAuthorizedKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake test@lpmos"},
		UserDataFile:      []byte("#cloud-config\nhostname: \"web-01\"\npackages: [nginx]\n"),
		NetworkConfig: []byte("version: 2\nethernets:\n  lpmos0:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n" +
			"    dhcp4: false\n    addresses:\n      - \"10.0.0.5/24\"\n"),
	}
	require.Equal(t, seed.UserDataFile, seed.UserData(), "the rendered user-data, not one built from the fields")
	const image, disk = 8 * mib, 64 * mib
	imgPath, _ := partitionImage(t, image, "label: dos\nstart=2048, size=8192, type=83\n")
	img, err := os.ReadFile(imgPath)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "disk")
	require.NoError(t, os.WriteFile(path, img, 0o644))
	require.NoError(t, os.Truncate(path, disk))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	off, err := install.SeedNoCloud(f, disk, image, seed)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	checkSeededDisk(t, path, off, seed, disk)
}

func TestSeedNoCloudErrors(t *testing.T) {
	seed := install.NoCloud{InstanceID: "task-err"}
	gptFull := "label: gpt\nstart=2048, size=" + gptFillSectors + ", type=" + linuxFSType + "\n"
	tests := []struct {
		name    string
		make    func(t *testing.T) string // returns the image file (8 MiB)
		disk    int64
		seed    install.NoCloud
		wantIs  error
		wantMsg string
	}{
		{
			name:    "GPT disk too small",
			make:    func(t *testing.T) string { p, _ := partitionImage(t, 8*mib, gptFull); return p },
			disk:    9 * mib, // 1 MiB more, but the backup GPT needs 33 sectors of it
			wantIs:  install.ErrNoRoomForSeed,
			wantMsg: "last usable LBA",
		},
		{
			name: "MBR disk too small",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, "label: dos\nstart=2048, type=83\n")
				return p
			},
			disk:    8*mib + 1023*512,
			wantIs:  install.ErrNoRoomForSeed,
			wantMsg: "past the disk's last LBA",
		},
		{
			name: "no partition table",
			make: func(t *testing.T) string {
				p := filepath.Join(t.TempDir(), "image")
				require.NoError(t, os.WriteFile(p, bytes.Repeat([]byte("not a disk "), 8*mib/11), 0o644))
				require.NoError(t, os.Truncate(p, 8*mib))
				return p
			},
			disk:    64 * mib,
			wantIs:  install.ErrNoRoomForSeed,
			wantMsg: "no partition table",
		},
		{
			name: "corrupt GPT header CRC",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, gptFull)
				flipByte(t, p, 512+60) // inside the disk GUID
				return p
			},
			disk:    64 * mib,
			wantIs:  install.ErrBadPartitionTable,
			wantMsg: "GPT header CRC",
		},
		{
			name: "corrupt GPT entries CRC",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, gptFull)
				flipByte(t, p, 2*512+56) // the first entry's name
				return p
			},
			disk:    64 * mib,
			wantIs:  install.ErrBadPartitionTable,
			wantMsg: "GPT entries CRC",
		},
		{
			name: "GPT with every entry used",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, "label: gpt\ntable-length: 4\n"+
					"size=2048, type="+linuxFSType+"\nsize=2048, type="+linuxFSType+"\n"+
					"size=2048, type="+linuxFSType+"\nsize=2048, type="+linuxFSType+"\n")
				return p
			},
			disk:    64 * mib,
			wantIs:  install.ErrNoRoomForSeed,
			wantMsg: "all 4 GPT entries are used",
		},
		{
			name: "MBR with 4 partitions used",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, "label: dos\n"+
					"size=2048, type=83\nsize=2048, type=83\nsize=2048, type=83\nsize=2048, type=83\n")
				return p
			},
			disk:    64 * mib,
			wantIs:  install.ErrNoRoomForSeed,
			wantMsg: "all 4 MBR primary entries are used",
		},
		{
			name: "no instance ID",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, "label: dos\nstart=2048, size=2048, type=83\n")
				return p
			},
			disk:    64 * mib,
			seed:    install.NoCloud{Hostname: "h"},
			wantMsg: "instance ID is required",
		},
		{
			name: "image larger than disk",
			make: func(t *testing.T) string {
				p, _ := partitionImage(t, 8*mib, "label: dos\nstart=2048, size=2048, type=83\n")
				return p
			},
			disk:    4 * mib,
			wantMsg: "on a disk of",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.make(t)
			before, err := os.ReadFile(path)
			require.NoError(t, err)
			s := tt.seed
			if s.InstanceID == "" && s.Hostname == "" {
				s = seed
			}
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			_, err = install.SeedNoCloud(f, tt.disk, 8*mib, s)
			require.NoError(t, f.Close())
			require.Error(t, err)
			if tt.wantIs != nil {
				require.ErrorIs(t, err, tt.wantIs)
			}
			require.ErrorContains(t, err, tt.wantMsg)
			after, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Len(t, after, len(before), "file size changed")
			require.True(t, bytes.Equal(before, after), "file changed on error")
		})
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	b[0] ^= 0x5A
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
}
