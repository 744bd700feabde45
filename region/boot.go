package region

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/ipxe"
	"github.com/lpmos/lpmos/pxe"
	"github.com/lpmos/lpmos/region/templates"
	"github.com/lpmos/lpmos/task"
)

// ipxeRoute is where the iPXE binaries are served over HTTP; DHCP hands
// UEFI HTTP boot clients URLs below it.
const ipxeRoute = "/boot/ipxe/"

// bootRoutes serves what a booting machine fetches over HTTP: its iPXE
// script, the boot files (agent kernel and initramfs, OS images and
// installer files) and, for UEFI HTTP boot, the iPXE binaries.
func (r *Region) bootRoutes(mux *http.ServeMux) error {
	if err := os.MkdirAll(r.cfg.BootDir, 0o755); err != nil {
		return fmt.Errorf("boot directory: %w", err)
	}
	files, err := pxe.NewFileServer(pxe.FileServerConfig{Root: r.cfg.BootDir, Prefix: "/boot/files/", Logger: r.log})
	if err != nil {
		return err
	}
	mux.Handle("GET /boot/files/", r.traceFiles(files))
	if bins, err := pxe.NewFileServer(pxe.FileServerConfig{Root: r.cfg.IPXEDir, Prefix: ipxeRoute, Logger: r.log}); err == nil {
		mux.Handle("GET "+ipxeRoute, r.traceFiles(bins))
	} else {
		r.log.Warn("iPXE binaries not served over HTTP (UEFI HTTP boot will fail)", "dir", r.cfg.IPXEDir, "err", err)
	}
	mux.HandleFunc("GET /boot/{file}", r.script)
	mux.HandleFunc("GET /boot/templates/{task}/{token}/{name}", r.answerFile)
	return nil
}

// answerFiles maps the names installers fetch to template names.
var answerFiles = map[string]string{
	"preseed.cfg": "preseed",
	"ks.cfg":      "kickstart",
	"user-data":   "autoinstall",
	"meta-data":   "meta-data",
}

