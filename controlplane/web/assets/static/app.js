// LPMOS dashboard: a single-page app over the control plane's REST API
// (/api/v1) and its WebSocket (/ws). No framework and no build step.
//
// Security rules this file keeps (and web_test.go checks):
//   - Every string that comes from the API (tags, messages, hardware
//     strings reported by an agent on a machine nobody trusts yet) is put
//     into the page as text: elements are built with createElement and
//     filled with textContent. Nothing is ever parsed as markup, and
//     attribute names are fixed in the code.
//   - No inline script, style or event-handler attributes: the page is
//     served with a CSP that forbids them, so listeners are attached with
//     addEventListener and styling goes through classes (the progress bar
//     width is set through the CSSOM, which CSP does not restrict).
//   - Authentication is a bearer token the operator pastes in. It lives in
//     sessionStorage (gone when the tab closes) and is sent explicitly as
//     "Authorization: Bearer" on every request. No cookies are used at all
//     (fetch runs with credentials: 'omit'), so a cross-site page cannot
//     make the browser send an authenticated request: CSRF does not apply.
'use strict';

(function () {
  const TOKEN_KEY = 'lpmos.token';
  const PAGE_SIZE = 25;
  const STATUSES = ['pending', 'ready', 'booting', 'pending_approval', 'approved',
    'installing', 'completed', 'failed', 'rejected', 'cancelled'];
  const TERMINAL = new Set(['completed', 'failed', 'rejected', 'cancelled']);
  const ACTIVE = STATUSES.filter((s) => !TERMINAL.has(s));
  const STAGES = ['partitioning', 'downloading', 'writing', 'installing', 'configuring', 'completed'];
  const ROLE_RANK = { viewer: 1, operator: 2, admin: 3 };
  const TASK_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  const MAC_RE = /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/; // the API's canonical form

  const app = document.getElementById('app');
  const session = { token: null, me: null };
  let view = null; // the current view: { sub, onMessage(msg), resync(), destroy() }

  // ------------------------------------------------------------------
  // DOM helpers. el() is the only way this file creates elements.

  const PROPS = new Set(['value', 'checked', 'selected', 'disabled', 'hidden', 'required', 'id', 'type', 'name', 'placeholder', 'rows']);

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k === 'dataset') Object.assign(e.dataset, v);
        else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
        else if (PROPS.has(k)) e[k] = v;
        else if (/^on/i.test(k) || k.toLowerCase() === 'style') throw new Error('el: attribute ' + k + ' is not allowed');
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(e, children);
    return e;
  }

  function append(parent, children) {
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      if (Array.isArray(c)) append(parent, c);
      else if (c instanceof Node) parent.appendChild(c);
      else parent.appendChild(document.createTextNode(String(c)));
    }
    return parent;
  }

  function fill(parent, ...children) {
    parent.replaceChildren();
    return append(parent, children);
  }

  // link makes an in-app link; only paths built here from encoded IDs are
  // ever used as href.
  function link(path, text, cls) {
    return el('a', { href: path, 'data-nav': true, class: cls }, text);
  }

  function taskPath(id, suffix) {
    return '/tasks/' + encodeURIComponent(id) + (suffix || '');
  }

  function badge(status, large) {
    const b = el('span', { class: 'badge' + (large ? ' badge-large' : '') });
    setBadge(b, status);
    return b;
  }

  function setBadge(b, status) {
    for (const s of STATUSES) b.classList.remove('status-' + s);
    if (STATUSES.includes(status)) b.classList.add('status-' + status);
    b.textContent = String(status || 'unknown').replace(/_/g, ' ');
  }

  function alertBox(kind, title, message) {
    return el('div', { class: 'alert alert-' + kind, role: kind === 'error' ? 'alert' : 'status' },
      title ? el('div', { class: 'alert-title', text: title }) : null,
      message ? el('div', { text: message }) : null);
  }

  function fmtTime(s) {
    if (!s || String(s).startsWith('0001-')) return '—';
    const d = new Date(s);
    if (isNaN(d.getTime())) return String(s);
    return d.toLocaleString(undefined, { year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  function timeEl(s) {
    return el('time', { datetime: s || '', title: s || '' }, fmtTime(s));
  }

  function fmtGB(n) {
    n = Number(n) || 0;
    if (n >= 1000) return (n / 1000).toFixed(n % 1000 === 0 ? 0 : 1) + ' TB';
    return n + ' GB';
  }

  function dash(v) {
    return v === null || v === undefined || v === '' ? '—' : String(v);
  }

  function shortID(id) {
    return String(id).slice(0, 8);
  }

  function canOperate() {
    return session.me && (ROLE_RANK[session.me.role] || 0) >= ROLE_RANK.operator;
  }

  function kv(pairs) {
    const dl = el('dl', { class: 'kv' });
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      append(dl, [el('dt', { text: k }), el('dd', null, v)]);
    }
    return dl;
  }

  function table(cls, headers, rows) {
    return el('div', { class: 'table-wrap' },
      el('table', { class: cls },
        el('thead', null, el('tr', null, headers.map((h) => el('th', { text: h })))),
        el('tbody', null, rows)));
  }

  function tagChips(tags) {
    const keys = Object.keys(tags || {}).sort();
    if (!keys.length) return null;
    return el('div', { class: 'tags' }, keys.map((k) =>
      el('span', { class: 'tag', title: k + '=' + tags[k] }, k + '=' + tags[k])));
  }

  // ------------------------------------------------------------------
  // REST client.

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field || '';
      this.signedOut = false;
    }
  }

  async function api(method, path, opts) {
    opts = opts || {};
    const headers = { Accept: 'application/json' };
    if (session.token) headers.Authorization = 'Bearer ' + session.token;
    let body;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    Object.assign(headers, opts.headers || {});
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'omit', redirect: 'error' });
    } catch (e) {
      throw new ApiError(0, 'network', 'Cannot reach the control plane (' + e.message + ').');
    }
    let data = null;
    const text = await res.text();
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!res.ok) {
      const e = (data && typeof data === 'object' && data.error) || {};
      const err = new ApiError(res.status, e.code || 'http_' + res.status,
        e.message || ('The control plane answered ' + res.status + ' ' + res.statusText + '.'), e.field);
      if (res.status === 401 && !opts.noSignOut) {
        err.signedOut = true;
        signOut('Your token was not accepted any more. Sign in again.');
      }
      throw err;
    }
    return { data, headers: res.headers, status: res.status };
  }

  // refresher runs fn with at most one call in flight; calls made meanwhile
  // collapse into one more run after it, so a burst of events costs two
  // requests, not one per event.
  function refresher(fn) {
    let running = false;
    let again = false;
    let timer = null;
    async function run() {
      if (running) { again = true; return; }
      running = true;
      try {
        do {
          again = false;
          await fn();
        } while (again);
      } finally {
        running = false;
      }
    }
    run.soon = function () {
      if (timer) return;
      timer = setTimeout(() => { timer = null; run(); }, 250);
    };
    run.cancel = function () { clearTimeout(timer); timer = null; };
    return run;
  }

  // ------------------------------------------------------------------
  // Live updates: one WebSocket per tab.
  //
  // Subscriptions follow the view: the task list and the regions page
  // (whose counts move with every status change) subscribe to "*", a task
  // page to its own task only, the create form and sign-in to nothing. A
  // task page thus never pays for the rest of a busy fleet (thousands of
  // installs each sending progress), and the list, which shows every task,
  // gets everything. On a view change the new subscription is sent before
  // the old one is dropped, and every view refetches over REST when it
  // starts, so nothing falls between the two.
  //
  // After every (re)connect the current view is resynced over REST: the hub
  // does not replay what happened while we were away, and it drops clients
  // that fall behind, so REST is the source of truth and the socket only
  // says "something changed, here is the news". The resync waits for the
  // server's acknowledgement of the subscription ("subscribed"), which
  // comes exactly where the subscription took effect: a read sent before it
  // could miss a change made between the read and the subscription (on
  // another replica behind a load balancer, say), and the page would show
  // a stale status until the next change. The indicator says "live" only
  // from then on.

  const live = {
    ws: null,
    want: null,    // the subscription the current view wants
    active: null,  // the subscription the server has
    awaiting: null, // a subscription sent on this socket and not yet acknowledged
    attempt: 0,
    timer: null,     // the pending reconnect
    countdown: null, // ticks the indicator while waiting to reconnect
    openedAt: 0,
  };

  const conn = document.getElementById('conn');
  const connText = document.getElementById('conn-text');

  function setConn(state, text) {
    conn.hidden = false;
    conn.classList.remove('conn-live', 'conn-connecting', 'conn-off');
    conn.classList.add('conn-' + state);
    conn.dataset.state = state;
    connText.textContent = text;
  }

  function liveStart() {
    if (live.ws || live.timer || !session.token) return;
    connect();
  }

  function liveStop() {
    clearTimeout(live.timer);
    clearInterval(live.countdown);
    live.timer = null;
    const ws = live.ws;
    live.ws = null;
    live.active = null;
    live.awaiting = null;
    live.attempt = 0;
    if (ws) ws.close(1000, 'signed out');
    conn.hidden = true;
  }

  function connect() {
    live.timer = null;
    clearInterval(live.countdown);
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    let ws;
    try {
      // Browsers cannot set headers on a WebSocket, so the token travels as
      // a subprotocol; the server answers with "lpmos.v1".
      ws = new WebSocket(url, ['lpmos.v1', 'bearer.' + session.token]);
    } catch (e) {
      setConn('off', 'no live updates (token not usable as a subprotocol)');
      return;
    }
    live.ws = ws;
    live.openedAt = 0;
    setConn('connecting', 'connecting…');
    ws.addEventListener('open', () => {
      if (live.ws !== ws) return;
      live.openedAt = Date.now();
      live.active = null;
      live.awaiting = null;
      applySubscription();
      if (live.awaiting) {
        setConn('connecting', 'syncing…'); // resynced on the acknowledgement
      } else {
        synced();
      }
    });
    ws.addEventListener('message', (ev) => {
      if (live.ws !== ws || typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      if (msg && msg.type === 'error') {
        console.warn('live updates:', String(msg.message)); // e.g. a refused subscription
        // A refused subscription is never acknowledged: resync anyway.
        if (live.awaiting) { live.awaiting = null; synced(); }
        return;
      }
      if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string' || typeof msg.task_id !== 'string') return;
      if (msg.type === 'subscribed') {
        if (msg.task_id === live.awaiting) { live.awaiting = null; synced(); }
        return;
      }
      if (view && view.onMessage) view.onMessage(msg);
    });
    ws.addEventListener('close', () => {
      if (live.ws !== ws) return;
      live.ws = null;
      live.active = null;
      live.awaiting = null;
      // A connection that lasted resets the backoff; one that keeps being
      // dropped right away (say the server kicks a slow client) does not.
      if (live.openedAt && Date.now() - live.openedAt > 5000) live.attempt = 0;
      // 1 s, 2 s, 4 s ... 30 s, with jitter so that a restarted control
      // plane is not hit by every dashboard in the same instant.
      const delay = Math.min(30000, 1000 * Math.pow(2, live.attempt) * (0.8 + Math.random() * 0.4));
      live.attempt = Math.min(live.attempt + 1, 10);
      const at = Date.now() + delay;
      const tick = () => setConn('off', 'offline · retrying in ' + Math.max(1, Math.round((at - Date.now()) / 1000)) + ' s');
      tick();
      live.countdown = setInterval(tick, 1000);
      live.timer = setTimeout(connect, delay);
      // A handshake that never opened may mean the token was revoked; the
      // browser does not tell us the status, so ask the API (a 401 signs out).
      if (!live.openedAt) api('GET', '/api/v1/whoami').catch(() => {});
    });
  }

  // synced: the server has the subscription the view wants, so a read now
  // misses nothing; resync the view.
  function synced() {
    setConn('live', 'live');
    if (view) view.resync();
  }

  function subscribe(target) {
    live.want = target;
    applySubscription();
  }

  function applySubscription() {
    const ws = live.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || live.want === live.active) return;
    if (live.want) ws.send(JSON.stringify({ type: 'subscribe', task_id: live.want }));
    if (live.active) ws.send(JSON.stringify({ type: 'unsubscribe', task_id: live.active }));
    live.active = live.want;
    live.awaiting = live.want;
  }

  // ------------------------------------------------------------------
  // Session and header.

  const mainnav = document.getElementById('mainnav');
  const navCreate = document.getElementById('nav-create');
  const userBox = document.getElementById('user');

  function showUser() {
    const me = session.me;
    userBox.hidden = !me;
    mainnav.hidden = !me;
    if (!me) return;
    document.getElementById('user-subject').textContent = me.subject || '';
    document.getElementById('user-role').textContent = me.role || '';
    navCreate.hidden = !canOperate();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    const wasSignedIn = session.token !== null;
    session.token = null;
    session.me = null;
    liveStop();
    showUser();
    if (wasSignedIn || message) render(message);
  }

  document.getElementById('signout').addEventListener('click', () => signOut());

  // ------------------------------------------------------------------
  // Router. Every page route returns the same HTML; the view comes from
  // location.pathname, and in-app links use history.pushState.

  function parseRoute(path) {
    if (path === '/' || path === '/dashboard' || path === '/tasks') return { name: 'list' };
    if (path === '/tasks/create') return { name: 'create' };
    if (path === '/regions') return { name: 'regions' };
    if (path === '/dlq') return { name: 'dlq' };
    if (path === '/machines') return { name: 'machines' };
    if (path === '/rules') return { name: 'rules' };
    const mm = /^\/machines\/([^/]+)$/.exec(path);
    if (mm) {
      let mac = '';
      try { mac = decodeURIComponent(mm[1]); } catch (e) { mac = ''; }
      return MAC_RE.test(mac) ? { name: 'machine', mac } : { name: 'notfound' };
    }
    const m = /^\/tasks\/([^/]+)(\/approve)?$/.exec(path);
    if (m && TASK_ID_RE.test(m[1])) return { name: 'detail', id: m[1], approve: Boolean(m[2]) };
    return { name: 'notfound' };
  }

  function navigate(url, replace) {
    history[replace ? 'replaceState' : 'pushState'](null, '', url);
    render();
  }

  document.addEventListener('click', (e) => {
    const a = e.target.closest && e.target.closest('a[data-nav]');
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    if (a.origin !== location.origin) return;
    e.preventDefault();
    navigate(a.pathname + a.search);
  });

  window.addEventListener('popstate', () => render());

  function render(signInMessage) {
    if (view && view.destroy) view.destroy();
    view = null;
    if (!session.me) {
      subscribe(null);
      renderSignIn(signInMessage);
      return;
    }
    const r = parseRoute(location.pathname);
    for (const a of mainnav.querySelectorAll('a')) {
      const target = a.getAttribute('href');
      a.classList.toggle('active', (r.name === 'list' && target === '/tasks') || (r.name === 'create' && target === '/tasks/create') ||
        (r.name === 'regions' && target === '/regions') || (r.name === 'dlq' && target === '/dlq') ||
        ((r.name === 'machines' || r.name === 'machine') && target === '/machines') || (r.name === 'rules' && target === '/rules'));
    }
    switch (r.name) {
      case 'list': view = listView(); break;
      case 'create': view = createView(); break;
      case 'regions': view = regionsView(); break;
      case 'dlq': view = dlqView(); break;
      case 'machines': view = machinesView(); break;
      case 'machine': view = machineView(r.mac); break;
      case 'rules': view = rulesView(); break;
      case 'detail': view = detailView(r.id, r.approve); break;
      default: view = notFoundView();
    }
    subscribe(view.sub);
    // Read at once for the first paint; a new subscription reads again
    // once acknowledged (see synced), which catches a change made between
    // this read and the subscription.
    view.resync();
    window.scrollTo(0, 0);
  }

  function notFoundView() {
    document.title = 'Not found · LPMOS';
    fill(app, el('div', { class: 'panel empty' },
      el('h1', { text: 'Page not found' }),
      el('p', null, link('/tasks', 'Back to the task list'))));
    return { sub: null, resync() {}, onMessage() {} };
  }

  // ------------------------------------------------------------------
  // Sign-in.

  function renderSignIn(message) {
    document.title = 'Sign in · LPMOS';
    const alerts = el('div');
    if (message) append(alerts, [alertBox('warn', null, message)]);
    const input = el('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, placeholder: 'API token' });
    const button = el('button', { type: 'submit', class: 'btn', id: 'signin-submit', text: 'Sign in' });
    const form = el('form', { class: 'panel', id: 'signin-form', novalidate: true },
      el('h1', { text: 'Sign in' }),
      el('p', { class: 'muted', text: 'Paste an LPMOS API token (an operator token, or the admin token the control plane printed at start-up). It is kept only in this tab.' }),
      alerts,
      el('div', { class: 'field' }, el('label', { for: 'token', text: 'Token' }), input),
      el('div', { class: 'btn-row' }, button));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) { input.classList.add('invalid'); input.focus(); return; }
      button.disabled = true;
      session.token = token;
      try {
        const res = await api('GET', '/api/v1/whoami', { noSignOut: true });
        sessionStorage.setItem(TOKEN_KEY, token);
        session.me = res.data || {};
        showUser();
        liveStart();
        render();
      } catch (err) {
        session.token = null;
        button.disabled = false;
        input.classList.add('invalid');
        fill(alerts, alertBox('error', err.status === 401 ? 'Token rejected' : 'Sign-in failed',
          err.status === 401 ? 'The control plane does not know this token.' : err.message));
        input.select();
      }
    });
    fill(app, el('div', { class: 'signin' }, form));
    input.focus();
  }

  // ------------------------------------------------------------------
  // Progress bar, shared by the list and the task page. set() moves the
  // existing bar (CSS animates the width); it never rebuilds it.

  function progressWidget(large) {
    const barFill = el('div', { class: 'progress-fill' });
    const bar = el('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100' }, barFill);
    const stage = el('span', { class: 'stage' });
    const pct = el('span', { class: 'pct' });
    const msg = el('span', { class: 'msg' });
    const text = el('div', { class: 'progress-text' }, stage, ' · ', pct, msg);
    const root = el('div', { class: 'progress-block' + (large ? ' progress-large' : '') }, bar, text);
    return {
      root,
      set(p, status) {
        const v = Math.max(0, Math.min(100, Math.round(Number(p && p.percentage) || 0)));
        barFill.style.width = v + '%';
        bar.setAttribute('aria-valuenow', String(v));
        stage.textContent = (p && p.stage) || 'waiting';
        pct.textContent = v + '%';
        msg.textContent = p && p.message ? ' — ' + p.message : '';
        text.title = (p && p.message) || '';
        root.classList.toggle('progress-done', status === 'completed');
        root.classList.toggle('progress-failed', status === 'failed' || status === 'cancelled');
      },
    };
  }

  // ------------------------------------------------------------------
  // Task list: /, /dashboard, /tasks. Filters live in the query string, so
  // a reload or a shared link shows the same page.

  // macQuery says how the list API is asked for what was typed in the MAC
  // search: a whole address (in any spelling the API parses: colons,
  // dashes, Cisco dots or bare hex) is the exact filter mac, anything else
  // is sent as mac_prefix and the API says if it is not the start of a MAC.
  const FULL_MAC_RE = /^(?:[0-9a-f]{2}(?:[:-][0-9a-f]{2}){5}|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}|[0-9a-f]{12})$/i;

  function macQuery(text) {
    const t = String(text || '').trim();
    if (!t) return null;
    return [FULL_MAC_RE.test(t) ? 'mac' : 'mac_prefix', t];
  }

  function listView() {
    document.title = 'Tasks · LPMOS';
    const q = new URLSearchParams(location.search);
    const filter = {
      region: q.get('region_id') || '',
      status: q.get('status') || '',
      mac: q.get('mac') || q.get('mac_prefix') || '',
      offset: Math.max(0, parseInt(q.get('offset') || '0', 10) || 0),
    };
    const v = { sub: '*', alive: true };
    const rows = new Map(); // task id → { task, tr, badge, check, progressCell, widget }
    // The newest status each task had in a message, by revision: a list read
    // sent before a change can answer after its message arrived, and must
    // not put the older status back.
    const pushed = new Map(); // task id → { status, revision }
    // Operators select tasks on the page for a bulk approve, reject or
    // cancel. The selection only ever holds tasks shown on this page that
    // have not ended: a refresh drops the others, so a bulk call never acts
    // on a task the operator cannot see.
    const operator = canOperate();
    const selected = new Set();

    const regionSel = el('select', { id: 'filter-region', name: 'region_id' }, el('option', { value: '', text: 'All regions' }));
    if (filter.region) append(regionSel, [el('option', { value: filter.region, text: filter.region })]);
    regionSel.value = filter.region;
    const statusSel = el('select', { id: 'filter-status', name: 'status' },
      el('option', { value: '', text: 'All statuses' }),
      el('option', { value: ACTIVE.join(','), text: 'Active (not finished)' }),
      STATUSES.map((s) => el('option', { value: s, text: s.replace(/_/g, ' ') })));
    statusSel.value = filter.status;
    if (statusSel.value !== filter.status) {
      append(statusSel, [el('option', { value: filter.status, text: filter.status })]);
      statusSel.value = filter.status;
    }
    const macInput = el('input', { type: 'text', id: 'filter-mac', name: 'mac', value: filter.mac, placeholder: '52:54:00 or a whole MAC', autocomplete: 'off', spellcheck: 'false' });

    const countEl = el('span', { class: 'muted', id: 'task-count' });
    const alerts = el('div');
    const tbody = el('tbody');
    const pager = el('div', { class: 'pager' });

    function applyFilters() {
      filter.region = regionSel.value;
      filter.status = statusSel.value;
      filter.mac = macInput.value.trim();
      filter.offset = 0;
      bulkResult.replaceChildren(); // it spoke of tasks this page may no longer show
      history.replaceState(null, '', listURL());
      refresh();
    }
    regionSel.addEventListener('change', applyFilters);
    statusSel.addEventListener('change', applyFilters);
    // The MAC search applies as the operator types (after a pause), or at
    // once on Enter.
    let macTimer = null;
    macInput.addEventListener('input', () => {
      macInput.classList.remove('invalid');
      clearTimeout(macTimer);
      macTimer = setTimeout(applyFilters, 300);
    });
    macInput.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      e.preventDefault();
      clearTimeout(macTimer);
      applyFilters();
    });

    function listURL() {
      const p = new URLSearchParams();
      if (filter.region) p.set('region_id', filter.region);
      if (filter.status) p.set('status', filter.status);
      const mq = macQuery(filter.mac);
      if (mq) p.set(mq[0], mq[1]);
      if (filter.offset) p.set('offset', String(filter.offset));
      const s = p.toString();
      return location.pathname + (s ? '?' + s : '');
    }

    // --- Bulk actions (operators only).
    const selectAll = el('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'Select every task on this page' });
    const bulkCount = el('span', { id: 'bulk-count', class: 'bulk-count' });
    const bulkApprove = el('button', { type: 'button', class: 'btn btn-ok btn-small', id: 'bulk-approve', text: 'Approve…' });
    const bulkReject = el('button', { type: 'button', class: 'btn btn-danger btn-small', id: 'bulk-reject', text: 'Reject…' });
    const bulkCancel = el('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'bulk-cancel', text: 'Cancel tasks…' });
    const bulkClear = el('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'bulk-clear', text: 'Clear selection' });
    const confirmTitle = el('h2', { id: 'bulk-confirm-title' });
    const confirmNote = el('p', { class: 'muted', id: 'bulk-confirm-note' });
    const confirmLabel = el('label', { for: 'bulk-text' });
    const confirmText = el('input', { type: 'text', id: 'bulk-text', name: 'bulk-text', autocomplete: 'off' });
    const confirmBtn = el('button', { type: 'button', class: 'btn', id: 'bulk-confirm-btn' });
    const confirmKeep = el('button', { type: 'button', class: 'btn btn-secondary', id: 'bulk-keep', text: 'Go back' });
    const confirmBox = el('div', { class: 'bulk-confirm', id: 'bulk-confirm', hidden: true },
      confirmTitle, confirmNote,
      el('div', { class: 'field' }, confirmLabel, confirmText),
      el('div', { class: 'btn-row' }, confirmBtn, confirmKeep));
    const bulkBar = el('section', { class: 'panel bulk-bar', id: 'bulk-bar', hidden: true },
      el('div', { class: 'btn-row' }, bulkCount, el('div', { class: 'spacer' }), bulkApprove, bulkReject, bulkCancel, bulkClear),
      confirmBox);
    const bulkResult = el('div', { id: 'bulk-result' });

    // The three moves: the endpoint, what the text field means, and the
    // words of the confirmation and of the result.
    const MOVES = {
      approve: { path: '/api/v1/tasks/approve', field: 'notes', label: 'Notes (optional)', verb: 'Approve', done: 'Approved', btn: 'btn btn-ok' },
      reject: { path: '/api/v1/tasks/reject', field: 'reason', label: 'Reason (required)', verb: 'Reject', done: 'Rejected', btn: 'btn btn-danger', required: true },
      cancel: { path: '/api/v1/tasks/cancel', field: 'reason', label: 'Reason (optional)', verb: 'Cancel', done: 'Cancelled', btn: 'btn btn-danger' },
    };
    let pending = null; // the move being confirmed

    function plural(n, word) {
      return n + ' ' + word + (n === 1 ? '' : 's');
    }

    function waitingCount() {
      let n = 0;
      for (const id of selected) {
        const row = rows.get(id);
        if (row && row.task.status === 'pending_approval') n++;
      }
      return n;
    }

    function updateBulk() {
      if (!operator) return;
      const n = selected.size;
      bulkBar.hidden = n === 0;
      if (n === 0) closeConfirm();
      const waiting = waitingCount();
      bulkCount.textContent = plural(n, 'task') + ' selected' + (n ? ' · ' + waiting + ' waiting for approval' : '');
      bulkApprove.disabled = waiting === 0;
      bulkReject.disabled = waiting === 0;
      let selectable = 0;
      for (const row of rows.values()) if (row.check && !row.check.disabled) selectable++;
      selectAll.disabled = selectable === 0;
      selectAll.checked = selectable > 0 && n === selectable;
      selectAll.indeterminate = n > 0 && n < selectable;
    }

    function openConfirm(name) {
      const m = MOVES[name];
      const n = selected.size;
      const waiting = waitingCount();
      pending = name;
      confirmTitle.textContent = m.verb + ' ' + plural(n, 'selected task') + '?';
      confirmNote.textContent = name === 'cancel'
        ? 'Each machine stops being provisioned; a new task can be created for it afterwards.'
        : (waiting < n ? (n - waiting) + ' of them ' + (n - waiting === 1 ? 'is' : 'are') + ' not waiting for approval and will not move. ' : '') +
          'Check each machine’s hardware before you ' + m.verb.toLowerCase() + ' in bulk.';
      confirmLabel.textContent = m.label;
      confirmText.value = '';
      confirmText.classList.remove('invalid');
      confirmBtn.className = m.btn;
      confirmBtn.textContent = m.verb + ' ' + plural(n, 'task');
      confirmBtn.disabled = false;
      confirmBox.hidden = false;
      confirmText.focus();
    }

    function closeConfirm() {
      pending = null;
      confirmBox.hidden = true;
    }

    bulkApprove.addEventListener('click', () => openConfirm('approve'));
    bulkReject.addEventListener('click', () => openConfirm('reject'));
    bulkCancel.addEventListener('click', () => openConfirm('cancel'));
    confirmKeep.addEventListener('click', closeConfirm);
    bulkClear.addEventListener('click', () => { setSelection([]); });
    confirmText.addEventListener('input', () => confirmText.classList.remove('invalid'));
    confirmText.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); confirmBtn.click(); } });
    selectAll.addEventListener('change', () => {
      const ids = [];
      if (selectAll.checked) for (const [id, row] of rows) if (row.check && !row.check.disabled) ids.push(id);
      setSelection(ids);
    });

    function setSelection(ids) {
      selected.clear();
      for (const id of ids) selected.add(id);
      for (const [id, row] of rows) if (row.check) row.check.checked = selected.has(id);
      closeConfirm();
      updateBulk();
    }

    confirmBtn.addEventListener('click', async () => {
      const name = pending;
      if (!name) return;
      const m = MOVES[name];
      const text = confirmText.value.trim();
      if (m.required && !text) {
        confirmText.classList.add('invalid');
        confirmText.focus();
        return;
      }
      const ids = [...selected];
      const body = { ids };
      if (text) body[m.field] = text;
      confirmBtn.disabled = true;
      bulkResult.replaceChildren();
      let res;
      try {
        res = await api('POST', m.path, { body });
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        confirmBtn.disabled = false;
        fill(bulkResult, alertBox('error', m.verb + ' did not work', err.message));
        refresh(); // after a lost answer some tasks may have moved
        return;
      }
      if (!v.alive) return;
      showResult(m, ids.length, res.data || {});
      setSelection([]);
      refresh();
    });

    // showResult says how many tasks moved and, for each one that did not,
    // why (as the API explains it).
    function showResult(m, asked, data) {
      const moved = Array.isArray(data.moved) ? data.moved : [];
      const failed = Array.isArray(data.failed) ? data.failed : [];
      const title = m.done + ' ' + moved.length + ' of ' + plural(asked, 'task') + '.';
      fill(bulkResult, el('div', { class: 'alert alert-' + (failed.length ? 'warn' : 'info'), role: 'status' },
        el('div', { class: 'alert-title', text: title }),
        failed.length ? el('div', { text: plural(failed.length, 'task') + ' did not move:' }) : null,
        failed.length ? el('ul', { class: 'bulk-failed' }, failed.map((f) => {
          const id = f && typeof f.task_id === 'string' ? f.task_id : '';
          const e = (f && f.error) || {};
          return el('li', { dataset: { taskId: id } },
            TASK_ID_RE.test(id) ? link(taskPath(id), shortID(id), 'mono') : el('span', { class: 'mono', text: id || '?' }),
            ': ', String(e.message || 'not moved'), e.code ? el('span', { class: 'muted', text: ' (' + e.code + ')' }) : null);
        })) : null));
    }

    const columns = ['Status', 'Task', 'Region', 'MAC', 'OS', 'Created', 'Progress'];
    fill(app,
      el('div', { class: 'page-head' },
        el('h1', { text: 'Install tasks' }), countEl,
        el('div', { class: 'spacer' }),
        operator ? link('/tasks/create', 'New task', 'btn') : null),
      alerts,
      el('div', { class: 'panel' },
        el('div', { class: 'filters' },
          el('div', { class: 'field' }, el('label', { for: 'filter-region', text: 'Region' }), regionSel),
          el('div', { class: 'field' }, el('label', { for: 'filter-status', text: 'Status' }), statusSel),
          el('div', { class: 'field' }, el('label', { for: 'filter-mac', text: 'MAC address' }), macInput))),
      operator ? bulkBar : null,
      bulkResult,
      el('div', { class: 'panel' },
        el('div', { class: 'table-wrap' },
          el('table', { class: 'tasks', id: 'tasks' },
            el('thead', null, el('tr', null,
              operator ? el('th', { class: 'select-cell' }, selectAll) : null,
              columns.map((h) => el('th', { text: h })))),
            tbody)),
        pager));

    // The region filter offers the regions the control plane knows.
    api('GET', '/api/v1/regions').then((res) => {
      if (!v.alive) return;
      const regions = (res.data && res.data.regions) || [];
      for (const r of regions) {
        if (!r || typeof r.region_id !== 'string' || r.region_id === filter.region) continue;
        append(regionSel, [el('option', { value: r.region_id, text: r.region_id })]);
      }
    }).catch(() => {});

    function progressCell(row) {
      const t = row.task;
      const cell = row.progressCell;
      if (t.status === 'installing' || (t.status === 'approved' && t.progress) || (t.status === 'completed' && t.progress)) {
        if (!row.widget) {
          row.widget = progressWidget(false);
          fill(cell, row.widget.root);
        }
        row.widget.set(t.progress || { stage: '', percentage: 0 }, t.status);
        return;
      }
      row.widget = null;
      if (t.status === 'pending_approval') {
        fill(cell, link(taskPath(t.task_id, '/approve'), 'Review hardware →'));
      } else if (t.status === 'approved') {
        fill(cell, el('span', { class: 'muted', text: 'waiting for the agent' }));
      } else {
        fill(cell, el('span', { class: 'muted', text: '—' }));
      }
    }

    // checkState follows a row's status: a task that has ended cannot be
    // selected (no bulk move applies to it).
    function checkState(row) {
      if (!row.check) return;
      const ended = TERMINAL.has(row.task.status);
      row.check.disabled = ended;
      if (ended && selected.delete(row.task.task_id)) closeConfirm();
      row.check.checked = selected.has(row.task.task_id);
    }

    function renderRow(t) {
      // List entries are summaries with the request's fields at the top
      // level; a full task nests them under metadata. Accept both.
      const md = t.metadata || t;
      const row = { task: t, badge: badge(t.status), progressCell: el('td', { class: 'progress-cell' }), check: null };
      if (operator) {
        row.check = el('input', { type: 'checkbox', class: 'select-task', 'aria-label': 'Select task ' + shortID(t.task_id) });
        row.check.addEventListener('change', () => {
          if (row.check.checked) selected.add(t.task_id);
          else selected.delete(t.task_id);
          closeConfirm();
          updateBulk();
        });
        checkState(row);
      }
      row.tr = el('tr', { dataset: { taskId: t.task_id } },
        operator ? el('td', { class: 'select-cell' }, row.check) : null,
        el('td', { class: 'status-cell' }, row.badge),
        el('td', null, link(taskPath(t.task_id), shortID(t.task_id), 'mono'), tagChips(md.tags)),
        el('td', { text: dash(md.region_id) }),
        el('td', { class: 'mono nowrap', text: dash(md.target_mac) }),
        el('td', { class: 'nowrap', text: [md.os_type, md.os_version].filter(Boolean).join(' ') || '—' }),
        el('td', { class: 'nowrap' }, timeEl(md.created_at)),
        row.progressCell);
      progressCell(row);
      return row;
    }

    const refresh = refresher(async () => {
      const p = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(filter.offset) });
      if (filter.region) p.set('region_id', filter.region);
      if (filter.status) p.set('status', filter.status);
      const mq = macQuery(filter.mac);
      if (mq) p.set(mq[0], mq[1]);
      let res;
      try {
        res = await api('GET', '/api/v1/tasks?' + p.toString());
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        if (err.field === 'mac' || err.field === 'mac_prefix') {
          macInput.classList.add('invalid');
          fill(alerts, alertBox('error', 'Not a MAC address to search for', err.message));
        } else {
          fill(alerts, alertBox('error', 'Could not load tasks', err.message));
        }
        return;
      }
      if (!v.alive) return;
      alerts.replaceChildren();
      macInput.classList.remove('invalid');
      const page = res.data || {};
      const tasks = Array.isArray(page.tasks) ? page.tasks : [];
      const total = Number(page.total) || 0;
      if (!tasks.length && total > 0 && filter.offset > 0) {
        // The page emptied under us (tasks finished or were filtered away).
        filter.offset = Math.max(0, filter.offset - PAGE_SIZE);
        history.replaceState(null, '', listURL());
        refresh.soon();
        return;
      }
      rows.clear();
      const trs = [];
      for (const t of tasks) {
        if (!t || typeof t.task_id !== 'string') continue;
        const newer = pushed.get(t.task_id);
        if (newer && typeof t.revision === 'number' && t.revision < newer.revision) {
          t.status = newer.status;
          t.revision = newer.revision;
        } else {
          pushed.delete(t.task_id); // the read caught up with the message
        }
        const row = renderRow(t);
        rows.set(t.task_id, row);
        trs.push(row.tr);
      }
      // Forget the tasks this page does not show (a message about one of
      // those schedules a read after it).
      for (const id of pushed.keys()) if (!rows.has(id)) pushed.delete(id);
      // Keep only the selected tasks this page still shows.
      for (const id of [...selected]) {
        if (!rows.has(id)) {
          selected.delete(id);
          closeConfirm();
        }
      }
      updateBulk();
      const filtered = filter.region || filter.status || filter.mac;
      if (!trs.length) {
        trs.push(el('tr', null, el('td', { colspan: String(columns.length + (operator ? 1 : 0)), class: 'empty' },
          filtered ? 'No tasks match these filters.' : 'No tasks yet. ',
          !filtered && operator ? link('/tasks/create', 'Create the first one.') : null)));
      }
      fill(tbody, trs);
      countEl.textContent = total === 1 ? '1 task' : total + ' tasks';
      renderPager(total, tasks.length);
    });

    function renderPager(total, shown) {
      const limit = PAGE_SIZE;
      const from = total ? filter.offset + 1 : 0;
      const to = filter.offset + shown;
      const prev = el('button', { type: 'button', class: 'btn btn-secondary btn-small', text: '← Previous', disabled: filter.offset === 0 });
      const next = el('button', { type: 'button', class: 'btn btn-secondary btn-small', text: 'Next →', disabled: to >= total });
      prev.addEventListener('click', () => { filter.offset = Math.max(0, filter.offset - limit); history.replaceState(null, '', listURL()); refresh(); });
      next.addEventListener('click', () => { filter.offset += limit; history.replaceState(null, '', listURL()); refresh(); });
      fill(pager, prev, el('span', { class: 'muted', text: from + '–' + to + ' of ' + total }), next);
    }

    // matches says whether a status change can concern this page. Status
    // messages carry no MAC, so with a MAC search a task not shown (a new
    // one, say) is refetched for in case it matches.
    function matches(status, region) {
      if (filter.region && region && region !== filter.region) return false;
      if (filter.status && !filter.status.split(',').includes(status)) return false;
      return true;
    }

    v.onMessage = function (msg) {
      const row = rows.get(msg.task_id);
      switch (msg.type) {
        case 'status':
          // Kept for the tasks shown or about to be (a read follows); the
          // next read forgets the others.
          if (typeof msg.revision === 'number' && (row || matches(msg.status, msg.region_id)) &&
              !(pushed.get(msg.task_id)?.revision >= msg.revision)) {
            pushed.set(msg.task_id, { status: msg.status, revision: msg.revision });
          }
          if (!row) {
            // A task we do not show: refetch if it belongs on this page.
            if (matches(msg.status, msg.region_id)) refresh.soon();
            return;
          }
          row.task.status = msg.status;
          if (typeof msg.revision === 'number') row.task.revision = msg.revision;
          setBadge(row.badge, msg.status);
          progressCell(row);
          checkState(row);
          updateBulk();
          if (!matches(msg.status, msg.region_id)) refresh.soon();
          break;
        case 'progress':
          if (!row) return;
          row.task.progress = { stage: msg.stage, percentage: msg.percentage, message: msg.message };
          progressCell(row);
          break;
      }
    };
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); clearTimeout(macTimer); };
    return v;
  }

  // ------------------------------------------------------------------
  // Regions: /regions. Each region's liveness, what it can install and how
  // many of its tasks are in each active status. Status changes arrive over
  // the socket and refetch the counts; heartbeats do not (a region renews
  // its heartbeat every few seconds), so the page also refetches on a timer
  // and ages the "last heartbeat" times in between.

  function fmtAgo(s) {
    if (!s || String(s).startsWith('0001-')) return 'never';
    const d = new Date(s);
    if (isNaN(d.getTime())) return String(s);
    const secs = Math.max(0, Math.round((Date.now() - d.getTime()) / 1000));
    if (secs < 5) return 'just now';
    if (secs < 90) return secs + ' s ago';
    if (secs < 90 * 60) return Math.round(secs / 60) + ' min ago';
    if (secs < 36 * 3600) return Math.round(secs / 3600) + ' h ago';
    return Math.round(secs / 86400) + ' d ago';
  }

  function regionsView() {
    document.title = 'Regions · LPMOS';
    const v = { sub: '*', alive: true };
    const REFRESH_MS = 5000;

    const countEl = el('span', { class: 'muted', id: 'region-count' });
    const alerts = el('div');
    const tbody = el('tbody');
    let ages = []; // [time element, heartbeat] to re-age every second

    fill(app,
      el('div', { class: 'page-head' },
        el('h1', { text: 'Regions' }), countEl),
      alerts,
      el('div', { class: 'panel' },
        el('div', { class: 'table-wrap' },
          el('table', { class: 'regions', id: 'regions' },
            el('thead', null, el('tr', null,
              ['Region', 'Status', 'Last heartbeat', 'Capabilities', 'Active tasks'].map((h) => el('th', { text: h })))),
            tbody))));

    // pendingImages names the catalogue images the region has not made
    // ready (downloading, failed and why); the ready ones are among its OSes.
    function pendingImages(caps) {
      const waiting = (Array.isArray(caps.images) ? caps.images : []).filter((im) => im && im.id && im.state !== 'ready');
      if (!waiting.length) return null;
      return el('div', { class: 'tags' }, waiting.map((im) => el('span', { class: 'tag tag-image-' + (im.state === 'failed' ? 'failed' : 'waiting'),
        text: 'image ' + im.id + ': ' + im.state + (im.reason ? ' (' + im.reason + ')' : '') })));
    }

    function capabilitiesCell(caps) {
      if (!caps || typeof caps !== 'object') return el('span', { class: 'muted', text: 'none published' });
      const os = Array.isArray(caps.os) ? caps.os.filter((o) => o && o.os_type) : [];
      const services = caps.services && typeof caps.services === 'object' ? Object.keys(caps.services).sort() : [];
      return [
        os.length
          ? el('div', { class: 'tags' }, os.map((o) => el('span', { class: 'tag', text: o.os_type + ' ' + (o.os_version || '') + (o.kind ? ' (' + o.kind + ')' : '') })))
          : el('div', { class: 'muted', text: 'no OS catalogue' }),
        services.length
          ? el('div', { class: 'tags' }, services.map((k) => el('span', { class: 'tag tag-service', text: k + ': ' + caps.services[k] })))
          : null,
        pendingImages(caps),
        caps.region_url ? el('div', { class: 'cap-line' }, 'Machines reach it at ', el('span', { class: 'mono', text: caps.region_url })) : null,
        caps.version ? el('div', { class: 'cap-line muted', text: 'Version ' + caps.version }) : null,
      ];
    }

    function activeCell(id, counts) {
      if (counts === null || counts === undefined || typeof counts !== 'object') {
        return el('span', { class: 'muted', text: 'counting…' });
      }
      const shown = ACTIVE.filter((s) => Number(counts[s]) > 0);
      if (!shown.length) return el('span', { class: 'muted active-none', text: 'none' });
      const total = shown.reduce((n, s) => n + Number(counts[s]), 0);
      return el('div', { class: 'active-counts' },
        el('span', { class: 'active-total', text: total + ' active' }),
        shown.map((s) => el('a', {
          class: 'count-chip',
          href: '/tasks?region_id=' + encodeURIComponent(id) + '&status=' + encodeURIComponent(s),
          'data-nav': true,
          dataset: { status: s },
          title: 'List the ' + s.replace(/_/g, ' ') + ' tasks of ' + id,
        }, badge(s), el('span', { class: 'count', text: String(Number(counts[s])) }))));
    }

    function renderRow(r) {
      const online = r.status === 'online';
      const when = el('time', { datetime: r.last_heartbeat || '', title: fmtTime(r.last_heartbeat) }, fmtAgo(r.last_heartbeat));
      if (r.last_heartbeat) ages.push([when, r.last_heartbeat]);
      return el('tr', { dataset: { regionId: r.region_id } },
        el('td', null, el('a', { href: '/tasks?region_id=' + encodeURIComponent(r.region_id), 'data-nav': true, class: 'mono', text: r.region_id })),
        el('td', null, el('span', { class: 'badge region-status ' + (online ? 'region-online' : 'region-offline'), text: online ? 'online' : 'offline' }),
          typeof r.leader === 'string' && r.leader
            ? el('div', { class: 'cap-line muted region-leader', title: 'The region process that leads it (the others are standbys)' }, 'led by ', el('span', { class: 'mono', text: r.leader }))
            : null),
        el('td', { class: 'nowrap' }, when),
        el('td', { class: 'caps-cell' }, capabilitiesCell(r.capabilities)),
        el('td', { class: 'active-cell' }, activeCell(r.region_id, r.active_tasks)));
    }

    const refresh = refresher(async () => {
      let res;
      try {
        res = await api('GET', '/api/v1/regions');
      } catch (err) {
        if (v.alive && !err.signedOut) fill(alerts, alertBox('error', 'Could not load the regions', err.message));
        return;
      }
      if (!v.alive) return;
      alerts.replaceChildren();
      const regions = ((res.data && res.data.regions) || []).filter((r) => r && typeof r.region_id === 'string');
      ages = [];
      const trs = regions.map(renderRow);
      if (!trs.length) {
        trs.push(el('tr', null, el('td', { colspan: '5', class: 'empty', text: 'No region has registered with the control plane yet.' })));
      }
      fill(tbody, trs);
      const online = regions.filter((r) => r.status === 'online').length;
      countEl.textContent = (regions.length === 1 ? '1 region' : regions.length + ' regions') + ' · ' + online + ' online';
    });

    const poll = setInterval(() => refresh(), REFRESH_MS);
    const tick = setInterval(() => {
      for (const [e, s] of ages) e.textContent = fmtAgo(s);
    }, 1000);

    v.onMessage = function (msg) {
      if (msg.type === 'status') refresh.soon();
    };
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); clearInterval(poll); clearInterval(tick); };
    return v;
  }

  // ------------------------------------------------------------------
  // Dead letters: /dlq. Tasks that failed on their last allowed attempt
  // and webhook deliveries that gave up, newest first, until an operator
  // acknowledges them.

  function dlqView() {
    document.title = 'Dead letters · LPMOS';
    const v = { sub: '*', alive: true };
    const REFRESH_MS = 10000;
    const params = new URLSearchParams(location.search);
    let kind = ['tasks', 'webhooks'].includes(params.get('kind')) ? params.get('kind') : '';
    let offset = 0;

    const countEl = el('span', { class: 'muted', id: 'dlq-count' });
    const alerts = el('div', { id: 'dlq-alerts' });
    const tbody = el('tbody');
    const kindSel = el('select', { id: 'dlq-kind', name: 'kind' },
      [['', 'All kinds'], ['tasks', 'Tasks'], ['webhooks', 'Webhook deliveries']].map(([k, label]) =>
        el('option', { value: k, selected: k === kind, text: label })));
    const prev = el('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'dlq-prev', text: '← Newer' });
    const next = el('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'dlq-next', text: 'Older →' });

    fill(app,
      el('div', { class: 'page-head' },
        el('h1', { text: 'Dead letters' }), countEl, el('div', { class: 'spacer' }), kindSel),
      el('p', { class: 'muted', text: 'Tasks that failed on their last allowed attempt, and webhook deliveries that gave up. Acknowledge an entry once it has been dealt with.' }),
      alerts,
      el('div', { class: 'panel' },
        el('div', { class: 'table-wrap' },
          el('table', { class: 'dlq', id: 'dlq' },
            el('thead', null, el('tr', null,
              ['When', 'Kind', 'What', 'Error', 'Attempts', ''].map((h) => el('th', { text: h })))),
            tbody)),
        el('div', { class: 'btn-row' }, prev, next)));

    kindSel.addEventListener('change', () => {
      kind = kindSel.value;
      offset = 0;
      history.replaceState(null, '', '/dlq' + (kind ? '?kind=' + encodeURIComponent(kind) : ''));
      refresh();
    });
    prev.addEventListener('click', () => { offset = Math.max(0, offset - PAGE_SIZE); refresh(); });
    next.addEventListener('click', () => { offset += PAGE_SIZE; refresh(); });

    async function acknowledge(e, button) {
      button.disabled = true;
      try {
        await api('DELETE', '/api/v1/dlq/' + encodeURIComponent(e.kind) + '/' + encodeURIComponent(e.id));
        if (!v.alive) return;
        fill(alerts, alertBox('info', null, 'Acknowledged.'));
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        if (err.status !== 404) fill(alerts, alertBox('error', 'Could not acknowledge it', err.message));
      } finally {
        button.disabled = false;
      }
      refresh();
    }

    function renderRow(e) {
      let what, error, attempts;
      if (e.kind === 'tasks' && e.task && typeof e.task === 'object') {
        const t = e.task;
        const err = t.error || {};
        what = [TASK_ID_RE.test(e.id) ? link(taskPath(e.id), shortID(e.id), 'mono') : el('span', { class: 'mono', text: e.id }),
          el('div', { class: 'muted', text: [t.region_id, t.target_mac, [t.os_type, t.os_version].filter(Boolean).join(' ')].filter(Boolean).join(' · ') })];
        error = [el('span', { class: 'mono', text: dash(err.code) }), err.stage ? ' in ' + err.stage : '',
          el('div', { class: 'msg', text: dash(err.message) })];
        attempts = (Number(t.attempts) || 1) + ' of ' + (Number(t.max_attempts) || 1);
      } else if (e.kind === 'webhooks' && e.webhook && typeof e.webhook === 'object') {
        const w = e.webhook;
        what = [el('span', { text: dash(w.event) + ' → ' }), el('span', { class: 'mono', text: dash(w.url) }),
          el('div', { class: 'muted' }, 'task ', TASK_ID_RE.test(w.task_id || '') ? link(taskPath(w.task_id), shortID(w.task_id), 'mono') : dash(w.task_id))];
        error = el('div', { class: 'msg', text: dash(w.error) });
        attempts = String(Number(w.attempts) || 0);
      } else {
        return null;
      }
      const ack = canOperate()
        ? el('button', { type: 'button', class: 'btn btn-secondary btn-small dlq-ack', text: 'Acknowledge' })
        : null;
      if (ack) ack.addEventListener('click', () => acknowledge(e, ack));
      return el('tr', { dataset: { kind: e.kind, id: e.id } },
        el('td', { class: 'when' }, timeEl(e.at)),
        el('td', { text: e.kind === 'tasks' ? 'task' : 'webhook' }),
        el('td', null, what),
        el('td', null, error),
        el('td', { text: attempts }),
        el('td', null, ack));
    }

    const refresh = refresher(async () => {
      let res;
      const q = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(offset) });
      if (kind) q.set('kind', kind);
      try {
        res = await api('GET', '/api/v1/dlq?' + q.toString());
      } catch (err) {
        if (v.alive && !err.signedOut) fill(alerts, alertBox('error', 'Could not load the dead letters', err.message));
        return;
      }
      if (!v.alive) return;
      const data = res.data || {};
      const entries = (Array.isArray(data.entries) ? data.entries : []).filter((e) => e && typeof e.id === 'string');
      const total = Number(data.total) || 0;
      if (!entries.length && offset > 0 && total > 0) { offset = Math.max(0, offset - PAGE_SIZE); refresh.soon(); return; }
      const trs = entries.map(renderRow).filter(Boolean);
      if (!trs.length) trs.push(el('tr', null, el('td', { colspan: '6', class: 'empty', text: 'No dead letters.' })));
      fill(tbody, trs);
      countEl.textContent = total === 1 ? '1 entry' : total + ' entries';
      prev.disabled = offset === 0;
      next.disabled = offset + entries.length >= total;
    });

    const poll = setInterval(() => refresh(), REFRESH_MS);
    // A task failing on its last attempt is a status change: refresh then.
    v.onMessage = function (msg) {
      if (msg.type === 'status' && msg.status === 'failed') refresh.soon();
    };
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); clearInterval(poll); };
    return v;
  }

  // ------------------------------------------------------------------
  // Machines: /machines and /machines/{mac}. The control plane's inventory:
  // machines an operator registered (with their BMC) and machines known only
  // from an agent's hardware report (discovered). Nothing about machines
  // comes over the WebSocket, so both pages poll; the power outcome of a
  // request shows up once the machine's region has carried it out.

  // machinePath is only ever given MACs that passed MAC_RE, so the path
  // needs no encoding.
  function machinePath(mac) {
    return '/machines/' + mac;
  }

  function machineHW(m) {
    const r = m && m.last_report;
    return r && r.hardware && typeof r.hardware === 'object' ? r.hardware : null;
  }

  function largestDisk(hw) {
    const disks = hw && Array.isArray(hw.disks) ? hw.disks : [];
    return disks.reduce((n, d) => Math.max(n, Number(d && d.size_gb) || 0), 0);
  }

  function vendorModel(hw) {
    const sys = (hw && hw.system) || {};
    return [sys.vendor, sys.product].filter(Boolean).join(' ');
  }

  function powerState(m) {
    const p = m && m.power && typeof m.power === 'object' ? m.power : null;
    const s = p && typeof p.state === 'string' ? p.state : 'unknown';
    return ['on', 'off'].includes(s) ? s : 'unknown';
  }

  function powerBadge(m) {
    const s = powerState(m);
    return el('span', { class: 'badge power-' + s, text: s });
  }

  function machinesView() {
    document.title = 'Machines · LPMOS';
    const v = { sub: null, alive: true, onMessage() {} };
    const REFRESH_MS = 15000;
    const operator = canOperate();
    const q = new URLSearchParams(location.search);
    // The filters, named as the list API's query parameters. Tags are
    // typed as key=value, comma-separated, and sent as one tag parameter
    // each.
    const FIELDS = [
      ['mac_prefix', 'MAC prefix', '52:54:00'],
      ['region', 'Region', 'dc1'],
      ['tag', 'Tags', 'rack=r7, role=db'],
      ['min_cores', 'Min cores', '16'],
      ['min_memory_gb', 'Min memory', 'GB, e.g. 64'],
      ['vendor', 'Vendor', 'Dell'],
      ['model', 'Model', 'R650'],
    ];
    const NUMERIC = new Set(['min_cores', 'min_memory_gb']);
    const inputs = {};
    for (const [name, , placeholder] of FIELDS) {
      const value = name === 'tag' ? q.getAll('tag').join(', ') : (q.get(name) || '');
      inputs[name] = el('input', {
        type: 'text', id: 'mf-' + name.replace(/_/g, '-'), name, value, placeholder,
        inputmode: NUMERIC.has(name) ? 'numeric' : null, autocomplete: 'off', spellcheck: 'false',
      });
    }
    // Pages follow the API's cursor: "after" is the last MAC of the page
    // before. The cursors of the pages already seen make Previous work.
    let cursor = { after: '', offset: 0 };
    let back = [];

    const countEl = el('span', { class: 'muted', id: 'machine-count' });
    const alerts = el('div', { id: 'machines-alerts' });
    const tbody = el('tbody');
    const prev = el('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'machines-prev', text: '← Previous' });
    const next = el('button', { type: 'button', class: 'btn btn-secondary btn-small', id: 'machines-next', text: 'Next →' });
    const range = el('span', { class: 'muted' });
    let nextAfter = '';
    let shown = 0;
    const columns = ['MAC', 'Region', 'Vendor / model', 'Cores', 'Memory', 'Largest disk', 'Tags', 'BMC', 'Power', 'Last seen'];

    function filters() {
      const p = new URLSearchParams();
      for (const [name] of FIELDS) {
        const val = inputs[name].value.trim();
        if (!val) continue;
        if (name === 'tag') {
          for (const t of val.split(',').map((x) => x.trim()).filter(Boolean)) p.append('tag', t);
        } else {
          p.set(name, val);
        }
      }
      return p;
    }

    function apply() {
      cursor = { after: '', offset: 0 };
      back = [];
      const s = filters().toString();
      history.replaceState(null, '', '/machines' + (s ? '?' + s : ''));
      refresh();
    }

    let timer = null;
    for (const input of Object.values(inputs)) {
      input.addEventListener('input', () => {
        input.classList.remove('invalid');
        clearTimeout(timer);
        timer = setTimeout(apply, 350);
      });
      input.addEventListener('keydown', (e) => {
        if (e.key !== 'Enter') return;
        e.preventDefault();
        clearTimeout(timer);
        apply();
      });
    }
    prev.addEventListener('click', () => {
      if (!back.length) return;
      cursor = back.pop();
      refresh();
    });
    next.addEventListener('click', () => {
      if (!nextAfter) return;
      back.push(cursor);
      cursor = { after: nextAfter, offset: cursor.offset + shown };
      refresh();
    });

    // Registering a machine (operators): its MAC, region, tags and BMC.
    // The password goes to the API once and is never shown again; the
    // field is emptied after every attempt.
    const reg = {
      mac: el('input', { type: 'text', id: 'r-mac', name: 'mac', placeholder: '52:54:00:aa:00:01', autocomplete: 'off', spellcheck: 'false', required: true }),
      region: el('input', { type: 'text', id: 'r-region', name: 'region', placeholder: 'dc1', autocomplete: 'off', spellcheck: 'false' }),
      tags: el('input', { type: 'text', id: 'r-tags', name: 'tags', placeholder: 'rack=r7, role=db', autocomplete: 'off', spellcheck: 'false' }),
      driver: el('select', { id: 'r-driver', name: 'bmc.driver' },
        el('option', { value: '', text: 'No BMC' }), el('option', { value: 'ipmi', text: 'IPMI' }), el('option', { value: 'redfish', text: 'Redfish' })),
      address: el('input', { type: 'text', id: 'r-address', name: 'bmc.address', placeholder: '10.1.0.7 or 10.1.0.7:623', autocomplete: 'off', spellcheck: 'false' }),
      username: el('input', { type: 'text', id: 'r-username', name: 'bmc.username', autocomplete: 'off', spellcheck: 'false' }),
      password: el('input', { type: 'password', id: 'r-password', name: 'bmc.password', autocomplete: 'new-password' }),
      pin: el('input', { type: 'text', id: 'r-pin', name: 'bmc.cert_sha256', placeholder: 'SHA-256 of the BMC certificate', autocomplete: 'off', spellcheck: 'false' }),
    };
    const regAlerts = el('div', { id: 'register-alerts' });
    const regSubmit = el('button', { type: 'submit', class: 'btn', id: 'r-submit', text: 'Register' });
    const regCancel = el('button', { type: 'button', class: 'btn btn-secondary', text: 'Cancel' });
    const pinField = el('div', { class: 'field', id: 'r-pin-field' }, el('label', { for: 'r-pin', text: 'Certificate pin (Redfish)' }), reg.pin);
    const bmcFields = el('div', { class: 'form-grid wide', id: 'r-bmc' },
      el('div', { class: 'field' }, el('label', { for: 'r-address', text: 'BMC address' }), reg.address),
      el('div', { class: 'field' }, el('label', { for: 'r-username', text: 'BMC username' }), reg.username),
      el('div', { class: 'field' }, el('label', { for: 'r-password', text: 'BMC password' }), reg.password,
        el('div', { class: 'hint', text: 'Stored sealed; never shown again.' })),
      pinField);
    const showBMC = () => {
      bmcFields.hidden = !reg.driver.value;
      pinField.hidden = reg.driver.value !== 'redfish';
    };
    const regForm = el('form', { class: 'panel', id: 'register-form', novalidate: true, hidden: true },
      el('h2', { text: 'Register a machine' }),
      regAlerts,
      el('div', { class: 'form-grid' },
        el('div', { class: 'field' }, el('label', { for: 'r-mac', text: 'MAC address' }), reg.mac),
        el('div', { class: 'field' }, el('label', { for: 'r-region', text: 'Region' }), reg.region),
        el('div', { class: 'field' }, el('label', { for: 'r-tags', text: 'Tags' }), reg.tags),
        el('div', { class: 'field' }, el('label', { for: 'r-driver', text: 'BMC' }), reg.driver),
        bmcFields),
      el('div', { class: 'btn-row' }, regSubmit, regCancel));
    const regOpen = operator ? el('button', { type: 'button', class: 'btn', id: 'register-open', text: 'Register machine' }) : null;
    if (regOpen) {
      regOpen.addEventListener('click', () => { regForm.hidden = false; showBMC(); reg.mac.focus(); });
    }
    regCancel.addEventListener('click', () => { regForm.hidden = true; reg.password.value = ''; });
    reg.driver.addEventListener('change', showBMC);
    regForm.addEventListener('input', (e) => { if (e.target.classList) e.target.classList.remove('invalid'); });
    regForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      for (const i of Object.values(reg)) i.classList.remove('invalid');
      regAlerts.replaceChildren();
      const body = { mac: reg.mac.value.trim() };
      if (reg.region.value.trim()) body.region = reg.region.value.trim();
      const tags = {};
      for (const t of reg.tags.value.split(',').map((x) => x.trim()).filter(Boolean)) {
        const i = t.indexOf('=');
        if (i <= 0) {
          reg.tags.classList.add('invalid');
          fill(regAlerts, alertBox('error', 'The machine was not registered', 'Tags: "' + t + '" is not key=value.'));
          return;
        }
        tags[t.slice(0, i).trim()] = t.slice(i + 1).trim();
      }
      if (Object.keys(tags).length) body.tags = tags;
      if (reg.driver.value) {
        body.bmc = { driver: reg.driver.value, address: reg.address.value.trim() };
        if (reg.username.value.trim()) body.bmc.username = reg.username.value.trim();
        if (reg.password.value) body.bmc.password = reg.password.value;
        if (reg.driver.value === 'redfish' && reg.pin.value.trim()) body.bmc.cert_sha256 = reg.pin.value.trim();
      }
      const typedPassword = Boolean(body.bmc && body.bmc.password);
      reg.password.value = '';
      regSubmit.disabled = true;
      try {
        const res = await api('POST', '/api/v1/machines', { body });
        if (!v.alive) return;
        const m = res.data || {};
        navigate(MAC_RE.test(m.mac || '') ? machinePath(m.mac) : '/machines');
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        regSubmit.disabled = false;
        const f = String(err.field || '');
        const target = { mac: reg.mac, region: reg.region, 'bmc.driver': reg.driver, 'bmc.address': reg.address,
          'bmc.username': reg.username, 'bmc.password': reg.password, 'bmc.cert_sha256': reg.pin }[f] || (f.startsWith('tags') ? reg.tags : null);
        if (target) { target.classList.add('invalid'); target.focus(); }
        fill(regAlerts, alertBox('error', 'The machine was not registered',
          typedPassword ? String(err.message).replace(/\.?$/, '.') + ' Type the BMC password again.' : err.message));
      }
    });

    fill(app,
      el('div', { class: 'page-head' }, el('h1', { text: 'Machines' }), countEl, el('div', { class: 'spacer' }), regOpen),
      regForm,
      alerts,
      el('div', { class: 'panel' },
        el('div', { class: 'filters machine-filters', id: 'machine-filters' }, FIELDS.map(([name, label]) =>
          el('div', { class: 'field' + (NUMERIC.has(name) ? ' narrow' : '') }, el('label', { for: inputs[name].id, text: label }), inputs[name])))),
      el('div', { class: 'panel' },
        el('div', { class: 'table-wrap' },
          el('table', { class: 'machines', id: 'machines' },
            el('thead', null, el('tr', null, columns.map((h) => el('th', { text: h })))),
            tbody)),
        el('div', { class: 'pager' }, prev, range, next)));

    function renderRow(m) {
      const hw = machineHW(m);
      const cpu = (hw && hw.cpu) || {};
      const mem = (hw && hw.memory) || {};
      const b = m.bmc && typeof m.bmc === 'object' ? m.bmc : null;
      const pending = m.pending_power && typeof m.pending_power === 'object' ? m.pending_power : null;
      const failed = m.power && m.power.ok === false && m.power.action;
      const tr = el('tr', { class: 'machine-row', dataset: { mac: m.mac } },
        el('td', { class: 'nowrap' }, link(machinePath(m.mac), m.mac, 'mono'),
          m.registered ? null : el('div', { class: 'muted small', text: 'discovered' })),
        el('td', { text: dash(m.region) }),
        el('td', { text: hw ? vendorModel(hw) || '—' : '—' }),
        el('td', { text: hw ? String(Number(cpu.cores) || 0) : '—' }),
        el('td', { class: 'nowrap', text: hw ? fmtGB(mem.total_gb) : '—' }),
        el('td', { class: 'nowrap', text: hw && largestDisk(hw) ? fmtGB(largestDisk(hw)) : '—' }),
        el('td', null, tagChips(m.tags) || '—'),
        el('td', null, b ? [el('span', { text: dash(b.driver) + ' ' }), el('span', { class: 'mono', text: dash(b.address) })]
          : el('span', { class: 'muted', text: 'none' })),
        el('td', { class: 'nowrap' }, powerBadge(m),
          failed ? el('div', { class: 'power-error small', text: 'last ' + m.power.action + ' failed' }) : null,
          pending ? el('div', { class: 'muted small', text: String(pending.action) + ' requested' }) : null),
        el('td', { class: 'nowrap' }, el('time', { datetime: m.last_seen || '', title: fmtTime(m.last_seen) }, fmtAgo(m.last_seen))));
      // The whole row opens the machine; the MAC is the link for keyboards
      // and new tabs.
      tr.addEventListener('click', (e) => {
        if (e.target.closest && e.target.closest('a')) return;
        navigate(machinePath(m.mac));
      });
      return tr;
    }

    const refresh = refresher(async () => {
      const p = filters();
      p.set('limit', String(PAGE_SIZE));
      if (cursor.after) p.set('after', cursor.after);
      let res;
      try {
        res = await api('GET', '/api/v1/machines?' + p.toString());
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        const input = inputs[err.field];
        if (input) input.classList.add('invalid');
        fill(alerts, alertBox('error', input ? 'Check the filter' : 'Could not load the machines', err.message));
        return;
      }
      if (!v.alive) return;
      alerts.replaceChildren();
      for (const input of Object.values(inputs)) input.classList.remove('invalid');
      const page = res.data || {};
      const machines = (Array.isArray(page.machines) ? page.machines : []).filter((m) => m && MAC_RE.test(m.mac));
      const total = Number(page.total) || 0;
      if (!machines.length && cursor.after && back.length) {
        // The page emptied under us: start again from the first.
        cursor = { after: '', offset: 0 };
        back = [];
        refresh.soon();
        return;
      }
      const trs = machines.map(renderRow);
      if (!trs.length) {
        const filtered = [...filters().keys()].length > 0;
        trs.push(el('tr', null, el('td', { colspan: String(columns.length), class: 'empty',
          text: filtered ? 'No machines match these filters.'
            : 'No machines yet. Register one through the API, or PXE-boot one: its hardware report adds it.' })));
      }
      fill(tbody, trs);
      shown = machines.length;
      nextAfter = typeof page.next === 'string' ? page.next : '';
      countEl.textContent = total === 1 ? '1 machine' : total + ' machines';
      range.textContent = (total ? cursor.offset + 1 : 0) + '–' + (cursor.offset + shown) + ' of ' + total;
      prev.disabled = !back.length;
      next.disabled = !nextAfter;
    });

    const poll = setInterval(() => refresh(), REFRESH_MS);
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); clearInterval(poll); clearTimeout(timer); };
    return v;
  }

  function machineView(mac) {
    document.title = 'Machine ' + mac + ' · LPMOS';
    const v = { sub: null, alive: true, onMessage() {} };
    const REFRESH_MS = 5000;
    const api1 = '/api/v1/machines/' + encodeURIComponent(mac);
    const operator = canOperate();

    const alerts = el('div', { id: 'machine-alerts' });
    const kindBadge = el('span', { class: 'badge', id: 'machine-kind', hidden: true });
    const overviewBox = el('div', { id: 'machine-overview' });
    const bmcBox = el('div', { id: 'machine-bmc' });
    const powerBox = el('div', { id: 'machine-power' });
    const hwBox = el('div', { id: 'machine-hardware' });
    const tasksBox = el('div', { id: 'machine-tasks' });

    // Power buttons, for operators. On goes at once; off and cycle cut
    // power without a shutdown, so they ask first.
    const ACTIONS = {
      on: { label: 'Power on', cls: 'btn btn-ok' },
      off: { label: 'Power off…', cls: 'btn btn-danger', ask: 'Power off this machine?', verb: 'Power off',
        note: 'The BMC cuts power at once: whatever runs on the machine stops without shutting down.' },
      cycle: { label: 'Power cycle…', cls: 'btn btn-secondary', ask: 'Power cycle this machine?', verb: 'Power cycle',
        note: 'The BMC turns the machine off and on again at once, without shutting it down.' },
    };
    const buttons = [];
    const actions = el('div', { class: 'btn-row', id: 'power-actions' });
    const confirmTitle = el('h2', { id: 'power-confirm-title' });
    const confirmNote = el('p', { class: 'muted' });
    const confirmBtn = el('button', { type: 'button', class: 'btn btn-danger', id: 'power-confirm-btn' });
    const keepBtn = el('button', { type: 'button', class: 'btn btn-secondary', text: 'Go back' });
    const confirmPanel = el('section', { class: 'panel power-confirm', id: 'power-confirm', hidden: true },
      confirmTitle, confirmNote, el('div', { class: 'btn-row' }, confirmBtn, keepBtn));
    let asked = null;
    if (operator) {
      for (const [a, d] of Object.entries(ACTIONS)) {
        const b = el('button', { type: 'button', class: d.cls, id: 'power-' + a, text: d.label });
        b.addEventListener('click', () => {
          if (!d.ask) { power(a); return; }
          asked = a;
          confirmTitle.textContent = d.ask;
          confirmNote.textContent = d.note;
          confirmBtn.textContent = d.verb;
          confirmPanel.hidden = false;
        });
        buttons.push(b);
        actions.appendChild(b);
      }
    }
    confirmBtn.addEventListener('click', () => { if (asked) power(asked); });
    keepBtn.addEventListener('click', () => { asked = null; confirmPanel.hidden = true; });

    fill(app,
      el('div', { class: 'page-head' },
        link('/machines', '← Machines'),
        el('h1', null, 'Machine ', el('span', { class: 'mono', text: mac })),
        kindBadge,
        el('div', { class: 'spacer' }),
        actions),
      alerts,
      confirmPanel,
      el('div', { class: 'grid-2', id: 'machine-grid' },
        el('section', { class: 'panel' }, el('h2', { text: 'Machine' }), overviewBox),
        el('div', { class: 'stack' },
          el('section', { class: 'panel' }, el('h2', { text: 'Power' }), powerBox),
          el('section', { class: 'panel' }, el('h2', { text: 'BMC' }), bmcBox))),
      el('section', { class: 'panel', id: 'machine-hardware-panel' }, el('h2', { text: 'Hardware' }), hwBox),
      el('section', { class: 'panel' }, el('h2', { text: 'Tasks' }), tasksBox));
    const bootTrace = bootTracePanel(mac);
    app.appendChild(bootTrace.node);

    async function power(a) {
      asked = null;
      confirmPanel.hidden = true;
      for (const b of buttons) b.disabled = true;
      try {
        const res = await api('POST', api1 + '/power', { body: { action: a } });
        if (!v.alive) return;
        const r = res.data || {};
        fill(alerts, alertBox('info', 'Power ' + a + ' requested (' + res.status + ' Accepted)',
          'The machine’s region carries it out' + (r.id ? ' (request ' + r.id + ')' : '') + '; the outcome shows under Power.'));
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        fill(alerts, alertBox('error', err.code === 'no_bmc' ? 'This machine has no BMC' : 'Power ' + a + ' was refused',
          err.message + ' (' + (err.status ? err.status + ' ' : '') + err.code + ')'));
      } finally {
        for (const b of buttons) b.disabled = false;
      }
      refresh();
    }

    function renderOverview(m) {
      const r = m.last_report && typeof m.last_report === 'object' ? m.last_report : null;
      fill(overviewBox, kv([
        ['MAC', el('span', { class: 'mono', text: m.mac })],
        ['Region', dash(m.region)],
        ['Record', m.registered
          ? ['registered', m.created_by ? ' by ' + m.created_by : '', m.created_at ? [' · ', timeEl(m.created_at)] : '']
          : 'discovered (known from its hardware report only)'],
        ['Updated', m.updated_by ? [m.updated_by, ' · ', timeEl(m.updated_at)] : undefined],
        ['Tags', tagChips(m.tags) || '—'],
        ['Last seen', timeEl(m.last_seen)],
        ['Last report', r ? [
          'from ', el('span', { class: 'mono', text: dash(r.source) }), ' via region ', dash(r.region),
          TASK_ID_RE.test(r.task_id || '') ? [' for task ', link(taskPath(r.task_id), shortID(r.task_id), 'mono')] : ' (discovery)',
        ] : 'none'],
      ]));
    }

    function renderBMC(m) {
      const b = m.bmc && typeof m.bmc === 'object' ? m.bmc : null;
      if (!b) {
        fill(bmcBox, el('p', { class: 'muted', id: 'bmc-none', text: 'No BMC. Power actions need one: register it with PATCH /api/v1/machines/' + mac + '.' }));
        return;
      }
      fill(bmcBox, kv([
        ['Driver', dash(b.driver)],
        ['Address', el('span', { class: 'mono', text: dash(b.address) })],
        ['Username', dash(b.username)],
        ['Password', el('span', { id: 'bmc-password', text: b.has_password ? 'set (stored sealed, never shown)' : 'not set' })],
        ['Certificate pin', b.cert_sha256 ? el('span', { class: 'mono', text: b.cert_sha256 }) : undefined],
        ['CA certificate', b.ca_cert ? 'given (' + String(b.ca_cert).length + ' bytes of PEM)' : undefined],
      ]));
    }

    function renderPower(m) {
      const p = m.power && typeof m.power === 'object' ? m.power : null;
      const pending = m.pending_power && typeof m.pending_power === 'object' ? m.pending_power : null;
      fill(powerBox, kv([
        ['State', el('span', { id: 'power-state' }, powerBadge(m), p && p.at ? [' as of ', timeEl(p.at)] : '')],
        ['Last action', p && p.action ? el('span', { id: 'power-last' }, String(p.action), p.actor ? ' by ' + p.actor : '',
          p.attempts ? ' · ' + p.attempts + ' attempt' + (p.attempts === 1 ? '' : 's') : '') : 'none'],
        ['Outcome', p && p.action ? (p.ok
          ? el('span', { class: 'power-ok', text: 'OK' })
          : el('span', { class: 'power-error', id: 'power-error', text: 'failed: ' + (p.error || 'no reason given') })) : undefined],
        ['Pending request', pending
          ? el('span', { id: 'power-pending' }, el('strong', { text: String(pending.action) }), ' requested by ' + dash(pending.requested_by) + ' · ', timeEl(pending.requested_at))
          : el('span', { class: 'muted', id: 'power-pending', text: 'none' })],
      ]));
    }

    function renderHardware(m) {
      const hw = machineHW(m);
      if (!hw) {
        fill(hwBox, el('p', { class: 'muted', text: 'No hardware report yet. The agent reports it when the machine PXE-boots.' }));
        return;
      }
      const cpu = hw.cpu || {};
      const mem = hw.memory || {};
      const disks = (Array.isArray(hw.disks) ? hw.disks : []).filter(Boolean);
      const nics = (Array.isArray(hw.network) ? hw.network : []).filter(Boolean);
      const sys = hw.system || {};
      const bios = hw.bios || {};
      const board = hw.board || {};
      const storage = disks.reduce((n, d) => n + (Number(d.size_gb) || 0), 0);
      const stat = (label, value, sub) => el('div', { class: 'hw-stat' },
        el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }),
        sub ? el('div', { class: 'sub', text: sub }) : null);
      fill(hwBox,
        el('div', { class: 'hw-summary' },
          stat('CPU', (Number(cpu.cores) || 0) + ' cores / ' + (Number(cpu.threads) || 0) + ' threads',
            (cpu.model || 'unknown model') + (cpu.sockets ? ' · ' + cpu.sockets + ' socket' + (cpu.sockets > 1 ? 's' : '') : '')),
          stat('Memory', fmtGB(mem.total_gb)),
          stat('Storage', disks.length + ' disk' + (disks.length === 1 ? '' : 's'), fmtGB(storage) + ' total'),
          stat('Network', nics.length + ' NIC' + (nics.length === 1 ? '' : 's'))),
        el('h3', { text: 'System' }),
        kv([
          ['System', vendorModel(hw) || '—'],
          ['Serial', el('span', { class: 'mono', text: dash(sys.serial) })],
          ['UUID', sys.uuid ? el('span', { class: 'mono', text: sys.uuid }) : undefined],
          ['BIOS', [bios.vendor, bios.version].filter(Boolean).join(' ') || '—'],
          ['Board', [board.vendor, board.product].filter(Boolean).join(' ') || undefined],
        ]),
        el('h3', { text: 'Disks' }),
        disks.length ? table('compact', ['Device', 'Size', 'Type', 'Model', 'Serial'], disks.map((d) => el('tr', null,
          el('td', { class: 'mono', text: dash(d.device) }), el('td', { text: fmtGB(d.size_gb) }), el('td', { text: dash(d.type) }),
          el('td', { text: dash(d.model) }), el('td', { class: 'mono', text: dash(d.serial) }))))
          : el('p', { class: 'muted', text: 'No disks reported.' }),
        el('h3', { text: 'Network interfaces' }),
        nics.length ? table('compact', ['Interface', 'MAC', 'Speed', 'Driver'], nics.map((n) => el('tr', null,
          el('td', null, dash(n.interface), String(n.mac || '').toLowerCase() === mac ? el('span', { class: 'pill-note', text: 'this machine' }) : null),
          el('td', { class: 'mono', text: dash(n.mac) }), el('td', { text: dash(n.speed) }), el('td', { text: dash(n.driver) }))))
          : el('p', { class: 'muted', text: 'No network interfaces reported.' }),
        el('p', { class: 'muted', text: 'Collected ' + fmtTime(hw.collected_at) + '.' }));
    }

    function renderTasks(m) {
      const tasks = (Array.isArray(m.tasks) ? m.tasks : []).filter((t) => t && TASK_ID_RE.test(t.task_id || ''));
      if (!tasks.length) {
        fill(tasksBox, el('p', { class: 'muted', text: 'No tasks for this machine.' }));
        return;
      }
      fill(tasksBox, table('compact', ['Status', 'Task', 'OS', 'Created'], tasks.map((t) => el('tr', { dataset: { taskId: t.task_id } },
        el('td', null, badge(t.status)),
        el('td', null, link(taskPath(t.task_id), shortID(t.task_id), 'mono')),
        el('td', { text: [t.os_type, t.os_version].filter(Boolean).join(' ') || '—' }),
        el('td', { class: 'nowrap' }, timeEl(t.created_at))))));
    }

    const refresh = refresher(async () => {
      let res;
      try {
        res = await api('GET', api1);
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        if (err.status === 404) {
          fill(app, el('div', { class: 'panel empty' },
            el('h1', { text: 'Machine not found' }),
            el('p', null, 'There is no machine ', el('span', { class: 'mono', text: mac }), '. ', link('/machines', 'Back to the machines.'))),
            bootTrace.node); // a machine DHCP ignored has no record, but a trace that says why
          // Stop this page's polling but keep the trace's.
          v.alive = false;
          refresh.cancel();
          clearInterval(poll);
          v.destroy = () => bootTrace.destroy();
          return;
        }
        fill(alerts, alertBox('error', 'Could not load the machine', err.message));
        return;
      }
      if (!v.alive || !res.data || typeof res.data !== 'object') return;
      const m = res.data;
      if (!MAC_RE.test(m.mac)) return;
      kindBadge.hidden = false;
      kindBadge.textContent = m.registered ? 'registered' : 'discovered';
      renderOverview(m);
      renderPower(m);
      renderBMC(m);
      renderHardware(m);
      renderTasks(m);
    });

    const poll = setInterval(() => refresh(), REFRESH_MS);
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); clearInterval(poll); bootTrace.destroy(); };
    return v;
  }

  // ------------------------------------------------------------------
  // Auto-approval rules: /rules. Everyone signed in sees them; admins
  // create, edit and delete them (the API refuses anyone else: a rule
  // approves installs without a person).

  // The approver of a task approved by a rule is "rule:<name>".
  const RULE_ACTOR = 'rule:';

  // ruleReasons splits the message of an approval_rules timeline entry
  // ("no approval rule matched: big: 8 cores < 16 | dell: vendor ...")
  // into [rule name, reasons] per rule.
  function ruleReasons(message) {
    const m = String(message || '').replace(/^no approval rule matched:\s*/i, '');
    return m.split(' | ').filter((x) => x.trim()).map((part) => {
      const i = part.indexOf(': ');
      return i > 0 && /^[a-z0-9._-]+$/.test(part.slice(0, i)) ? [part.slice(0, i), part.slice(i + 2)] : ['', part];
    });
  }

  function canAdmin() {
    return session.me && (ROLE_RANK[session.me.role] || 0) >= ROLE_RANK.admin;
  }

  // The numeric conditions of a rule, named as the API's fields.
  const RULE_NUMBERS = [
    ['min_cores', 'Min cores', '16'], ['max_cores', 'Max cores', ''],
    ['min_memory_gb', 'Min memory (GB)', '64'], ['max_memory_gb', 'Max memory (GB)', ''],
    ['min_disks', 'Min disks', ''], ['max_disks', 'Max disks', ''],
    ['min_disk_gb', 'Min disk size (GB)', '400'], ['min_nic_mbps', 'Min NIC speed (Mb/s)', '10000'],
  ];
  const RULE_PATTERNS = [['vendor', 'Vendor', 'Dell*'], ['model', 'Model', 'PowerEdge R6?0'], ['serial', 'Serial', '']];
  const DISK_TYPES = ['SSD', 'HDD', 'NVMe'];

  function rulePath(name) {
    return '/api/v1/rules/' + encodeURIComponent(name);
  }

  function ruleScope(r) {
    if (r.only_named) return 'named tasks only';
    return r.region ? 'region ' + r.region : 'all regions';
  }

  function fmtMbps(n) {
    n = Number(n) || 0;
    return n >= 1000 && n % 100 === 0 ? (n / 1000) + ' Gb/s' : n + ' Mb/s';
  }

  // ruleConditions says what a rule asks for, in words: "≥ 16 cores,
  // ≥ 64 GB RAM, SSD ≥ 400 GB, vendor Dell*".
  function ruleConditions(r) {
    const out = [];
    const range = (lo, hi, unit) => {
      lo = Number(lo) || 0;
      hi = Number(hi) || 0;
      if (lo && hi) return lo === hi ? lo + unit : lo + '–' + hi + unit;
      if (lo) return '≥ ' + lo + unit;
      if (hi) return '≤ ' + hi + unit;
      return null;
    };
    out.push(range(r.min_cores, r.max_cores, ' cores'));
    const mem = range(r.min_memory_gb, r.max_memory_gb, ' GB');
    if (mem) out.push(mem + ' RAM');
    out.push(range(r.min_disks, r.max_disks, ' disks'));
    if (r.min_disk_gb || r.disk_type) {
      out.push((r.disk_type ? String(r.disk_type) : 'a disk') + (r.min_disk_gb ? ' ≥ ' + fmtGB(r.min_disk_gb) : ''));
    }
    if (r.min_nic_mbps) out.push('NIC ≥ ' + fmtMbps(r.min_nic_mbps));
    for (const [f] of RULE_PATTERNS) if (r[f]) out.push(f + ' ' + r[f]);
    if (r.match_expected) out.push('matches the expected hardware of its machine record');
    return out.filter(Boolean).join(', ') || '—';
  }

  function rulesView() {
    document.title = 'Rules · LPMOS';
    const v = { sub: null, alive: true, onMessage() {} };
    const REFRESH_MS = 15000;
    const admin = canAdmin();
    let rules = [];
    let editing = null; // the name of the rule in the form; null: a new rule

    const countEl = el('span', { class: 'muted', id: 'rule-count' });
    const alerts = el('div', { id: 'rules-alerts' });
    const tbody = el('tbody');
    const columns = ['Name', 'Scope', 'Conditions', 'Updated', 'Notes'].concat(admin ? [''] : []);

    // The form, for admins: one input per field of a rule.
    const inputs = {
      name: el('input', { type: 'text', id: 'rule-name', name: 'name', placeholder: 'big-dell', autocomplete: 'off', spellcheck: 'false', required: true }),
      region: el('input', { type: 'text', id: 'rule-region', name: 'region', placeholder: 'all regions', autocomplete: 'off', spellcheck: 'false' }),
      only_named: el('input', { type: 'checkbox', id: 'rule-only-named', name: 'only_named' }),
      match_expected: el('input', { type: 'checkbox', id: 'rule-match-expected', name: 'match_expected' }),
      disk_type: el('select', { id: 'rule-disk-type', name: 'disk_type' }, el('option', { value: '', text: 'Any' }),
        DISK_TYPES.map((d) => el('option', { value: d, text: d }))),
      notes: el('textarea', { id: 'rule-notes', name: 'notes', rows: 2, placeholder: 'Why this rule exists' }),
    };
    for (const [f, , placeholder] of RULE_NUMBERS) {
      inputs[f] = el('input', { type: 'text', id: 'rule-' + f.replace(/_/g, '-'), name: f, inputmode: 'numeric', placeholder, autocomplete: 'off' });
    }
    for (const [f, , placeholder] of RULE_PATTERNS) {
      inputs[f] = el('input', { type: 'text', id: 'rule-' + f, name: f, placeholder, autocomplete: 'off', spellcheck: 'false' });
    }
    const formTitle = el('h2', { id: 'rule-form-title' });
    const formAlerts = el('div', { id: 'rule-form-alerts' });
    const conditions = el('fieldset', { class: 'rule-conditions', id: 'rule-conditions' },
      el('legend', { text: 'Conditions (all must hold; at least one)' }),
      el('div', { class: 'form-grid' },
        RULE_NUMBERS.map(([f, label]) => el('div', { class: 'field' }, el('label', { for: inputs[f].id, text: label }), inputs[f])),
        el('div', { class: 'field' }, el('label', { for: 'rule-disk-type', text: 'Disk type' }), inputs.disk_type,
          el('div', { class: 'hint', text: 'With a minimum size: one disk of this type that big.' })),
        RULE_PATTERNS.map(([f, label]) => el('div', { class: 'field' }, el('label', { for: inputs[f].id, text: label + ' pattern' }), inputs[f])),
        el('div', { class: 'field wide' }, el('label', { class: 'check' }, inputs.match_expected,
          ' The report matches the expected hardware on the machine\u2019s record (cores, memory, disks, vendor, model, serial)'),
          el('div', { class: 'hint', text: 'A machine whose record states no expected hardware does not match.' }))),
      el('div', { class: 'hint', text: 'Patterns are shell patterns (*, ?, [...]) over the reported system vendor, product and serial, ignoring case.' }));
    const save = el('button', { type: 'submit', class: 'btn', id: 'rule-submit', text: 'Save rule' });
    const cancel = el('button', { type: 'button', class: 'btn btn-secondary', id: 'rule-cancel', text: 'Cancel' });
    const form = el('form', { class: 'panel', id: 'rule-form', novalidate: true, hidden: true },
      formTitle,
      formAlerts,
      el('div', { class: 'form-grid' },
        el('div', { class: 'field' }, el('label', { for: 'rule-name', text: 'Name' }), inputs.name,
          el('div', { class: 'hint', text: 'Lowercase letters, digits, ".", "_", "-". Rules are tried in name order.' })),
        el('div', { class: 'field' }, el('label', { for: 'rule-region', text: 'Region' }), inputs.region,
          el('div', { class: 'hint', text: 'Empty: tasks of every region.' })),
        el('div', { class: 'field wide' }, el('label', { class: 'check' }, inputs.only_named,
          ' Only tasks that name this rule (tag approval_rule=<name>)'))),
      conditions,
      el('div', { class: 'field' }, el('label', { for: 'rule-notes', text: 'Notes' }), inputs.notes),
      el('div', { class: 'btn-row' }, save, cancel));

    const newBtn = admin ? el('button', { type: 'button', class: 'btn', id: 'rule-new', text: 'New rule' }) : null;

    // Deleting asks first.
    let deleting = null;
    const delTitle = el('h2', { id: 'rule-delete-title' });
    const delBtn = el('button', { type: 'button', class: 'btn btn-danger', id: 'rule-delete-confirm', text: 'Delete' });
    const delKeep = el('button', { type: 'button', class: 'btn btn-secondary', id: 'rule-delete-keep', text: 'Keep it' });
    const delPanel = el('section', { class: 'panel power-confirm', id: 'rule-delete', hidden: true },
      delTitle, el('p', { class: 'muted', text: 'Tasks it would have approved then wait for a person (or another rule).' }),
      el('div', { class: 'btn-row' }, delBtn, delKeep));

    function clearInvalid() {
      for (const e of form.querySelectorAll('.invalid')) {
        e.classList.remove('invalid');
        e.removeAttribute('aria-invalid');
      }
    }

    function openForm(r) {
      editing = r ? r.name : null;
      clearInvalid();
      formAlerts.replaceChildren();
      formTitle.textContent = r ? 'Edit rule ' + r.name : 'New rule';
      r = r || {};
      inputs.name.value = r.name || '';
      inputs.name.disabled = editing !== null; // the name is the rule's key
      inputs.region.value = r.region || '';
      inputs.only_named.checked = Boolean(r.only_named);
      inputs.match_expected.checked = Boolean(r.match_expected);
      inputs.disk_type.value = DISK_TYPES.includes(r.disk_type) ? r.disk_type : '';
      inputs.notes.value = r.notes || '';
      for (const [f] of RULE_NUMBERS) inputs[f].value = r[f] ? String(r[f]) : '';
      for (const [f] of RULE_PATTERNS) inputs[f].value = r[f] || '';
      form.hidden = false;
      delPanel.hidden = true;
      (editing ? inputs.region : inputs.name).focus();
    }

    function showError(err) {
      fill(formAlerts, alertBox('error', 'The rule was not saved', err.message));
      const f = String(err.field || '');
      const target = f === 'rule' ? conditions : inputs[f];
      if (target) {
        target.classList.add('invalid');
        target.setAttribute('aria-invalid', 'true');
        if (target.focus) target.focus();
      }
    }

    // body reads the form into a rule; a number that is not one is refused
    // here, named like the API would.
    function body() {
      const b = { name: inputs.name.value.trim() };
      if (!b.name) throw new ApiError(0, 'invalid_request', 'name: a rule needs a name.', 'name');
      if (inputs.region.value.trim()) b.region = inputs.region.value.trim();
      if (inputs.only_named.checked) b.only_named = true;
      for (const [f] of RULE_NUMBERS) {
        const s = inputs[f].value.trim();
        if (!s) continue;
        if (!/^\d+$/.test(s)) throw new ApiError(0, 'invalid_request', f + ': "' + s + '" is not a whole number.', f);
        b[f] = Number(s);
      }
      if (inputs.disk_type.value) b.disk_type = inputs.disk_type.value;
      if (inputs.match_expected.checked) b.match_expected = true;
      for (const [f] of RULE_PATTERNS) if (inputs[f].value.trim()) b[f] = inputs[f].value.trim();
      if (inputs.notes.value.trim()) b.notes = inputs.notes.value.trim();
      return b;
    }

    if (newBtn) newBtn.addEventListener('click', () => openForm(null));
    cancel.addEventListener('click', () => { form.hidden = true; });
    form.addEventListener('input', (e) => {
      if (e.target.classList) { e.target.classList.remove('invalid'); e.target.removeAttribute('aria-invalid'); }
      conditions.classList.remove('invalid');
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearInvalid();
      formAlerts.replaceChildren();
      let b;
      try {
        b = body();
        // PUT creates or replaces: a new rule must not silently replace
        // one of the same name.
        if (editing === null && rules.some((r) => r.name === b.name)) {
          throw new ApiError(409, 'conflict', 'name: a rule named ' + b.name + ' exists already; edit it instead.', 'name');
        }
      } catch (err) {
        showError(err);
        return;
      }
      save.disabled = true;
      try {
        await api('PUT', rulePath(b.name), { body: b });
        if (!v.alive) return;
        form.hidden = true;
        fill(alerts, alertBox('info', null, 'Rule ' + b.name + ' saved.'));
        refresh();
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        showError(err);
      } finally {
        save.disabled = false;
      }
    });

    delKeep.addEventListener('click', () => { deleting = null; delPanel.hidden = true; });
    delBtn.addEventListener('click', async () => {
      const name = deleting;
      if (!name) return;
      delBtn.disabled = true;
      try {
        await api('DELETE', rulePath(name));
        if (!v.alive) return;
        fill(alerts, alertBox('info', null, 'Rule ' + name + ' deleted.'));
        if (editing === name) form.hidden = true;
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        fill(alerts, alertBox('error', 'Rule ' + name + ' was not deleted', err.message));
      } finally {
        delBtn.disabled = false;
        deleting = null;
        delPanel.hidden = true;
      }
      refresh();
    });

    fill(app,
      el('div', { class: 'page-head' }, el('h1', { text: 'Auto-approval rules' }), countEl, el('div', { class: 'spacer' }), newBtn),
      el('p', { class: 'muted' }, 'When a machine reports its hardware, the rules that apply to its task are tried in name order; ' +
        'the first whose conditions all hold approves the install as rule:<name>. If none does, the task waits for a person ' +
        'and its page says why each rule did not match.'),
      admin ? null : el('p', { class: 'muted', id: 'rules-readonly', text: 'Only admins can change rules; your role is ' + session.me.role + '.' }),
      alerts,
      delPanel,
      form,
      el('div', { class: 'panel' },
        el('div', { class: 'table-wrap' },
          el('table', { class: 'rules', id: 'rules' },
            el('thead', null, el('tr', null, columns.map((h) => el('th', { text: h })))),
            tbody))));

    function renderRow(r) {
      const cells = [
        el('td', { class: 'mono nowrap', text: r.name }),
        el('td', { class: 'rule-scope', text: ruleScope(r) }),
        el('td', { class: 'rule-conditions-cell', text: ruleConditions(r) }),
        el('td', { class: 'nowrap' }, dash(r.updated_by), el('div', { class: 'muted small' }, timeEl(r.updated_at))),
        el('td', { class: 'rule-notes', text: dash(r.notes) }),
      ];
      if (admin) {
        const edit = el('button', { type: 'button', class: 'btn btn-secondary btn-small rule-edit', text: 'Edit' });
        const del = el('button', { type: 'button', class: 'btn btn-danger btn-small rule-delete', text: 'Delete…' });
        edit.addEventListener('click', () => openForm(r));
        del.addEventListener('click', () => {
          deleting = r.name;
          delTitle.textContent = 'Delete rule ' + r.name + '?';
          delPanel.hidden = false;
          delBtn.focus();
        });
        cells.push(el('td', { class: 'nowrap' }, el('div', { class: 'btn-row' }, edit, del)));
      }
      return el('tr', { class: 'rule-row', dataset: { rule: r.name } }, cells);
    }

    const refresh = refresher(async () => {
      let res;
      try {
        res = await api('GET', '/api/v1/rules');
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        fill(alerts, alertBox('error', 'Could not load the rules', err.message));
        return;
      }
      if (!v.alive) return;
      rules = ((res.data && Array.isArray(res.data.rules)) ? res.data.rules : []).filter((r) => r && typeof r.name === 'string');
      const trs = rules.map(renderRow);
      if (!trs.length) {
        trs.push(el('tr', null, el('td', { colspan: String(columns.length), class: 'empty',
          text: 'No rules: every task waits for a person to approve it.' })));
      }
      fill(tbody, trs);
      countEl.textContent = rules.length === 1 ? '1 rule' : rules.length + ' rules';
    });

    const poll = setInterval(() => refresh(), REFRESH_MS);
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); clearInterval(poll); };
    return v;
  }

  // Boot trace panel: what the regions saw of one machine's boot (DHCP,
  // TFTP, HTTP boot files, the iPXE script and why, agent calls, power,
  // refused tokens), from GET /api/v1/machines/{mac}/trace. The machine
  // and task pages show it. It polls every few seconds while the tab is
  // visible: traces change up to once a second per booting machine, too
  // chatty for the WebSocket hub, which carries task events only.

  function bootTracePanel(mac) {
    const TRACE_MS = 3000;
    const SHOWN = 50;
    const OUTCOMES = { ok: 'trace-ok', ignored: 'trace-ignored', refused: 'trace-refused', error: 'trace-error' };
    const box = el('div', { id: 'boot-trace' }, el('p', { class: 'muted', text: 'Loading…' }));
    const node = el('section', { class: 'panel', id: 'boot-trace-panel', dataset: { mac } },
      el('h2', { text: 'Boot trace' }), box);
    let alive = true;

    function detailText(d) {
      if (!d || typeof d !== 'object') return '';
      return Object.keys(d).sort().map((k) => k + '=' + d[k]).join(' ');
    }

    function render(events) {
      if (!events.length) {
        fill(box, el('p', { class: 'muted', id: 'boot-trace-empty',
          text: 'No region has heard from this machine. Check that it network-boots on a provisioning network a region serves (cabling, VLAN, DHCP relay).' }));
        return;
      }
      const newest = events.slice(-SHOWN).reverse();
      fill(box,
        el('p', { class: 'muted', text: 'Newest first' + (events.length > SHOWN ? '; the last ' + SHOWN + ' of ' + events.length + ' events' : '') + '.' }),
        table('compact timeline boot-trace', ['Time', 'Region', 'Kind', 'Outcome', 'What', 'Why'], newest.map((e) => el('tr', { dataset: { kind: String(e.kind || ''), outcome: String(e.outcome || '') } },
          el('td', { class: 'when' }, timeEl(e.time)),
          el('td', { text: dash(e.region) }),
          el('td', { text: dash(e.kind) }),
          el('td', null, el('span', { class: OUTCOMES[e.outcome] || '', text: dash(e.outcome) })),
          el('td', { class: 'msg' }, el('div', { text: dash(e.message) + (e.count > 1 ? ' ×' + e.count : '') }),
            detailText(e.detail) ? el('div', { class: 'muted mono trace-detail', text: detailText(e.detail) }) : null),
          el('td', { class: 'msg', text: dash(e.reason) })))));
    }

    const refresh = refresher(async () => {
      let res;
      try {
        res = await api('GET', '/api/v1/machines/' + encodeURIComponent(mac) + '/trace');
      } catch (err) {
        if (!alive || err.signedOut) return;
        fill(box, alertBox('error', 'Could not load the boot trace', err.message));
        return;
      }
      if (!alive || !res.data || !Array.isArray(res.data.events)) return;
      render(res.data.events.filter((e) => e && typeof e === 'object'));
    });
    const poll = setInterval(() => { if (!document.hidden) refresh(); }, TRACE_MS);
    refresh();
    return { node, destroy() { alive = false; refresh.cancel(); clearInterval(poll); } };
  }

  // ------------------------------------------------------------------
  // Create form: /tasks/create.

  function createView() {
    document.title = 'New task · LPMOS';
    const v = { sub: null, alive: true, onMessage() {}, resync() {} };
    let regions = [];

    const alerts = el('div');
    const regionSlot = el('div');
    const regionHint = el('div', { class: 'hint' });
    const osSlot = el('div');
    const osHint = el('div', { class: 'hint' });
    const mac = el('input', { type: 'text', id: 'f-mac', name: 'target_mac', placeholder: '00:1a:2b:3c:4d:5e', autocomplete: 'off', spellcheck: 'false', required: true });
    const disk = el('input', { type: 'text', id: 'f-disk', name: 'disk_layout', value: 'auto', spellcheck: 'false' });
    const net = el('select', { id: 'f-network', name: 'network_config' },
      el('option', { value: 'dhcp', text: 'DHCP' }), el('option', { value: 'static', text: 'Static' }));
    // A static network needs an address; gateway and name servers are
    // optional. The fields show only while "Static" is chosen.
    const address = el('input', { type: 'text', id: 'f-address', name: 'network.address', placeholder: '10.0.0.5/24', spellcheck: 'false', autocomplete: 'off' });
    const gateway = el('input', { type: 'text', id: 'f-gateway', name: 'network.gateway', placeholder: '10.0.0.1', spellcheck: 'false', autocomplete: 'off' });
    const dns = el('input', { type: 'text', id: 'f-dns', name: 'network.dns', placeholder: '1.1.1.1 9.9.9.9', spellcheck: 'false', autocomplete: 'off' });
    const staticFields = el('div', { class: 'field wide', id: 'f-static' },
      el('div', { class: 'form-grid' },
        el('div', { class: 'field' }, el('label', { for: 'f-address', text: 'Address (CIDR)' }), address),
        el('div', { class: 'field' }, el('label', { for: 'f-gateway', text: 'Gateway' }), gateway,
          el('div', { class: 'hint', text: 'Optional; inside the address\'s subnet.' })),
        el('div', { class: 'field' }, el('label', { for: 'f-dns', text: 'DNS servers' }), dns,
          el('div', { class: 'hint', text: 'Optional; up to 4, separated by spaces or commas.' }))));
    const showStatic = () => { staticFields.hidden = net.value !== 'static'; };
    net.addEventListener('change', showStatic);
    showStatic();
    const hostname = el('input', { type: 'text', id: 'f-hostname', name: 'hostname', placeholder: 'web-01.dc1.example.com', spellcheck: 'false', autocomplete: 'off' });
    const sshKeys = el('textarea', { id: 'f-ssh-keys', name: 'ssh_keys', rows: 3, spellcheck: 'false', placeholder: 'ssh-ed25519 AAAA... ops@example.com' });
    const tags = el('textarea', { id: 'f-tags', name: 'tags', rows: 4, spellcheck: 'false', placeholder: 'rack=r12\nowner=team-storage' });
    const submit = el('button', { type: 'submit', class: 'btn', id: 'f-submit', text: 'Create task' });

    // inputs maps API field names to the element that shows them, for
    // highlighting the field an error names.
    const inputs = {
      target_mac: mac, disk_layout: disk, network_config: net, tags, hostname, ssh_keys: sshKeys,
      network: net, 'network.mode': net, 'network.address': address, 'network.gateway': gateway, 'network.dns': dns,
    };
    let regionInput = null;
    let osSelect = null;
    let osType = null;
    let osVersion = null;

    function selectedRegion() {
      const id = regionInput ? regionInput.value : '';
      return regions.find((r) => r.region_id === id) || null;
    }

    function renderRegions() {
      if (regions.length) {
        regionInput = el('select', { id: 'f-region', name: 'region_id', required: true },
          regions.map((r) => el('option', { value: r.region_id, text: r.region_id + ' (' + (r.status || 'unknown') + ')' })));
        const firstOnline = regions.find((r) => r.status === 'online');
        if (firstOnline) regionInput.value = firstOnline.region_id;
        regionInput.addEventListener('change', renderOS);
      } else {
        regionInput = el('input', { type: 'text', id: 'f-region', name: 'region_id', placeholder: 'dc1', required: true, spellcheck: 'false' });
        regionHint.textContent = 'No region has registered with the control plane yet; type its ID.';
      }
      inputs.region_id = regionInput;
      fill(regionSlot, regionInput);
      renderOS();
    }

    function renderOS() {
      const r = selectedRegion();
      const offers = (r && r.capabilities && Array.isArray(r.capabilities.os)) ? r.capabilities.os.filter((o) => o && o.os_type && o.os_version) : [];
      if (r) {
        regionHint.textContent = r.status === 'online'
          ? 'Online; last heartbeat ' + fmtTime(r.last_heartbeat) + '.'
          : 'This region is ' + (r.status || 'not reporting') + ': the task waits until it comes back.';
      }
      osSelect = osType = osVersion = null;
      if (offers.length) {
        osSelect = el('select', { id: 'f-os', name: 'os' },
          offers.map((o, i) => el('option', { value: String(i), text: o.os_type + ' ' + o.os_version + (o.kind ? ' (' + o.kind + ')' : '') })));
        osSelect.offers = offers;
        inputs.os_type = inputs.os_version = osSelect;
        fill(osSlot, osSelect);
        // Catalogue images the region has not (or could not) make ready
        // are not offered; say why.
        const waiting = (Array.isArray(r.capabilities.images) ? r.capabilities.images : [])
          .filter((im) => im && im.state !== 'ready')
          .map((im) => im.os_type + ' ' + im.os_version + ' (image ' + im.id + ': ' + im.state + (im.reason ? ', ' + im.reason : '') + ')');
        osHint.textContent = 'What region ' + r.region_id + ' can install.' + (waiting.length ? ' Not installable yet: ' + waiting.join('; ') + '.' : '');
      } else {
        osType = el('input', { type: 'text', id: 'f-os-type', name: 'os_type', placeholder: 'ubuntu', spellcheck: 'false', required: true });
        osVersion = el('input', { type: 'text', id: 'f-os-version', name: 'os_version', placeholder: '24.04', spellcheck: 'false', required: true });
        inputs.os_type = osType;
        inputs.os_version = osVersion;
        fill(osSlot, el('div', { class: 'inline-fields' }, osType, osVersion));
        osHint.textContent = r ? 'Region ' + r.region_id + ' publishes no OS catalogue; type the OS and version.' : 'Type the OS and version.';
      }
    }

    function parseTags(text) {
      const out = {};
      let n = 0;
      for (const raw of text.split('\n')) {
        n++;
        const line = raw.trim();
        if (!line || line.startsWith('#')) continue;
        const i = line.indexOf('=');
        if (i <= 0) throw new ApiError(0, 'invalid_request', 'Tags: line ' + n + ' is not key=value.', 'tags');
        const k = line.slice(0, i).trim();
        if (Object.prototype.hasOwnProperty.call(out, k)) throw new ApiError(0, 'invalid_request', 'Tags: key "' + k + '" appears twice.', 'tags');
        out[k] = line.slice(i + 1).trim();
      }
      return out;
    }

    function clearInvalid() {
      for (const e of form.querySelectorAll('.invalid')) {
        e.classList.remove('invalid');
        e.removeAttribute('aria-invalid');
      }
    }

    function showError(err) {
      fill(alerts, alertBox('error', 'The task was not created', err.message));
      const f = String(err.field || '').replace(/\[\d+\]$/, '');
      const target = inputs[f] || inputs[f.split('.')[0]] || (f.startsWith('tags') ? tags : null);
      if (target) {
        target.classList.add('invalid');
        target.setAttribute('aria-invalid', 'true');
        target.focus();
      }
    }

    const form = el('form', { class: 'panel', id: 'create-form', novalidate: true },
      alerts,
      el('div', { class: 'form-grid' },
        el('div', { class: 'field' }, el('label', { for: 'f-region', text: 'Region' }), regionSlot, regionHint),
        el('div', { class: 'field' }, el('label', { for: 'f-os', text: 'Operating system' }), osSlot, osHint),
        el('div', { class: 'field' }, el('label', { for: 'f-mac', text: 'Target MAC address' }), mac,
          el('div', { class: 'hint', text: 'The NIC the machine PXE-boots from.' })),
        el('div', { class: 'field' }, el('label', { for: 'f-disk', text: 'Disk layout' }), disk,
          el('div', { class: 'hint', text: '"auto" picks the smallest suitable disk, or give a device such as /dev/nvme0n1.' })),
        el('div', { class: 'field' }, el('label', { for: 'f-network', text: 'Network configuration' }), net),
        staticFields,
        el('div', { class: 'field' }, el('label', { for: 'f-hostname', text: 'Hostname' }), hostname,
          el('div', { class: 'hint', text: 'Optional; lpmos-<MAC> when empty.' })),
        el('div', { class: 'field' }, el('label', { for: 'f-ssh-keys', text: 'SSH keys for root' }), sshKeys,
          el('div', { class: 'hint', text: 'Optional; one authorized_keys line per line.' })),
        el('div', { class: 'field wide' }, el('label', { for: 'f-tags', text: 'Tags' }), tags,
          el('div', { class: 'hint', text: 'One key=value per line.' }))),
      el('div', { class: 'btn-row' }, submit, link('/tasks', 'Cancel', 'btn btn-secondary')));

    form.addEventListener('input', (e) => {
      if (e.target.classList) { e.target.classList.remove('invalid'); e.target.removeAttribute('aria-invalid'); }
    });

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      clearInvalid();
      alerts.replaceChildren();
      let body;
      try {
        body = {
          region_id: regionInput.value.trim(),
          target_mac: mac.value.trim(),
          disk_layout: disk.value.trim() || 'auto',
          network_config: net.value,
        };
        if (net.value === 'static') {
          const n = { mode: 'static', address: address.value.trim() };
          if (gateway.value.trim()) n.gateway = gateway.value.trim();
          const servers = dns.value.split(/[\s,]+/).filter((x) => x);
          if (servers.length) n.dns = servers;
          body.network = n;
        }
        if (hostname.value.trim()) body.hostname = hostname.value.trim();
        const keys = sshKeys.value.split('\n').map((x) => x.trim()).filter((x) => x && !x.startsWith('#'));
        if (keys.length) body.ssh_keys = keys;
        if (osSelect) {
          const o = osSelect.offers[Number(osSelect.value)];
          body.os_type = o.os_type;
          body.os_version = o.os_version;
        } else {
          body.os_type = osType.value.trim();
          body.os_version = osVersion.value.trim();
        }
        const t = parseTags(tags.value);
        if (Object.keys(t).length) body.tags = t;
      } catch (err) {
        showError(err);
        return;
      }
      submit.disabled = true;
      try {
        const res = await api('POST', '/api/v1/tasks', { body });
        const id = res.data && res.data.task_id;
        if (!v.alive) return;
        if (typeof id === 'string' && TASK_ID_RE.test(id)) navigate(taskPath(id));
        else navigate('/tasks');
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        submit.disabled = false;
        showError(err);
      }
    });

    fill(app,
      el('div', { class: 'page-head' }, link('/tasks', '← Tasks'), el('h1', { text: 'New install task' })),
      canOperate() ? null : alertBox('warn', null, 'Your role (' + session.me.role + ') can view tasks but not create them.'),
      form);

    api('GET', '/api/v1/regions').then((res) => {
      if (!v.alive) return;
      regions = ((res.data && res.data.regions) || []).filter((r) => r && typeof r.region_id === 'string');
      regions.sort((a, b) => a.region_id.localeCompare(b.region_id));
      renderRegions();
    }).catch((err) => {
      if (!v.alive || err.signedOut) return;
      regions = [];
      renderRegions();
      append(alerts, [alertBox('warn', null, 'Could not load regions: ' + err.message)]);
    });
    mac.focus();
    v.destroy = () => { v.alive = false; };
    return v;
  }

  // ------------------------------------------------------------------
  // Task page: /tasks/{id} and /tasks/{id}/approve.

  function detailView(id, focusApproval) {
    document.title = 'Task ' + shortID(id) + ' · LPMOS';
    const v = { sub: id, alive: true };
    let task = null;
    let etag = null;      // the revision the operator is looking at
    let focused = false;

    const statusBadge = badge('', true);
    statusBadge.id = 'task-status';
    statusBadge.hidden = true;
    const alerts = el('div', { id: 'detail-alerts' });
    const actions = el('div', { class: 'btn-row' });
    const summaryBox = el('div');
    const decisionBox = el('div', { id: 'approval-info' });
    const rulesBox = el('div', { id: 'approval-rules' });
    const errorBox = el('div', { id: 'task-error' });
    const hwBox = el('div', { id: 'hardware' });
    const timelineBox = el('div', { id: 'timeline' });
    const progress = progressWidget(true);
    const stagesBox = el('div', { class: 'stages' });
    const progressNote = el('div', { class: 'muted' });
    const progressPanel = el('section', { class: 'panel', id: 'progress' },
      el('h2', { text: 'Install progress' }), progress.root, stagesBox, progressNote);

    // The approval panel is built once and only shown or hidden, so that
    // notes being typed survive the refreshes live updates cause.
    const notes = el('textarea', { id: 'approve-notes', name: 'notes', rows: 2, placeholder: 'e.g. hardware matches the asset record' });
    const reason = el('input', { type: 'text', id: 'reject-reason', name: 'reason', placeholder: 'Why the install must not go ahead' });
    const approveBtn = el('button', { type: 'button', class: 'btn btn-ok', id: 'approve-btn', text: 'Approve install' });
    const rejectBtn = el('button', { type: 'button', class: 'btn btn-danger', id: 'reject-btn', text: 'Reject' });
    const approvalPanel = el('section', { class: 'panel approval-panel', id: 'approval', hidden: true },
      el('h2', { text: 'Approval' }),
      el('p', { class: 'muted', text: 'The machine is waiting in its agent. Check the hardware below, then approve the install or reject it.' }),
      el('div', { class: 'approval-actions' },
        el('div', null,
          el('div', { class: 'field' }, el('label', { for: 'approve-notes', text: 'Notes (optional)' }), notes),
          approveBtn),
        el('div', null,
          el('div', { class: 'field' }, el('label', { for: 'reject-reason', text: 'Reason (required to reject)' }), reason),
          rejectBtn)));

    const sideColumn = el('div', { class: 'stack' }, progressPanel, decisionBox);
    const summaryGrid = el('div', { class: 'grid-2', id: 'detail-grid' },
      el('section', { class: 'panel' }, el('h2', { text: 'Request' }), summaryBox),
      sideColumn);

    const cancelReason = el('input', { type: 'text', id: 'cancel-reason', name: 'reason', placeholder: 'Reason (optional)' });
    const cancelConfirm = el('button', { type: 'button', class: 'btn btn-danger', id: 'cancel-confirm', text: 'Cancel the task' });
    const cancelKeep = el('button', { type: 'button', class: 'btn btn-secondary', text: 'Keep it' });
    const cancelPanel = el('section', { class: 'panel', id: 'cancel-panel', hidden: true },
      el('h2', { text: 'Cancel this task?' }),
      el('p', { class: 'muted', text: 'The machine stops being provisioned; a new task can be created for it afterwards.' }),
      el('div', { class: 'field' }, cancelReason),
      el('div', { class: 'btn-row' }, cancelConfirm, cancelKeep));
    const cancelBtn = el('button', { type: 'button', class: 'btn btn-secondary', id: 'cancel-btn', text: 'Cancel task…', hidden: true });
    cancelBtn.addEventListener('click', () => { cancelPanel.hidden = false; cancelReason.focus(); });
    cancelKeep.addEventListener('click', () => { cancelPanel.hidden = true; });
    // Retry starts a new task (a new attempt) with the same request; the
    // page then follows the new task.
    const retryBtn = el('button', { type: 'button', class: 'btn', id: 'retry-btn', text: 'Retry', hidden: true });
    append(actions, [retryBtn, cancelBtn]);

    fill(app,
      el('div', { class: 'page-head' },
        link('/tasks', '← Tasks'),
        el('h1', null, 'Task ', el('span', { class: 'mono', text: id })),
        statusBadge,
        el('div', { class: 'spacer' }),
        actions),
      alerts,
      cancelPanel,
      approvalPanel,
      rulesBox,
      errorBox,
      summaryGrid,
      el('section', { class: 'panel', id: 'hardware-panel' }, el('h2', { text: 'Hardware review' }), hwBox),
      el('section', { class: 'panel' }, el('h2', { text: 'Timeline' }), timelineBox));
    // The boot trace of the task's machine, added once its MAC is known.
    let bootTrace = null;
    function attachBootTrace(t) {
      const mac = t && t.metadata && String(t.metadata.target_mac || '');
      if (bootTrace || !v.alive || !MAC_RE.test(mac)) return;
      bootTrace = bootTracePanel(mac);
      app.appendChild(bootTrace.node);
    }

    function say(kind, title, message) {
      fill(alerts, alertBox(kind, title, message));
    }

    // mutate sends an approve/reject/cancel with If-Match, so the decision
    // only applies to the task as the operator saw it. A 409 means it moved
    // meanwhile: show why and reload it.
    async function mutate(buttons, method, path, body, done) {
      for (const b of buttons) b.disabled = true;
      try {
        await api(method, path, { body, headers: { 'If-Match': etag || String(task.revision) } });
        if (!v.alive) return;
        say('info', null, done);
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        if (err.status === 409) {
          say('warn', 'The task changed while you were looking at it', err.message + ' It has been reloaded: check it again.');
        } else {
          say('error', 'That did not work', err.message);
        }
      } finally {
        for (const b of buttons) b.disabled = false;
      }
      refresh();
    }

    approveBtn.addEventListener('click', () => {
      mutate([approveBtn, rejectBtn], 'PUT', '/api/v1/tasks/' + encodeURIComponent(id) + '/approve',
        { approved: true, notes: notes.value.trim() }, 'Approved. The agent starts installing.');
    });
    rejectBtn.addEventListener('click', () => {
      const r = reason.value.trim();
      if (!r) {
        reason.classList.add('invalid');
        reason.focus();
        say('error', null, 'A reason is required to reject a task.');
        return;
      }
      reason.classList.remove('invalid');
      mutate([approveBtn, rejectBtn], 'PUT', '/api/v1/tasks/' + encodeURIComponent(id) + '/reject',
        { reason: r }, 'Rejected.');
    });
    cancelConfirm.addEventListener('click', () => {
      const r = cancelReason.value.trim();
      const q = r ? '?reason=' + encodeURIComponent(r) : '';
      mutate([cancelConfirm], 'DELETE', '/api/v1/tasks/' + encodeURIComponent(id) + q, undefined, 'Cancelled.');
    });

    retryBtn.addEventListener('click', async () => {
      retryBtn.disabled = true;
      try {
        const res = await api('POST', '/api/v1/tasks/' + encodeURIComponent(id) + '/retry',
          { headers: { 'If-Match': etag || String(task.revision) } });
        if (!v.alive) return;
        const next = res.data && res.data.task_id;
        if (typeof next === 'string' && TASK_ID_RE.test(next)) {
          navigate(taskPath(next));
          return;
        }
        refresh();
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        say(err.status === 409 ? 'warn' : 'error', 'Could not retry the task', err.message);
        refresh();
      } finally {
        retryBtn.disabled = false;
      }
    });

    function retriedAs(t) {
      const entries = Array.isArray(t.timeline) ? t.timeline : [];
      const e = entries.find((x) => x && x.event === 'retried' && typeof x.retried_as === 'string');
      return e ? e.retried_as : '';
    }

    function attemptOf(t) {
      const md = t.metadata || {};
      return { n: Number(md.attempt) || 1, max: Number(md.max_attempts) || 3 };
    }

    // networkText sums up the task's network: its mode, and for a static
    // one the address, gateway and name servers; a VLAN or bond after.
    function networkText(md) {
      const n = md.network;
      if (!n || typeof n !== 'object') return dash(md.network_config);
      const parts = [n.mode || md.network_config || 'dhcp'];
      if (n.address) parts.push(n.address);
      if (n.gateway) parts.push('via ' + n.gateway);
      if (Array.isArray(n.dns) && n.dns.length) parts.push('DNS ' + n.dns.join(', '));
      if (n.vlan_id) parts.push('VLAN ' + n.vlan_id);
      if (n.bond && n.bond.name) parts.push('bond ' + n.bond.name + ' (' + (n.bond.interfaces || []).join(', ') + ', ' + (n.bond.mode || '') + ')');
      return el('span', { class: 'mono', text: parts.join(' · ') });
    }

    function renderSummary(t) {
      const md = t.metadata || {};
      const a = attemptOf(t);
      const next = retriedAs(t);
      fill(summaryBox, kv([
        ['Region', dash(md.region_id)],
        ['Target MAC', el('span', { class: 'mono', text: dash(md.target_mac) })],
        ['Operating system', [md.os_type, md.os_version].filter(Boolean).join(' ') || '—'],
        ['Disk layout', dash(md.disk_layout)],
        ['Network', networkText(md)],
        ['Hostname', md.hostname || undefined],
        ['SSH keys', Array.isArray(md.ssh_keys) && md.ssh_keys.length ? String(md.ssh_keys.length) : undefined],
        ['Root password', md.root_password_hash ? 'set (hashed)' : undefined],
        ['User-data', md.user_data === '<redacted>' ? 'set (shown to operators only)'
          : md.user_data ? md.user_data.length + ' bytes of cloud-config' : undefined],
        ['Created', [timeEl(md.created_at), md.created_by ? ' by ' + md.created_by : '']],
        ['Tags', tagChips(md.tags) || '—'],
        ['Attempt', el('span', { id: 'task-attempt', text: a.n + ' of ' + a.max })],
        ['Retry of', TASK_ID_RE.test(md.retry_of || '') ? link(taskPath(md.retry_of), shortID(md.retry_of), 'mono') : undefined],
        ['Retried as', TASK_ID_RE.test(next) ? link(taskPath(next), shortID(next), 'mono retried-as') : undefined],
        ['Revision', el('span', { class: 'mono', text: dash(t.revision) })],
      ]));
    }

    function renderProgress(t) {
      const p = t.progress;
      const show = Boolean(p) || t.status === 'approved' || t.status === 'installing';
      progressPanel.hidden = !show;
      if (!show) { layout(t); return; }
      progress.set(p || { stage: '', percentage: 0, message: 'waiting for the agent to start' }, t.status);
      const cur = p ? STAGES.indexOf(p.stage) : -1;
      fill(stagesBox, STAGES.map((s, i) => el('span', {
        class: 'stage-pill' + (i < cur || (t.status === 'completed') ? ' done' : i === cur ? ' current' : ''),
        text: s,
      })));
      progressNote.textContent = p && p.updated_at ? 'Updated ' + fmtTime(p.updated_at) : '';
      layout(t);
    }

    // The request takes the whole width until there is progress or a
    // decision to show beside it.
    function layout(t) {
      sideColumn.hidden = progressPanel.hidden && !t.approval;
      summaryGrid.classList.toggle('single', sideColumn.hidden);
    }

    function renderDecision(t) {
      const a = t.approval;
      layout(t);
      if (!a) { decisionBox.replaceChildren(); return; }
      const approved = a.status === 'approved';
      const by = String((approved ? a.approved_by : a.rejected_by) || '');
      const byRule = approved && by.startsWith(RULE_ACTOR) ? by.slice(RULE_ACTOR.length) : '';
      fill(decisionBox, el('section', { class: 'panel' },
        el('h2', { text: 'Decision' }),
        byRule ? el('p', { class: 'decision-rule', id: 'approved-by-rule' },
          'Approved automatically by rule ', link('/rules', byRule, 'mono'), '.') : null,
        el('div', { class: 'decision decision-' + (approved ? 'approved' : 'rejected') }, kv([
          ['Decision', badge(approved ? 'approved' : 'rejected')],
          ['By', dash(approved ? a.approved_by : a.rejected_by)],
          ['At', timeEl(approved ? a.approved_at : a.rejected_at)],
          [approved ? 'Notes' : 'Reason', dash(approved ? a.notes : a.reason)],
        ]))));
    }

    // renderRules shows, while the task waits for approval, why no
    // auto-approval rule approved it: the newest approval_rules entry of
    // the timeline, one line per rule that applied.
    function renderRules(t) {
      const entries = Array.isArray(t.timeline) ? t.timeline : [];
      const e = entries.filter((x) => x && x.event === 'approval_rules').pop();
      if (t.status !== 'pending_approval' || !e) { rulesBox.replaceChildren(); return; }
      const lines = ruleReasons(e.message);
      fill(rulesBox, el('section', { class: 'alert alert-warn rules-reasons', role: 'status' },
        el('div', { class: 'alert-title', text: 'No auto-approval rule matched' }),
        el('ul', { class: 'rule-reasons' }, lines.map(([name, why]) => el('li', null,
          name ? [el('strong', { class: 'mono', text: name }), ': '] : null, why))),
        el('div', { class: 'muted small' }, 'Checked ', timeEl(e.timestamp), '. ', link('/rules', 'See the rules.'))));
    }

    function renderError(t) {
      const e = t.error;
      if (!e && !(t.status === 'failed' && t.logs)) { errorBox.replaceChildren(); return; }
      fill(errorBox, el('section', { class: 'alert alert-error', role: 'alert' },
        el('div', { class: 'alert-title', text: 'Installation failed' + (e && e.code ? ' (' + e.code + ')' : '') }),
        e ? el('div', { text: e.message || '' }) : null,
        e ? el('div', { class: 'muted', text: (e.stage ? 'In stage ' + e.stage + ', ' : '') + fmtTime(e.occurred_at) }) : null,
        t.logs ? el('details', null, el('summary', { text: 'Agent log' }), el('pre', { class: 'mono', text: t.logs })) : null));
    }

    function renderHardware(hw, t) {
      if (!hw) {
        fill(hwBox, el('p', { class: 'muted', text: 'No hardware reported yet. The agent reports it after the machine PXE-boots.' }));
        return;
      }
      const cpu = hw.cpu || {};
      const mem = hw.memory || {};
      const disks = Array.isArray(hw.disks) ? hw.disks : [];
      const nics = Array.isArray(hw.network) ? hw.network : [];
      const dimms = Array.isArray(mem.dimms) ? mem.dimms : [];
      const bios = hw.bios || {};
      const sys = hw.system || {};
      const board = hw.board || {};
      const bootMAC = String((t && t.metadata && t.metadata.target_mac) || hw.mac_address || '').toLowerCase();
      // The address the hardware report came from (its timeline entry):
      // the operator checks it is the machine's before approving.
      const reports = (t && Array.isArray(t.timeline) ? t.timeline : []).filter((e) => e && e.event === 'hardware_reported');
      const source = reports.length ? String(reports[reports.length - 1].source || '') : '';
      const storage = disks.reduce((n, d) => n + (Number(d && d.size_gb) || 0), 0);

      const stat = (label, value, sub) => el('div', { class: 'hw-stat' },
        el('div', { class: 'label', text: label }), el('div', { class: 'value', text: value }),
        sub ? el('div', { class: 'sub', text: sub }) : null);
      const cpuSub = [cpu.model, cpu.vendor && !String(cpu.model || '').includes(cpu.vendor) ? '(' + cpu.vendor + ')' : ''].filter(Boolean).join(' ');

      fill(hwBox,
        el('p', { id: 'hardware-source' }, source
          ? ['Reported from ', el('span', { class: 'mono', text: source }), ' — check that this is the machine’s address before approving.']
          : el('span', { class: 'muted', text: 'The region did not record the address this report came from.' })),
        el('div', { class: 'hw-summary' },
          stat('CPU', (Number(cpu.cores) || 0) + ' cores / ' + (Number(cpu.threads) || 0) + ' threads',
            (cpuSub || 'unknown model') + (cpu.sockets ? ' · ' + cpu.sockets + ' socket' + (cpu.sockets > 1 ? 's' : '') : '')),
          stat('Memory', fmtGB(mem.total_gb), mem.total_bytes ? Number(mem.total_bytes).toLocaleString() + ' bytes · ' + dimms.length + ' DIMM' + (dimms.length === 1 ? '' : 's') : dimms.length + ' DIMMs'),
          stat('Storage', disks.length + ' disk' + (disks.length === 1 ? '' : 's'), fmtGB(storage) + ' total'),
          stat('Network', nics.length + ' NIC' + (nics.length === 1 ? '' : 's'), hw.mac_address ? 'booted from ' + hw.mac_address : '')),
        el('h3', { text: 'Memory modules' }),
        dimms.length ? table('compact', ['Slot', 'Size', 'Type', 'Speed', 'Manufacturer', 'Serial'], dimms.map((d) => el('tr', null,
          el('td', { text: dash(d.slot) }), el('td', { text: fmtGB(d.size_gb) }), el('td', { text: dash(d.type) }),
          el('td', { text: d.speed_mhz ? d.speed_mhz + ' MHz' : '—' }), el('td', { text: dash(d.manufacturer) }),
          el('td', { class: 'mono', text: dash(d.serial) }))))
          : el('p', { class: 'muted', text: 'No DIMM details (the machine exposes no SMBIOS memory data).' }),
        el('h3', { text: 'Disks' }),
        disks.length ? table('compact', ['Device', 'Size', 'Type', 'Model', 'Serial'], disks.map((d) => el('tr', null,
          el('td', { class: 'mono', text: dash(d.device) }),
          el('td', { text: fmtGB(d.size_gb) }),
          el('td', null, dash(d.type), d.removable ? el('span', { class: 'pill-note', text: 'removable' }) : null),
          el('td', { text: dash(d.model) }), el('td', { class: 'mono', text: dash(d.serial) }))))
          : el('p', { class: 'muted', text: 'No disks reported: there is nothing to install onto.' }),
        el('h3', { text: 'Network interfaces' }),
        nics.length ? table('compact', ['Interface', 'MAC', 'Speed', 'Driver'], nics.map((n) => {
          const boot = bootMAC && String(n.mac || '').toLowerCase() === bootMAC;
          return el('tr', { class: boot ? 'boot-nic' : null },
            el('td', null, dash(n.interface), boot ? el('span', { class: 'pill-note', text: 'boot NIC' }) : null),
            el('td', { class: 'mono', text: dash(n.mac) }), el('td', { text: dash(n.speed) }), el('td', { text: dash(n.driver) }));
        }))
          : el('p', { class: 'muted', text: 'No network interfaces reported.' }),
        el('h3', { text: 'Firmware and identity' }),
        el('div', { class: 'grid-2' },
          el('div', null, kv([
            ['BIOS', [bios.vendor, bios.version].filter(Boolean).join(' ') || '—'],
            ['BIOS date', dash(bios.date)],
            ['Chassis serial', el('span', { class: 'mono', text: dash(bios.serial) })],
          ])),
          el('div', null, kv([
            ['System', [sys.vendor, sys.product].filter(Boolean).join(' ') || '—'],
            ['System serial', el('span', { class: 'mono', text: dash(sys.serial) })],
            ['System UUID', el('span', { class: 'mono', text: dash(sys.uuid) })],
            ['Board', [board.vendor, board.product].filter(Boolean).join(' ') || '—'],
            ['Board serial', el('span', { class: 'mono', text: dash(board.serial) })],
          ]))),
        el('p', { class: 'muted', text: 'Collected ' + fmtTime(hw.collected_at) + '.' }));
    }

    function renderTimeline(t) {
      const entries = Array.isArray(t.timeline) ? t.timeline : [];
      if (!entries.length) { fill(timelineBox, el('p', { class: 'muted', text: 'Nothing yet.' })); return; }
      fill(timelineBox, table('compact timeline', ['Time', 'Event', 'Status', 'Stage', 'Actor', 'Message'], entries.map((e) => el('tr', null,
        el('td', { class: 'when' }, timeEl(e.timestamp)),
        el('td', { text: String(e.event || '').replace(/_/g, ' ') }),
        el('td', null, e.status ? badge(e.status) : '—'),
        el('td', { text: dash(e.stage) }),
        el('td', { text: dash(e.actor) }),
        el('td', { class: 'msg', text: dash(e.message) + (e.source ? ' (from ' + e.source + ')' : '') })))));
    }

    function renderAll(t) {
      statusBadge.hidden = false;
      setBadge(statusBadge, t.status);
      const operator = canOperate();
      const waiting = t.status === 'pending_approval';
      approvalPanel.hidden = !(waiting && operator);
      cancelBtn.hidden = !(operator && !TERMINAL.has(t.status));
      const a = attemptOf(t);
      retryBtn.hidden = !(operator && (t.status === 'failed' || t.status === 'cancelled') && !retriedAs(t) && a.n < a.max);
      if (TERMINAL.has(t.status)) cancelPanel.hidden = true;
      renderSummary(t);
      renderProgress(t);
      renderDecision(t);
      renderRules(t);
      renderError(t);
      renderHardware(t.hardware, t);
      renderTimeline(t);
      if (focusApproval && !focused) {
        focused = true;
        if (!approvalPanel.hidden) {
          approvalPanel.classList.add('focus');
          approvalPanel.scrollIntoView({ block: 'start' });
          notes.focus();
        } else if (!waiting) {
          say('info', null, 'This task is not waiting for approval: it is ' + String(t.status).replace(/_/g, ' ') + '.');
        } else {
          say('info', null, 'Your role (' + session.me.role + ') can review tasks but not approve them.');
        }
      }
    }

    const refresh = refresher(async () => {
      let res;
      try {
        res = await api('GET', '/api/v1/tasks/' + encodeURIComponent(id));
      } catch (err) {
        if (!v.alive || err.signedOut) return;
        if (err.status === 404) {
          fill(app, el('div', { class: 'panel empty' },
            el('h1', { text: 'Task not found' }),
            el('p', null, 'There is no task ', el('span', { class: 'mono', text: id }), '. ', link('/tasks', 'Back to the task list.'))));
          return;
        }
        say('error', 'Could not load the task', err.message);
        return;
      }
      if (!v.alive || !res.data) return;
      task = res.data;
      etag = res.headers.get('ETag') || (task.revision !== undefined ? String(task.revision) : null);
      renderAll(task);
      attachBootTrace(task);
    });

    v.onMessage = function (msg) {
      if (msg.task_id !== id || !task) return;
      switch (msg.type) {
        case 'status':
          // Show the new status at once, then fetch the rest (timeline,
          // approval, error, revision) over REST.
          task.status = msg.status;
          setBadge(statusBadge, msg.status);
          refresh();
          break;
        case 'progress': {
          const stageChanged = !task.progress || task.progress.stage !== msg.stage;
          task.progress = Object.assign({}, task.progress, { stage: msg.stage, percentage: msg.percentage, message: msg.message });
          renderProgress(task);
          if (stageChanged) refresh.soon(); // a new stage adds a timeline entry
          break;
        }
        case 'hardware':
          if (msg.hardware && typeof msg.hardware === 'object') {
            task.hardware = msg.hardware;
            renderHardware(task.hardware, task);
            refresh.soon(); // the report's timeline entry names its source address
          }
          break;
      }
    };
    v.resync = () => refresh();
    v.destroy = () => { v.alive = false; refresh.cancel(); if (bootTrace) bootTrace.destroy(); };
    return v;
  }

  // ------------------------------------------------------------------
  // Start.

  async function boot() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) { render(); return; }
    session.token = token;
    try {
      const res = await api('GET', '/api/v1/whoami', { noSignOut: true });
      session.me = res.data || {};
    } catch (err) {
      if (err.status === 401) {
        signOut('Your token was not accepted any more. Sign in again.');
        return;
      }
      session.token = null;
      fill(app, el('div', { class: 'panel' }, alertBox('error', 'Cannot reach the control plane', err.message),
        el('button', { type: 'button', class: 'btn', text: 'Try again', on: { click: boot } })));
      return;
    }
    showUser();
    liveStart();
    render();
  }

  boot();
})();
