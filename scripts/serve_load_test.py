#!/usr/bin/env python3
"""Load test of a running `peft serve`: N completion requests from C concurrent clients, spread over the base
model and every adapter the server lists (some streamed), each checked for a well-formed answer. Stops by
itself: after N requests, or at the deadline (requests not done by then count as failures).

Prints one JSON line: requests, failures (must be 0), requests/s, p50/p99 latency, and the server's resident
memory (VmRSS of --pid, from /proc) at start and end. Exits 1 if any request failed.

    python3 scripts/serve_load_test.py --url http://127.0.0.1:8000 --requests 200 --concurrency 16 --pid 1234

Python's standard library only. Send traffic to your own loopback server only.
"""

import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed

PROMPTS = ["w5 w6 w7", "w10 w11 w12 w13", "w20", "w1 w2 w3 w4 w5 w6", "w40 w41"]


def rss_kb(pid):
    """VmRSS of `pid` in kB, or None if it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def connect(url, timeout):
    u = urllib.parse.urlparse(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load-test {u.hostname}: only a loopback server of yours")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def call(url, method, path, body, timeout):
    conn = connect(url, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_completion(data):
    choice = data["choices"][0]
    if data.get("object") != "text_completion" or not isinstance(choice["text"], str):
        raise ValueError(f"not a text_completion: {data}")
    if choice["finish_reason"] not in ("stop", "length"):
        raise ValueError(f"finish_reason {choice['finish_reason']!r}")
    return choice["text"]


def one_request(url, i, models, base, max_tokens, stream_every, timeout):
    """Sends request `i`; returns its latency in seconds, or raises with what went wrong."""
    target = models[i % len(models)]
    body = {
        "model": base,
        "prompt": PROMPTS[i % len(PROMPTS)],
        "max_tokens": max_tokens,
        "temperature": 0 if i % 3 else 0.8,
        "seed": i,
        "adapter": None if target == base else target,
    }
    stream = stream_every > 0 and i % stream_every == 0
    body["stream"] = stream
    start = time.monotonic()
    status, raw = call(url, "POST", "/v1/completions", body, timeout)
    if status != 200:
        raise ValueError(f"status {status}: {raw[:300]!r}")
    if stream:
        events = [l[len("data: "):] for l in raw.decode().splitlines() if l.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            raise ValueError(f"stream did not end with [DONE]: {raw[-300:]!r}")
        finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]]
        if finishes[-1] not in ("stop", "length") or any(f is not None for f in finishes[:-1]):
            raise ValueError(f"finish reasons {finishes}")
    else:
        check_completion(json.loads(raw))
    return time.monotonic() - start


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--stream-every", type=int, default=4, help="every k-th request streams (0: none)")
    p.add_argument("--pid", type=int, help="the server's process id, for its memory")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    args = p.parse_args()

    status, raw = call(args.url, "GET", "/v1/models", None, args.timeout)
    if status != 200:
        raise SystemExit(f"GET /v1/models: status {status}")
    entries = json.loads(raw)["data"]
    base = next(m["id"] for m in entries if "parent" not in m)
    models = [m["id"] for m in entries]

    rss_start = rss_kb(args.pid)
    failures, errors, latencies = 0, [], []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + args.deadline
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [
            pool.submit(
                lambda i=i: None
                if time.monotonic() > stop_at
                else one_request(args.url, i, models, base, args.max_tokens, args.stream_every, args.timeout)
            )
            for i in range(args.requests)
        ]
        for f in as_completed(futures):
            try:
                latency = f.result()
                if latency is None:
                    raise TimeoutError("not started before the deadline")
                with lock:
                    latencies.append(latency)
            except Exception as e:  # every failure is counted and a few are shown
                with lock:
                    failures += 1
                    if len(errors) < 5:
                        errors.append(f"{type(e).__name__}: {e}")
    elapsed = time.monotonic() - start
    latencies.sort()
    report = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "models": models,
        "failures": failures,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2) if elapsed > 0 else None,
        "p50_ms": None if not latencies else round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": None if not latencies else round(percentile(latencies, 0.99) * 1000, 2),
        "rss_start_kb": rss_start,
        "rss_end_kb": rss_kb(args.pid),
    }
    print(json.dumps(report), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
