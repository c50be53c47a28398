#!/usr/bin/env python3
"""Queue benchmark, HTTP and socket.io parts (the dequeue part is a Rust example; see run.sh).

1. Enqueue throughput through `POST /api/v1/queue/default/enqueue_batch` with `wrk`, for
   batches of 1 and of 100 items (`runs`), with the processor paused so the worker stays idle.
   The queue is cleared before each run and `max_queue_size` raised so nothing is dropped.
2. Fan-out: N websocket clients subscribe to the default queue, one enqueue is posted, and
   each client's receipt of `batch_enqueued` is timed from the moment the request was sent.

Runs the release `atelier` binary, single-user, on a fresh root on 127.0.0.1. The socket
clients speak Engine.IO v4 / socket.io v5 over the `websockets` package (installed into
bench/.venv by run.sh); they all run in this one asyncio process, so the slowest sockets'
times include the client reading the frames before theirs. Usage: bench/run.sh queue.
"""

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from auth_bench import BINARY, free_port, request, wrk  # noqa: E402

DURATION = os.environ.get("BENCH_QUEUE_DURATION", "5s")
CONNECTIONS = os.environ.get("BENCH_QUEUE_CONNECTIONS", "1 8").split()
SOCKETS = int(os.environ.get("BENCH_SOCKETS", "100"))
REPETITIONS = int(os.environ.get("BENCH_FANOUT_REPETITIONS", "30"))
GRAPH = {"nodes": {"a": {"id": "a", "type": "add", "a": 1, "b": 2}}, "edges": []}


def enqueue_body(runs):
    return {"batch": {"graph": GRAPH, "runs": runs}, "prepend": False}


def pending(base):
    _, status = request(f"{base}/api/v1/queue/default/status")
    return status["queue"]["pending"]


def parse_wrk_counts(output):
    """(completed requests, seconds, non-2xx) from wrk's summary."""
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
    if not m:
        return 0, float("nan"), 0
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return int(m.group(1)), float(m.group(2)) * scale, int(non2xx.group(1)) if non2xx else 0


def enqueue_throughput(base, root):
    print(f"-- enqueue throughput: wrk {DURATION} per row, processor paused, queue cleared before "
          "each row --", flush=True)
    print(f"{'batch':<22} {'connections':>11} {'requests/s':>11} {'items/s':>10} {'p50':>10} "
          f"{'p99':>10} {'pending after':>14}", flush=True)
    for runs, connections in [(r, c) for r in (1, 100) for c in CONNECTIONS]:
        request(f"{base}/api/v1/queue/default/clear", "PUT")
        lua = os.path.join(root, f"enqueue{runs}.lua")
        with open(lua, "w") as f:
            f.write('wrk.method = "POST"\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = '{json.dumps(enqueue_body(runs))}'\n")
        out = wrk(f"{base}/api/v1/queue/default/enqueue_batch", script=lua, duration=DURATION,
                  connections=connections, threads="1").communicate()[0]
        done, seconds, errors = parse_wrk_counts(out)
        p50 = re.search(r"50%\s+([\d.]+\w+)", out)
        p99 = re.search(r"99%\s+([\d.]+\w+)", out)
        after = pending(base)
        # Requests still in flight when wrk stops are served but not counted: items from the
        # server's own count can only be a little higher than done * runs.
        note = f"  ({errors} non-2xx!)" if errors else ""
        if after < done * runs:
            note += f"  (only {after} pending, expected {done * runs}: items dropped!)"
        label = f"{runs} item{'s' if runs > 1 else ''} per request"
        print(f"{label:<22} {connections:>11} {done / seconds:>11.0f} {done * runs / seconds:>10.0f} "
              f"{p50.group(1) if p50 else '?':>10} {p99.group(1) if p99 else '?':>10} {after:>14}{note}",
              flush=True)
    request(f"{base}/api/v1/queue/default/clear", "PUT")


# --- socket.io fan-out ------------------------------------------------------------------------

class Client:
    """A minimal socket.io v5 client on the websocket transport (Engine.IO v4)."""

    def __init__(self, ws):
        self.ws = ws
        self.waiting = None  # (event name, future)

    @classmethod
    async def connect(cls, port):
        import websockets

        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/ws/socket.io/?EIO=4&transport=websocket",
            max_size=None, compression=None, ping_interval=None)
        opened = await ws.recv()
        if not opened.startswith("0"):
            raise RuntimeError(f"unexpected Engine.IO open packet {opened!r}")
        await ws.send("40")
        while True:
            connected = await ws.recv()
            if connected == "2":  # an Engine.IO ping can come first
                await ws.send("3")
                continue
            if not connected.startswith("40"):
                raise RuntimeError(f"socket.io CONNECT refused: {connected!r}")
            break
        client = cls(ws)
        await ws.send('42["subscribe_queue",{"queue_id":"default"}]')
        client.task = asyncio.create_task(client.read())
        return client

    async def read(self):
        async for frame in self.ws:
            now = time.perf_counter()
            if frame == "2":  # Engine.IO ping
                await self.ws.send("3")
            elif frame.startswith("42") and self.waiting:
                name, future = self.waiting
                if frame.startswith(f'42["{name}"') and not future.done():
                    future.set_result(now)

    def expect(self, name):
        future = asyncio.get_running_loop().create_future()
        self.waiting = (name, future)
        return future


