/* certgate console: plain DOM, data shown with textContent only (certificate
 * fields are attacker-controlled). Talks to the admin API one level up. */
'use strict';

const API = '..';
const state = { me: null, certs: null, filter: 'all', search: '', sort: 'expiry-asc', page: 1,
                pageSize: 50, audit: { cursors: [null], at: 0 } };

/* ---------------------------------------------------------------- DOM */

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    e.append(kid instanceof Node ? kid : String(kid));
  }
  return e;
}

function field(label, id, input) {
  input.id = id;
  return el('div', {}, el('label', { for: id, text: label }), input);
}

function notice(text) {
  const n = document.getElementById('notice');
  n.textContent = text;
  clearTimeout(notice.t);
  notice.t = setTimeout(() => { n.textContent = ''; }, 6000);
}

function screen(title, ...kids) {
  const main = document.getElementById('main');
  main.replaceChildren(el('h1', { text: title }), ...kids.filter(k => k !== null && k !== undefined));
  document.title = title + ' - certgate console';
}

/* ---------------------------------------------------------------- API */

async function api(method, path, opts) {
  opts = opts || {};
  const headers = { Accept: opts.accept || 'application/json' };
  let body = opts.body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  } else if (opts.type) {
    headers['Content-Type'] = opts.type;
  }
  if (opts.ifMatch) headers['If-Match'] = opts.ifMatch;
  const r = await fetch(API + path, { method, headers, body, credentials: 'same-origin',
                                      cache: 'no-store' });
  const text = await r.text();
  let data = null;
  if ((r.headers.get('Content-Type') || '').startsWith('application/json') && text) {
    try { data = JSON.parse(text); } catch (e) { data = null; }
  }
  return { ok: r.ok, status: r.status, data, text, headers: r.headers };
}

function errText(r) {
  if (r.data && r.data.code) return r.data.code + ': ' + (r.data.message || '');
  return 'HTTP ' + r.status;
}

function q(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== null && v !== undefined) u.set(k, v);
  const s = u.toString();
  return s ? '?' + s : '';
}

const has = role => !!(state.me && state.me.roles.includes(role));

/* ---------------------------------------------------------------- helpers */

function statusChip(s) {
  const base = (s || '').split(' ')[0];
  return el('span', { class: 'status s-' + base + (s.includes('SOON') ? ' s-soon' : ''), text: s });
}

function day(iso) { return iso ? iso.replace('T', ' ').replace('Z', ' UTC') : '-'; }

function daysLeft(c) {
  if (!c.validTo) return '';
  const d = Math.floor((Date.parse(c.validTo) - Date.now()) / 86400000);
  return d < 0 ? 'expired' : 'expires in ' + d + ' day' + (d === 1 ? '' : 's');
}

function csvCell(v) {
  let s = v === null || v === undefined ? '' : Array.isArray(v) ? v.join(' ') : String(v);
  if (/^[=+\-@\t\r]/.test(s)) s = "'" + s;   // no formulas in spreadsheets
  return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type: type || 'text/csv' }));
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/* Every registration the user may see: the API pages through 500 at a time. */
async function loadCerts() {
  const all = [];
  for (let page = 1; ; page++) {
    const r = await api('GET', '/certs' + q({ page, pageSize: 500 }));
    if (!r.ok) throw new Error(errText(r));
    all.push(...r.data.items);
    if (all.length >= r.data.total || r.data.items.length === 0) break;
  }
  state.certs = all;
  return all;
}

const CHIPS = [
  ['all', 'All', () => true],
  ['pending', 'Pending', c => c.status.startsWith('PENDING')],
  ['approved', 'Approved', c => c.status.startsWith('APPROVED')],
  ['soon', 'Expiring soon', c => c.status.includes('EXPIRATION SOON')],
  ['expired', 'Expired', c => c.status === 'EXPIRED'],
  ['declined', 'Declined', c => c.status === 'DECLINED'],
  ['inactivated', 'Inactivated', c => c.status === 'INACTIVATED'],
  ['mine', 'Waiting for my approval',
   c => has('manager') && c.status.startsWith('PENDING') &&
        (state.me.selfApprove || c.createdBy !== state.me.user)],
];

