// DOM helpers: elements built with text nodes only (what devices and
// operators typed is never parsed as HTML), notices, tables and JSON fields.

/** `h('button', { type: 'button', onclick }, 'Save')`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A message in the live status region (read out by screen readers). */
export function notify(text, isError = false) {
  const status = document.getElementById('status');
  status.replaceChildren(h('div', { class: isError ? 'note error' : 'note' }, text));
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => status.replaceChildren(), isError ? 12000 : 5000);
}

/** Removes the notice (when the operator moves to another section). */
export function clearNotice() {
  clearTimeout(notify.timer);
  document.getElementById('status').replaceChildren();
}

/** An error as the operator should read it: Azure's code and message. */
export function describeError(e) {
  if (e && e.errorCode) return `${e.status} ${e.errorCode}: ${e.message}`;
  return e && e.message ? e.message : String(e);
}

/** Runs `action`, reporting its failure; answers whether it succeeded. */
export async function attempt(action, done) {
  try {
    await action();
    if (done) notify(done);
    return true;
  } catch (e) {
    notify(describeError(e), true);
    return false;
  }
}

export function pill(text) {
  return text ? h('span', { class: `pill ${String(text).toLowerCase()}` }, text) : '';
}

/** A table of `rows` with `columns` ([header, row => cell]). */
export function table(columns, rows, { empty = 'Nothing here yet.', label } = {}) {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', { 'aria-label': label },
      h('thead', {}, h('tr', {}, columns.map(([title]) => h('th', { scope: 'col' }, title)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([title, cell]) => {
        const value = cell(row);
        return h('td', { class: title === '' ? 'actions' : undefined }, value ?? '');
      }))))));
}

/**
 * A textarea holding JSON, checked as it is typed: `read()` answers the
 * parsed value or throws naming the problem, and the field says so.
 */
export function jsonField(label, value, { rows = 12, name, optional = false } = {}) {
  const area = h('textarea', { name, rows, spellcheck: 'false', 'aria-describedby': `${name}-error` });
  area.value = value === undefined ? '' : JSON.stringify(value, null, 2);
  const error = h('p', { class: 'error', id: `${name}-error`, 'aria-live': 'polite' });
  const read = () => {
    const text = area.value.trim();
    if (!text && optional) return undefined;
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new Error(`${label}: ${e.message}`);
    }
  };
  const check = () => {
    try {
      read();
      area.classList.remove('invalid');
      area.removeAttribute('aria-invalid');
      error.textContent = '';
      return true;
    } catch (e) {
      area.classList.add('invalid');
      area.setAttribute('aria-invalid', 'true');
      error.textContent = e.message;
      return false;
    }
  };
  area.addEventListener('input', check);
  return { element: h('label', {}, label, area, error), area, read, check };
}

/** Ctrl+Enter (or Cmd+Enter) in a textarea submits its form. */
export function submitOnCtrlEnter(form) {
  form.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && e.target.tagName === 'TEXTAREA') {
      e.preventDefault();
      form.requestSubmit();
    }
  });
}

export function when(text) {
  if (!text) return '';
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? text : d.toLocaleString();
}

export function card(...children) {
  return h('section', { class: 'card' }, ...children);
}
