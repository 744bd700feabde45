package lpmos_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// This file enforces the dependency direction (README.md, "Packages"): imports point
// from the edges of the system (binaries, control plane, region) towards its
// core (task, store, hardware, lpmos), never back. A new package fails the
// test until it has a rule here, so its place in the layering is a decision
// someone made rather than an accident.

const modulePath = "github.com/lpmos/lpmos"

// A pattern names module packages by their path relative to the module root:
// "." is the root package lpmos, "task" is exactly task, "agent/..." is agent
// and every package below it, and "*" (only in allow) is any module package.
type depRule struct {
	pkgs  []string // the packages this rule governs; the first matching rule wins
	allow []string // the module packages their non-test code may import
	why   string   // added to a violation message, to point at the fix
	// testAllow is what their tests may import on top of allow and
	// testOnlyAllow, e.g. a server to run the package against.
	testAllow []string
}

var depRules = []depRule{
	{pkgs: []string{"."}, allow: nil,
		why: "lpmos is the shared vocabulary: everyone imports it, it imports nothing of ours"},
	{pkgs: []string{"hardware"}, allow: []string{"."},
		why: "hardware describes machines; it must not reach the network or the store"},
	{pkgs: []string{"store"}, allow: []string{"."},
		why: "store is domain-agnostic key-value; it knows nothing of tasks"},
	{pkgs: []string{"store/etcd", "store/memory", "store/storetest"}, allow: []string{".", "store"}},
	{pkgs: []string{"store/etcd/embedded"}, allow: []string{".", "store", "store/etcd"},
		why: "the embedded member links etcd's server; it is a store/etcd server for the binaries that run one, and knows nothing of tasks"},
	{pkgs: []string{"task"}, allow: []string{".", "store", "hardware"},
		why: "task works over the store.Store interface; only binaries and tests pick an implementation"},
	{pkgs: []string{"machine"}, allow: []string{".", "store", "hardware"},
		why: "machine records live beside tasks over the store.Store interface; they know no tasks, HTTP or BMC protocols"},
	{pkgs: []string{"rule"}, allow: []string{".", "store", "hardware"},
		why: "approval rules are conditions over hardware kept in the store; they know no tasks"},
	{pkgs: []string{"osimage"}, allow: []string{".", "store"},
		why: "the image catalogue is records in the store; regions and the control plane read it, it knows neither"},
	{pkgs: []string{"trace"}, allow: []string{".", "store"},
		why: "the boot trace is events kept in the store; the boot protocols report to it through hooks the region wires, never by importing it"},
	{pkgs: []string{"ipxe", "dhcp", "pxe", "ndp"}, allow: []string{"."},
		why: "boot protocol packages ask small consumer-side interfaces instead of importing tasks or the store"},
	{pkgs: []string{"power"}, allow: []string{"."},
		why: "power drives BMCs for whoever asks; it knows nothing of tasks, the store or the region"},
	{pkgs: []string{"agent/..."}, allow: []string{".", "hardware", "agent/..."},
		why: "the agent runs on the machine and talks to its region only over HTTP"},
	{pkgs: []string{"region/..."},
		allow: []string{".", "task", "machine", "rule", "osimage", "trace", "power", "dhcp", "ndp", "pxe", "ipxe", "agent", "store", "hardware", "region/...", "internal/httpjson", "internal/httpserve"},
		why:   "region talks to the control plane only through the store, through the store.Store interface"},
	{pkgs: []string{"controlplane/auth"}, allow: []string{"."},
		why: "auth turns tokens into principals; it knows nothing of tasks, the store or HTTP routes"},
	{pkgs: []string{"controlplane/hub"},
		allow: []string{".", "task", "hardware", "controlplane/auth", "internal/httpjson"},
		why:   "the hub is fed task changes by the control plane; it never reads the store or imports the control plane"},
	{pkgs: []string{"controlplane/webhook"}, allow: []string{".", "task", "store"},
		why: "webhooks are fed task changes by the control plane and claim deliveries in the store; they never import the control plane"},
	{pkgs: []string{"controlplane/..."},
		allow: []string{".", "task", "machine", "rule", "osimage", "trace", "store", "hardware", "controlplane/...", "internal/httpjson", "internal/httpserve"},
		why:   "the control plane talks to regions only through the store, through the store.Store interface"},
	{pkgs: []string{"client"}, allow: []string{".", "task", "machine", "rule", "osimage", "trace", "hardware"},
		why:       "the client knows the API only over HTTP, in the shared vocabulary and the models of tasks, machines, rules, images and boot traces; it never links the control plane, a region or a store implementation",
		testAllow: []string{"controlplane/...", "store"}},
	{pkgs: []string{"internal/httpjson"}, allow: []string{".", "task", "store"},
		why: "the HTTP/JSON layer maps task and store errors for both APIs; it knows neither of them"},
	{pkgs: []string{"internal/httpserve"}, allow: nil,
		why: "httpserve protects any HTTP server; it knows nothing of what the servers serve"},
	{pkgs: []string{"internal/..."}, allow: []string{"*"}},
	{pkgs: []string{"examples/..."}, allow: []string{"*"}},
	{pkgs: []string{"bench/..."}, allow: []string{"*"},
		why: "benchmarks drive the binaries (built, never imported) and the libraries"},
	{pkgs: []string{"deploy"}, allow: []string{"*"},
		why: "the deployment files' checks; the directory holds tests only"},
	{pkgs: []string{"e2e"}, allow: []string{"*"},
		why: "end-to-end tests drive the binaries; the directory holds tests only"},
}