// answerFile serves an installer's answer file for an approved task. The
// URL carries the task's agent token (installers fetch it without headers);
// the file reports progress to the agent API with the same token.
func (r *Region) answerFile(w http.ResponseWriter, req *http.Request) {
	if r.starting(w) {
		return
	}
	name, ok := answerFiles[req.PathValue("name")]
	t, _, known := r.tasks.Get(req.PathValue("task"))
	if !ok || !known {
		http.NotFound(w, req)
		return
	}
	token := req.PathValue("token")
	from := sourceAddr(req)
	bound, err := r.tokens.check(req.Context(), t.Metadata.TargetMAC, token, from)
	if errors.Is(err, errWrongAddress) && bound == t.ID {
		r.refuse(req.Context(), t.ID, from, "answer file refused: the token is bound to another address")
		r.traceAnswerFile(t, name, from, http.StatusForbidden, "the token is bound to another address")
		http.Error(w, errWrongSource.Message, http.StatusForbidden)
		return
	}
	if err != nil || bound != t.ID {
		r.traceAnswerFile(t, name, from, http.StatusUnauthorized, "invalid task token")
		http.Error(w, "invalid task token", http.StatusUnauthorized)
		return
	}
	if t.Status != task.StatusApproved && t.Status != task.StatusInstalling {
		http.Error(w, "task is not approved", http.StatusConflict)
		return
	}
	overrides := map[string]string{}
	if kv, err := r.cfg.Store.Get(req.Context(), task.TemplatesPrefix+name); err == nil {
		overrides[name] = string(kv.Value)
	}
	body, err := templates.Render(name, r.templateData(t, token), overrides)
	if err != nil {
		r.log.Error("render answer file", append(machineAttrs(t), "template", name, "err", err)...)
		http.Error(w, "cannot render the answer file: "+err.Error(), http.StatusInternalServerError)
		return
	}
	r.tokens.markUsed(req.Context(), t.Metadata.TargetMAC, token)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// templateData is what the templates know of task t, whose agent token
// is token: the per-machine configuration of its metadata (network, host
// name, SSH keys, root password hash, user-data; for tasks created before
// those fields, the network_config string and the hostname and ssh_key
// tags) and the catalogue's mirror.
func (r *Region) templateData(t *task.Task, token string) templates.Data {
	m := &t.Metadata
	n := m.EffectiveNetwork()
	d := templates.Data{
		TaskID: t.ID, MAC: m.TargetMAC.String(), Hostname: m.EffectiveHostname(),
		OSType: m.OSType, OSVersion: m.OSVersion, Disk: m.DiskLayout,
		Network: n.Mode, Address: n.Address, Gateway: n.Gateway, Nameservers: n.DNS, VLANID: n.VLANID,
		RegionURL: r.cfg.BootURL, Token: token,
		SSHAuthorizedKeys: m.SSHAuthorizedKeys(), RootPasswordHash: m.RootPasswordHash, UserData: m.UserData,
	}
	if n.Bond != nil {
		d.Bond = templates.Bond{Name: n.Bond.Name, Interfaces: n.Bond.Interfaces, Mode: n.Bond.Mode}
	}
	if e, ok := r.catalog.Lookup(m.OSType, m.OSVersion); ok {
		d.RepoURL, d.MirrorURL = e.RepoURL, e.RepoURL
	}
	return d
}

// platform maps iPXE's ${platform} (sent as ?platform=) to firmware; an
// unknown platform is treated as UEFI, whose local boot ("exit") is also
// safe on BIOS.
func platform(req *http.Request) lpmos.Firmware {
	if req.URL.Query().Get("platform") == "pcbios" {
		return lpmos.FirmwareBIOS
	}
	return lpmos.FirmwareUEFI
}

// script serves GET /boot/{mac}.ipxe: the machine's script for the state of
// its task. Fetching the agent's script is what moves a ready task to
// booting, and it carries the task's agent token, bound to one address
// (binding.go says which fetches get a token).
func (r *Region) script(w http.ResponseWriter, req *http.Request) {
	if r.starting(w) {
		return
	}
	name := req.PathValue("file")
	macText, ok := strings.CutSuffix(name, ".ipxe")
	if !ok {
		http.NotFound(w, req)
		return
	}
	mac, err := lpmos.ParseMAC(macText)
	if err != nil {
		http.Error(w, "bad MAC address in script name", http.StatusBadRequest)
		return
	}
	var note scriptNote
	body, err := r.renderScript(req, mac, &note)
	r.traceScript(req, mac, note, err)
	if err != nil {
		var he *httpjson.Error
		if errors.As(err, &he) {
			if he.Status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "2")
			}
			http.Error(w, he.Message, he.Status)
			return
		}
		r.log.Error("render iPXE script", append(r.macAttrs(mac), "err", err)...)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(body)
}

