package region

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/httpjson"
	"github.com/lpmos/lpmos/machine"
	"github.com/lpmos/lpmos/region/journal"
	"github.com/lpmos/lpmos/region/templates"
	"github.com/lpmos/lpmos/task"
)

// errUnauthorized refuses an agent whose token is missing, wrong or dead.
var errUnauthorized = &httpjson.Error{Status: http.StatusUnauthorized, Code: httpjson.CodeUnauthorized,
	Message: "missing, wrong or expired agent token", Challenge: `Bearer realm="lpmos-agent"`}

func (r *Region) handle(h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		if r.agentStarting(w) {
			return
		}
		req, endSpan := r.agentSpan(req)
		ctx, who := withCaller(req.Context())
		rec := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		err := h(rec, req.WithContext(ctx))
		if err != nil {
			if e := httpjson.WriteError(rec, err); e.Status >= 500 {
				r.log.Error("agent API request failed", append(who.attrs(), "path", req.URL.Path, "err", err)...)
			}
		}
		r.traceAgent(req, who, rec.status, err)
		endSpan(rec.status, who)
	}
}

func (r *Region) agentRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+agent.PathReport, r.handle(r.report))
	mux.HandleFunc("POST "+agent.PathProgress, r.handle(r.reportProgress))
	mux.HandleFunc("POST "+agent.PathStatus, r.handle(r.reportStatus))
	mux.HandleFunc("GET "+agent.PathApproval+"{mac}", r.handle(r.approval))
	mux.HandleFunc("GET "+agent.PathHealth, r.health)
	mux.HandleFunc("POST "+agent.PathPhoneHome+"{task}", r.handle(r.phoneHome))
	mux.HandleFunc("POST "+agent.PathInventory, r.handle(r.inventoryReport))
}

// authAgent checks the machine's token and returns its active task. The
// MAC comes from the request; taskID, if the agent sent one, must match.
func (r *Region) authAgent(ctx context.Context, req *http.Request, macText, taskID string) (lpmos.MAC, *task.Task, error) {
	mac, err := lpmos.ParseMAC(macText)
	if err != nil {
		e := httpjson.Errorf(http.StatusBadRequest, httpjson.CodeInvalidRequest, "mac_address: %v", err)
		e.Field = "mac_address"
		return mac, nil, e
	}
	noteCaller(ctx, mac, "")
	from := sourceAddr(req)
	boundTo, err := r.tokens.check(ctx, mac, httpjson.BearerToken(req), from)
	if errors.Is(err, errWrongAddress) {
		// The route's pattern, not the path: the path's {mac} is the
		// caller's spelling, and refusals are coalesced by their text.
		r.refuse(ctx, boundTo, from, "agent call "+cmp.Or(req.Pattern, req.URL.Path)+" refused: the token is bound to another address")
		return mac, nil, errWrongSource
	}
	if errors.Is(err, errBadToken) {
		return mac, nil, errUnauthorized
	}
	if err != nil {
		return mac, nil, err
	}
	if taskID != "" && taskID != boundTo {
		return mac, nil, errUnauthorized
	}
	t, _, ok := r.tasks.Active(mac)
	if !ok || t.ID != boundTo {
		// The task ended (or moved on): its token is dead.
		return mac, nil, errUnauthorized
	}
	noteCaller(ctx, mac, t.ID)
	return mac, t, nil
}

// touch records, after a request the agent made succeeded, that its
// token is in use (once) and the agent's last contact (at most every 10 s
// per machine).
func (r *Region) touch(req *http.Request, mac lpmos.MAC) {
	if r.journaling() {
		return // the store is out of reach: nothing is written
	}
	ctx := req.Context()
	r.tokens.markUsed(ctx, mac, httpjson.BearerToken(req))
	r.lastSeenMu.Lock()
	now := r.cfg.Now()
	due := now.Sub(r.lastSeen[mac]) >= 10*time.Second
	if due {
		r.lastSeen[mac] = now
	}
	r.lastSeenMu.Unlock()
	if due {
		r.tokens.seen(ctx, mac)
	}
}

