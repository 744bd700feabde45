package cmdutil

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/dhcp"
)

// EnvPrefix starts the environment variable of every flag: --boot-dir is
// LPMOS_BOOT_DIR.
const EnvPrefix = "LPMOS_"

// maxConfigBytes bounds a --config file.
const maxConfigBytes = 1 << 20

// EnvName is the environment variable that sets flag name.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// ConfigFile is what a --config file holds beyond flag values: settings
// that have no flag.
type ConfigFile struct {
	// DHCP holds the region's relay pools and reservations.
	DHCP DHCPSection `yaml:"dhcp"`
}

// DHCPSection is the dhcp: section of a config file.
type DHCPSection struct {
	// RelayPools serve subnets behind DHCP relays (full mode).
	RelayPools []PoolSection `yaml:"relay_pools"`
	// Reservations pin a MAC to an address.
	Reservations map[string]string `yaml:"reservations"`
}

// PoolSection is one relay pool.
type PoolSection struct {
	Start      string   `yaml:"start"`
	End        string   `yaml:"end"`
	Netmask    string   `yaml:"netmask"`
	Router     string   `yaml:"router"`
	DNS        []string `yaml:"dns"`
	DomainName string   `yaml:"domain_name"`
	LeaseTime  string   `yaml:"lease_time"`
}

// Empty reports whether the section sets nothing.
func (d DHCPSection) Empty() bool { return len(d.RelayPools) == 0 && len(d.Reservations) == 0 }

// Apply adds the section's pools and reservations to c, checking each;
// errors name the entry (dhcp.relay_pools[1].netmask).
func (d DHCPSection) Apply(c *dhcp.Config) error {
	ip := func(field, s string) (net.IP, error) {
		v := net.ParseIP(strings.TrimSpace(s)).To4()
		if v == nil {
			return nil, fmt.Errorf("%s: %q is not an IPv4 address", field, s)
		}
		return v, nil
	}
	for i, p := range d.RelayPools {
		at := fmt.Sprintf("dhcp.relay_pools[%d]", i)
		var pool dhcp.Pool
		var err error
		if pool.Start, err = ip(at+".start", p.Start); err != nil {
			return err
		}
		if pool.End, err = ip(at+".end", p.End); err != nil {
			return err
		}
		mask, err := ip(at+".netmask", p.Netmask)
		if err != nil {
			return err
		}
		pool.Netmask = net.IPMask(mask)
		if ones, bits := pool.Netmask.Size(); bits == 0 || ones == 0 {
			return fmt.Errorf("%s.netmask: %q is not a netmask", at, p.Netmask)
		}
		if p.Router != "" {
			if pool.Router, err = ip(at+".router", p.Router); err != nil {
				return err
			}
		}
		for j, s := range p.DNS {
			v, err := ip(fmt.Sprintf("%s.dns[%d]", at, j), s)
			if err != nil {
				return err
			}
			pool.DNS = append(pool.DNS, v)
		}
		pool.DomainName = p.DomainName
		if p.LeaseTime != "" {
			if pool.LeaseTime, err = time.ParseDuration(p.LeaseTime); err != nil || pool.LeaseTime <= 0 {
				return fmt.Errorf("%s.lease_time: %q is not a positive duration (e.g. 1h)", at, p.LeaseTime)
			}
		}
		c.RelayPools = append(c.RelayPools, pool)
	}
	for _, m := range slices.Sorted(maps.Keys(d.Reservations)) {
		mac, err := lpmos.ParseMAC(m)
		if err != nil {
			return fmt.Errorf("dhcp.reservations: %w", err)
		}
		v, err := ip("dhcp.reservations."+mac.String(), d.Reservations[m])
		if err != nil {
			return err
		}
		if c.Reservations == nil {
			c.Reservations = map[lpmos.MAC]net.IP{}
		}
		c.Reservations[mac] = v
	}
	return nil
}

