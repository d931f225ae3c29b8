// CA certificates and their proof of possession: upload, a verification
// code, a certificate with that code as its subject signed by the CA's key,
// then verify. Every change goes under the certificate's ETag.

import { call, seg } from './api.js';
import { h, attempt, table, pill, card, submitOnCtrlEnter } from './ui.js';

/** A PEM from a file input or a textarea, whichever the operator used. */
async function pemOf(file, area) {
  const picked = file.files && file.files[0];
  const text = picked ? await picked.text() : area.value;
  if (!text.trim()) throw new Error('give a certificate: paste its PEM or choose its file');
  return text.trim();
}

/**
 * A form taking one certificate (pasted PEM or file) before `fields`:
 * `action(pem)` sends it, and `after()` runs when that succeeded.
 */
function pemForm({ fields = [], label, name, submit, action, done, after }) {
  const file = h('input', { type: 'file', name: `${name}-file`, accept: '.pem,.crt,.cer' });
  const area = h('textarea', { name: `${name}-pem`, rows: 6, spellcheck: 'false' });
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      const ok = await attempt(async () => action(await pemOf(file, area)), done());
      if (ok) {
        area.value = '';
        await after();
      }
    },
  },
  fields,
  h('label', {}, label, area),
  h('label', {}, 'or its file', file),
  h('button', { type: 'submit' }, submit));
  submitOnCtrlEnter(form);
  return { form, area };
}

export function certificatesView(main) {
  const list = h('div', { id: 'certificate-list', 'aria-live': 'polite' });
  const proof = h('div', { id: 'proof' });

  const load = () => attempt(async () => {
    const { body } = await call('GET', '/certificates');
    const certs = (body && body.value) || [];
    list.replaceChildren(table([
      ['Name', (c) => c.name],
      ['Subject', (c) => c.properties.subject],
      ['Thumbprint', (c) => c.properties.thumbprint],
      ['Expiry', (c) => c.properties.expiry],
      ['Verified', (c) => pill(c.properties.isVerified ? 'verified' : 'unverified')],
      ['', (c) => [
        c.properties.isVerified ? null
          : h('button', { type: 'button', class: 'secondary', onclick: () => startProof(c) }, 'Prove possession'),
        h('button', { type: 'button', class: 'danger', onclick: () => remove(c) }, 'Delete'),
      ]],
    ], certs, { empty: 'No CA certificate uploaded yet.', label: 'CA certificates' }));
  });

  const remove = async (c) => {
    if (!window.confirm(`Delete CA certificate '${c.name}'?`)) return;
    await attempt(async () => {
      await call('DELETE', `/certificates/${seg(c.name)}`, { etag: c.etag });
      proof.replaceChildren();
      await load();
    }, `certificate '${c.name}' deleted`);
  };

  const startProof = (c) => attempt(async () => {
    const { body } = await call('POST', `/certificates/${seg(c.name)}/generateVerificationCode`, { etag: c.etag });
    const code = body.properties.verificationCode;
    const { form, area } = pemForm({
      label: 'Verification certificate (PEM)',
      name: 'verification',
      submit: 'Verify',
      action: (certificate) => call('POST', `/certificates/${seg(c.name)}/verify`, { body: { certificate }, etag: body.etag }),
      done: () => `certificate '${c.name}' verified`,
      after: async () => {
        proof.replaceChildren();
        await load();
      },
    });
    proof.replaceChildren(card(
      h('h2', {}, `Prove possession of '${c.name}'`),
      h('ol', { class: 'steps' },
        h('li', {}, 'The verification code is ', h('code', { id: 'verification-code' }, code), '.'),
        h('li', {}, 'Make a certificate whose subject common name is that code, signed by the CA\'s private key, e.g. ',
          h('code', {}, `onramp cert create-device --issuer CA --cn ${code} --out verification`), '.'),
        h('li', {}, 'Upload it here. The code is good for this upload only; a new code replaces it.')),
      form));
    area.focus();
  });

  const name = h('input', { name: 'certificate-name', required: true, autocomplete: 'off' });
  const { form: upload } = pemForm({
    fields: [h('label', {}, 'Name', name)],
    label: 'CA certificate (PEM)',
    name: 'certificate',
    submit: 'Upload',
    action: (certificate) => call('PUT', `/certificates/${seg(name.value.trim())}`, { body: { certificate } }),
    done: () => `certificate '${name.value.trim()}' uploaded: prove possession to use it`,
    after: load,
  });

  main.replaceChildren(
    h('h1', {}, 'CA certificates'),
    card(list),
    proof,
    card(h('h2', {}, 'Upload a CA certificate'), upload));
  load();
}
