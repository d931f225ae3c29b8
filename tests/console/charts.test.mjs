// The console's chart arithmetic (per-second series from diagnostic
// entries), run with `node --test` by crates/onramp/tests/console.rs.

import test from 'node:test';
import assert from 'node:assert/strict';
import { summarise, WINDOW_SECONDS } from '../../crates/onramp-endpoints/src/console/assets/charts.js';

const now = Date.parse('2026-12-05T01:00:00.500Z');
const at = (secondsAgo, fields) => ({
  time: new Date(now - secondsAgo * 1000).toISOString(), durationMs: 10, errorCode: null, ...fields,
});

test('entries fall in their second, outcomes and codes are counted', () => {
  const s = summarise([
    at(0, { outcome: 'assigned', durationMs: 4 }),
    at(0, { outcome: 'assigned', durationMs: 8 }),
    at(1, { outcome: 'refused', errorCode: 401002 }),
    at(5, { outcome: 'refused', errorCode: 401002 }),
    at(5, { outcome: 'failed', errorCode: 400207 }),
    at(WINDOW_SECONDS + 5, { outcome: 'assigned' }), // before the window
  ], now);
  assert.equal(s.total, 5);
  assert.equal(s.assigned[WINDOW_SECONDS - 1], 2);
  assert.equal(s.unsuccessful[WINDOW_SECONDS - 2], 1);
  assert.equal(s.unsuccessful[WINDOW_SECONDS - 6], 2);
  assert.equal(s.latency[WINDOW_SECONDS - 1], 6);
  assert.equal(s.latency[0], null);
  assert.deepEqual(s.errors, [[401002, 2], [400207, 1]]);
});

test('entries without a time or a duration are skipped, not counted as zero', () => {
  const s = summarise([{ outcome: 'assigned', time: 'not a time' }, at(2, { outcome: 'assigned', durationMs: undefined })], now);
  assert.equal(s.total, 1);
  assert.equal(s.latency.filter((v) => v !== null).length, 0);
});