/* Search: app, customer, CN, SAN (substring), fingerprint (prefix). Client-side:
 * GET /certs has no such filter. */
function matches(c, s) {
  if (!s) return true;
  s = s.toLowerCase();
  const fp = s.replace(/:/g, '');
  return c.appId.toLowerCase().includes(s) || c.customerId.toLowerCase().includes(s) ||
         c.commonName.toLowerCase().includes(s) ||
         (c.subjectAlternativeNames || []).some(n => n.toLowerCase().includes(s)) ||
         (fp.length > 0 && c.fingerprint.startsWith(fp));
}

function sorted(list) {
  const key = state.sort;
  const out = list.slice();
  if (key === 'expiry-asc') out.sort((a, b) => (a.validTo || '').localeCompare(b.validTo || ''));
  else if (key === 'expiry-desc') out.sort((a, b) => (b.validTo || '').localeCompare(a.validTo || ''));
  else out.sort((a, b) => (b.created || '').localeCompare(a.created || ''));
  return out;
}

/* ---------------------------------------------------------------- registrations */

async function showCerts() {
  screen('Registrations', el('p', { text: 'Loading registrations…' }));
  let certs;
  try { certs = await loadCerts(); } catch (e) { screen('Registrations', el('p', { class: 'error', text: e.message })); return; }
  const chips = el('div', { class: 'chips', role: 'group', 'aria-label': 'Filter by status' });
  const search = el('input', { type: 'search', value: state.search, autocomplete: 'off',
                               placeholder: 'app, customer, CN, SAN, fingerprint prefix' });
  const sort = el('select', {},
    el('option', { value: 'expiry-asc', text: 'Expiry, soonest first' }),
    el('option', { value: 'expiry-desc', text: 'Expiry, latest first' }),
    el('option', { value: 'created-desc', text: 'Newest upload first' }));
  sort.value = state.sort;
  const csv = el('button', { type: 'button', text: 'Export CSV' });
  const body = el('tbody');
  const count = el('p', { 'aria-live': 'polite' });
  const prev = el('button', { type: 'button', text: 'Previous page' });
  const next = el('button', { type: 'button', text: 'Next page' });
  const table = el('div', { class: 'tablewrap' }, el('table', {},
    el('caption', { class: 'skip', text: 'Registrations' }),
    el('thead', {}, el('tr', {}, ...[['Common name'], ['App'], ['Customer', 'wide'], ['Status'], ['Expires'], ['Fingerprint', 'wide']].map(
      ([h, cls]) => el('th', { scope: 'col', class: cls, text: h })))),
    body));

  const filtered = () => {
    const pred = CHIPS.find(c => c[0] === state.filter)[2];
    return sorted(certs.filter(c => pred(c) && matches(c, state.search)));
  };
  const render = () => {
    chips.replaceChildren(...CHIPS.filter(c => c[0] !== 'mine' || has('manager')).map(([k, label, pred]) =>
      el('button', { type: 'button', class: 'chip', 'aria-pressed': String(state.filter === k),
                     onclick: () => { state.filter = k; state.page = 1; render(); } },
         label + ' (' + certs.filter(pred).length + ')')));
    const list = filtered();
    const pages = Math.max(1, Math.ceil(list.length / state.pageSize));
    if (state.page > pages) state.page = pages;
    const start = (state.page - 1) * state.pageSize;
    body.replaceChildren(...list.slice(start, start + state.pageSize).map(c => el('tr', {},
      el('td', {}, el('a', { href: '#/cert/' + encodeURIComponent(c.id), text: c.commonName || '(no CN)' })),
      el('td', { text: c.appId }), el('td', { class: 'wide', text: c.customerId }), el('td', {}, statusChip(c.status)),
      el('td', {}, el('span', { class: 'nowrap', text: (c.validTo || '').slice(0, 10) }), ' ', el('span', { class: 'nowrap', text: daysLeft(c) })),
      el('td', { class: 'mono wide', text: c.fingerprint.slice(0, 16) + '…' }))));
    count.textContent = list.length + ' of ' + certs.length + ' registrations, page ' + state.page + ' of ' + pages;
    prev.disabled = state.page <= 1;
    next.disabled = state.page >= pages;
  };
  search.addEventListener('input', () => { state.search = search.value.trim(); state.page = 1; render(); });
  sort.addEventListener('change', () => { state.sort = sort.value; render(); });
  prev.addEventListener('click', () => { state.page--; render(); });
  next.addEventListener('click', () => { state.page++; render(); });
  csv.addEventListener('click', () => {
    const cols = ['id', 'appId', 'customerId', 'commonName', 'subjectAlternativeNames', 'status',
                  'validFrom', 'validTo', 'expireIn', 'fingerprint', 'issuer', 'serialNumber', 'createdBy', 'created'];
    download('registrations.csv', [cols.join(',')].concat(filtered().map(c => cols.map(k => csvCell(c[k])).join(','))).join('\r\n') + '\r\n');
  });
  screen('Registrations', chips,
    el('div', { class: 'toolbar' }, field('Search', 'search', search), field('Sort', 'sort', sort), csv),
    count, table, el('div', { class: 'pager' }, prev, next));
  render();
}