func (r *Region) report(w http.ResponseWriter, req *http.Request) error {
	var body agent.ReportRequest
	if err := httpjson.Decode(w, req, agent.MaxBodyBytes, &body); err != nil {
		return err
	}
	mac, t, err := r.authAgent(req.Context(), req, body.MACAddress, body.TaskID)
	if err != nil {
		return err
	}
	if body.Hardware.MACAddress == "" {
		body.Hardware.MACAddress = mac.String()
	}
	next := agent.ActionWaitForApproval
	switch t.Status {
	case task.StatusBooting:
		// The report's source address goes into its timeline entry: the
		// approval page shows it next to the hardware. Journaled, it is
		// answered wait_for_approval (the rules run at its replay).
		call := agentCall{kind: journal.KindReport, t: t, mac: mac, source: sourceAddr(req).String(), body: body.Hardware}
		_, err := r.agentWrite(req.Context(), call, func(ctx context.Context) error {
			moved, err := r.svc.ReportHardware(ctx, t.ID, r.actor, body.Hardware, task.ExpectRevision(t.Revision),
				task.FromAddress(sourceAddr(req).String()))
			if err != nil {
				return err
			}
			r.observe(moved)
			r.recordMachine(ctx, mac, machine.Report{Hardware: &body.Hardware, Source: sourceAddr(req).String(), TaskID: t.ID})
			if r.applyRules(ctx, moved, &body.Hardware) {
				next = agent.ActionInstall
			}
			return nil
		})
		if err != nil {
			return err
		}
	case task.StatusPendingApproval:
		// A restarted agent reports again: the first report stands.
	case task.StatusApproved, task.StatusInstalling:
		next = agent.ActionInstall
	default:
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeInvalidTransition, "task %s is %s: not expecting a hardware report", t.ID, t.Status)
	}
	r.touch(req, mac)
	httpjson.WriteJSON(w, http.StatusOK, agent.ReportResponse{Status: "received", TaskID: t.ID, NextAction: next})
	return nil
}

// progressState throttles one task's progress writes.
type progressState struct {
	lastWrite time.Time
	lastStage task.Stage
	pending   *task.Progress
}

func (r *Region) reportProgress(w http.ResponseWriter, req *http.Request) error {
	var body agent.ProgressRequest
	if err := httpjson.Decode(w, req, agent.MaxBodyBytes, &body); err != nil {
		return err
	}
	completion := task.Stage(body.Stage) == task.StageCompleted && body.Percentage == 100
	mac, t, err := r.authAgent(req.Context(), req, body.MACAddress, body.TaskID)
	if completion && r.alreadyEnded(req, err, body.MACAddress, body.TaskID, task.StatusCompleted) {
		httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "completed", "task_id": body.TaskID})
		return nil
	}
	if err != nil {
		return err
	}
	p := task.Progress{Stage: task.Stage(body.Stage), Percentage: body.Percentage, Message: body.Message, Details: body.Details}
	if p.Stage == task.StageCompleted && p.Percentage == 100 {
		r.dropProgress(t.ID)
		c := task.Completion{Message: body.Message, Details: body.Details}
		call := agentCall{kind: journal.KindComplete, t: t, mac: mac, source: sourceAddr(req).String(), body: c}
		_, err := r.agentWrite(req.Context(), call, func(ctx context.Context) error {
			if t.Status == task.StatusApproved {
				if _, err := r.svc.ReportProgress(ctx, t.ID, r.actor, p); err != nil {
					return err
				}
			}
			done, err := r.svc.Complete(ctx, t.ID, r.actor, c)
			if errors.Is(err, task.ErrInvalidTransition) {
				// The view lagged behind the approval (it showed the
				// task before approved): the store says approved, so
				// the install starts and completes in that order.
				if cur, gerr := r.svc.Get(ctx, t.ID); gerr == nil && cur.Status == task.StatusApproved {
					if _, err = r.svc.ReportProgress(ctx, t.ID, r.actor, p); err == nil {
						done, err = r.svc.Complete(ctx, t.ID, r.actor, c)
					}
				}
			}
			if err != nil && !r.endedAs(ctx, err, t.ID, task.StatusCompleted) {
				return err
			}
			if done != nil {
				r.observe(done)
			}
			return nil
		})
		if err != nil {
			return err
		}
		r.touch(req, mac)
		httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "completed", "task_id": t.ID})
		return nil
	}
	if t.Status != task.StatusApproved && t.Status != task.StatusInstalling {
		return httpjson.Errorf(http.StatusConflict, httpjson.CodeInvalidTransition, "task %s is %s: not installing", t.ID, t.Status)
	}
	// Checked before the throttle, so that the agent learns of a bad
	// report at once and a bad report never takes the place of a good one
	// held back.
	if err := p.Validate(); err != nil {
		return err
	}
	if write, sameStage := r.throttle(t.ID, p); write {
		if err := r.writeProgress(req.Context(), t, mac, p, sameStage); err != nil {
			return err
		}
	}
	r.touch(req, mac)
	httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "received", "task_id": t.ID})
	return nil
}