async def http_post(reader, writer, path, body):
    data = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    status = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    if b" 200 " not in status:
        raise RuntimeError(f"enqueue failed: {status!r}")


def pct(values, p):
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[min(len(ordered), rank) - 1]


async def fanout(port, sockets, repetitions):
    clients = [await Client.connect(port) for _ in range(sockets)]
    await asyncio.sleep(0.5)  # let every subscribe_queue land
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    samples, lasts, responses = [], [], []
    body = enqueue_body(1)
    for rep in range(repetitions + 2):
        futures = [c.expect("batch_enqueued") for c in clients]
        sent = time.perf_counter()
        await http_post(reader, writer, "/api/v1/queue/default/enqueue_batch", body)
        answered = time.perf_counter()
        received = await asyncio.wait_for(asyncio.gather(*futures), timeout=10)
        if rep < 2:
            continue  # warm-up
        delays = [(t - sent) * 1000 for t in received]
        samples += delays
        lasts.append(max(delays))
        responses.append((answered - sent) * 1000)
        await asyncio.sleep(0.05)
    writer.close()
    for c in clients:
        c.task.cancel()
        await c.ws.close()
    return samples, lasts, responses


def fanout_report(port):
    print(f"-- fan-out of one batch_enqueued to N sockets (websocket transport), {REPETITIONS} "
          "repetitions; times from sending the HTTP request --", flush=True)
    print(f"{'sockets':>7} {'HTTP resp median':>17} {'receipt median':>15} {'p95':>9} {'max':>9} "
          f"{'last socket median':>19}", flush=True)
    for n in sorted({1, SOCKETS}):
        samples, lasts, responses = asyncio.run(fanout(port, n, REPETITIONS))
        print(f"{n:>7} {statistics.median(responses):>14.2f} ms {statistics.median(samples):>12.2f} ms "
              f"{pct(samples, 95):>6.2f} ms {max(samples):>6.2f} ms {statistics.median(lasts):>16.2f} ms",
              flush=True)


def main():
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} not found: run bench/run.sh queue (it builds the release binary)")
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    root = tempfile.mkdtemp(prefix="atelier-queue-bench-")
    port = free_port()
    with open(os.path.join(root, "invokeai.yaml"), "w") as f:
        f.write(f"schema_version: 4.0.3\nport: {port}\nmax_queue_size: 100000000\n")
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("INVOKEAI_")}
    env["RUST_LOG"] = "warn"
    server = subprocess.Popen([BINARY, "serve", "--root", root], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                request(f"{base}/api/v1/auth/status")
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("server did not start")
                time.sleep(0.01)
        request(f"{base}/api/v1/queue/default/processor/pause", "PUT")
        enqueue_throughput(base, root)
        fanout_report(port)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