// testOnlyAllow is what any package's tests may import on top of its rule:
// a store to run against (and the etcd member behind it), the conformance
// suite, and the test lab.
var testOnlyAllow = []string{"store/memory", "store/etcd", "store/etcd/embedded", "store/storetest", "internal/..."}

// listedPackage is the part of `go list -json` output this test reads.
type listedPackage struct {
	ImportPath   string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

func TestDependencyDirection(t *testing.T) {
	_, err := exec.LookPath("go")
	require.NoError(t, err, "the go command must be on PATH for this test")
	root, err := os.Getwd() // go test runs a package's tests in its directory: the module root
	require.NoError(t, err)

	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list -json ./... failed:\n%s", stderr.String())

	pkgs, err := decodeGoList(out)
	require.NoError(t, err)

	// Guard against the check passing vacuously, e.g. because go list
	// printed nothing or the module path changed.
	var rels []string
	for _, p := range pkgs {
		if rel, ok := moduleRel(p.ImportPath); ok {
			rels = append(rels, rel)
		}
	}
	require.Contains(t, rels, ".", "go list did not report the root package")
	require.Contains(t, rels, "hardware", "go list did not report the hardware package")

	for _, v := range dependencyViolations(pkgs) {
		t.Error(v)
	}
}

// etcdServer prefixes the packages of etcd's server: a member's raft,
// storage and gRPC services, several megabytes of a binary.
const etcdServer = "go.etcd.io/etcd/server/"

// dialOnlyBinaries only ever dial an etcd (--etcd-endpoints) or none at all:
// they must not link etcd's server, which only store/etcd/embedded (and
// so internal/cmdutil/embedetcd) brings in.
var dialOnlyBinaries = []string{"examples/region", "examples/control-plane", "examples/agent", "examples/lpmosctl"}

// TestDialOnlyBinariesDoNotLinkEtcdServer lists every package each binary
// links (`go list -deps`) and fails on any of etcd's server, naming the
// chain of our packages that pulled it in.
func TestDialOnlyBinariesDoNotLinkEtcdServer(t *testing.T) {
	_, err := exec.LookPath("go")
	require.NoError(t, err, "the go command must be on PATH for this test")
	// The all-in-one binary embeds a member: it must link the server, or
	// the prefix above no longer names it and the check passes vacuously.
	bins := append([]string{"examples/allinone"}, dialOnlyBinaries...)
	args := []string{"list", "-deps", "-json=ImportPath,Imports"}
	for _, b := range bins {
		args = append(args, "./"+b)
	}
	cmd := exec.Command("go", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list -deps failed:\n%s", stderr.String())
	pkgs, err := decodeGoList(out)
	require.NoError(t, err)
	imports := make(map[string][]string, len(pkgs))
	for _, p := range pkgs {
		imports[p.ImportPath] = p.Imports
	}
	require.NotEmpty(t, etcdServerPath(imports, modulePath+"/examples/allinone"),
		"examples/allinone embeds etcd: it should link a package under %s", etcdServer)
	for _, b := range dialOnlyBinaries {
		require.Contains(t, imports, modulePath+"/"+b, "go list did not report %s", b)
		if path := etcdServerPath(imports, modulePath+"/"+b); path != nil {
			t.Errorf("%s links etcd's server, through %s: binaries that only dial etcd must not import store/etcd/embedded (pass an embedder only where a member runs, as examples/allinone does with embedetcd.Open)",
				b, strings.Join(path, " -> "))
		}
	}
}

// etcdServerPath returns a chain of imports from pkg to a package of
// etcd's server, or nil if it links none.
func etcdServerPath(imports map[string][]string, pkg string) []string {
	prev := map[string]string{pkg: ""}
	queue := []string{pkg}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if strings.HasPrefix(p, etcdServer) {
			var path []string
			for ; p != ""; p = prev[p] {
				path = append([]string{p}, path...)
			}
			return path
		}
		for _, i := range imports[p] {
			if _, seen := prev[i]; !seen {
				prev[i] = p
				queue = append(queue, i)
			}
		}
	}
	return nil
}

// TestDependencyRules checks the checker itself on made-up packages, so a
// mistake in the matching cannot hide real violations.
func TestDependencyRules(t *testing.T) {
	mod := func(rel string) string {
		if rel == "." {
			return modulePath
		}
		return modulePath + "/" + rel
	}
	pkg := func(rel string, imports ...string) listedPackage {
		p := listedPackage{ImportPath: mod(rel)}
		for _, i := range imports {
			if strings.Contains(strings.SplitN(i, "/", 2)[0], ".") {
				p.Imports = append(p.Imports, i) // already a full non-module path
			} else if i == "fmt" || i == "net" || i == "testing" {
				p.Imports = append(p.Imports, i)
			} else {
				p.Imports = append(p.Imports, mod(i))
			}
		}
		return p
	}
	withTests := func(p listedPackage, test, xtest []string) listedPackage {
		for _, i := range test {
			p.TestImports = append(p.TestImports, mod(i))
		}
		for _, i := range xtest {
			p.XTestImports = append(p.XTestImports, mod(i))
		}
		return p
	}

	tests := []struct {
		name string
		pkg  listedPackage
		want []string // substrings, one per expected violation; none means clean
	}{
		{"root stdlib only", pkg(".", "fmt", "net"), nil},
		{"root imports a module package", pkg(".", "hardware"), []string{"lpmos imports " + mod("hardware")}},
		{"root imports a third-party package", pkg(".", "github.com/google/uuid"), []string{"only the standard library", "github.com/google/uuid"}},
		{"hardware imports root", pkg("hardware", ".", "fmt", "github.com/jaypipes/ghw"), nil},
		{"hardware imports store", pkg("hardware", "store"), []string{"hardware imports " + mod("store")}},
		{"task imports store and hardware", pkg("task", ".", "store", "hardware"), nil},
		{"task imports store/etcd", pkg("task", "store/etcd"), []string{"task imports " + mod("store/etcd"), "store.Store interface"}},
		{"task imports store/memory", pkg("task", "store/memory"), []string{"task imports " + mod("store/memory")}},
		{"task imports region", pkg("task", "region"), []string{"task imports " + mod("region")}},
		{"region imports its parts", pkg("region", "task", "dhcp", "pxe", "ipxe", "agent", "store", "hardware", "region/templates"), nil},
		{"region subpackage imports region", pkg("region/templates", "region", "."), nil},
		{"region imports store/etcd", pkg("region", "store/etcd"), []string{"region imports " + mod("store/etcd")}},
		{"region imports controlplane", pkg("region", "controlplane"), []string{"region imports " + mod("controlplane")}},
		{"region imports agent/initramfs", pkg("region", "agent/initramfs"), []string{"region imports " + mod("agent/initramfs")}},
		{"controlplane imports region", pkg("controlplane/api", "region"), []string{"controlplane/api imports " + mod("region")}},
		{"controlplane subpackages", pkg("controlplane/api", "controlplane", "controlplane/auth", "task", "store", "hardware"), nil},
		{"controlplane imports store/memory", pkg("controlplane", "store/memory"), []string{"controlplane imports " + mod("store/memory")}},
		{"controlplane imports its parts", pkg("controlplane", "controlplane/auth", "controlplane/hub", "controlplane/webhook", "internal/httpjson", "task", "store"), nil},
		{"auth imports the root", pkg("controlplane/auth", ".", "github.com/golang-jwt/jwt/v5"), nil},
		{"auth imports task", pkg("controlplane/auth", "task"), []string{"controlplane/auth imports " + mod("task")}},
		{"auth imports httpjson", pkg("controlplane/auth", "internal/httpjson"), []string{"controlplane/auth imports " + mod("internal/httpjson")}},
		{"hub imports auth and httpjson", pkg("controlplane/hub", "task", "hardware", "controlplane/auth", "internal/httpjson"), nil},
		{"hub imports controlplane", pkg("controlplane/hub", "controlplane"), []string{"controlplane/hub imports " + mod("controlplane")}},
		{"hub imports store", pkg("controlplane/hub", "store"), []string{"controlplane/hub imports " + mod("store")}},
		{"webhook imports task and store", pkg("controlplane/webhook", "task", "store"), nil},
		{"webhook imports controlplane", pkg("controlplane/webhook", "controlplane"), []string{"controlplane/webhook imports " + mod("controlplane")}},
		{"region imports httpjson", pkg("region", "internal/httpjson", "task"), nil},
		{"httpjson imports task", pkg("internal/httpjson", "task", "."), nil},
		{"httpjson imports region", pkg("internal/httpjson", "region"), []string{"internal/httpjson imports " + mod("region")}},
		{"httpjson imports controlplane", pkg("internal/httpjson", "controlplane/auth"), []string{"internal/httpjson imports " + mod("controlplane/auth")}},
		{"agent subpackage imports agent", pkg("agent/initramfs", "agent", "hardware"), nil},
		{"agent imports task", pkg("agent", "task"), []string{"agent imports " + mod("task")}},
		{"dhcp imports task", pkg("dhcp", "task"), []string{"dhcp imports " + mod("task")}},
		{"pxe imports ipxe", pkg("pxe", "ipxe"), []string{"pxe imports " + mod("ipxe")}},
		{"power imports root", pkg("power", ".", "github.com/bougou/go-ipmi/pkg/client"), nil},
		{"power imports task", pkg("power", "task"), []string{"power imports " + mod("task")}},
		{"power imports store", pkg("power", "store"), []string{"power imports " + mod("store")}},
		{"power tests use the lab", withTests(pkg("power", "."), nil, []string{"power", "internal/ipmisim", "internal/redfishsim"}), nil},
		{"region drives BMCs through power", pkg("region", "power", "machine"), nil},
		{"store imports task", pkg("store", "task"), []string{"store imports " + mod("task")}},
		{"store/etcd imports store", pkg("store/etcd", "store", "go.etcd.io/etcd/client/v3"), nil},
		{"store/memory imports store/etcd", pkg("store/memory", "store/etcd"), []string{"store/memory imports " + mod("store/etcd")}},
		{"store/etcd/embedded serves store/etcd", pkg("store/etcd/embedded", "store/etcd", "store", "go.etcd.io/etcd/server/v3/embed"), nil},
		{"store/etcd imports its embedded member", pkg("store/etcd", "store/etcd/embedded"), []string{"store/etcd imports " + mod("store/etcd/embedded")}},
		{"store/etcd/embedded imports task", pkg("store/etcd/embedded", "task"), []string{"store/etcd/embedded imports " + mod("task"), "etcd's server"}},
		{"region imports the embedded member", pkg("region", "store/etcd/embedded"), []string{"region imports " + mod("store/etcd/embedded")}},
		{"region tests run an embedded member", withTests(pkg("region"), nil, []string{"store/etcd/embedded"}), nil},
		{"region serves through httpserve", pkg("region", "internal/httpserve"), nil},
		{"controlplane serves through httpserve", pkg("controlplane", "internal/httpserve"), nil},
		{"region imports other internal packages", pkg("region", "internal/cmdutil"), []string{"region imports " + mod("internal/cmdutil")}},
		{"httpserve imports region", pkg("internal/httpserve", "region"), []string{"internal/httpserve imports " + mod("region")}},
		{"internal imports anything", pkg("internal/testlab", "region", "controlplane", "store/etcd"), nil},
		{"internal imports examples", pkg("internal/testlab", "examples/allinone"), []string{"internal/testlab imports " + mod("examples/allinone"), "nothing may import examples"}},
		{"examples import everything", pkg("examples/allinone", "region", "controlplane", "store/etcd", "internal/httpx"), nil},
		{"examples import examples", pkg("examples/allinone", "examples/shared"), []string{"nothing may import examples"}},
		{"unknown package", pkg("frobnicator", "."), []string{"frobnicator is not in the dependency table"}},
		{"unknown store subpackage", pkg("store/sql", "store"), []string{"store/sql is not in the dependency table"}},
		{"prefix is not a parent", pkg("regionx", "."), []string{"regionx is not in the dependency table"}},
		{"tests may use stores and the lab",
			withTests(pkg("task", "store"), []string{"store/memory", "store/storetest"}, []string{"task", "store/etcd", "internal/testlab"}), nil},
		{"xtest may import its own package", withTests(pkg("hardware", "."), nil, []string{"hardware", "."}), nil},
		{"tests still obey the direction",
			withTests(pkg("task"), []string{"region"}, []string{"controlplane"}),
			[]string{"task (test) imports " + mod("region"), "task (test) imports " + mod("controlplane")}},
		{"tests may not import examples", withTests(pkg("region"), nil, []string{"examples/allinone"}), []string{"nothing may import examples"}},
		{"client speaks the vocabulary", pkg("client", ".", "task", "hardware", "github.com/gorilla/websocket"), nil},
		{"client imports controlplane", pkg("client", "controlplane"), []string{"client imports " + mod("controlplane")}},
		{"client imports region", pkg("client", "region"), []string{"client imports " + mod("region")}},
		{"client imports store/etcd", pkg("client", "store/etcd"), []string{"client imports " + mod("store/etcd")}},
		{"client imports httpjson", pkg("client", "internal/httpjson"), []string{"client imports " + mod("internal/httpjson")}},
		{"client tests run a control plane", withTests(pkg("client", "task"), nil, []string{"client", "controlplane", "controlplane/auth", "store", "store/memory", "internal/etcdtest"}), nil},
		{"client tests may not import region", withTests(pkg("client"), nil, []string{"region"}), []string{"client (test) imports " + mod("region")}},
		{"other packages' tests may not import controlplane", withTests(pkg("task"), nil, []string{"controlplane"}), []string{"task (test) imports " + mod("controlplane")}},
		{"other modules are ignored", pkg("dhcp", ".", "github.com/insomniacslk/dhcp/dhcpv4", "github.com/lpmos/lpmosx"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := dependencyViolations([]listedPackage{tt.pkg})
			if len(tt.want) == 0 {
				assert.Empty(t, got)
				return
			}
			all := strings.Join(got, "\n")
			for _, w := range tt.want {
				assert.Contains(t, all, w)
			}
		})
	}
}

// dependencyViolations returns one readable message per forbidden import.
func dependencyViolations(pkgs []listedPackage) []string {
	var violations []string
	for _, p := range pkgs {
		rel, ok := moduleRel(p.ImportPath)
		if !ok {
			continue
		}
		rule := ruleFor(rel)
		if rule == nil {
			violations = append(violations, fmt.Sprintf(
				"package %s is not in the dependency table in deps_test.go: add a rule saying which of our packages it may import (see the package table in README.md)",
				displayName(rel)))
			continue
		}
		if rel == "." {
			for _, imp := range p.Imports {
				if first, _, _ := strings.Cut(imp, "/"); strings.Contains(first, ".") {
					violations = append(violations, fmt.Sprintf(
						"lpmos imports %s: the root package may import only the standard library", imp))
				}
			}
		}
		check := func(imports []string, test bool) {
			for _, imp := range imports {
				if msg := checkImport(rel, rule, imp, test); msg != "" {
					violations = append(violations, msg)
				}
			}
		}
		check(p.Imports, false)
		check(p.TestImports, true)
		check(p.XTestImports, true)
	}
	return violations
}

// checkImport returns why pkg (module-relative) may not import imp, or "".
func checkImport(pkg string, rule *depRule, imp string, test bool) string {
	target, ok := moduleRel(imp)
	if !ok {
		return "" // not ours; only the root's outside imports are checked, above
	}
	who := displayName(pkg)
	if test {
		who += " (test)"
		if target == pkg { // an external test package importing the package it tests
			return ""
		}
	}
	if matches("examples/...", target) {
		return fmt.Sprintf("%s imports %s: nothing may import examples, they are binaries", who, imp)
	}
	if slices.ContainsFunc(rule.allow, func(pat string) bool { return matches(pat, target) }) {
		return ""
	}
	if test && slices.ContainsFunc(append(slices.Clone(testOnlyAllow), rule.testAllow...), func(pat string) bool { return matches(pat, target) }) {
		return ""
	}
	msg := fmt.Sprintf("%s imports %s, but %s may import only %s", who, imp, displayName(pkg), describe(rule.allow))
	if rule.why != "" {
		msg += ": " + rule.why
	}
	return msg
}

func ruleFor(rel string) *depRule {
	for i := range depRules {
		if slices.ContainsFunc(depRules[i].pkgs, func(pat string) bool { return matches(pat, rel) }) {
			return &depRules[i]
		}
	}
	return nil
}

func matches(pattern, rel string) bool {
	if pattern == "*" {
		return true
	}
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return rel == base || strings.HasPrefix(rel, base+"/")
	}
	return rel == pattern
}

// moduleRel returns the module-relative form of an import path, "." for the
// root, and false for anything outside this module.
func moduleRel(importPath string) (string, bool) {
	if importPath == modulePath {
		return ".", true
	}
	rel, ok := strings.CutPrefix(importPath, modulePath+"/")
	return rel, ok
}

func displayName(rel string) string {
	if rel == "." {
		return "lpmos"
	}
	return rel
}

func describe(allow []string) string {
	if len(allow) == 0 {
		return "the standard library and other modules (nothing of ours)"
	}
	names := make([]string, len(allow))
	for i, a := range allow {
		names[i] = displayName(a)
	}
	return strings.Join(names, ", ")
}

// decodeGoList reads the concatenated JSON objects `go list -json` prints.
func decodeGoList(out []byte) ([]listedPackage, error) {
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			return pkgs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decoding go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
}