// Configure parses a program's command line with two more sources for
// every flag: an environment variable (EnvName: LPMOS_ and the flag's name
// in upper case, '-' as '_') and a YAML file given with --config (or
// LPMOS_CONFIG) whose top-level keys are flag names. A flag on the command
// line wins over the environment, which wins over the file, which wins
// over the default. The file may also hold sections for settings that
// have no flag (ConfigFile); any other key is an error, as is a value a
// flag refuses. Lists set a repeatable flag once per item.
//
// Configure registers --config on fs and extends its usage text with
// these rules. lookupEnv is os.LookupEnv, or a map's lookup in tests.
// sections names the sections of ConfigFile the program reads (SectionDHCP
// for a region); another program refuses them.
func Configure(fs *flag.FlagSet, args []string, lookupEnv func(string) (string, bool), sections ...string) (*ConfigFile, error) {
	path := fs.String("config", "", "YAML file of flag values (keys: flag names) and of sections without flags (env "+EnvName("config")+")")
	usage := fs.Usage
	fs.Usage = func() {
		if usage != nil {
			usage()
		} else {
			fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
		fmt.Fprint(fs.Output(), ConfigHelp)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || notConfig[f.Name] {
			return
		}
		if v, ok := lookupEnv(EnvName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", EnvName(f.Name), err))
			}
			set[f.Name] = true
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cf := &ConfigFile{}
	if *path == "" {
		return cf, nil
	}
	data, err := readLimited(*path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	if err := applyFile(fs, data, set, sections, cf); err != nil {
		return nil, fmt.Errorf("--config %s: %w", *path, err)
	}
	return cf, nil
}

// ConfigHelp closes the usage text of the programs that use Configure.
const ConfigHelp = `
Every flag may also be given as an environment variable, LPMOS_ and its
name in upper case with '_' for '-' (--boot-dir: LPMOS_BOOT_DIR), or as a
key of the YAML file given with --config (boot-dir: /srv/lpmos/boot).
Precedence: command line, then environment, then file, then default.
`

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigBytes)
	}
	return data, nil
}

// notConfig are flags that ask for an action, not a setting: only the
// command line gives them (LPMOS_VERSION in a build's environment must not
// make a server print its version and exit).
var notConfig = map[string]bool{"version": true}

// SectionDHCP is the config file's dhcp: section (DHCPSection).
const SectionDHCP = "dhcp"

func applyFile(fs *flag.FlagSet, data []byte, set map[string]bool, sections []string, cf *ConfigFile) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil // empty file
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode {
		return errors.New("want a mapping of flag names to values at the top")
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		key, val := top.Content[i].Value, top.Content[i+1]
		if seen[key] {
			return fmt.Errorf("line %d: %q given twice", top.Content[i].Line, key)
		}
		seen[key] = true
		if slices.Contains(sections, key) {
			continue
		}
		if notConfig[key] {
			return fmt.Errorf("line %d: %q is an action, not a setting: give it on the command line", top.Content[i].Line, key)
		}
		f := fs.Lookup(key)
		if f == nil || key == "config" {
			return fmt.Errorf("line %d: %q is not a flag of %s (see -h)", top.Content[i].Line, key, fs.Name())
		}
		values, err := scalars(val)
		if err != nil {
			return fmt.Errorf("line %d: %s: %w", val.Line, key, err)
		}
		if set[key] {
			continue // the command line or the environment says otherwise
		}
		for _, v := range values {
			if err := fs.Set(key, v); err != nil {
				return fmt.Errorf("line %d: %s: %w", val.Line, key, err)
			}
		}
	}
	// The sections, strictly: a misspelt key is an error, not a setting
	// quietly left out.
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	sub := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if slices.Contains(sections, top.Content[i].Value) {
			sub.Content = append(sub.Content, top.Content[i], top.Content[i+1])
		}
	}
	if err := enc.Encode(sub); err != nil {
		return err
	}
	dec := yaml.NewDecoder(&out)
	dec.KnownFields(true)
	if err := dec.Decode(cf); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// scalars reads a flag's value: a scalar, or a list of scalars for a
// repeatable flag.
func scalars(n *yaml.Node) ([]string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return []string{""}, nil
		}
		return []string{n.Value}, nil
	case yaml.SequenceNode:
		var out []string
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return nil, errors.New("a list item must be a plain value")
			}
			out = append(out, item.Value)
		}
		return out, nil
	}
	return nil, errors.New("want a value or a list of values")
}
