import time

import httpx
from httpx_sse import connect_sse


def follow(client: httpx.Client, url: str, headers: dict | None = None):
    """Yields the events of a rowcast stream for good, as EventSource does:
    reconnects after a dropped connection or a restart, resuming from the
    last event id. A refusal (401, 403, 404, ...) raises
    httpx.HTTPStatusError; its response holds rowcast's JSON error."""
    last_event_id, delay = "", 3.0
    while True:
        sent = dict(headers or {})
        if last_event_id:
            sent["Last-Event-ID"] = last_event_id
        try:
            with connect_sse(client, "GET", url, headers=sent) as source:
                if source.response.is_error:
                    source.response.read()
                    source.response.raise_for_status()
                for sse in source.iter_sse():
                    if sse.id:  # "" for a frame without `id:`: keep the last
                        last_event_id = sse.id
                    if sse.retry is not None:
                        delay = sse.retry / 1000
                    if sse.data:  # a frame of only `retry:` or `id:` is no event
                        yield sse
        except httpx.TransportError:
            pass  # refused, dropped or silent for too long: try again
        time.sleep(delay)