/* ---------------------------------------------------------------- detail */

function fields(pairs) {
  return el('dl', { class: 'fields' }, ...pairs.map(([k, v]) => [el('dt', { text: k }),
    v instanceof Node ? el('dd', {}, v) : el('dd', { text: v === null || v === undefined || v === '' ? '-' : String(v) })]));
}

function reasonDialog(title, help, required) {
  return new Promise(resolve => {
    const d = document.getElementById('reason-dialog');
    const text = document.getElementById('reason-text');
    const err = document.getElementById('reason-error');
    document.getElementById('reason-title').textContent = title;
    document.getElementById('reason-help').textContent = help;
    document.getElementById('reason-ok').textContent = title;
    text.value = '';
    text.required = required;
    err.textContent = '';
    const done = v => { d.close(); cleanup(); resolve(v); };
    const ok = ev => {
      ev.preventDefault();
      if (required && !text.value.trim()) { err.textContent = 'A reason is required.'; text.focus(); return; }
      done(text.value.trim());
    };
    const cancel = () => done(null);
    const form = document.getElementById('reason-form');
    const cbtn = document.getElementById('reason-cancel');
    const cleanup = () => { form.removeEventListener('submit', ok); cbtn.removeEventListener('click', cancel); d.removeEventListener('cancel', cancel); };
    form.addEventListener('submit', ok);
    cbtn.addEventListener('click', cancel);
    d.addEventListener('cancel', cancel);
    d.showModal();
    text.focus();
  });
}