// throttle decides whether a progress report is written now: the first,
// every stage change, and otherwise at most one per progress interval; a
// report held back is kept (the latest wins) and flushed by the loop.
// sameStage says the stage is the one this process last wrote for the
// task (see writeProgress).
func (r *Region) throttle(id string, p task.Progress) (write, sameStage bool) {
	r.progressMu.Lock()
	defer r.progressMu.Unlock()
	st := r.progress[id]
	now := r.cfg.Now()
	sameStage = st != nil && st.lastStage == p.Stage
	if !sameStage || now.Sub(st.lastWrite) >= r.progressIntervalLocked() {
		r.progress[id] = &progressState{lastWrite: now, lastStage: p.Stage}
		return true, sameStage
	}
	st.pending = &p
	return false, sameStage
}

// writeProgress writes a progress report. Within a stage this process
// wrote itself and while the task is installing, only the progress key is
// written, without reading the task (task.Service.PutProgress: most of an
// install's writes); otherwise, or if the status moved meanwhile, through
// ReportProgress, which moves an approved task to installing and records
// a new stage in the timeline.
//
// Journaled (see agentWrite), a report is applied through ReportProgress.
func (r *Region) writeProgress(ctx context.Context, t *task.Task, mac lpmos.MAC, p task.Progress, sameStage bool) error {
	call := agentCall{kind: journal.KindProgress, t: t, mac: mac, body: p}
	_, err := r.agentWrite(ctx, call, func(ctx context.Context) error {
		if sameStage && t.Status == task.StatusInstalling {
			if ok, err := r.svc.PutProgress(ctx, t.ID, p, t.Revision); err != nil || ok {
				return err
			}
		}
		moved, err := r.svc.ReportProgress(ctx, t.ID, r.actor, p)
		if err != nil {
			return err
		}
		if t.Status != moved.Status {
			r.observe(moved) // now installing
		}
		return nil
	})
	return err
}

// progressIntervalLocked is how often one task's progress is written:
// ProgressInterval, or longer when that many installs at once would write
// more than ProgressWriteRate a second.
func (r *Region) progressIntervalLocked() time.Duration {
	spread := time.Duration(float64(len(r.progress)) / r.cfg.ProgressWriteRate * float64(time.Second))
	return max(r.cfg.ProgressInterval, spread)
}

func (r *Region) dropProgress(id string) {
	r.progressMu.Lock()
	delete(r.progress, id)
	r.progressMu.Unlock()
}

// flushProgressLoop writes held-back progress once its interval is over.
func (r *Region) flushProgressLoop(ctx context.Context) error {
	tick := time.NewTicker(max(r.cfg.ProgressInterval/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now := r.cfg.Now()
		due := map[string]task.Progress{} // all in the stage last written
		r.progressMu.Lock()
		interval := r.progressIntervalLocked()
		for id, st := range r.progress {
			if _, _, active := r.tasks.Get(id); !active {
				delete(r.progress, id)
				continue
			}
			if st.pending != nil && now.Sub(st.lastWrite) >= interval {
				due[id] = *st.pending
				st.pending, st.lastWrite = nil, now
			}
		}
		r.progressMu.Unlock()
		for id, p := range due {
			t, _, ok := r.tasks.Get(id)
			if !ok {
				continue
			}
			if err := r.writeProgress(ctx, t, t.Metadata.TargetMAC, p, true); err != nil && ctx.Err() == nil {
				r.log.Warn("write held-back progress", append(machineAttrs(t), "err", err)...)
			}
		}
	}
}

func (r *Region) reportStatus(w http.ResponseWriter, req *http.Request) error {
	var body agent.StatusRequest
	if err := httpjson.Decode(w, req, agent.MaxBodyBytes, &body); err != nil {
		return err
	}
	mac, t, err := r.authAgent(req.Context(), req, body.MACAddress, body.TaskID)
	if (body.Status == string(task.StatusFailed) || body.Status == string(task.StatusCompleted)) &&
		r.alreadyEnded(req, err, body.MACAddress, body.TaskID, task.Status(body.Status)) {
		httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "received", "task_id": body.TaskID})
		return nil
	}
	if err != nil {
		return err
	}
	switch body.Status {
	case string(task.StatusFailed):
		r.dropProgress(t.ID)
		code := body.Code
		if code == "" {
			code = "agent_error"
		}
		info := task.ErrorInfo{Code: code, Stage: body.Stage, Message: body.Message}
		call := agentCall{kind: journal.KindFail, t: t, mac: mac, source: sourceAddr(req).String(), body: info}
		if err := r.endTask(req.Context(), call, task.StatusFailed, func(ctx context.Context) (*task.Task, error) {
			return r.svc.Fail(ctx, t.ID, r.actor, info)
		}); err != nil {
			return err
		}
	case string(task.StatusCompleted):
		r.dropProgress(t.ID)
		c := task.Completion{Message: body.Message}
		call := agentCall{kind: journal.KindComplete, t: t, mac: mac, source: sourceAddr(req).String(), body: c}
		if err := r.endTask(req.Context(), call, task.StatusCompleted, func(ctx context.Context) (*task.Task, error) {
			return r.svc.Complete(ctx, t.ID, r.actor, c)
		}); err != nil {
			return err
		}
	default:
		return httpjson.Errorf(http.StatusBadRequest, httpjson.CodeInvalidRequest, "status must be %q or %q", task.StatusFailed, task.StatusCompleted)
	}
	r.touch(req, mac)
	httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "received", "task_id": t.ID})
	return nil
}

