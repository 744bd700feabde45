// Package templates renders the unattended-install answer files the region
// serves per task: a Debian installer preseed, an Anaconda kickstart, Ubuntu
// autoinstall user-data, and cloud-init NoCloud user-data, meta-data and
// network-config for image installs. The region passes plain data in (it
// never hands this package a store or a task) and also the operators'
// overrides, which it reads from /lpmos/config/templates/<name> in the
// store.
//
// The task's per-machine configuration reaches every file: a DHCP or static
// network (address, gateway, name servers) on the NIC matched by MAC, on a
// VLAN or on a bond; the host name; root's SSH keys and password hash; and
// the operator's cloud-config (Data.UserData), merged into the cloud-config
// files (merge.go). The full test suite checks the output with the tools
// that read it: debconf-set-selections, cloud-init schema and netplan.
//
// Each answer file reports back to the region's agent API as the install
// ends: a POST of {"mac_address", "task_id", "stage", "percentage",
// "message"} with the task's bearer token, stage "configuring" at 95 %,
// then "completed" at 100 %.
//
// Every value is validated (Data.Validate) and then escaped for where it
// lands: shellQuote for shell commands (preseed late_command, kickstart
// %post, autoinstall late-commands, cloud-init runcmd) and yaml, which
// writes a JSON string and so a valid YAML double-quoted scalar, for YAML
// files. Values that could never be legitimate, such as a host name with a
// newline, are rejected rather than escaped.
package templates

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/template"
)

// ErrInvalid is wrapped by errors about Data that cannot be rendered.
var ErrInvalid = errors.New("invalid template data")

// ErrUnknownTemplate is wrapped when a name is neither built in nor
// overridden.
var ErrUnknownTemplate = errors.New("unknown template")

// ErrTemplate is wrapped when a template (usually an override) fails to
// parse or execute.
var ErrTemplate = errors.New("template error")

// The built-in templates, by the names overrides use.
const (
	// Preseed is a Debian installer preseed file (Debian; Ubuntu's
	// legacy installer).
	Preseed = "preseed"
	// Kickstart is an Anaconda kickstart file (Rocky, RHEL, AlmaLinux,
	// CentOS Stream, Fedora).
	Kickstart = "kickstart"
	// Autoinstall is Ubuntu Subiquity's autoinstall user-data (served as
	// NoCloud user-data next to MetaData).
	Autoinstall = "autoinstall"
	// CloudInit is cloud-init NoCloud user-data for image installs.
	CloudInit = "cloud-init"
	// MetaData is NoCloud meta-data (instance ID and host name), for both
	// Autoinstall and CloudInit.
	MetaData = "meta-data"
	// NetworkConfig is NoCloud network-config (netplan version 2) for
	// image installs.
	NetworkConfig = "network-config"
	// NoCloudUserData is the user-data of the NoCloud seed the agent
	// writes after an image: host name, root's SSH keys and password,
	// the first-boot report (phone_home), merged with the task's
	// user_data. Unlike CloudInit it sets nothing the image chose itself
	// (time zone, locale, packages), and reports no progress: the agent
	// reported the install complete already.
	NoCloudUserData = "nocloud-user-data"
)

// mergesUserData are the templates whose output is cloud-config that the
// task's user_data is merged into (merge.go).
var mergesUserData = []string{CloudInit, Autoinstall, NoCloudUserData}

//go:embed builtin/*.tmpl
var builtinFS embed.FS

// builtinFiles maps template names to their files; common.tmpl holds the
// pieces several templates share ({{template "network-v2" .}}).
var builtinFiles = map[string]string{
	Preseed:         "builtin/preseed.cfg.tmpl",
	Kickstart:       "builtin/kickstart.cfg.tmpl",
	Autoinstall:     "builtin/autoinstall.yaml.tmpl",
	CloudInit:       "builtin/cloud-init.yaml.tmpl",
	MetaData:        "builtin/meta-data.yaml.tmpl",
	NetworkConfig:   "builtin/network-config.yaml.tmpl",
	NoCloudUserData: "builtin/nocloud-user-data.yaml.tmpl",
}

const commonFile = "builtin/common.tmpl"

// builtins is the parsed set: every built-in template plus the shared
// definitions, each under its name. Parsing the embedded files cannot fail
// at run time without failing every test, so a failure panics at init.
var builtins = func() *template.Template {
	root := template.New("").Funcs(funcs).Option("missingkey=error")
	common, err := builtinFS.ReadFile(commonFile)
	if err != nil {
		panic(err)
	}
	template.Must(root.New("common").Parse(string(common)))
	for name, file := range builtinFiles {
		text, err := builtinFS.ReadFile(file)
		if err != nil {
			panic(err)
		}
		template.Must(root.New(name).Parse(string(text)))
	}
	return root
}()

// Names returns the names of the built-in templates, sorted.
func Names() []string {
	names := make([]string, 0, len(builtinFiles))
	for n := range builtinFiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Builtin returns the text of a built-in template, as a starting point for
// an override.
func Builtin(name string) (string, error) {
	file, ok := builtinFiles[name]
	if !ok {
		return "", fmt.Errorf("%w %q", ErrUnknownTemplate, name)
	}
	b, err := builtinFS.ReadFile(file)
	return string(b), err
}

// maxOutput bounds a rendered file; an override looping over its own output
// cannot exhaust the region's memory.
const maxOutput = 1 << 20

// Render validates d, fills in its defaults and renders the template name:
// overrides[name] when present, parsed with the same functions and able to
// use the built-in shared definitions, or else the built-in. A parse or
// execution error is an error wrapping ErrTemplate, never a panic. Overrides
// may also add templates under names that are not built in. For CloudInit,
// Autoinstall and NoCloudUserData (overridden or not) the task's user_data
// is merged into the output (merge.go), which must then be a YAML mapping.
func Render(name string, d Data, overrides map[string]string) ([]byte, error) {
	nd, err := d.normalize()
	if err != nil {
		return nil, err
	}
	t := builtins
	if text, ok := overrides[name]; ok {
		t, err = parseOverride(name, text)
		if err != nil {
			return nil, err
		}
	} else if !slices.Contains(Names(), name) {
		return nil, fmt.Errorf("%w %q: want one of %s, or an override", ErrUnknownTemplate, name, strings.Join(Names(), ", "))
	}
	var buf limitedBuffer
	if err := t.ExecuteTemplate(&buf, name, nd); err != nil {
		return nil, fmt.Errorf("%w: executing %s: %w", ErrTemplate, name, err)
	}
	if nd.UserData != "" && slices.Contains(mergesUserData, name) {
		return nd.mergeUserData(name, buf.Bytes())
	}
	return buf.Bytes(), nil
}

// parseOverride parses an override into a copy of the built-in set, so it
// may use {{template "network-v2" .}} and friends; a panic inside the
// parser (there have been such bugs in text/template) becomes an error.
func parseOverride(name, text string) (t *template.Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("%w: parsing override %s: %v", ErrTemplate, name, r)
		}
	}()
	t, err = builtins.Clone()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	if _, err := t.New(name).Parse(text); err != nil {
		return nil, fmt.Errorf("%w: parsing override %s: %w", ErrTemplate, name, err)
	}
	return t, nil
}

// limitedBuffer fails writes beyond maxOutput.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > maxOutput {
		return 0, fmt.Errorf("output exceeds %d bytes", maxOutput)
	}
	return b.Buffer.Write(p)
}