async function showCert(id) {
  screen('Registration', el('p', { text: 'Loading…' }));
  const r = await api('GET', '/certs/' + encodeURIComponent(id));
  if (!r.ok) { screen('Registration', el('p', { class: 'error', text: errText(r) })); return; }
  const c = r.data;
  const etag = r.headers.get('ETag');
  const app = await api('GET', '/apps/' + encodeURIComponent(c.appId));
  const mine = app.ok ? (app.data.certificates || app.data.items || []).find(x => x.id === c.id) : null;
  const u = c.usage || {};
  const kids = [];
  if (c.status.includes('EXPIRATION SOON')) kids.push(el('p', { class: 'banner', text: 'Expiration soon: ' + daysLeft(c) + '. Schedule a rotation.' }));
  kids.push(fields([
    ['Common name', c.commonName], ['Status', statusChip(c.status)], ['Status reason', c.statusReason],
    ['App', c.appId], ['Customer', c.customerId], ['Subject organization', c.organization],
    ['Issuer', c.issuer], ['Subject alternative names', (c.subjectAlternativeNames || []).join(', ')],
    ['Serial number', c.serialNumber], ['Valid from', day(c.validFrom)],
    ['Valid to', day(c.validTo) + ' (' + daysLeft(c) + ')'],
    ['SHA-256 fingerprint', el('span', { class: 'mono', text: c.fingerprint })],
    ['Active window', (c.activateAt ? 'from ' + day(c.activateAt) : 'open') + ' / ' + (c.retireAt ? 'until ' + day(c.retireAt) : 'open')],
    ['Uploaded', day(c.created) + ' by ' + c.createdBy], ['Last change', day(c.updated) + ' by ' + c.updatedBy],
    ['Gate answer now', mine ? mine.gate : (app.ok ? '-' : errText(app))],
    ['Requests', u.requests === undefined ? 'none recorded' : String(u.requests)],
    ['Last seen', day(u.lastSeen)], ['Last client IP', u.lastClientIp],
  ]));

  // Actions: the console hides what the API would refuse; the API decides.
  if (has('manager')) {
    const live = c.status.startsWith('PENDING') || c.status.startsWith('APPROVED');
    const pending = c.status.startsWith('PENDING');
    const selfBlocked = !state.me.selfApprove && c.createdBy === state.me.user;
    const out = el('p', { role: 'alert', class: 'error' });
    const act = async (action, required) => {
      const reason = await reasonDialog(action[0].toUpperCase() + action.slice(1),
        required ? 'Say why; the reason is kept with the registration and in the audit log.' : 'Optional note for the audit log.', required);
      if (reason === null) return;
      const res = await api('POST', '/certs/' + encodeURIComponent(c.id) + '/' + action,
                            { json: reason ? { reason } : {}, ifMatch: etag });
      if (res.ok) { notice(action + ': done'); showCert(c.id); } else out.textContent = errText(res);
    };
    const approve = el('button', { type: 'button', class: 'primary', text: 'Approve',
      disabled: !pending || selfBlocked, 'aria-describedby': selfBlocked ? 'why-not' : null,
      onclick: () => act('approve', false) });
    kids.push(el('h2', { text: 'Decision' }),
      selfBlocked && pending ? el('p', { id: 'why-not', class: 'note', text: 'You uploaded this certificate: four-eyes rule, another manager must approve it.' }) : null,
      el('div', { class: 'buttons' }, approve,
        el('button', { type: 'button', text: 'Decline', disabled: !pending, onclick: () => act('decline', true) }),
        el('button', { type: 'button', class: 'danger', text: 'Inactivate', disabled: !live, onclick: () => act('inactivate', true) })),
      out);
  } else if (c.status.startsWith('PENDING')) {
    kids.push(el('p', { class: 'note', id: 'why-not', text: 'Waiting for a certificate manager: only a manager other than the uploader can approve.' }));
  }

  kids.push(el('h2', { text: 'Chain' }), el('ol', {}, ...(c.chain || []).map(x =>
    el('li', {}, el('span', { text: x.subject + ' ' }), el('span', { class: 'mono', text: x.fingerprint.slice(0, 16) + '…' })))));
  const checkOut = el('div', { 'aria-live': 'polite' });
  kids.push(el('div', { class: 'buttons' }, el('button', { type: 'button', text: 'Verify chain now',
    onclick: async () => {
      checkOut.textContent = 'Checking…';
      const ex = await api('GET', '/export' + q({ appId: c.appId }));
      const item = ex.ok ? ex.data.items.find(x => x.id === c.id) : null;
      if (!item) { checkOut.textContent = ex.ok ? 'The certificate itself is not stored for this registration.' : errText(ex); return; }
      const ck = await api('POST', '/check', { json: { certificate: item.certificate, chain: item.chain, appId: c.appId } });
      checkOut.replaceChildren(ck.ok ? checkView(ck.data) : el('p', { class: 'error', text: errText(ck) }));
    } })), checkOut);

  kids.push(el('h2', { text: 'History' }));
  if (has('auditor')) {
    const ev = await api('GET', '/events' + q({ certId: c.id, limit: 200 }));
    kids.push(ev.ok ? eventsTable(ev.data.items) : el('p', { class: 'error', text: errText(ev) }));
  } else {
    kids.push(el('p', { text: 'The status history comes from the audit log, which only auditors read.' }));
  }
  screen('Registration: ' + (c.commonName || c.id), ...kids);
}

