// Individual enrollments and enrollment groups: one view for both, as the
// service API treats them alike (query, PUT with If-Match, DELETE with
// If-Match).

import { call, queryAll, seg, ApiError } from './api.js';
import { h, notify, attempt, table, jsonField, submitOnCtrlEnter, pill, when, card, describeError } from './ui.js';

export const KINDS = {
  enrollments: {
    title: 'Individual enrollments', noun: 'enrollment', path: '/enrollments',
    idField: 'registrationId', query: 'SELECT * FROM enrollments',
  },
  groups: {
    title: 'Enrollment groups', noun: 'enrollment group', path: '/enrollmentGroups',
    idField: 'enrollmentGroupId', query: 'SELECT * FROM enrollmentGroups',
  },
};

/** A new document of `kind` for each attestation an operator can start from. */
function template(kind, attestation, id) {
  const doc = { [kind.idField]: id };
  if (attestation === 'symmetricKey') doc.attestation = { type: 'symmetricKey' };
  if (attestation === 'x509') {
    const certs = { primary: { certificate: '-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----' } };
    doc.attestation = kind.idField === 'registrationId'
      ? { type: 'x509', x509: { clientCertificates: certs } }
      : { type: 'x509', x509: { signingCertificates: certs } };
  }
  if (attestation === 'tpm') doc.attestation = { type: 'tpm', tpm: { endorsementKey: 'base64 of the TPM2B_PUBLIC' } };
  doc.provisioningStatus = 'enabled';
  doc.allocationPolicy = 'hashed';
  doc.reprovisionPolicy = { updateHubAssignment: true, migrateDeviceData: true };
  return doc;
}

function attestationType(doc) {
  return doc.attestation ? doc.attestation.type : '';
}

/** The list with search, and the editor below it. */
export function enrollmentsView(main, kindName) {
  const kind = KINDS[kindName];
  let items = [];
  const search = h('input', { type: 'search', name: 'search', 'aria-label': `Search ${kind.title.toLowerCase()} by ID` });
  const listArea = h('div', { 'aria-live': 'polite' });
  const editorArea = h('div');

  const render = () => {
    const needle = search.value.trim().toLowerCase();
    const rows = items.filter((d) => !needle || String(d[kind.idField]).toLowerCase().includes(needle));
    listArea.replaceChildren(table([
      ['ID', (d) => d[kind.idField]],
      ['Attestation', attestationType],
      ['Status', (d) => pill(d.provisioningStatus || 'enabled')],
      ['Allocation', (d) => d.allocationPolicy || 'service default'],
      ['Hubs', (d) => (d.iotHubs || []).join(', ')],
      ['Updated', (d) => when(d.lastUpdatedDateTimeUtc)],
      ['', (d) => [
        h('button', { type: 'button', class: 'secondary', onclick: () => edit(d[kind.idField]) }, 'Edit'),
        h('button', { type: 'button', class: 'secondary', onclick: () => toggle(d) },
          (d.provisioningStatus || 'enabled') === 'enabled' ? 'Disable' : 'Enable'),
        h('button', { type: 'button', class: 'danger', onclick: () => remove(d) }, 'Delete'),
      ]],
    ], rows, { empty: needle ? `No ${kind.noun} ID contains '${needle}'.` : `No ${kind.noun}s yet.`, label: kind.title }));
  };

  const load = () => attempt(async () => {
    items = await queryAll(`${kind.path}/query`, kind.query);
    render();
  });

  const toggle = (listed) => attempt(async () => {
    // Read it again: the change goes under the ETag of what was read.
    const { body: doc } = await call('GET', `${kind.path}/${seg(listed[kind.idField])}`);
    const enable = (doc.provisioningStatus || 'enabled') !== 'enabled';
    doc.provisioningStatus = enable ? 'enabled' : 'disabled';
    await call('PUT', `${kind.path}/${seg(doc[kind.idField])}`, { body: doc, etag: doc.etag });
    notify(`${doc[kind.idField]} ${enable ? 'enabled' : 'disabled'}`);
    await load();
  });

  const remove = async (doc) => {
    const id = doc[kind.idField];
    if (!window.confirm(`Delete ${kind.noun} '${id}'?`)) return;
    await attempt(async () => {
      await call('DELETE', `${kind.path}/${seg(id)}`, { etag: doc.etag });
      await load();
    }, `${kind.noun} '${id}' deleted`);
  };

  const edit = (id) => attempt(async () => {
    const { body } = await call('GET', `${kind.path}/${seg(id)}`);
    showEditor(body);
  });

  const showEditor = (doc) => {
    editorArea.replaceChildren(editor(kind, doc, async () => {
      editorArea.replaceChildren();
      await load();
    }));
    editorArea.querySelector('input, textarea').focus();
  };

  const create = creator(kind, showEditor);
  search.addEventListener('input', render);
  main.replaceChildren(
    h('h1', {}, kind.title),
    card(
      h('form', { class: 'inline', onsubmit: (e) => { e.preventDefault(); load(); } },
        h('label', {}, 'Search by ID', search),
        h('button', { type: 'submit' }, 'Refresh')),
      listArea),
    create,
    editorArea);
  load();
}

