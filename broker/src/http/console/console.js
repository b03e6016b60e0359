// The strom web console: a single page drawn from the broker's JSON API under /api/ (see
// docs/http.md). The URL's hash picks the view:
//
//   #/                 overview: brokers, counts, throughput now, plots, topics, groups, queues
//   #/topics           every topic (internal ones too)
//   #/topics/NAME      one topic: partitions, settings, the last records decoded
//   #/groups           consumer groups
//   #/groups/NAME      one consumer group: members, assignments, lag per partition
//   #/queues           queue groups
//   #/queues/NAME      one queue group: counts, members, settings, dead-letter topics, redrive
//
// The current view is fetched again every REFRESH_MS. Every piece of text the broker sends is
// put into the page as a text node (records are untrusted input): nothing is parsed as HTML.

'use strict';

const REFRESH_MS = 2000;
const PALETTE = ['#2f6fde', '#e07b39', '#3a9d5d', '#b54ea6', '#c9a227', '#3aa3b8', '#d6544f',
  '#7a6cd1'];
const DLQ_FIELDS = ['reason', 'error', 'attempts', 'topic', 'partition', 'offset', 'group',
  'timestamp'];

// What the page remembers between refreshes.
const state = {
  generation: 0, // bumps on every render; a slower, older render is dropped
  busy: false, // a timer refresh is running
  lastOk: null, // Date of the last answered refresh
  redrives: new Map(), // dead-letter topic -> REDRIVE started from this page, still followed
  notices: new Map(), // dead-letter topic -> message about its last redrive request
};

// ---------------------------------------------------------------------------------------------
// DOM helpers: every node is built with createElement and text nodes, never from HTML strings.
// ---------------------------------------------------------------------------------------------

/** `el('td', {class: 'num', 'data-lag': 'orders/0'}, '600')`: an element with attributes,
 * event listeners (`onclick`), styles (`style: {width: '10%'}`) and children (nodes, strings,
 * numbers; arrays are flattened). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.setAttribute('class', v);
    // Through the CSSOM: the broker's Content-Security-Policy refuses inline style attributes.
    else if (k === 'style') Object.assign(node.style, v);
    else if (k === 'value') node.value = v;
    else node.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** An SVG element (for the plots). */