function checkView(d) {
  return el('div', {}, fields([
    ['Gate decision', d.decision + ' (' + d.reason + ', HTTP ' + d.httpStatus + ')'],
    ['Registration', d.registrationId],
    ['Policy', d.policy.ok ? 'passes' : 'refused'], ['Policy code', d.policy.code], ['Policy message', d.policy.message],
    ...(d.chain || []).map(x => ['Chain ' + x.index + ': ' + x.subject, x.verify + ' (code ' + x.verifyCode + ')']),
  ]));
}

function eventsTable(items) {
  if (!items.length) return el('p', { text: 'No events.' });
  return el('div', { class: 'tablewrap' }, el('table', {},
    el('thead', {}, el('tr', {}, ...['Time', 'Action', 'User', 'App', 'Certificate', 'Details'].map(h => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, ...items.map(e => el('tr', {},
      el('td', { text: day(e.time) }), el('td', { text: e.action }), el('td', { text: e.user }),
      el('td', { text: e.appId || '' }), el('td', { class: 'mono', text: e.certId || '' }),
      el('td', { class: 'details', text: Object.entries(e).filter(([k, v]) => v !== '' && v !== null && !['id', 'time', 'action', 'user', 'appId', 'certId'].includes(k))
        .map(([k, v]) => k + '=' + (typeof v === 'object' ? JSON.stringify(v) : v)).join(' ') }))))));
}

/* ---------------------------------------------------------------- upload */

function readFile(f) {
  return new Promise((resolve, reject) => {
    const rd = new FileReader();
    rd.onload = () => resolve(new Uint8Array(rd.result));
    rd.onerror = () => reject(rd.error);
    rd.readAsArrayBuffer(f);
  });
}

function asText(bytes) { return new TextDecoder().decode(bytes); }
function isPem(bytes) { return asText(bytes.slice(0, 4096)).includes('-----BEGIN'); }
function b64(bytes) { let s = ''; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }

async function showUpload() {
  const apps = await api('GET', '/apps');
  const appSel = el('select', { required: true }, ...(apps.ok ? apps.data.items : []).map(a =>
    el('option', { value: a.appId, text: a.appId + (a.name ? ' - ' + a.name : '') })));
  const certIn = el('input', { type: 'file', accept: '.pem,.crt,.cer,.der,.p7b,.p7c' });
  const chainIn = el('input', { type: 'file', accept: '.pem,.crt,.cer,.p7b' });
  const keyIn = el('input', { type: 'file', accept: '.pem,.key' });
  const out = el('div', { 'aria-live': 'polite' });
  const drop = el('div', { class: 'drop' }, el('p', { text: 'Drop the certificate file here (PEM, CRT, CER, DER or P7B), or choose it below. A second file dropped becomes the chain.' }));
  drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', e => {
    e.preventDefault(); drop.classList.remove('over');
    const files = e.dataTransfer.files;
    const dt = new DataTransfer(); dt.items.add(files[0]); certIn.files = dt.files;
    if (files[1]) { const d2 = new DataTransfer(); d2.items.add(files[1]); chainIn.files = d2.files; }
    notice('File ' + files[0].name + ' chosen');
  });

  const build = async () => {
    if (!certIn.files[0]) throw new Error('Choose a certificate file.');
    const cert = await readFile(certIn.files[0]);
    const name = certIn.files[0].name.toLowerCase();
    if (/\.p7[bc]$/.test(name) || asText(cert.slice(0, 100)).includes('BEGIN PKCS7')) {
      return { raw: cert, type: 'application/pkcs7-mime' };
    }
    const body = { appId: appSel.value, certificate: isPem(cert) ? asText(cert) : b64(cert) };
    if (chainIn.files[0]) body.chain = asText(await readFile(chainIn.files[0]));
    if (keyIn.files[0]) body.privateKey = asText(await readFile(keyIn.files[0]));
    return { json: body };
  };
  const run = async (path) => {
    out.replaceChildren(el('p', { text: 'Sending…' }));
    let b;
    try { b = await build(); } catch (e) { out.replaceChildren(el('p', { class: 'error', text: e.message })); return null; }
    const opts = b.json ? { json: b.json } : { body: b.raw, type: b.type };
    const p = b.json ? path : path + q({ appId: appSel.value });
    if (b.json) delete b.json.privateKey;
    return api('POST', p, opts);
  };
  const check = el('button', { type: 'button', text: 'Check against the policy', onclick: async () => {
    const r = await run('/check');
    if (r) out.replaceChildren(r.ok ? checkView(r.data) : el('p', { class: 'error', text: errText(r) }));
  } });
  const send = el('button', { type: 'button', class: 'primary', text: 'Upload', onclick: async () => {
    const r = await run('/certs');
    if (!r) return;
    if (r.ok) {
      out.replaceChildren(el('p', { text: 'Uploaded: status ' + r.data.status + '. ' }),
        el('a', { href: '#/cert/' + encodeURIComponent(r.data.id), text: 'Open ' + (r.data.commonName || r.data.id) }));
      state.certs = null;
    } else {
      out.replaceChildren(el('p', { class: 'error', role: 'alert', text: 'Refused. ' + errText(r) }));
    }
  } });
  screen('Upload a certificate',
    el('p', { class: 'note', text: 'The private key is optional: it is only checked to belong to the certificate (proof of possession) and never stored, logged or shown.' }),
    el('div', { class: 'form' }, field('App', 'up-app', appSel), drop,
      field('Certificate file', 'up-cert', certIn), field('Chain file (issuing CAs, root last)', 'up-chain', chainIn),
      field('Private key file (optional, checked, never stored)', 'up-key', keyIn)),
    el('div', { class: 'buttons' }, check, send), out);
}

