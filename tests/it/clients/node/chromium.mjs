// Follows rowcast streams with the browser's own EventSource, in Debian's
// headless Chromium, and prints what the page sees on stdout, one JSON
// object a line (see tests/it/clients/driver.rs for the lines and the spec
// given as argv[2]). The page is opened at spec.base + spec.page, so its
// streams are same-origin. Exits, closing the browser, when stdin closes.
import { chromium } from 'playwright-core';

const spec = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

// A browser cannot set headers on EventSource: the token goes in the URL.
const streams = spec.streams.map((s) => {
  const token = s.token ? `${s.path.includes('?') ? '&' : '?'}access_token=${s.token}` : '';
  return { ...s, url: spec.base + s.path + token };
});
const streamOf = (url) => streams.find((s) => s.url === url)?.name;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  // Without the background-networking flags Chromium tries hosts that a
  // closed network refuses; the profile is a fresh one under $TMPDIR.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let closing = false;
process.stdin.on('end', async () => {
  closing = true;
  await browser.close();
  process.exit(0);
});
process.stdin.resume();

const page = await browser.newPage();
// What the network sees, which the page's EventSource does not expose:
// each (re)connection with its Last-Event-ID, and the status it got.
page.on('request', async (r) => {
  const stream = streamOf(r.url());
  // headers() has only what the page set; allHeaders() has what was sent.
  if (stream) print({ stream, kind: 'request', last_event_id: (await r.allHeaders())['last-event-id'] ?? null });
});
page.on('response', (r) => {
  const stream = streamOf(r.url());
  if (stream) print({ stream, kind: 'response', status: r.status() });
});
await page.exposeFunction('report', (line) => { if (!closing) print(line); });
await page.goto(spec.base + spec.page);

await page.evaluate((streams) => {
  for (const stream of streams) {
    const say = (kind, fields = {}) => window.report({ stream: stream.name, kind, ...fields });
    const source = new EventSource(stream.url);
    source.onopen = () => say('open');
    for (const type of stream.events) {
      source.addEventListener(type, (e) =>
        say('event', { type: e.type, id: e.lastEventId, data: e.data }));
    }
    // CLOSED: the browser gave up for good; CONNECTING: it will retry.
    source.onerror = () => {
      say('error', { ready_state: source.readyState });
      if (source.readyState === EventSource.CLOSED) say('closed');
    };
  }
}, streams);