function svg(tag, attrs, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

/** A table: `columns` are [heading, class] pairs; `rows` are arrays of cells or `<tr>`s. */
function table(columns, rows, empty, attrs) {
  if (!rows.length) return el('p', { class: 'empty' }, empty || 'none');
  const head = el('tr', null, columns.map(([name, cls]) => el('th', { class: cls }, name)));
  const body = rows.map((r) => (r instanceof Node ? r : el('tr', null, r)));
  return el('div', { class: 'table-wrap' },
    el('table', attrs, el('thead', null, head), el('tbody', null, body)));
}

/** A right-aligned number cell. */
function num(value, attrs) {
  return el('td', { class: 'num', ...attrs }, value);
}

function section(title, ...children) {
  return el('section', { class: 'panel' }, el('h2', null, title), children);
}

/** A row of small "label / big value" cards. */
function cards(items) {
  return el('div', { class: 'cards' }, items.map(([label, value, attrs]) =>
    el('div', { class: 'card', ...attrs }, el('div', { class: 'card-label' }, label),
      el('div', { class: 'card-value' }, value))));
}

/** A consumer group's state (`stable`, `preparing_rebalance`, ...) as a coloured badge. */
function stateBadge(state) {
  const s = String(state);
  return badge(s.replace(/_/g, ' '), `state-${s.toLowerCase().replace(/_/g, '')}`);
}

function badge(text, kind) {
  return el('span', { class: `badge ${kind || ''}` }, text);
}

function link(href, text, attrs) {
  return el('a', { href, ...attrs }, text);
}

const topicHref = (t) => `#/topics/${encodeURIComponent(t)}`;
const groupHref = (g) => `#/groups/${encodeURIComponent(g)}`;
const queueHref = (g) => `#/queues/${encodeURIComponent(g)}`;

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

const pad2 = (n) => String(n).padStart(2, '0');

function fmtInt(n) {
  return n == null ? '—' : Number(n).toLocaleString('en-US');
}

function fmtBytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : +v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** A count or rate with k/M/G suffixes, for plot axes and throughput. */
function fmtShort(n) {
  const a = Math.abs(n);
  if (a >= 1e9) return `${+(n / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return a >= 10 || a === 0 ? String(Math.round(n)) : String(+n.toFixed(2));
}

/** `3 records`, `1 record`. */
function plural(n, word) {
  return `${fmtInt(n)} ${word}${n === 1 ? '' : 's'}`;
}

function fmtSeconds(s) {
  if (s == null) return '—';
  if (s < 60) return `${+s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.floor(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} m`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function fmtClock(date) {
  return `${pad2(date.getHours())}:${pad2(date.getMinutes())}:${pad2(date.getSeconds())}`;
}

/** A record timestamp (ms since the epoch) as local `YYYY-MM-DD HH:MM:SS.mmm`. */
function fmtTimestamp(ms) {
  if (ms == null || ms < 0) return '—';
  const d = new Date(ms);
  const day = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}`;
  return `${day} ${fmtClock(d)}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: the broker did not answer at all
  }
}

/** Fetches `path` from the broker and returns its JSON; throws ApiError. */
async function api(path, options) {
  let res;
  try {
    res = await fetch(path, { cache: 'no-store', signal: AbortSignal.timeout(10000), ...options });
  } catch (e) {
    throw new ApiError(0, `cannot reach the broker (${e.message})`);
  }
  const text = await res.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (e) {
    body = null;
  }
  if (!res.ok) {
    throw new ApiError(res.status, (body && body.error) || `HTTP ${res.status} for ${path}`);
  }
  return body;
}

/** Like api(), but a 404 answers `fallback` (a topic that does not exist yet, say). */
async function apiOr(path, fallback) {
  try {
    return await api(path);
  } catch (e) {
    if (e.status === 404) return fallback;
    throw e;
  }
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// Payloads and records
// ---------------------------------------------------------------------------------------------

/** The text of a payload (a header value, say): its data for json and text, else null. */
function payloadText(p) {
  return p && (p.encoding === 'text' || p.encoding === 'json') ? p.data : null;
}

/** A payload shown as what it is: JSON pretty-printed, text as is, hex in byte pairs. */
function payloadView(p, compact) {
  if (p == null) return el('span', { class: 'null' }, 'null');
  let body = p.data;
  if (p.encoding === 'json') {
    try {
      // Pretty-printed; a short document on one line.
      const doc = JSON.parse(p.data);
      const oneLine = JSON.stringify(doc, null, 1).replace(/\n\s*/g, ' ');
      body = oneLine.length <= 100 ? oneLine : JSON.stringify(doc, null, 2);
    } catch (e) {
      body = p.data; // cut by the broker, so no longer a whole document
    }
  } else if (p.encoding === 'hex') {
    body = p.data.replace(/(..)(?!$)/g, '$1 ');
  }
  // The broker cuts long payloads (hex at 4096 bytes); `size` is always the full length.
  const shown = p.encoding === 'hex' ? p.data.length / 2 : new TextEncoder().encode(p.data).length;
  const meta = [p.encoding, fmtBytes(p.size)];
  if (p.truncated || shown < p.size) meta.push(`first ${fmtBytes(shown)} shown`);
  return el('div', { class: `payload ${compact ? 'compact' : ''}` },
    el('pre', { class: `data ${p.encoding}` }, body),
    compact ? null : el('div', { class: 'meta' }, meta.join(' · ')));
}

/** A record's headers as a small key/value list. */
function headersView(headers, skipDlq) {
  const rows = (headers || []).filter((h) => !(skipDlq && h.key.startsWith('strom.dlq.')));
  if (!rows.length) return el('span', { class: 'muted' }, '—');
  return el('dl', { class: 'headers' }, rows.map((h) => [
    el('dt', null, h.key),
    el('dd', { 'data-header': h.key }, payloadView(h.value, true)),
  ]));
}

/** The last records of a topic: one row each with where, when, key, value and headers. */
function recordsTable(records, showPartition) {
  const rows = records.map((r) => el('tr', { 'data-record': `${r.partition}/${r.offset}` },
    showPartition ? num(r.partition) : null,
    num(r.offset),
    el('td', { class: 'nowrap' }, fmtTimestamp(r.timestamp)),
    el('td', { class: 'key' }, payloadView(r.key, true)),
    el('td', { class: 'value' }, payloadView(r.value)),
    el('td', { class: 'hdrs' }, headersView(r.headers))));
  const columns = [showPartition ? ['Partition', 'num'] : null, ['Offset', 'num'],
    ['Timestamp'], ['Key'], ['Value'], ['Headers']].filter(Boolean);
  return table(columns, rows, 'no records', { class: 'records' });
}

/** A dead-lettered record: why it failed, where it came from, then its key, value, headers. */
function deadLetterCard(dlq, r) {
  const h = {};
  for (const x of r.headers || []) {
    if (x.key.startsWith('strom.dlq.')) h[x.key.slice(10)] = payloadText(x.value) ?? '';
  }
  const fact = (name, label, value) => el('div', { class: 'fact' },
    el('span', { class: 'fact-label' }, label),
    el('span', { class: 'fact-value', 'data-header': `strom.dlq.${name}` }, value));
  const source = h.topic != null
    ? el('span', null, link(topicHref(h.topic), h.topic),
      ` / ${h.partition ?? '?'} @ ${h.offset ?? '?'}`)
    : '—';
  return el('article', { class: 'dlq-record', 'data-dlq-record': `${r.partition}/${r.offset}`,
    'data-dlq': dlq },
  el('div', { class: 'dlq-head' },
    el('span', { class: `badge reason ${h.reason || 'unknown'}`,
      'data-header': 'strom.dlq.reason' },
      h.reason || 'no reason header'),
    el('span', { class: 'muted' }, `${dlq} / ${r.partition} @ ${r.offset}`),
    el('span', { class: 'muted right' }, `dead-lettered ${fmtTimestamp(r.timestamp)}`)),
  h.error != null
    ? el('div', { class: 'dlq-error', 'data-header': 'strom.dlq.error' }, h.error)
    : el('div', { class: 'dlq-error none' }, 'no error text given'),
  el('div', { class: 'facts' },
    fact('attempts', 'attempts', h.attempts ?? '—'),
    el('div', { class: 'fact' }, el('span', { class: 'fact-label' }, 'source'),
      el('span', { class: 'fact-value', 'data-header': 'strom.dlq.topic' }, source)),
    fact('group', 'group', h.group ?? '—'),
    fact('timestamp', 'produced', h.timestamp ? fmtTimestamp(Number(h.timestamp)) : '—')),
  el('div', { class: 'dlq-body' },
    el('div', null, el('div', { class: 'fact-label' }, 'key'), payloadView(r.key, true)),
    el('div', null, el('div', { class: 'fact-label' }, 'value'), payloadView(r.value)),
    el('div', null, el('div', { class: 'fact-label' }, 'other headers'),
      headersView(r.headers, true))));
}

// ---------------------------------------------------------------------------------------------
// Plots: small SVG line charts drawn here, no library.
// ---------------------------------------------------------------------------------------------

/** Per-second rates from the deltas of a counter in the history points: [[time_ms, rate]]. */
function rateSeries(points, field) {
  const out = [];
  for (let i = 1; i < points.length; i += 1) {
    const a = points[i - 1];
    const b = points[i];
    const dt = (b.time_ms - a.time_ms) / 1000;
    if (dt <= 0 || a[field] == null || b[field] == null) continue;
    // A counter that went down means the broker restarted: no rate for that step.
    out.push([b.time_ms, b[field] >= a[field] ? (b[field] - a[field]) / dt : 0]);
  }
  return out;
}

/** One series per key of a map field (`lag`, `queue_ready`): {name: [[time_ms, value]]}. */
function mapSeries(points, field) {
  const out = {};
  for (const p of points) {
    for (const [name, v] of Object.entries(p[field] || {})) {
      (out[name] = out[name] || []).push([p.time_ms, v]);
    }
  }
  return out;
}

/** `series` ({name: [[time_ms, value]]}) with each of `now` ({name: value}) added at
 * `time_ms`, so that a plot ends at the present even before the history has points. */
function withNow(series, time, now) {
  const out = { ...series };
  for (const [name, v] of Object.entries(now)) {
    const points = out[name] || [];
    const last = points[points.length - 1];
    out[name] = !last || last[0] < time ? [...points, [time, v]] : points;
  }
  return Object.entries(out).map(([name, points]) => ({ name, points }));
}

/** Round numbers for an axis from 0 to at least `max`. */
function niceTicks(max, count) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v < max + step * 0.999; v += step) ticks.push(v);
  return ticks;
}

/** A line chart: `series` is [{name, points: [[time_ms, value]]}]. Options: `format` labels
 * values, `bytes` puts the axis on powers of 1024, `wide` draws a full-width chart. */
function lineChart(title, series, { format = fmtShort, bytes = false, wide = false, attrs } = {}) {
  const W = wide ? 1280 : 640;
  const H = 200;
  const m = { l: 56, r: 14, t: 12, b: 26 };
  const all = series.flatMap((s) => s.points);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
    'aria-label': title });
  const legend = el('div', { class: 'legend' });
  const box = el('figure', { class: `plot ${wide ? 'wide' : ''}`, ...attrs },
    el('figcaption', null, title), chart, legend);
  if (all.length < 1) {
    chart.append(svg('text', { x: W / 2, y: H / 2, class: 'nodata', 'text-anchor': 'middle' },
      'no data yet'));
    return box;
  }
  let t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  if (t1 - t0 < 60000) t0 = t1 - 60000; // at least a minute wide
  const top = Math.max(...all.map((p) => p[1]));
  const unit = bytes && top >= 1024 ? 1024 ** Math.floor(Math.log(top) / Math.log(1024)) : 1;
  const ticks = niceTicks(top / unit, 4).map((v) => v * unit);
  const vmax = ticks[ticks.length - 1];
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const y = (v) => H - m.b - (v / vmax) * (H - m.t - m.b);
  for (const v of ticks) {
    chart.append(svg('line', { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v), class: 'grid' }),
      svg('text', { x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, format(v)));
  }
  for (const t of timeTicks(t0, t1)) {
    const d = new Date(t);
    const label = `${pad2(d.getHours())}:${pad2(d.getMinutes())}` +
      (t1 - t0 <= 180000 ? `:${pad2(d.getSeconds())}` : '');
    // Labels near an edge are anchored inside the chart.
    const anchor = x(t) > W - m.r - 24 ? 'end' : x(t) < m.l + 24 ? 'start' : 'middle';
    chart.append(svg('text', { x: x(t), y: H - 8, 'text-anchor': anchor, class: 'axis' }, label));
  }
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const last = s.points[s.points.length - 1];
    const path = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    chart.append(svg('polyline', { points: path, class: 'line', stroke: color },
      svg('title', null, `${s.name}: ${last ? format(last[1]) : '—'}`)));
    if (last) chart.append(svg('circle', { cx: x(last[0]), cy: y(last[1]), r: 3, fill: color }));
    legend.append(el('span', { class: 'legend-item' },
      el('span', { class: 'swatch', style: { background: color } }), s.name,
      el('span', { class: 'muted' }, last ? ` ${format(last[1])}` : '')));
  });
  return box;
}

/** Clock-aligned times for the x axis: at most six, on round steps. */
function timeTicks(t0, t1) {
  const steps = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600].map((s) => s * 1000);
  const step = steps.find((s) => (t1 - t0) / s <= 6) || steps[steps.length - 1];
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return out;
}

/** The throughput plots and "now" rates: the history's rates, then for records and bytes in the
 * rate from its last sample to the overview's counters (the history's own last step is up to
 * one interval old, and a broker that just started has a single sample). */
function throughput(history, ov) {
  const points = (history && history.points) || [];
  const recordsIn = rateSeries(points, 'records_appended_total');
  const bytesIn = rateSeries(points, 'bytes_appended_total');
  const bytesOut = rateSeries(points, 'fetch_bytes_total');
  const last = points[points.length - 1];
  if (last && ov.time_ms - last.time_ms >= 1000) {
    recordsIn.push(...rateSeries([last, ov], 'records_appended_total'));
    bytesIn.push(...rateSeries([last, ov], 'bytes_appended_total'));
  }
  const now = (s) => (s.length ? s[s.length - 1][1] : null);
  return {
    recordsIn, bytesIn, bytesOut,
    now: { recordsIn: now(recordsIn), bytesIn: now(bytesIn), bytesOut: now(bytesOut) },
  };
}

// ---------------------------------------------------------------------------------------------
// Tables shared by the overview and the list views
// ---------------------------------------------------------------------------------------------

/** Topics: name, partitions, records, offsets, size, records appended since start. */
function topicsTable(topics) {
  const rows = topics.map((t) => el('tr', { 'data-topic': t.topic, class: t.internal ? 'dim' : '' },
    el('td', null, link(topicHref(t.topic), t.topic), t.internal ? badge('internal') : null),
    num(fmtInt(t.partitions)),
    num(fmtInt(t.records), { 'data-topic-records': t.topic }),
    num(`${fmtInt(t.start_offset)} – ${fmtInt(t.end_offset)}`),
    num(fmtBytes(t.size_bytes)),
    num(fmtInt(t.records_appended_total)),
    num(fmtBytes(t.bytes_appended_total))));
  return table([['Topic'], ['Partitions', 'num'], ['Records', 'num'],
    ['Offsets (summed)', 'num'], ['Size', 'num'], ['Appended', 'num'],
    ['Bytes appended', 'num']], rows, 'no topics yet', { id: 'topics' });
}

/** Consumer groups: name, state, members, total lag. */
function groupsTable(groups) {
  const rows = groups.map((g) => el('tr', { 'data-group': g.group },
    el('td', null, link(groupHref(g.group), g.group)),
    el('td', null, stateBadge(g.state)),
    num(fmtInt(g.members)),
    num(fmtInt(g.lag), { 'data-group-lag': g.group, 'data-value': g.lag })));
  return table([['Group'], ['State'], ['Members', 'num'], ['Lag', 'num']], rows,
    'no consumer groups', { id: 'groups' });
}

/** Queue groups: counts summed over their partitions, and their dead-letter topics. */
function queuesTable(queues) {
  const rows = queues.map((q) => el('tr', { 'data-queue': q.group },
    el('td', null, link(queueHref(q.group), q.group)),
    el('td', null, joinLinks(q.topics, topicHref)),
    num(fmtInt(q.members)),
    num(fmtInt(q.ready), { 'data-queue-ready': q.group }),
    num(fmtInt(q.delayed)),
    num(fmtInt(q.in_flight)),
    num(fmtInt(q.acked)),
    num(fmtInt(q.dead_lettered), { 'data-queue-dead-lettered': q.group }),
    num(fmtInt(q.redelivered)),
    num(q.oldest_unacked_ms == null ? '—' : fmtSeconds(q.oldest_unacked_ms / 1000)),
    el('td', null, joinLinks(q.dead_letter_topics, topicHref))));
  return table([['Queue group'], ['Topics'], ['Members', 'num'], ['Ready', 'num'],
    ['Delayed', 'num'], ['In flight', 'num'], ['Acked', 'num'], ['Dead-lettered', 'num'],
    ['Redelivered', 'num'], ['Oldest unacked', 'num'], ['Dead-letter topics']], rows,
  'no queue groups', { id: 'queues' });
}

function joinLinks(names, href) {
  if (!names || !names.length) return el('span', { class: 'muted' }, '—');
  return names.flatMap((n, i) => [i ? ', ' : null, link(href(n), n)]);
}

/** Settings as a name/value table (topic configs carry their source). */
function settingsTable(entries) {
  const rows = entries.map((c) => el('tr', { 'data-config': c.config },
    el('td', { class: 'mono' }, c.config),
    el('td', { class: `mono ${c.source && c.source !== 'default' ? 'strong' : ''}` },
      c.value === '' ? el('span', { class: 'muted' }, '(empty)') : c.value),
    c.source ? el('td', null, badge(c.source, `source-${c.source}`)) : null));
  const columns = [['Setting'], ['Value']];
  if (entries.some((c) => c.source)) columns.push(['Source']);
  return table(columns, rows, 'no settings');
}

// ---------------------------------------------------------------------------------------------
// Views. Each returns {title, node} built from freshly fetched data.
// ---------------------------------------------------------------------------------------------

/** The cluster at a glance: brokers, counts, throughput now, plots, and every table. */
async function viewOverview() {
  const [ov, topics, groups, queues, history] = await Promise.all([
    api('/api/overview'), api('/api/topics'), api('/api/groups'), api('/api/queues'),
    apiOr('/api/history', null)]);
  const tp = throughput(history, ov);
  const rate = (v, f) => (v == null ? '—' : `${f(v)}/s`);
  const points = (history && history.points) || [];
  const lag = withNow(mapSeries(points, 'lag'), ov.time_ms,
    Object.fromEntries(groups.map((g) => [g.group, g.lag])));
  const ready = withNow(mapSeries(points, 'queue_ready'), ov.time_ms,
    Object.fromEntries(queues.map((q) => [q.group, q.ready + q.delayed])));
  const userTopics = topics.filter((t) => !t.internal);
  return {
    title: 'Overview',
    node: [
      el('div', { class: 'page-head' }, el('h1', null, 'Overview'),
        el('span', { class: 'muted' }, `strom ${ov.version} · up ${fmtSeconds(ov.uptime_seconds)}`,
          ` · ${plural(ov.connections, 'connection')}`)),
      cards([
        ['brokers', fmtInt(ov.brokers.length)],
        ['topics', fmtInt(ov.topics), { 'data-count': 'topics' }],
        ['partitions', fmtInt(ov.partitions)],
        ['consumer groups', fmtInt(ov.consumer_groups)],
        ['queue groups', fmtInt(ov.queue_groups)],
        ['records in now', rate(tp.now.recordsIn, fmtShort),
          { 'data-rate': 'records-in' }],
        ['bytes in now', rate(tp.now.bytesIn, fmtBytes),
          { 'data-rate': 'bytes-in' }],
        ['bytes out now', rate(tp.now.bytesOut, fmtBytes), { 'data-rate': 'bytes-out' }],
        ['stored', fmtBytes(ov.size_bytes)],
      ]),
      el('div', { class: 'plots' },
        lineChart('Records in per second', [{ name: 'records/s in', points: tp.recordsIn }],
          { attrs: { id: 'plot-records' } }),
        lineChart('Bytes per second', [{ name: 'in', points: tp.bytesIn },
          { name: 'out (fetched)', points: tp.bytesOut }],
        { format: fmtBytes, bytes: true, attrs: { id: 'plot-bytes' } }),
        lineChart('Consumer group lag (records)', lag, { attrs: { id: 'plot-lag' } }),
        lineChart('Queue groups: ready + delayed', ready, { attrs: { id: 'plot-ready' } })),
      history ? el('p', { class: 'note' },
        `Plots: the broker samples every ${history.interval_ms / 1000} s and keeps 10 minutes `,
        `(${plural(points.length, 'sample')} so far); rates are the change between samples, `,
        'lag and counts end with the values now.') : null,
      section('Brokers', table([['Id', 'num'], ['Native'], ['Kafka'], ['HTTP']],
        ov.brokers.map((b) => [num(b.id), el('td', { class: 'mono' }, b.native),
          el('td', { class: 'mono' }, b.kafka ?? '—'),
          el('td', { class: 'mono' }, b.http ?? '—')]))),
      section(`Topics (${userTopics.length}${topics.length > userTopics.length
        ? `, ${topics.length - userTopics.length} internal not shown` : ''})`,
      topicsTable(userTopics)),
      section(`Consumer groups (${groups.length})`, groupsTable(groups)),
      section(`Queue groups (${queues.length})`, queuesTable(queues)),
    ],
  };
}

/** Every topic, internal ones included. */
async function viewTopics() {
  const topics = await api('/api/topics');
  return { title: 'Topics', node: [el('h1', null, 'Topics'),
    section(`${topics.length} topics`, topicsTable(topics))] };
}

/** One topic: partitions with offsets and sizes, the last records, settings. */
async function viewTopic(name, params) {
  const partition = params.get('partition');
  const offset = params.get('offset');
  const limit = params.get('limit') || '20';
  const q = new URLSearchParams({ limit });
  if (partition != null && partition !== '') q.set('partition', partition);
  if (q.has('partition') && offset != null && offset !== '') q.set('offset', offset);
  const [t, recs] = await Promise.all([api(`/api/topics/${enc(name)}`),
    api(`/api/topics/${enc(name)}/records?${q}`)]);
  const parts = t.partitions;
  const total = (f) => parts.reduce((s, p) => s + (p[f] || 0), 0);
  const partRows = parts.map((p) => el('tr', { 'data-partition': p.partition },
    num(link(topicHashWith(name, { partition: p.partition }), String(p.partition))),
    num(fmtInt(p.leader)),
    num(fmtInt(p.start_offset)),
    num(fmtInt(p.end_offset), { 'data-end-offset': p.partition }),
    num(fmtInt(p.end_offset - p.start_offset)),
    num(fmtBytes(p.size_bytes)),
    num(fmtInt(p.segments)),
    num(fmtInt(p.records_appended_total)),
    num(fmtBytes(p.bytes_appended_total))));
  const scope = q.has('partition')
    ? (q.has('offset') ? `partition ${partition} from offset ${offset}, oldest first`
      : `the last of partition ${partition}`)
    : 'the last over all partitions, newest first';
  return {
    title: name,
    node: [
      el('div', { class: 'page-head' },
        el('h1', null, el('span', { class: 'muted' }, 'topic '), name),
        t.internal ? badge('internal') : null),
      cards([
        ['partitions', fmtInt(parts.length)],
        ['records', fmtInt(total('end_offset') - total('start_offset'))],
        ['size', fmtBytes(total('size_bytes'))],
        ['appended since start', fmtInt(total('records_appended_total'))],
      ]),
      section('Partitions', table([['Partition', 'num'], ['Leader', 'num'], ['Start offset', 'num'],
        ['End offset', 'num'], ['Records', 'num'], ['Size', 'num'], ['Segments', 'num'],
        ['Appended', 'num'], ['Bytes appended', 'num']], partRows, 'no partitions',
      { id: 'partitions' })),
      section(`Records: ${scope}`, recordControls(name, parts, partition, offset, limit),
        recordsTable(recs.records, true)),
      section('Settings', settingsTable(t.configs || [])),
    ],
  };
}

function topicHashWith(name, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, v);
  const s = q.toString();
  return topicHref(name) + (s ? `?${s}` : '');
}

/** The partition selector, the "from offset" field and the record count of a topic view. */
function recordControls(name, parts, partition, offset, limit) {
  const go = () => {
    const f = document.getElementById('record-controls');
    const p = f.elements.partition.value;
    location.hash = topicHashWith(name, { partition: p,
      offset: p === '' ? '' : f.elements.offset.value, limit: f.elements.limit.value });
  };
  const option = (value, text, selected) => el('option', { value, selected }, text);
  const submit = (e) => {
    e.preventDefault();
    go();
  };
  return el('form', { id: 'record-controls', class: 'controls', onsubmit: submit },
    el('label', null, 'Partition ',
      el('select', { name: 'partition', onchange: go },
        option('', 'all partitions', partition == null || partition === ''),
        parts.map((p) => option(String(p.partition), `partition ${p.partition}`,
          String(p.partition) === partition)))),
    el('label', null, 'From offset ',
      el('input', { name: 'offset', type: 'number', min: 0, value: offset || '',
        placeholder: 'latest', disabled: partition == null || partition === '' })),
    el('label', null, 'Show ',
      el('select', { name: 'limit', onchange: go },
        ['20', '50', '100', '500'].map((n) => option(n, n, n === limit)))),
    el('button', { type: 'submit' }, 'Show'),
    link(topicHref(name), 'latest', { class: 'button-link' }));
}

/** Consumer groups. */
async function viewGroups() {
  const groups = await api('/api/groups');
  return { title: 'Consumer groups', node: [el('h1', null, 'Consumer groups'),
    section(`${groups.length} consumer groups`, groupsTable(groups))] };
}

/** One consumer group: members with assignments, committed offsets, lag per partition. */
async function viewGroup(name) {
  const [g, history, ov] = await Promise.all([api(`/api/groups/${enc(name)}`),
    apiOr('/api/history', null), api('/api/overview')]);
  const lag = g.offsets.reduce((s, o) => s + Math.max(0, o.lag || 0), 0);
  const lagSeries = withNow({ [name]: mapSeries((history && history.points) || [], 'lag')[name] },
    ov.time_ms, { [name]: lag });
  const members = g.members.map((m) => el('tr', { 'data-member': m.member },
    el('td', { class: 'mono' }, m.member),
    el('td', null, m.client_id),
    el('td', { class: 'mono' }, m.client_host),
    el('td', null, assignmentText(m.assignment))));
  const offsets = g.offsets.map((o) => el('tr', { 'data-offset': `${o.topic}/${o.partition}` },
    el('td', null, link(topicHref(o.topic), o.topic)),
    num(o.partition),
    num(fmtInt(o.committed)),
    num(fmtInt(o.log_end)),
    num(fmtInt(o.lag), { 'data-lag': `${o.topic}/${o.partition}`,
      class: `num ${o.lag > 0 ? 'strong' : ''}` }),
    num(fmtSeconds(o.lag_seconds)),
    el('td', { class: 'mono' }, o.owner ?? el('span', { class: 'muted' }, 'unassigned'))));
  return {
    title: name,
    node: [
      el('div', { class: 'page-head' },
        el('h1', null, el('span', { class: 'muted' }, 'consumer group '), name),
        stateBadge(g.state)),
      cards([
        ['total lag', fmtInt(lag), { 'data-group-total-lag': name }],
        ['members', fmtInt(g.members.length)],
        ['epoch', fmtInt(g.epoch)],
        ['protocol', g.protocol_type || '—'],
        ['assignor', g.assignor || '—'],
      ]),
      lineChart(`Lag of ${name} (records)`, lagSeries, { wide: true }),
      section('Members', table([['Member'], ['Client id'], ['Host'], ['Assignment']], members,
        'no members (offsets only)', { id: 'members' })),
      section('Offsets and lag per partition', table([['Topic'], ['Partition', 'num'],
        ['Committed', 'num'], ['Log end', 'num'], ['Lag', 'num'], ['Lag (time)', 'num'],
        ['Owner']], offsets, 'no committed offsets', { id: 'offsets' })),
    ],
  };
}

/** `orders: 0, 1, 2; payments: 0` from a member's assignment. */
function assignmentText(assignment) {
  const byTopic = new Map();
  for (const a of assignment || []) {
    if (!byTopic.has(a.topic)) byTopic.set(a.topic, []);
    byTopic.get(a.topic).push(a.partition);
  }
  if (!byTopic.size) return el('span', { class: 'muted' }, 'nothing');
  return [...byTopic].flatMap(([t, ps], i) => [i ? '; ' : null, link(topicHref(t), t),
    `: ${ps.sort((a, b) => a - b).join(', ')}`]);
}

/** Queue groups. */
async function viewQueues() {
  const queues = await api('/api/queues');
  return { title: 'Queue groups', node: [el('h1', null, 'Queue groups'),
    section(`${queues.length} queue groups`, queuesTable(queues))] };
}

/** One queue group: counts per partition, members, settings, dead-letter topics and redrive. */
async function viewQueue(name) {
  const [q, history, ov] = await Promise.all([api(`/api/queues/${enc(name)}`),
    apiOr('/api/history', null), api('/api/overview')]);
  const dlqs = q.dead_letter_topics || [];
  // Each dead-letter topic's last records (it may not exist until a record is dead-lettered),
  // and the progress of a redrive started here or still running.
  const extra = await Promise.all(dlqs.map(async (d) => {
    const recs = await apiOr(`/api/topics/${enc(d.dead_letter_topic)}/records?limit=20`, null);
    let redrive = d.redrive;
    if (state.redrives.has(d.dead_letter_topic) || (redrive && !redrive.done)) {
      redrive = await apiOr(`/api/redrives/${enc(d.dead_letter_topic)}`, redrive);
      if (redrive && redrive.done) state.redrives.delete(d.dead_letter_topic);
    }
    return { recs, redrive };
  }));
  const sum = (f) => q.partitions.reduce((s, p) => s + (p[f] || 0), 0);
  const oldest = Math.max(-1, ...q.partitions.map((p) => p.oldest_unacked_ms ?? -1));
  const readySeries = withNow(
    { [name]: mapSeries((history && history.points) || [], 'queue_ready')[name] },
    ov.time_ms, { [name]: sum('ready') + sum('delayed') });
  const partRows = q.partitions.map((p) => el('tr',
    { 'data-queue-partition': `${p.topic}/${p.partition}` },
    el('td', null, link(topicHref(p.topic), p.topic)), num(p.partition),
    num(fmtInt(p.ready)), num(fmtInt(p.delayed)), num(fmtInt(p.in_flight)),
    num(fmtInt(p.dead_lettering)), num(fmtInt(p.acked)), num(fmtInt(p.dead_lettered)),
    num(fmtInt(p.redelivered)), num(fmtInt(p.start_offset)), num(fmtInt(p.next_offset)),
    num(fmtInt(p.log_end_offset)),
    num(p.oldest_unacked_ms == null ? '—' : fmtSeconds(p.oldest_unacked_ms / 1000))));
  const members = q.members.map((m) => [el('td', { class: 'mono' }, m.member),
    el('td', null, joinLinks(m.topics, topicHref)), num(fmtInt(m.in_flight))]);
  const settings = Object.entries(q.settings || {}).map(([config, value]) => ({ config, value }));
  return {
    title: name,
    node: [
      el('div', { class: 'page-head' },
        el('h1', null, el('span', { class: 'muted' }, 'queue group '), name),
        el('span', { class: 'muted' }, 'on ',
          joinLinks([...new Set(q.partitions.map((p) => p.topic))], topicHref))),
      cards([
        ['members', fmtInt(q.members.length)],
        ['ready', fmtInt(sum('ready'))],
        ['delayed', fmtInt(sum('delayed'))],
        ['in flight', fmtInt(sum('in_flight'))],
        ['dead-lettering', fmtInt(sum('dead_lettering'))],
        ['acked', fmtInt(sum('acked'))],
        ['dead-lettered', fmtInt(sum('dead_lettered')), { 'data-dead-lettered': name }],
        ['redelivered', fmtInt(sum('redelivered'))],
        ['oldest unacked', oldest < 0 ? '—' : fmtSeconds(oldest / 1000)],
      ]),
      lineChart(`Ready + delayed in ${name}`, readySeries, { wide: true }),
      section('Dead-letter topics', dlqs.length
        ? dlqs.map((d, i) => deadLetterSection(d, extra[i].recs, extra[i].redrive))
        : el('p', { class: 'empty' }, 'none')),
      section('Partitions', table([['Topic'], ['Partition', 'num'], ['Ready', 'num'],
        ['Delayed', 'num'], ['In flight', 'num'], ['Dead-lettering', 'num'], ['Acked', 'num'],
        ['Dead-lettered', 'num'], ['Redelivered', 'num'], ['Start', 'num'], ['Next', 'num'],
        ['Log end', 'num'], ['Oldest unacked', 'num']], partRows, 'no partitions',
      { id: 'queue-partitions' })),
      section('Members', table([['Member'], ['Topics'], ['In flight', 'num']], members,
        'no members', { id: 'queue-members' })),
      section('Settings', settingsTable(settings)),
    ],
  };
}

/** One dead-letter topic of a queue group: redrive controls and its last records. */
function deadLetterSection(d, recs, redrive) {
  const dlq = d.dead_letter_topic;
  const records = recs ? recs.records : [];
  const notice = state.notices.get(dlq);
  return el('div', { class: 'dlq', 'data-dlq-topic': dlq },
    el('div', { class: 'dlq-title' },
      el('h3', null, link(topicHref(dlq), dlq)),
      el('span', { class: 'muted' }, 'dead letters of ', link(topicHref(d.topic), d.topic), ' · ',
        plural(d.records, 'record'))),
    el('div', { class: 'redrive' },
      redriveForm(dlq, d.topic, redrive && !redrive.done, recs == null),
      redrive ? redriveProgress(redrive) : null,
      notice ? el('span', { class: `notice ${notice.kind}` }, notice.text) : null),
    recs == null
      ? el('p', { class: 'empty' }, 'nothing dead-lettered yet (the topic does not exist)')
      : records.length
        ? el('div', { class: 'dlq-records' }, el('div', { class: 'muted small' },
          records.length === 1 ? 'Its record:'
            : `The last ${records.length} records, newest first:`),
        records.map((r) => deadLetterCard(dlq, r)))
        : el('p', { class: 'empty' }, 'no records'));
}

/** Target and rate fields and the Redrive button of one dead-letter topic. */
function redriveForm(dlq, origin, running, missing) {
  const submit = async (e) => {
    e.preventDefault();
    const f = e.target;
    const body = {};
    if (f.elements.target.value.trim()) body.target = f.elements.target.value.trim();
    if (f.elements.rate.value) body.rate = Number(f.elements.rate.value);
    f.elements.start.disabled = true;
    try {
      const r = await api(`/api/redrives/${enc(dlq)}`, { method: 'POST',
        headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      state.redrives.set(dlq, r);
      state.notices.set(dlq, { kind: 'ok', text: `redrive started at ${fmtClock(new Date())}` });
    } catch (err) {
      // 409: one is running already (the broker says how far it got).
      state.notices.set(dlq, { kind: 'error', text: err.status === 409
        ? err.message : `redrive failed: ${err.message}` });
    }
    refresh('action');
  };
  return el('form', { class: 'controls', 'data-redrive-form': dlq, onsubmit: submit },
    el('label', null, 'to ', el('input', { name: 'target', type: 'text', size: 18,
      placeholder: `origin (${origin})`, 'data-keep': `target:${dlq}` })),
    el('label', null, 'at most ', el('input', { name: 'rate', type: 'number', min: 1,
      max: 1000000, placeholder: '1000', 'data-keep': `rate:${dlq}`, class: 'narrow' }),
    ' records/s'),
    el('button', { name: 'start', type: 'submit', disabled: running || missing, 'data-redrive': dlq,
      title: 'Move the records of this dead-letter topic back to their topics' },
    running ? 'Redrive running…' : 'Redrive'));
}

/** A redrive's progress: a bar and its counts. */
function redriveProgress(r) {
  const total = r.moved + r.skipped + r.remaining;
  const pct = total ? Math.round(((r.moved + r.skipped) / total) * 100) : 100;
  return el('div', { class: 'progress-box', 'data-redrive-status': r.dead_letter_topic },
    el('div', { class: 'progress' }, el('div', { class: 'bar', style: { width: `${pct}%` } })),
    el('span', null, r.done ? badge('done', 'ok') : badge('running', 'warn'),
      ` moved ${fmtInt(r.moved)} · skipped ${fmtInt(r.skipped)}`,
      ` · remaining ${fmtInt(r.remaining)}`,
      ` · to ${r.target || 'origin topics'} · ${fmtInt(r.rate)}/s`));
}

function viewNotFound(what) {
  return { title: 'not found',
    node: [el('h1', null, 'Not found'), el('p', { class: 'empty' }, what)] };
}

// ---------------------------------------------------------------------------------------------
// Routing, refreshing and the status line
// ---------------------------------------------------------------------------------------------

/** `#/topics/orders?partition=1` -> {parts: ['topics', 'orders'], params}. */
function parseRoute() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  let parts;
  try {
    parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  } catch (e) {
    parts = ['?'];
  }
  return { parts, params: new URLSearchParams(query || '') };
}

/** The view for a route (a promise of {title, node}). */
function viewFor({ parts, params }) {
  const [kind, name] = parts;
  const one = name != null && parts.length === 2;
  switch (kind) {
    case undefined: return viewOverview();
    case 'topics': return one ? viewTopic(name, params) : viewTopics();
    case 'groups': return one ? viewGroup(name) : viewGroups();
    case 'queues': return one ? viewQueue(name) : viewQueues();
    default: return Promise.resolve(viewNotFound(`No page at ${location.hash}.`));
  }
}

/** Fetches and draws the current view. `why`: 'route' (a new page), 'timer' or 'action'. */
async function refresh(why) {
  if (why === 'timer' && state.busy) return;
  const gen = ++state.generation;
  state.busy = true;
  const route = parseRoute();
  markNav(route.parts[0]);
  let view;
  let failure = null;
  try {
    view = await viewFor(route);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) view = viewNotFound(e.message);
    else failure = e;
  }
  if (gen !== state.generation) return; // a newer refresh has drawn, or will
  state.busy = false;
  if (failure) {
    // A new page that could not be fetched says so; a refresh keeps what was shown.
    if (why === 'route') {
      show({ title: 'unreachable', node: el('p', { class: 'empty' }, failure.message) }, true);
    }
    showError(failure);
    return;
  }
  show(view, why === 'route');
  state.lastOk = new Date();
  hideError();
}

/** Puts a view in the page, keeping the scroll position, typed input and focus. */
function show(view, fresh) {
  const root = document.getElementById('view');
  const scroll = window.scrollY;
  const kept = fresh ? new Map() : keptInputs(root);
  const next = document.createDocumentFragment();
  append(next, [view.node]);
  root.replaceChildren(next);
  for (const [key, saved] of kept) {
    const input = root.querySelector(`[data-keep="${CSS.escape(key)}"]`);
    if (!input) continue;
    input.value = saved.value;
    if (saved.focused) {
      input.focus();
      try {
        input.setSelectionRange(saved.start, saved.end);
      } catch (e) { /* number inputs have no selection */ }
    }
  }
  document.title = `${view.title} · strom`;
  window.scrollTo(0, fresh ? 0 : scroll);
}

/** The values typed into the current view's fields, so a refresh does not wipe them. */
function keptInputs(root) {
  const kept = new Map();
  for (const input of root.querySelectorAll('[data-keep]')) {
    const focused = document.activeElement === input;
    if (input.value === '' && !focused) continue;
    let start = null;
    let end = null;
    try {
      start = input.selectionStart;
      end = input.selectionEnd;
    } catch (e) { /* number inputs have no selection */ }
    kept.set(input.dataset.keep, { value: input.value, focused, start, end });
  }
  return kept;
}

function markNav(kind) {
  const current = kind || 'overview';
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.nav === current);
  }
}

function showError(e) {
  const banner = document.getElementById('banner');
  const since = state.lastOk ? ` Showing what it answered at ${fmtClock(state.lastOk)}.` : '';
  banner.textContent = `${e.message}.${since} Retrying every ${REFRESH_MS / 1000} s.`;
  banner.hidden = false;
  const status = document.getElementById('status');
  status.textContent = 'broker unreachable';
  status.className = 'status error';
}

function hideError() {
  document.getElementById('banner').hidden = true;
  const status = document.getElementById('status');
  status.textContent = `updated ${fmtClock(state.lastOk)}`;
  status.className = 'status ok';
}

window.addEventListener('hashchange', () => refresh('route'));
setInterval(() => refresh('timer'), REFRESH_MS);
refresh('route');