// renderScript renders mac's script and says in note which kind it chose
// and why (for the boot trace).
func (r *Region) renderScript(req *http.Request, mac lpmos.MAC, note *scriptNote) (_ []byte, err error) {
	ctx := req.Context()
	t, _, ok := r.tasks.Active(mac)
	if !ok {
		if ended, ok := r.ended(mac); ok {
			note.taskID = ended.ID
			switch ended.Status {
			case task.StatusCompleted:
				note.kind, note.why = scriptLocalBoot, "task "+ended.ID+" completed: boot the local disk"
				return ipxe.LocalBoot(ipxe.LocalParams{MAC: mac, TaskID: ended.ID, Firmware: platform(req)})
			case task.StatusRejected, task.StatusCancelled, task.StatusFailed:
				note.kind, note.why = scriptStop, fmt.Sprintf("task %s is %s", ended.ID, ended.Status)
				return ipxe.Stop(ipxe.StopParams{MAC: mac, TaskID: ended.ID, Reason: ipxe.StopReason(ended.Status)})
			}
		}
		if r.cfg.UnknownMachines == UnknownDiscover {
			note.kind, note.why = scriptInventory, "no active task in region "+r.cfg.RegionID+"; unknown machines are discovered"
			return r.inventoryScript(req, mac)
		}
		note.kind, note.why = scriptUnknown, "no active task for this machine in region "+r.cfg.RegionID
		return ipxe.Unknown(ipxe.UnknownParams{MAC: mac, Region: r.cfg.RegionID, Sleep: 10})
	}
	note.taskID = t.ID
	ctx, span := task.StartTaskSpan(ctx, r.tracer, t, "region boot script", oteltrace.WithSpanKind(oteltrace.SpanKindServer))
	defer func() {
		span.SetAttributes(attrScript.String(note.kind))
		if err != nil {
			span.RecordError(err)
		}
		span.End()
	}()
	req = req.WithContext(ctx)
	switch t.Status {
	case task.StatusPending:
		note.kind, note.why = scriptNotReady, "task "+t.ID+" is still being prepared"
		return nil, httpjson.Errorf(http.StatusServiceUnavailable, "not_ready", "task %s is being prepared; retry", t.ID)
	case task.StatusApproved, task.StatusInstalling:
		if e, ok := r.catalog.Lookup(t.Metadata.OSType, t.Metadata.OSVersion); ok && e.Kind == KindInstaller {
			note.kind, note.why = scriptInstaller, fmt.Sprintf("task %s is %s: install %s %s with its installer", t.ID, t.Status, e.OSType, e.OSVersion)
			return r.installerScript(req, mac, t, e, note)
		}
	}
	token, refused, err := r.scriptToken(req, mac, t)
	if err != nil {
		return nil, err
	}
	if refused {
		note.kind, note.why = scriptAlreadyBooting, "task "+t.ID+"'s agent token is bound to another address: the machine is already booting"
		return ipxe.Busy(ipxe.BusyParams{MAC: mac, TaskID: t.ID})
	}
	note.kind, note.why = scriptAgent, "task "+t.ID+" is "+string(t.Status)+": boot the agent"
	if t.Status == task.StatusReady {
		moved, err := r.svc.MarkBooting(ctx, t.ID, r.actor, task.ExpectRevision(t.Revision))
		if err != nil && !errors.Is(err, task.ErrConflict) {
			return nil, err
		}
		r.observe(moved)
	}
	return r.agentScript(mac, t.ID, token, agentTraceParent(ctx, t))
}

// installerScript boots a distribution installer for an approved task,
// with an answer file the region renders for the task.
func (r *Region) installerScript(req *http.Request, mac lpmos.MAC, t *task.Task, e Entry, note *scriptNote) ([]byte, error) {
	token, refused, err := r.scriptToken(req, mac, t)
	if err != nil {
		return nil, err
	}
	if refused {
		note.kind, note.why = scriptAlreadyBooting, "task "+t.ID+"'s token is bound to another address: the machine is already booting"
		return ipxe.Busy(ipxe.BusyParams{MAC: mac, TaskID: t.ID})
	}
	method := ipxe.Method(e.Family)
	// The answer file's URL carries the task's token: installers fetch it
	// without headers, and it lets their late commands report progress.
	configURL := fmt.Sprintf("%s/boot/templates/%s/%s/", r.cfg.BootURL, t.ID, token)
	switch method {
	case ipxe.Preseed:
		configURL += "preseed.cfg"
	case ipxe.Kickstart:
		configURL += "ks.cfg"
	}
	return ipxe.Installer(ipxe.InstallerParams{
		MAC: mac, TaskID: t.ID, Method: method, KernelURL: e.KernelURL, InitrdURL: e.InitrdURL,
		ConfigURL: configURL, RepoURL: e.RepoURL, ISOURL: e.ISOURL, Hostname: t.Metadata.Tags["hostname"],
		Consoles: r.cfg.AgentConsoles,
	})
}