/* ---------------------------------------------------------------- rotations */

function localToIso(v) { return v ? new Date(v).toISOString().replace(/\.\d{3}Z$/, 'Z') : ''; }

function timeline(oldC, newC, rot) {
  const a = Date.parse(rot.activateAt), r = Date.parse(rot.retireOldAt);
  const start = Math.min(Date.now(), a) - 3600e3, end = r + (r - a) * 0.5 + 3600e3;
  const pos = t => Math.max(0, Math.min(100, (t - start) * 100 / (end - start)));
  const bar = (cls, from, to, label) => {
    const b = el('div', { class: 'bar ' + cls, text: label });
    b.style.left = pos(from) + '%';
    b.style.width = Math.max(1, pos(to) - pos(from)) + '%';
    return b;
  };
  return el('div', { class: 'timeline', role: 'img', 'aria-label': 'Old certificate serves until ' + day(rot.retireOldAt) +
      '; new certificate serves from ' + day(rot.activateAt) + '; both are accepted in between.' },
    bar('old', start, r, 'old: ' + (oldC ? oldC.commonName : rot.oldCertId)),
    bar('new', a, end, 'new: ' + (newC ? newC.commonName : rot.newCertId)),
    bar('overlap', a, r, 'overlap'), nowMark(pos(Date.now())));
}

function nowMark(left) {
  const m = el('div', { class: 'now', title: 'now' });
  m.style.left = left + '%';
  return m;
}

function usageBox(title, c) {
  const u = (c && c.usage) || {};
  return el('section', { 'aria-label': title }, el('h3', { text: title }), fields([
    ['Certificate', c ? c.commonName : '-'], ['Status', c ? c.status : '-'], ['Gate answer now', c ? c.gate : '-'],
    ['Requests', u.requests === undefined ? 'none recorded' : String(u.requests)],
    ['Last seen', day(u.lastSeen)], ['Last client IP', u.lastClientIp]]));
}

