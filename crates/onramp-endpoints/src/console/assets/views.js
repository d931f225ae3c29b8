// The overview (service, live charts), registrations, linked hubs and
// diagnostics views.

import { call, queryAll, seg, ApiError } from './api.js';
import { h, attempt, table, pill, when, card, notify, describeError } from './ui.js';
import { liveCharts } from './charts.js';

const POLL_MS = 2000;

/** Recent diagnostic entries, or null when the server has no diagnostics API. */
async function recentDiagnostics(query) {
  try {
    const { body } = await call('GET', '/diagnostics', { query });
    return Array.isArray(body) ? body : [];
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '')]));
}

/** The service the policy belongs to, and the live charts. Answers a stop function. */
export function overviewView(main) {
  const info = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const charts = liveCharts();
  const note = h('p', { class: 'hint', id: 'charts-note' });
  main.replaceChildren(
    h('h1', {}, 'Overview'),
    card(h('h2', {}, 'Provisioning service'), info),
    h('div', { class: 'grid' }, charts.elements),
    note);
  attempt(async () => {
    const { body: s } = await call('GET', '/service');
    info.replaceChildren(facts([
      ['Name', s.name],
      ['ID scope', s.idScope],
      ['Global device endpoint', s.globalDeviceEndpoint],
      ['Default allocation', s.allocationPolicy],
      ['Signed in with policy', s.policy],
      ['Rights', s.rights],
    ]));
  });
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    try {
      const since = new Date(Date.now() - 70_000).toISOString();
      const entries = await recentDiagnostics({ since, top: '1000' });
      if (entries === null) {
        note.textContent = 'This server has no diagnostics API (GET /diagnostics): the charts stay empty.';
        charts.update([]);
        return;
      }
      note.textContent = `Computed from GET /diagnostics, refreshed every ${POLL_MS / 1000} s.`;
      charts.update(entries);
    } catch (e) {
      note.textContent = `The charts could not be refreshed: ${describeError(e)}`;
    }
    if (!stopped) timer = setTimeout(tick, POLL_MS);
  };
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

function registrationsTable(records, reload) {
  const remove = async (r) => {
    if (!window.confirm(`Delete the registration record of '${r.registrationId}'?`)) return;
    await attempt(async () => {
      await call('DELETE', `/registrations/${seg(r.registrationId)}`, { etag: r.etag });
      await reload();
    }, `registration record of '${r.registrationId}' deleted`);
  };
  return table([
    ['Registration ID', (r) => r.registrationId],
    ['Status', (r) => pill(r.status)],
    ['Hub', (r) => r.assignedHub],
    ['Device ID', (r) => r.deviceId],
    ['Substatus', (r) => r.substatus],
    ['Error', (r) => (r.errorCode ? `${r.errorCode}: ${r.errorMessage || ''}` : '')],
    ['Updated', (r) => when(r.lastUpdatedDateTimeUtc)],
    ['', (r) => h('button', { type: 'button', class: 'danger', onclick: () => remove(r) }, 'Delete')],
  ], records, { empty: 'No registration records.', label: 'Registrations' });
}

/** Registration records: a group's (query API), or one by registration ID. */
export function registrationsView(main) {
  const group = h('input', { name: 'group-id', required: true, autocomplete: 'off' });
  const device = h('input', { name: 'registration-id', required: true, autocomplete: 'off' });
  const results = h('div', { id: 'registration-results', 'aria-live': 'polite' });
  const groups = h('datalist', { id: 'known-groups' });
  const byGroup = () => attempt(async () => {
    const id = group.value.trim();
    const records = await queryAll(`/registrations/${seg(id)}/query`, 'SELECT * FROM enrollmentGroups');
    results.replaceChildren(h('h2', {}, `Registrations of group '${id}'`), registrationsTable(records, byGroup));
  });
  const byId = () => attempt(async () => {
    const id = device.value.trim();
    try {
      const { body } = await call('GET', `/registrations/${seg(id)}`);
      results.replaceChildren(h('h2', {}, `Registration '${id}'`), registrationsTable([body], byId));
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      results.replaceChildren(h('p', { class: 'muted' }, `No registration record for '${id}': ${e.message}`));
    }
  });
  group.setAttribute('list', 'known-groups');
  main.replaceChildren(
    h('h1', {}, 'Registrations'),
    card(
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); byGroup(); } },
        h('label', {}, 'Enrollment group', group), groups, h('button', { type: 'submit' }, 'List')),
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); byId(); } },
        h('label', {}, 'Registration ID', device), h('button', { type: 'submit' }, 'Look up')),
      h('p', { class: 'hint' }, 'A refused device leaves no record: the Diagnostics view says why it was refused.')),
    results);
  // Offer the group IDs that exist.
  queryAll('/enrollmentGroups/query', 'SELECT * FROM enrollmentGroups', 200)
    .then((gs) => groups.replaceChildren(...gs.map((g) => h('option', { value: g.enrollmentGroupId }))))
    .catch(() => {});
}