// approval is the agent's long-poll: it returns as soon as the operator
// decides (or the task ends), or after ?wait= seconds (at most
// ApprovalWait) with the task still pending.
func (r *Region) approval(w http.ResponseWriter, req *http.Request) error {
	mac, t, err := r.authAgent(req.Context(), req, req.PathValue("mac"), "")
	if errors.Is(err, errUnauthorized) {
		// The decision may have come between the agent's hardware report
		// and its first poll: its token is still the machine's, bound to
		// the task that ended. Tell it how the task ended, so it stops.
		if final := r.endedTaskOf(req, req.PathValue("mac")); final != nil {
			httpjson.WriteJSON(w, http.StatusOK, r.decision(final, ""))
			return nil
		}
	}
	if err != nil {
		return err
	}
	wait := r.cfg.ApprovalWait
	if v := req.URL.Query().Get("wait"); v != "" {
		secs, err := strconv.Atoi(v)
		if err != nil || secs < 0 {
			return httpjson.Errorf(http.StatusBadRequest, httpjson.CodeInvalidRequest, "wait must be a number of seconds")
		}
		wait = min(wait, time.Duration(secs)*time.Second)
	}
	r.touch(req, mac)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	id := t.ID
	for {
		cur, changed, ok := r.tasks.Active(mac)
		if !ok || cur.ID != id {
			// The task ended: tell the agent how.
			final, err := r.svc.Get(req.Context(), id)
			if err != nil {
				return err
			}
			httpjson.WriteJSON(w, http.StatusOK, r.decision(final, httpjson.BearerToken(req)))
			return nil
		}
		if resp := r.decision(cur, httpjson.BearerToken(req)); resp.Approved || resp.NextAction == agent.ActionPowerOff {
			httpjson.WriteJSON(w, http.StatusOK, resp)
			return nil
		}
		select {
		case <-changed:
		case <-timer.C:
			httpjson.WriteJSON(w, http.StatusOK, r.decision(cur, httpjson.BearerToken(req)))
			return nil
		case <-req.Context().Done():
			return nil
		}
	}
}

// endedTaskOf returns the ended task the request's agent token is bound
// to, or nil: the token must still be the machine's current one (a new
// task's boot script replaces it).
func (r *Region) endedTaskOf(req *http.Request, macText string) *task.Task {
	mac, err := lpmos.ParseMAC(macText)
	if err != nil {
		return nil
	}
	boundTo, err := r.tokens.check(req.Context(), mac, httpjson.BearerToken(req), sourceAddr(req))
	if err != nil {
		return nil
	}
	t, err := r.svc.Get(req.Context(), boundTo)
	if err != nil || !t.Status.Terminal() {
		return nil
	}
	return t
}

