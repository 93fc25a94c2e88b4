// Browser tabs in Debian's headless Chromium, each a page with one
// EventSource, opened, reloaded and closed as stdin says, one JSON command
// a line:
//   {"op":"open","tab":"a","path":"/events/messages?presence=1"}
//   {"op":"reload","tab":"a"}      the page reloads and opens its stream again
//   {"op":"close","tab":"a"}       the tab closes, and its stream with it
// Prints what each tab's page sees on stdout, as chromium.mjs does, with
// the tab as the stream's name, and {"stream":tab,"kind":"done","op":…}
// once a command is carried out. Exits, closing the browser, when stdin
// closes. The pages are at spec.base + spec.page, same-origin with the
// streams.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const spec = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext();
await context.exposeFunction('report', (line) => print(line));

// Opens the tab's stream in its page; the page listens for rows and for
// presence events.
const follow = (page, tab, url) => page.evaluate(({ tab, url }) => {
  const say = (kind, fields = {}) => window.report({ stream: tab, kind, ...fields });
  const source = new EventSource(url);
  source.onopen = () => say('open');
  for (const type of ['message', 'presence']) {
    source.addEventListener(type, (e) => say('event', { type: e.type, id: e.lastEventId, data: e.data }));
  }
  source.onerror = () => {
    say('error', { ready_state: source.readyState });
    if (source.readyState === EventSource.CLOSED) say('closed');
  };
}, { tab, url });

const tabs = new Map();
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  const { op, tab } = command;
  if (op === 'open') {
    const page = await context.newPage();
    await page.goto(spec.base + spec.page);
    const url = spec.base + command.path;
    tabs.set(tab, { page, url });
    await follow(page, tab, url);
  } else if (op === 'reload') {
    const { page, url } = tabs.get(tab);
    await page.reload();
    await follow(page, tab, url);
  } else if (op === 'close') {
    await tabs.get(tab).page.close();
    tabs.delete(tab);
  }
  print({ stream: tab, kind: 'done', op });
}
await browser.close();
process.exit(0);
