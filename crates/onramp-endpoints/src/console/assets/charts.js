// Live charts drawn on <canvas> without a library, from the diagnostics API:
// registrations per second, registration latency and errors by code.

import { h } from './ui.js';

export const WINDOW_SECONDS = 60;

/** Per-second series over the last WINDOW_SECONDS from diagnostic entries. */
export function summarise(entries, now = Date.now()) {
  const end = Math.floor(now / 1000);
  const start = end - WINDOW_SECONDS + 1;
  const assigned = new Array(WINDOW_SECONDS).fill(0);
  const unsuccessful = new Array(WINDOW_SECONDS).fill(0);
  const latencySum = new Array(WINDOW_SECONDS).fill(0);
  const latencyCount = new Array(WINDOW_SECONDS).fill(0);
  const byCode = new Map();
  let total = 0;
  for (const e of entries) {
    const second = Math.floor(Date.parse(e.time) / 1000);
    if (!(second >= start && second <= end)) continue;
    const i = second - start;
    total += 1;
    if (e.outcome === 'assigned') assigned[i] += 1;
    else unsuccessful[i] += 1;
    if (typeof e.durationMs === 'number') {
      latencySum[i] += e.durationMs;
      latencyCount[i] += 1;
    }
    if (e.errorCode !== null && e.errorCode !== undefined) {
      byCode.set(e.errorCode, (byCode.get(e.errorCode) || 0) + 1);
    }
  }
  const latency = latencySum.map((s, i) => (latencyCount[i] ? s / latencyCount[i] : null));
  return {
    total,
    assigned,
    unsuccessful,
    latency,
    errors: [...byCode.entries()].sort((a, b) => b[1] - a[1]),
  };
}

function sized(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400;
  const height = canvas.clientHeight || 180;
  if (canvas.width !== width * ratio) canvas.width = width * ratio;
  if (canvas.height !== height * ratio) canvas.height = height * ratio;
  const ctx = canvas.getContext('2d');
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = '11px system-ui, sans-serif';
  return { ctx, width, height };
}

function niceMax(value) {
  if (value <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= value);
}

/** Lines over the window; `series` is [{ values, colour, label }]. */
function drawLines(canvas, series, unit) {
  const { ctx, width, height } = sized(canvas);
  const left = 40; const bottom = 18; const top = 8; const right = 8;
  const plotW = width - left - right; const plotH = height - top - bottom;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null))));
  ctx.strokeStyle = '#d8dde3'; ctx.fillStyle = '#5b6470'; ctx.lineWidth = 1;
  for (let k = 0; k <= 2; k++) {
    const y = top + plotH - (plotH * k) / 2;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
    ctx.fillText(`${+(max * k / 2).toFixed(1)}${unit}`, 2, y + 4);
  }
  ctx.fillText(`-${WINDOW_SECONDS}s`, left, height - 4);
  ctx.fillText('now', left + plotW - 20, height - 4);
  const step = plotW / (WINDOW_SECONDS - 1);
  for (const s of series) {
    ctx.strokeStyle = s.colour; ctx.lineWidth = 2; ctx.beginPath();
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const x = left + i * step; const y = top + plotH - (plotH * v) / max;
      if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      pen = true;
    });
    ctx.stroke();
    // A dot on every second that has a value: a lone second shows too.
    ctx.fillStyle = s.colour;
    s.values.forEach((v, i) => {
      if (v === null || (s.dotsFrom !== undefined && v < s.dotsFrom)) return;
      ctx.beginPath();
      ctx.arc(left + i * step, top + plotH - (plotH * v) / max, 2.5, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
}

/** Horizontal bars of error counts by Azure error code. */
function drawBars(canvas, errors) {
  const { ctx, width, height } = sized(canvas);
  if (!errors.length) {
    ctx.fillStyle = '#5b6470';
    ctx.fillText('no errors in the last minute', 8, 20);
    return;
  }
  const shown = errors.slice(0, 6);
  const max = Math.max(...shown.map(([, n]) => n));
  const rowH = Math.min(26, (height - 8) / shown.length);
  shown.forEach(([code, n], i) => {
    const y = 4 + i * rowH;
    ctx.fillStyle = '#1b1f24'; ctx.fillText(String(code), 4, y + rowH / 2 + 4);
    const w = ((width - 110) * n) / max;
    ctx.fillStyle = '#b42318'; ctx.fillRect(60, y + 3, Math.max(w, 2), rowH - 6);
    ctx.fillStyle = '#1b1f24'; ctx.fillText(String(n), 64 + w, y + rowH / 2 + 4);
  });
}

/** The three chart cards; `update(entries)` redraws them. */
export function liveCharts() {
  const make = (id, title) => {
    const canvas = h('canvas', { id, role: 'img', 'aria-label': title });
    const summary = h('p', { class: 'summary', id: `${id}-summary`, 'aria-live': 'polite' });
    return { canvas, summary, element: h('section', { class: 'card chart' }, h('h2', {}, title), canvas, summary) };
  };
  const rate = make('chart-rate', 'Registrations per second');
  const latency = make('chart-latency', 'Registration latency (ms)');
  const errors = make('chart-errors', 'Errors by code');
  const update = (entries) => {
    const s = summarise(entries);
    const assigned = s.assigned.reduce((a, b) => a + b, 0);
    const unsuccessful = s.unsuccessful.reduce((a, b) => a + b, 0);
    drawLines(rate.canvas, [
      { values: s.unsuccessful, colour: '#b42318', dotsFrom: 1 },
      { values: s.assigned, colour: '#1a7f37', dotsFrom: 1 },
    ], '');
    rate.canvas.dataset.total = String(s.total);
    rate.summary.textContent = `${assigned} assigned, ${unsuccessful} failed or refused in the last ${WINDOW_SECONDS} s (green: assigned, red: not)`;
    drawLines(latency.canvas, [{ values: s.latency, colour: '#0b5cad' }], ' ms');
    const measured = s.latency.filter((v) => v !== null);
    latency.canvas.dataset.points = String(measured.length);
    latency.summary.textContent = measured.length
      ? `mean ${(measured.reduce((a, b) => a + b, 0) / measured.length).toFixed(1)} ms, slowest second ${Math.max(...measured).toFixed(1)} ms`
      : 'no registrations in the last minute';
    drawBars(errors.canvas, s.errors);
    errors.canvas.dataset.codes = s.errors.map(([c]) => c).join(',');
    errors.summary.textContent = s.errors.length
      ? s.errors.map(([c, n]) => `${c}: ${n}`).join(', ') : 'no errors in the last minute';
  };
  return { elements: [rate.element, latency.element, errors.element], update };
}