// alreadyEnded reports whether an agent call refused by authAgent with
// authErr repeats the end its task already has: the agent's first report
// of that end was applied, but its answer was lost (a connection cut, or
// a 503 while etcd elected a leader after the write was committed), and
// the agent retried with the token of the task that has now ended. Such
// a repeat is answered as the first one should have been; anything else
// stays refused.
func (r *Region) alreadyEnded(req *http.Request, authErr error, macText, taskID string, end task.Status) bool {
	if !errors.Is(authErr, errUnauthorized) || taskID == "" {
		return false
	}
	t := r.endedTaskOf(req, macText)
	return t != nil && t.ID == taskID && t.Status == end
}

// endedAs reports whether a move to end that failed with err found the
// task already ended so (the region's view had not caught up with the
// first report of that end yet): see alreadyEnded.
func (r *Region) endedAs(ctx context.Context, err error, id string, end task.Status) bool {
	if !errors.Is(err, task.ErrInvalidTransition) {
		return false
	}
	t, gerr := r.svc.Get(ctx, id)
	return gerr == nil && t.Status == end
}

// decision is what the agent is told about its task.
// token is the agent's own token, for the plan's phone-home URL.
func (r *Region) decision(t *task.Task, token string) agent.ApprovalResponse {
	resp := agent.ApprovalResponse{TaskID: t.ID, Status: string(t.Status), NextAction: agent.ActionWaitForApproval}
	switch t.Status {
	case task.StatusApproved, task.StatusInstalling:
		resp.Approved, resp.NextAction = true, agent.ActionInstall
		resp.Plan = r.plan(t, token)
	case task.StatusRejected, task.StatusCancelled, task.StatusFailed, task.StatusCompleted:
		resp.NextAction = agent.ActionPowerOff
		switch {
		case t.Approval != nil && t.Approval.Reason != "":
			resp.Reason = t.Approval.Reason
		case t.Error != nil:
			resp.Reason = t.Error.Message
		default:
			resp.Reason = "task " + string(t.Status)
		}
	}
	return resp
}

// TagCloudInit set to "off" in a task's tags keeps the agent from writing
// a cloud-init NoCloud seed after the image (and so from phoning home).
const TagCloudInit = "cloud_init"

// plan is the install plan of an approved task. token is the agent's: the
// phone-home URL carries it, since the installed system has no other
// credential (it can only record that one task's first boot).
func (r *Region) plan(t *task.Task, token string) *agent.Plan {
	p := &agent.Plan{TaskID: t.ID, OSType: t.Metadata.OSType, OSVersion: t.Metadata.OSVersion,
		Disk: t.Metadata.DiskLayout, Network: t.Metadata.NetworkConfig, Hostname: t.Metadata.EffectiveHostname(),
		SSHAuthorizedKeys: t.Metadata.SSHAuthorizedKeys()}
	e, ok := r.catalog.Lookup(t.Metadata.OSType, t.Metadata.OSVersion)
	switch {
	case !ok:
		p.Method = ""
	case e.Kind == KindImage:
		p.Method, p.ImageURL, p.SHA256, p.ImageSize = KindImage, r.cfg.PublicURL+"/boot/files/"+e.ImagePath, e.SHA256, e.Size
		if t.Metadata.Tags[TagCloudInit] != "off" && token != "" {
			// The installed system knows no pin: it phones home where
			// the boot clients go.
			p.PhoneHomeURL = r.cfg.BootURL + agent.PathPhoneHome + t.ID + "?token=" + url.QueryEscape(token)
			r.seedFiles(t, token, p)
		}
	default:
		p.Method = KindInstaller
	}
	return p
}

// seedFiles renders the NoCloud seed's user-data and network-config into
// p when the task asks for more than the agent writes by itself (its
// host name, SSH keys and phone-home): a static or otherwise non-default
// network, a root password hash or the operator's user-data. The built-in
// templates are used (nocloud-user-data, network-config), not overrides.
// A task that cannot be rendered (one created before static networks
// had an address) gets no seed files and the agent's own seed, and the
// region logs why.
func (r *Region) seedFiles(t *task.Task, token string, p *agent.Plan) {
	m := &t.Metadata
	n := m.EffectiveNetwork()
	plainDHCP := !n.Static() && n.VLANID == 0 && n.Bond == nil && len(n.DNS) == 0
	if plainDHCP && m.RootPasswordHash == "" && m.UserData == "" {
		return
	}
	d := r.templateData(t, token)
	ud, err := templates.Render(templates.NoCloudUserData, d, nil)
	if err == nil && !plainDHCP {
		var nc []byte
		nc, err = templates.Render(templates.NetworkConfig, d, nil)
		p.SeedNetworkConfig = string(nc)
	}
	if err != nil {
		p.SeedNetworkConfig = ""
		r.log.Error("render the cloud-init seed; the agent writes its own", append(machineAttrs(t), "err", err)...)
		return
	}
	p.SeedUserData = string(ud)
}