/** The form that starts a new document from a template. */
function creator(kind, showEditor) {
  const id = h('input', { name: 'new-id', required: true, autocomplete: 'off' });
  const attestation = h('select', { name: 'attestation' },
    h('option', { value: 'symmetricKey' }, 'Symmetric key'),
    h('option', { value: 'x509' }, 'X.509'),
    kind.idField === 'registrationId' ? h('option', { value: 'tpm' }, 'TPM') : null);
  const form = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      const wanted = id.value.trim();
      if (!wanted) return;
      try {
        await call('GET', `${kind.path}/${seg(wanted)}`);
        notify(`${kind.noun} '${wanted}' exists already: edit it from the list`, true);
      } catch (err) {
        if (!(err instanceof ApiError) || err.status !== 404) {
          notify(describeError(err), true);
          return;
        }
        showEditor(template(kind, attestation.value, wanted));
      }
    },
  },
  h('label', {}, `New ${kind.noun} ID`, id),
  h('label', {}, 'Attestation', attestation),
  h('button', { type: 'submit' }, 'Create…'));
  return card(h('h2', {}, `Create an ${kind.noun}`), form,
    h('p', { class: 'hint' }, 'Symmetric keys left out are generated by the service.'));
}

/**
 * The JSON editor of one document: its initial twin apart, the whole
 * document below; saved with PUT under the document's ETag (none for a new one).
 */
function editor(kind, doc, closed) {
  const id = doc[kind.idField];
  const isNew = !doc.etag;
  const twin = jsonField('Initial twin', doc.initialTwin || { tags: {}, properties: { desired: {} } },
    { rows: 8, name: 'initial-twin' });
  const rest = { ...doc };
  delete rest.initialTwin;
  const whole = jsonField('Whole document (initial twin apart)', rest, { rows: 16, name: 'document' });
  const save = h('button', { type: 'submit' }, isNew ? 'Create' : 'Save');
  const form = h('form', {
    'aria-label': `Edit ${kind.noun} ${id}`,
    onsubmit: async (e) => {
      e.preventDefault();
      if (!twin.check() || !whole.check()) {
        notify('Fix the JSON first: the field says what is wrong', true);
        return;
      }
      const body = whole.read();
      body.initialTwin = twin.read();
      if (String(body[kind.idField]) !== String(id)) {
        notify(`${kind.idField} must stay '${id}'; create a new ${kind.noun} for another ID`, true);
        return;
      }
      const ok = await attempt(
        () => call('PUT', `${kind.path}/${seg(id)}`, { body, etag: isNew ? undefined : doc.etag }),
        `${kind.noun} '${id}' ${isNew ? 'created' : 'saved'}`);
      if (ok) await closed();
    },
  },
  twin.element,
  whole.element,
  h('p', { class: 'hint' }, 'Ctrl+Enter saves. A save under an ETag that changed meanwhile is refused (412): reload and edit again.'),
  h('div', {}, save, ' ', h('button', { type: 'button', class: 'secondary', onclick: closed }, 'Cancel')));
  submitOnCtrlEnter(form);
  return card(h('h2', {}, `${isNew ? 'New' : 'Edit'} ${kind.noun} '${id}'`), form);
}