/** Linked hubs with their devices and measured latency (Onramp's extension route). */
export function hubsView(main) {
  const area = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  main.replaceChildren(h('h1', {}, 'Linked hubs'), card(area));
  attempt(async () => {
    const { body } = await call('GET', '/linkedHubs');
    area.replaceChildren(table([
      ['Hub', (x) => x.name],
      ['Region', (x) => x.region],
      ['Weight', (x) => x.allocationWeight],
      ['Allocates', (x) => (x.applyAllocationPolicy ? 'yes' : 'no')],
      ['Kind', (x) => x.kind],
      ['Devices', (x) => x.devices],
      ['Latency', (x) => (x.latency.length ? x.latency.map((l) => (l.latencyMs !== null && l.latencyMs !== undefined
        ? `${l.node}: ${l.latencyMs.toFixed(1)} ms` : `${l.node}: down${l.error ? ` (${l.error})` : ''}`)).join(', ')
        : 'not measured yet')],
    ], body, { empty: 'No hub is linked to this service.', label: 'Linked hubs' }));
  });
}

/** Diagnostic entries: why a device was refused, or failed. */
export function diagnosticsView(main) {
  const device = h('input', { name: 'device', autocomplete: 'off' });
  const outcome = h('select', { name: 'outcome' },
    h('option', { value: '' }, 'any'),
    h('option', { value: 'refused' }, 'refused'),
    h('option', { value: 'failed' }, 'failed'),
    h('option', { value: 'assigned' }, 'assigned'));
  const since = h('select', { name: 'since' },
    h('option', { value: '900' }, 'last 15 minutes'),
    h('option', { value: '3600', selected: true }, 'last hour'),
    h('option', { value: '86400' }, 'last day'),
    h('option', { value: '' }, 'any time'));
  const area = h('div', { id: 'diagnostics-results', 'aria-live': 'polite' });
  const load = () => attempt(async () => {
    const entries = await recentDiagnostics({
      registrationId: device.value.trim(),
      outcome: outcome.value,
      since: since.value ? new Date(Date.now() - Number(since.value) * 1000).toISOString() : '',
      top: '200',
    });
    if (entries === null) {
      area.replaceChildren(h('p', { class: 'error' }, 'This server has no diagnostics API (GET /diagnostics).'));
      return;
    }
    area.replaceChildren(table([
      ['Time', (d) => when(d.time)],
      ['Registration ID', (d) => d.registrationId],
      ['Outcome', (d) => pill(d.outcome)],
      ['Code', (d) => d.errorCode ?? ''],
      ['Reason', (d) => d.message],
      ['Step', (d) => d.step],
      ['Protocol', (d) => d.protocol],
      ['Attestation', (d) => d.attestation],
      ['Enrollment', (d) => d.enrollment],
      ['Client', (d) => d.clientAddress],
      ['ms', (d) => d.durationMs],
      ['Hub', (d) => d.assignedHub],
    ], entries, { empty: 'No registration attempt matches.', label: 'Diagnostics' }));
  });
  main.replaceChildren(
    h('h1', {}, 'Diagnostics'),
    card(h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', {}, 'Registration ID', device),
      h('label', {}, 'Outcome', outcome),
      h('label', {}, 'Since', since),
      h('button', { type: 'submit' }, 'Search')),
    h('p', { class: 'hint' }, 'Every registration attempt, newest first. The device itself hears only what Azure would tell it; the reason here is for you.')),
    area);
  load().then((ok) => { if (!ok) notify('Diagnostics could not be read', true); });
}