async function showRotations(appId) {
  const apps = await api('GET', '/apps');
  const appSel = el('select', {}, el('option', { value: '', text: 'Choose an app' }), ...(apps.ok ? apps.data.items : []).map(a =>
    el('option', { value: a.appId, text: a.appId })));
  appSel.value = appId || '';
  appSel.addEventListener('change', () => { location.hash = '#/rotations/' + encodeURIComponent(appSel.value); });
  const kids = [field('App', 'rot-app', appSel)];
  if (!appId) { screen('Rotation cutovers', ...kids); return; }
  const r = await api('GET', '/apps/' + encodeURIComponent(appId));
  if (!r.ok) { screen('Rotation cutovers', ...kids, el('p', { class: 'error', text: errText(r) })); return; }
  const certs = r.data.certificates || r.data.items || [];
  const byId = Object.fromEntries(certs.map(c => [c.id, c]));
  const approved = certs.filter(c => c.status.startsWith('APPROVED'));
  const out = el('p', { role: 'alert', class: 'error' });
  if (has('support')) {
    const opt = c => el('option', { value: c.id, text: c.commonName + ' (to ' + (c.validTo || '').slice(0, 10) + ', ' + c.id.slice(0, 8) + ')' });
    const newSel = el('select', {}, ...approved.map(opt));
    const oldSel = el('select', {}, ...approved.map(opt));
    if (approved.length > 1) oldSel.selectedIndex = 1;
    const act = el('input', { type: 'datetime-local' });
    const ret = el('input', { type: 'datetime-local' });
    const schedule = el('button', { type: 'button', class: 'primary', text: 'Schedule rotation', onclick: async () => {
      const res = await api('POST', '/apps/' + encodeURIComponent(appId) + '/rotations', { json: {
        newCertId: newSel.value, oldCertId: oldSel.value, activateAt: localToIso(act.value), retireOldAt: localToIso(ret.value) } });
      if (res.ok) { notice('Rotation scheduled'); showRotations(appId); } else out.textContent = errText(res);
    } });
    kids.push(el('h2', { text: 'Schedule a cutover' }), el('div', { class: 'form' },
      field('New certificate', 'rot-new', newSel), field('Old certificate', 'rot-old', oldSel),
      field('New one active from (your local time)', 'rot-act', act), field('Old one retired at (your local time)', 'rot-ret', ret)),
      el('div', { class: 'buttons' }, schedule), out);
  }
  const rots = r.data.rotations || [];
  kids.push(el('h2', { text: 'Rotations of ' + appId }));
  if (!rots.length) kids.push(el('p', { text: 'No rotations.' }));
  for (const rot of rots.slice().reverse()) {
    const oldC = byId[rot.oldCertId], newC = byId[rot.newCertId];
    const sec = el('section', { class: 'rotation', 'aria-label': 'Rotation ' + rot.id },
      fields([['State', rot.state], ['New active from', day(rot.activateAt)], ['Old retired at', day(rot.retireOldAt)],
              ['Scheduled by', rot.createdBy + ' at ' + day(rot.created)]]),
      timeline(oldC, newC, rot),
      el('div', { class: 'side' }, usageBox('Old certificate', oldC), usageBox('New certificate', newC)));
    if (has('support') && rot.state === 'SCHEDULED') {
      sec.append(el('div', { class: 'buttons' }, el('button', { type: 'button', class: 'danger', text: 'Cancel this rotation', onclick: async () => {
        const res = await api('DELETE', '/apps/' + encodeURIComponent(appId) + '/rotations/' + encodeURIComponent(rot.id));
        if (res.ok) { notice('Rotation cancelled'); showRotations(appId); } else out.textContent = errText(res);
      } })));
    }
    kids.push(sec);
  }
  screen('Rotation cutovers', ...kids);
}

/* ---------------------------------------------------------------- audit */

const AUDIT_FILTERS = [['from', 'From (ISO time)'], ['to', 'To (ISO time)'], ['action', 'Action'], ['appId', 'App'],
                       ['customerId', 'Customer'], ['certId', 'Certificate id'], ['user', 'User']];

