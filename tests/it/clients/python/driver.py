"""Follows rowcast streams with httpx-sse and the reconnect loop README
shows (follow.py), the way a Python service does, and prints what it sees
on stdout, one JSON object a line (see tests/it/clients/driver.rs for the
lines and the spec given as argv[1]). Exits when stdin closes, so it never
outlives the test that started it."""

import json
import os
import sys
import threading

import httpx

from follow import follow

print_lock = threading.Lock()


def run(base, stream):
    def say(kind, **fields):
        with print_lock:
            print(json.dumps({"stream": stream["name"], "kind": kind, **fields}), flush=True)

    # httpx's hooks see every (re)connection follow() makes.
    hooks = {
        "request": [lambda r: say("request", last_event_id=r.headers.get("last-event-id"))],
        "response": [lambda r: r.status_code == 200 and say("open")],
    }
    headers = {"Authorization": f"Bearer {stream['token']}"} if stream.get("token") else {}
    # rowcast writes a keep-alive every 15 s: a minute of silence is a dead
    # connection.
    with httpx.Client(timeout=httpx.Timeout(5.0, read=60.0), event_hooks=hooks) as client:
        try:
            for sse in follow(client, base + stream["path"], headers):
                say("event", type=sse.event, id=sse.id, data=sse.data)
        except httpx.HTTPStatusError as e:
            say("error", status=e.response.status_code, body=e.response.json())
            say("closed")


def main():
    spec = json.loads(sys.argv[1])
    for stream in spec["streams"]:
        threading.Thread(target=run, args=(spec["base"], stream), daemon=True).start()
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