func (r *Region) health(w http.ResponseWriter, req *http.Request) {
	r.hbMu.RLock()
	h := agent.Health{Status: "healthy", RegionID: r.cfg.RegionID, Services: map[string]string{"http": "running"},
		EtcdConnected: r.storeOK, LastHeartbeat: r.lastHeartbeat}
	r.hbMu.RUnlock()
	h.Role, h.Instance = r.Role(), r.cfg.InstanceID
	h.CutOff, h.Journal = r.CutOff(), r.JournalDepth()
	if h.CutOff {
		h.EtcdConnected = false
	}
	if h.EtcdConnected {
		ctx, cancel := context.WithTimeout(req.Context(), r.cfg.StoreTimeout)
		h.Leader = r.lead.leader(ctx)
		cancel()
	}
	for k, v := range r.cfg.Services {
		h.Services[k] = v
	}
	status := http.StatusOK
	if !h.EtcdConnected || h.Journal > 0 {
		h.Status, status = "degraded", http.StatusServiceUnavailable
	}
	httpjson.WriteJSON(w, status, h)
}

// phoneHome records the first boot of an installed system: cloud-init's
// phone_home (from the NoCloud seed the agent wrote) POSTs here, form
// encoded (instance_id, hostname, ...). The token is the agent token the
// task was installed with, given in the token query parameter (cloud-init
// sends no headers) or as a bearer token; it can do nothing else once the
// task has ended. The first boot is recorded once; repeats answer 200.
func (r *Region) phoneHome(w http.ResponseWriter, req *http.Request) error {
	id := req.PathValue("task")
	if err := lpmos.ValidateTaskID(id); err != nil {
		return httpjson.Errorf(http.StatusBadRequest, httpjson.CodeInvalidRequest, "task: %v", err)
	}
	tok := req.URL.Query().Get("token")
	if tok == "" {
		tok = httpjson.BearerToken(req)
	}
	req.Body = http.MaxBytesReader(w, req.Body, agent.MaxBodyBytes)
	if err := req.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return httpjson.Errorf(http.StatusBadRequest, httpjson.CodeInvalidRequest, "malformed form body: %v", err)
	}
	t, err := r.svc.Get(req.Context(), id)
	if errors.Is(err, task.ErrNotFound) {
		return errUnauthorized // do not tell task IDs apart without a token
	}
	if err != nil {
		return err
	}
	// Not bound to an address: see tokens.checkAnywhere.
	boundTo, err := r.tokens.checkAnywhere(req.Context(), t.Metadata.TargetMAC, tok)
	if errors.Is(err, errBadToken) || (err == nil && boundTo != id) {
		return errUnauthorized
	}
	if err != nil {
		return err
	}
	msg := "the installed system booted"
	if h := req.PostForm.Get("hostname"); h != "" {
		msg += " as " + strconv.Quote(truncate(h, 253))
	}
	// Our seed makes the task ID the instance ID; another datasource of
	// the image may have won (the token already proves the task): say so.
	if inst := req.PostForm.Get("instance_id"); inst != "" && inst != id {
		msg += " with instance ID " + strconv.Quote(truncate(inst, 128))
	}
	host, _, _ := net.SplitHostPort(req.RemoteAddr)
	msg += " from " + host
	moved, err := r.svc.RecordFirstBoot(req.Context(), id, r.actor, msg)
	if err != nil {
		return err
	}
	r.log.Info("installed system phoned home", append(machineAttrs(t), "remote", host)...)
	httpjson.WriteJSON(w, http.StatusOK, map[string]string{"status": "recorded", "task_id": id, "task_status": string(moved.Status)})
	return nil
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// endTask writes an agent's end report (through the journal when the
// store is out of reach); a task that already ended so (a repeated report
// whose answer was lost) counts as done.
func (r *Region) endTask(ctx context.Context, call agentCall, status task.Status, end func(context.Context) (*task.Task, error)) error {
	_, err := r.agentWrite(ctx, call, func(ctx context.Context) error {
		ended, err := end(ctx)
		if err != nil && !r.endedAs(ctx, err, call.t.ID, status) {
			return err
		}
		if ended != nil {
			r.observe(ended)
		}
		return nil
	})
	return err
}
