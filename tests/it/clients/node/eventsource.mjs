// Follows rowcast streams with the `eventsource` package, the way a Node
// service does, and prints what it sees on stdout, one JSON object a line
// (see tests/it/clients/driver.rs for the lines and the spec given as
// argv[2]). Exits when stdin closes, so it never outlives the test that
// started it.
import { EventSource } from 'eventsource';

const spec = JSON.parse(process.argv[2]);
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');

for (const stream of spec.streams) {
  const say = (kind, fields = {}) => print({ stream: stream.name, kind, ...fields });
  const source = new EventSource(spec.base + stream.path, {
    // The package's documented way to send headers: wrap fetch. It runs
    // for every connection, reconnects included.
    fetch: (url, init) => {
      say('request', { last_event_id: init.headers['Last-Event-ID'] ?? null });
      const headers = stream.token
        ? { ...init.headers, Authorization: `Bearer ${stream.token}` }
        : init.headers;
      return fetch(url, { ...init, headers });
    },
  });
  source.onopen = () => say('open');
  for (const type of stream.events) {
    source.addEventListener(type, (e) =>
      say('event', { type: e.type, id: e.lastEventId, data: e.data }));
  }
  // `code` is the HTTP status when the answer was not a stream; CLOSED
  // means the package gave up for good, CONNECTING that it will retry.
  source.onerror = (e) => {
    say('error', { status: e.code ?? null, message: e.message ?? null, ready_state: source.readyState });
    if (source.readyState === EventSource.CLOSED) say('closed');
  };
}

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
