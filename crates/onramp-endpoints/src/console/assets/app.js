// The console's shell: sign-in, the section a URL fragment names, sign-out.
// Nothing secret ever goes into a URL: the credential stays in sessionStorage.

import { session, parseConnectionString, describeToken, call } from './api.js';
import { h, notify, clearNotice, describeError, card } from './ui.js';
import { enrollmentsView } from './enrollments.js';
import { overviewView, registrationsView, hubsView, diagnosticsView } from './views.js';
import { certificatesView } from './certificates.js';

const VIEWS = {
  overview: overviewView,
  enrollments: (main) => enrollmentsView(main, 'enrollments'),
  groups: (main) => enrollmentsView(main, 'groups'),
  registrations: registrationsView,
  hubs: hubsView,
  certificates: certificatesView,
  diagnostics: diagnosticsView,
};

let stopView = null;

function signInView(main) {
  const connection = h('input', {
    type: 'password', name: 'connection-string', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'HostName=…;SharedAccessKeyName=…;SharedAccessKey=…',
  });
  const token = h('input', {
    type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'SharedAccessSignature sr=…&sig=…&se=…&skn=…',
  });
  const error = h('p', { class: 'error', id: 'signin-error', role: 'alert' });
  const form = h('form', {
    'aria-describedby': 'signin-error',
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = '';
      try {
        let credential;
        if (connection.value.trim()) {
          parseConnectionString(connection.value);
          credential = { kind: 'connectionString', value: connection.value.trim() };
        } else if (token.value.trim()) {
          describeToken(token.value);
          credential = { kind: 'token', value: token.value.trim() };
        } else {
          throw new Error('paste a shared access policy\'s connection string, or a token');
        }
        session.save(credential);
        // A first call proves the credential before the console opens.
        await call('GET', '/service');
        connection.value = '';
        token.value = '';
        if (location.hash === '' || location.hash === '#/signin') location.hash = '#/overview';
        else route();
      } catch (err) {
        session.clear();
        error.textContent = describeError(err);
      }
    },
  },
  h('label', {}, 'Connection string of a shared access policy', connection),
  h('label', {}, 'or a SharedAccessSignature', token),
  h('button', { type: 'submit' }, 'Sign in'),
  error,
  h('p', { class: 'hint' },
    'onramp service show --keys prints the connection strings. The console signs short-lived tokens with the key ',
    'in this browser tab (WebCrypto) and keeps it in this tab\'s session storage only; closing the tab forgets it.'));
  main.replaceChildren(h('div', { class: 'signin' }, card(h('h1', {}, 'Sign in to Onramp'), form)));
  connection.focus();
}

function route() {
  if (stopView) { stopView(); stopView = null; }
  const main = document.getElementById('main');
  const nav = document.getElementById('nav');
  const signOut = document.getElementById('sign-out');
  const who = document.getElementById('who');
  let signedIn = null;
  try { signedIn = session.describe(); } catch { session.clear(); }
  nav.hidden = !signedIn;
  signOut.hidden = !signedIn;
  who.textContent = signedIn || '';
  if (!signedIn) {
    signInView(main);
    return;
  }
  const name = (location.hash.match(/^#\/([a-z]+)/) || [])[1] || 'overview';
  const view = VIEWS[name] || VIEWS.overview;
  for (const a of nav.querySelectorAll('a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const stop = view(main);
  if (typeof stop === 'function') stopView = stop;
  main.focus({ preventScroll: true });
}

document.getElementById('sign-out').addEventListener('click', () => {
  session.clear();
  notify('Signed out: the key is gone from this tab');
  // A changed fragment routes by its hashchange event; routing here as well
  // drew the sign-in form twice, and what was typed into the first was lost.
  if (location.hash === '#/signin') route();
  else location.hash = '#/signin';
});
// A notice belongs to the section it was given in.
document.getElementById('nav').addEventListener('click', (e) => {
  if (e.target.closest('a')) clearNotice();
});
window.addEventListener('hashchange', route);
window.addEventListener('unhandledrejection', (e) => notify(describeError(e.reason), true));
route();
