// Drives Onramp's web console in Debian's headless chromium: sign in, create
// an enrollment group in the JSON editor, provision a device with the
// simulator, see its registration and the live charts move, see a refused
// device's diagnostic with its reason, prove possession of a CA certificate,
// and keep screenshots of the main views. Started by
// crates/onramp/tests/console.rs, which passes the server in the environment.

import { chromium } from 'playwright-core';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: crates/onramp/tests/console.rs sets it`);
  return v;
};
const url = env('CONSOLE_URL');
const connectionString = env('CONNECTION_STRING');
const onramp = env('ONRAMP_BIN');
const dataDir = env('ONRAMP_DATA_DIR');
const work = env('CONSOLE_WORK_DIR');
const shots = process.env.SCREENSHOT_DIR;
const TIMEOUT = 20_000;

const step = (text) => console.log(`STEP ${text}`);
const fail = (text) => { throw new Error(text); };

/** `onramp ARGS… --data-dir DIR`; answers its status and output. */
function cli(args) {
  const r = spawnSync(onramp, [...args, '--data-dir', dataDir], { encoding: 'utf8', timeout: 60_000 });
  return { ok: r.status === 0, out: r.stdout, err: r.stderr };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const problems = [];
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Answers of 400 and above are the console's to show (a wrong key, no
    // diagnostics API); any other error is a fault (a CSP violation, a
    // script error).
    if (m.type() === 'error' && !/^Failed to load resource: the server responded with a status of [45]\d\d/.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  page.on('dialog', (d) => d.accept());
  const shot = async (name) => {
    if (!shots) return;
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  };

  step('the page and its security headers');
  const resp = await page.goto(url);
  const headers = resp.headers();
  if (!/script-src 'self'/.test(headers['content-security-policy'] || '')) fail(`CSP: ${headers['content-security-policy']}`);
  if (/unsafe-inline/.test(headers['content-security-policy'])) fail('the CSP allows inline code');
  if (headers['x-frame-options'] !== 'DENY') fail(`X-Frame-Options: ${headers['x-frame-options']}`);
  if (headers['x-content-type-options'] !== 'nosniff') fail('no nosniff');

  step('keyboard: the sign-in field has the focus, Tab walks the form with a visible focus');
  await page.getByRole('heading', { name: 'Sign in to Onramp' }).waitFor();
  const focused = () => page.evaluate(() => {
    const el = document.activeElement;
    return { name: el.name || el.textContent, outline: getComputedStyle(el).outlineStyle };
  });
  let now = await focused();
  if (now.name !== 'connection-string') fail(`the connection string field is not focused (${now.name})`);
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  now = await focused();
  if (now.name !== 'Sign in' || now.outline === 'none') fail(`Tab did not reach a visibly focused Sign in: ${JSON.stringify(now)}`);
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Shift+Tab');
  await shot('signin');

  step('a wrong key is refused with the service API\'s reason');
  const wrong = connectionString.replace(/SharedAccessKey=[^;]+/, `SharedAccessKey=${randomBytes(32).toString('base64')}`);
  await page.fill('input[name=connection-string]', wrong);
  await page.press('input[name=connection-string]', 'Enter');
  await page.getByText(/401\d+: no shared access policy/).waitFor();

  step('sign in with the connection string (Enter submits)');
  await page.fill('input[name=connection-string]', connectionString);
  await page.press('input[name=connection-string]', 'Enter');
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.getByText('Signed in with policy').waitFor();
  if (page.url().includes('SharedAccessKey') || page.url().includes('sig=')) fail(`a secret is in the URL ${page.url()}`);
  const stored = await page.evaluate(() => Object.keys(localStorage).length);
  if (stored !== 0) fail('something was written to localStorage');

  step('create an enrollment group in the JSON editor');
  const groupKey = randomBytes(32).toString('base64');
  await page.click('nav >> text=Groups');
  await page.getByRole('heading', { name: 'Enrollment groups' }).waitFor();
  await page.fill('input[name=new-id]', 'factory-a');
  await page.press('input[name=new-id]', 'Enter');
  await page.getByRole('heading', { name: "New enrollment group 'factory-a'" }).waitFor();
  // A broken twin is refused in the browser, naming the field.
  await page.fill('textarea[name=initial-twin]', '{"properties": {');
  await page.getByText(/^Initial twin: /).waitFor();
  const doc = JSON.parse(await page.inputValue('textarea[name=document]'));
  doc.attestation = { type: 'symmetricKey', symmetricKey: { primaryKey: groupKey, secondaryKey: randomBytes(32).toString('base64') } };
  await page.fill('textarea[name=document]', JSON.stringify(doc, null, 2));
  await page.fill('textarea[name=initial-twin]', JSON.stringify({ tags: { line: 'a' }, properties: { desired: { interval: 30 } } }));
  await page.press('textarea[name=initial-twin]', 'Control+Enter');
  await page.getByText("enrollment group 'factory-a' created").waitFor();
  await page.locator('td', { hasText: 'factory-a' }).waitFor();

  step('disable and enable it again (PUT under its ETag)');
  const row = page.locator('tr', { hasText: 'factory-a' });
  await row.getByRole('button', { name: 'Disable' }).click();
  await row.locator('.pill.disabled').waitFor();
  await row.getByRole('button', { name: 'Enable' }).click();
  await row.locator('.pill.enabled').waitFor();
  await row.getByRole('button', { name: 'Edit' }).click();
  const twin = JSON.parse(await page.inputValue('textarea[name=initial-twin]'));
  if (twin.properties.desired.interval !== 30) fail(`the twin did not round-trip: ${JSON.stringify(twin)}`);
  await shot('groups');

  step('a save under an ETag that changed meanwhile is refused (412)');
  await row.getByRole('button', { name: 'Disable' }).click();
  await row.locator('.pill.disabled').waitFor();
  await page.getByRole('button', { name: 'Save', exact: true }).click();
  await page.locator('#status .note.error', { hasText: /^412 / }).waitFor();
  await page.getByRole('button', { name: 'Cancel' }).click();
  await row.getByRole('button', { name: 'Enable' }).click();
  await row.locator('.pill.enabled').waitFor();

  step('create an individual enrollment (keys generated by the service) and search for it');
  await page.click('nav >> text=Enrollments');
  await page.getByRole('heading', { name: 'Individual enrollments' }).waitFor();
  await page.fill('input[name=new-id]', 'single-1');
  await page.press('input[name=new-id]', 'Enter');
  await page.getByRole('heading', { name: "New enrollment 'single-1'" }).waitFor();
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  await page.getByText("enrollment 'single-1' created").waitFor();
  await page.fill('input[name=search]', 'SINGLE');
  await page.locator('td', { hasText: 'single-1' }).waitFor();
  await page.fill('input[name=search]', 'nobody');
  await page.getByText("No enrollment ID contains 'nobody'.").waitFor();

  step('provision a device of the group with the simulator');
  const deviceKey = createHmac('sha256', Buffer.from(groupKey, 'base64')).update('sensor-1').digest('base64');
  const provisioned = cli(['device', 'provision', '--registration-id', 'sensor-1', '--key', deviceKey]);
  if (!provisioned.ok) fail(`onramp device provision: ${provisioned.err}`);
  const refused = cli(['device', 'provision', '--registration-id', 'sensor-2', '--key', randomBytes(32).toString('base64')]);
  if (refused.ok) fail('a device with a wrong key was provisioned');

  step('the registration shows in the group\'s registrations');
  await page.click('nav >> text=Registrations');
  await page.fill('input[name=group-id]', 'factory-a');
  await page.press('input[name=group-id]', 'Enter');
  const reg = page.locator('#registration-results tr', { hasText: 'sensor-1' });
  await reg.locator('.pill.assigned').waitFor();
  await shot('registrations');
  await page.fill('input[name=registration-id]', 'sensor-2');
  await page.press('input[name=registration-id]', 'Enter');
  await page.getByText("No registration record for 'sensor-2'").waitFor();
  await page.fill('input[name=registration-id]', 'sensor-1');
  await page.press('input[name=registration-id]', 'Enter');
  await page.getByRole('heading', { name: "Registration 'sensor-1'" }).waitFor();

  step('the linked hub counts the device');
  await page.click('nav >> text=Linked hubs');
  const hub = page.locator('tr', { hasText: 'embedded' });
  await hub.waitFor();
  const devices = Number(await hub.locator('td').nth(5).textContent());
  if (devices < 1) fail(`the embedded hub shows ${devices} devices`);
  await shot('hubs');

  step('the charts move');
  await page.click('nav >> text=Overview');
  const note = page.locator('#charts-note');
  await note.filter({ hasText: /GET \/diagnostics/ }).waitFor();
  if (/no diagnostics API/.test(await note.textContent())) fail('the server has no GET /diagnostics');
  await page.waitForFunction(() => Number(document.getElementById('chart-rate').dataset.total) >= 2);
  await page.waitForFunction(() => Number(document.getElementById('chart-latency').dataset.points) >= 1);
  await page.waitForFunction(() => document.getElementById('chart-errors').dataset.codes !== '');
  await shot('overview');

  step('a refused device\'s diagnostic says why');
  await page.click('nav >> text=Diagnostics');
  await page.fill('input[name=device]', 'sensor-2');
  await page.selectOption('select[name=outcome]', 'refused');
  await page.press('input[name=device]', 'Enter');
  const entry = page.locator('#diagnostics-results tr', { hasText: 'sensor-2' });
  await entry.locator('.pill.refused').waitFor();
  const reason = await entry.locator('td').nth(4).textContent();
  if (!reason || reason.length < 10) fail(`the refusal has no reason: '${reason}'`);
  step(`refused: ${reason}`);
  await shot('diagnostics');

  step('a CA certificate with its proof of possession');
  const root = join(work, 'root');
  execFileSync(onramp, ['cert', 'create-root', '--cn', 'Console Test Root', '--out', root]);
  await page.click('nav >> text=Certificates');
  await page.fill('input[name=certificate-name]', 'console-root');
  await page.fill('textarea[name=certificate-pem]', readFileSync(`${root}.pem`, 'utf8'));
  await page.getByRole('button', { name: 'Upload' }).click();
  const cert = page.locator('tr', { hasText: 'console-root' });
  await cert.locator('.pill.unverified').waitFor();
  await cert.getByRole('button', { name: 'Prove possession' }).click();
  const code = (await page.locator('#verification-code').textContent()).trim();
  const proof = join(work, 'verification');
  execFileSync(onramp, ['cert', 'create-device', '--issuer', root, '--cn', code, '--out', proof]);
  await page.fill('textarea[name=verification-pem]', readFileSync(`${proof}.pem`, 'utf8'));
  await shot('certificates');
  await page.getByRole('button', { name: 'Verify' }).click();
  await cert.locator('.pill.verified').waitFor();

  step('delete the group under its ETag, then sign out');
  await page.click('nav >> text=Groups');
  await page.locator('tr', { hasText: 'factory-a' }).getByRole('button', { name: 'Delete' }).click();
  await page.getByText("enrollment group 'factory-a' deleted").waitFor();
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in to Onramp' }).waitFor();
  const left = await page.evaluate(() => sessionStorage.length);
  if (left !== 0) fail('the credential outlived sign-out');

  step('sign in with a pasted token; an expired one is refused');
  const fields = Object.fromEntries(connectionString.split(';').map((f) => [f.slice(0, f.indexOf('=')), f.slice(f.indexOf('=') + 1)]));
  const token = (expiry) => {
    const sr = encodeURIComponent(fields.HostName);
    const sig = createHmac('sha256', Buffer.from(fields.SharedAccessKey, 'base64')).update(`${sr}\n${expiry}`).digest('base64');
    return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${expiry}&skn=${fields.SharedAccessKeyName}`;
  };
  const nowSeconds = Math.floor(Date.now() / 1000);
  await page.fill('input[name=token]', token(nowSeconds - 3600));
  await page.press('input[name=token]', 'Enter');
  await page.getByText(/the token expired at/).waitFor();
  await page.fill('input[name=token]', token(nowSeconds + 600));
  await page.press('input[name=token]', 'Enter');
  await page.getByText('Signed in with policy').waitFor();
  await page.getByRole('button', { name: 'Sign out' }).click();

  if (problems.length) fail(`the page reported problems:\n${problems.join('\n')}`);
  console.log('PASS');
} finally {
  await browser.close();
}