async function showAudit() {
  const st = state.audit;
  st.filters = st.filters || {};
  const inputs = {};
  const form = el('form', { class: 'toolbar', onsubmit: e => { e.preventDefault(); read(); st.cursors = [null]; st.at = 0; page(); } },
    ...AUDIT_FILTERS.map(([k, label]) => { inputs[k] = el('input', { type: 'text', value: st.filters[k] || '' }); return field(label, 'af-' + k, inputs[k]); }),
    el('button', { type: 'submit', class: 'primary', text: 'Apply filters' }));
  const read = () => { for (const k in inputs) st.filters[k] = inputs[k].value.trim(); };
  const tbl = el('div');
  const info = el('p', { 'aria-live': 'polite' });
  const prev = el('button', { type: 'button', text: 'Previous page', onclick: () => { st.at--; page(); } });
  const next = el('button', { type: 'button', text: 'Next page', onclick: () => { st.at++; page(); } });
  const csv = el('button', { type: 'button', text: 'Export CSV (all pages)', onclick: async () => {
    read();
    let cursor = null, out = '', n = 0;
    do {
      const r = await api('GET', '/events' + q({ ...st.filters, limit: 10000, cursor }), { accept: 'text/csv' });
      if (!r.ok) { info.textContent = 'CSV export failed: ' + errText(r); return; }
      // One header line for the whole file: drop it from later pages.
      out += n++ === 0 ? r.text : r.text.split('\n').slice(1).join('\n');
      cursor = r.headers.get('CertGate-Next-Cursor');
    } while (cursor);
    download('audit.csv', out);
    notice('Audit CSV exported');
  } });
  const page = async () => {
    const r = await api('GET', '/events' + q({ ...st.filters, limit: 100, cursor: st.cursors[st.at] }));
    if (!r.ok) { tbl.replaceChildren(el('p', { class: 'error', text: errText(r) })); return; }
    st.cursors[st.at + 1] = r.data.next;
    tbl.replaceChildren(eventsTable(r.data.items));
    info.textContent = 'Page ' + (st.at + 1) + ': ' + r.data.items.length + ' events' +
      (r.data.next ? '; more follow (Next page)' : '; end of the log for these filters');
    prev.disabled = st.at === 0;
    next.disabled = !r.data.next;
  };
  screen('Audit log', form, el('div', { class: 'pager' }, prev, next, csv), info, tbl);
  await page();
}

/* ---------------------------------------------------------------- routing */

async function route() {
  if (!state.me) return;
  const h = location.hash.replace(/^#\/?/, '');
  const [name, arg] = [h.split('/')[0], decodeURIComponent(h.split('/').slice(1).join('/'))];
  for (const a of document.querySelectorAll('nav a'))
    a.toggleAttribute('aria-current', a.dataset.screen === (name === 'cert' ? 'certs' : name || 'certs'));
  for (const a of document.querySelectorAll('nav a[aria-current]')) a.setAttribute('aria-current', 'page');
  if (name === 'cert' && arg) await showCert(arg);
  else if (name === 'upload') await showUpload();
  else if (name === 'rotations') await showRotations(arg);
  else if (name === 'audit') await showAudit();
  else await showCerts();
  document.getElementById('main').setAttribute('data-ready', h || 'certs');
  performance.mark('cg-rendered');   // time to first render, read by the browser tests
}

async function start() {
  const r = await api('GET', '/whoami');
  if (!r.ok) { screen('certgate console', el('p', { class: 'error', text: 'Cannot read who you are: ' + errText(r) })); return; }
  state.me = r.data;
  document.getElementById('me').textContent = r.data.user + ' (' + (r.data.roles.join(', ') || 'no role') + ')' +
    (r.data.customer ? ', customer ' + r.data.customer : '');
  for (const a of document.querySelectorAll('nav a[data-role]'))
    if (!a.dataset.role.split(' ').some(has)) a.remove();
  window.addEventListener('hashchange', route);
  route();
}

document.addEventListener('DOMContentLoaded', start);
