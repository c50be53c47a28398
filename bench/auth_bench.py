#!/usr/bin/env python3
"""Foundation benchmark: start-up time, idle memory and auth endpoint throughput.

Runs the release `atelier` binary on a fresh multi-user root on 127.0.0.1 and drives it with
`wrk` (Debian package). Prints one line per measurement. Usage: bench/run.sh (builds first).

On a 2-core machine wrk shares the CPU with the server, so compare numbers from one run.
"""

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.environ.get("ATELIER_BIN", os.path.join(ROOT_DIR, "target", "release", "atelier"))
DURATION = os.environ.get("BENCH_DURATION", "10s")
THREADS = os.environ.get("BENCH_THREADS", "2")
CONNECTIONS = os.environ.get("BENCH_CONNECTIONS", "32")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, method="GET", body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.status, json.loads(res.read() or b"null")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url, token=None, script=None, duration=DURATION, connections=CONNECTIONS, threads=THREADS):
    cmd = ["wrk", "-t", threads, "-c", connections, "-d", duration, "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_wrk(output):
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+\w+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return (
        float(rps.group(1)) if rps else float("nan"),
        p99.group(1) if p99 else "?",
        int(non2xx.group(1)) if non2xx else 0,
    )


def report(name, output):
    rps, p99, errors = parse_wrk(output)
    note = f"  ({errors} non-2xx!)" if errors else ""
    print(f"{name:<58} {rps:>10.0f} req/s   p99 {p99}{note}", flush=True)
    return rps


def main():
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} not found: run bench/run.sh (it builds the release binary)")
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    root = tempfile.mkdtemp(prefix="atelier-bench-")
    port = free_port()
    with open(os.path.join(root, "invokeai.yaml"), "w") as f:
        f.write(f"schema_version: 4.0.3\nmultiuser: true\nport: {port}\n")
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("INVOKEAI_")}
    env["RUST_LOG"] = "warn"

    # 1. Launch to first 200 on /api/v1/auth/status (fresh root: includes creating the
    #    database and running migrations).
    started = time.perf_counter()
    server = subprocess.Popen([BINARY, "serve", "--root", root], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                status, _ = request(f"{base}/api/v1/auth/status")
                if status == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - started > 30:
                sys.exit("server did not start within 30 s")
            time.sleep(0.002)
        startup_ms = (time.perf_counter() - started) * 1000
        print(f"{'launch to first 200 on /api/v1/auth/status (fresh root)':<58} {startup_ms:>10.1f} ms", flush=True)

        # 2. Setup, login, 100 users (inserted with sqlite3 sharing one bcrypt hash: the hash
        #    cost is what /login measures, not what listing measures).
        request(f"{base}/api/v1/auth/setup", "POST",
                {"email": "admin@example.com", "password": "Bench-Pass-1", "display_name": "Admin"})
        _, login = request(f"{base}/api/v1/auth/login", "POST",
                           {"email": "admin@example.com", "password": "Bench-Pass-1"})
        token = login["token"]
        request(f"{base}/api/v1/auth/users", "POST", {"email": "user0@example.com", "password": "Bench-Pass-1"}, token)
        db = sqlite3.connect(os.path.join(root, "databases", "atelier.db"), timeout=10)
        (hash_,) = db.execute("SELECT password_hash FROM users WHERE email = 'user0@example.com'").fetchone()
        with db:
            for i in range(1, 99):
                db.execute(
                    "INSERT INTO users (user_id, email, display_name, password_hash, is_admin, is_active)"
                    " VALUES (lower(hex(randomblob(16))), ?, ?, ?, FALSE, TRUE)",
                    (f"user{i}@example.com", f"User {i}", hash_),
                )
        db.close()
        _, users = request(f"{base}/api/v1/auth/users", token=token)
        print(f"{'users listed by GET /api/v1/auth/users':<58} {len(users):>10}", flush=True)

        # 3. Idle resident memory after the set-up traffic.
        time.sleep(2)
        print(f"{'idle resident memory (VmRSS)':<58} {rss_mib(server.pid):>10.1f} MiB", flush=True)

        # 4. Throughput.
        report("GET /api/v1/auth/status (anonymous)", wrk(f"{base}/api/v1/auth/status").communicate()[0])
        report("GET /api/v1/auth/me (authenticated)", wrk(f"{base}/api/v1/auth/me", token).communicate()[0])
        report("GET /api/v1/auth/users (admin, 100 users)", wrk(f"{base}/api/v1/auth/users", token).communicate()[0])

        # 5. Logins/s alone, then authenticated GETs while logins run.
        lua = os.path.join(root, "login.lua")
        with open(lua, "w") as f:
            f.write('wrk.method = "POST"\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    'wrk.body = \'{"email":"user0@example.com","password":"Bench-Pass-1"}\'\n')
        # Throttling counts failures only, so successful logins are never throttled.
        report("POST /api/v1/auth/login (bcrypt cost 12)",
               wrk(f"{base}/api/v1/auth/login", script=lua, connections="4", threads="1").communicate()[0])
        logins = wrk(f"{base}/api/v1/auth/login", script=lua, connections="4", threads="1")
        reads = wrk(f"{base}/api/v1/auth/me", token, connections="16", threads="1")
        reads_out = reads.communicate()[0]
        logins_out = logins.communicate()[0]
        report("  concurrently: POST /api/v1/auth/login", logins_out)
        report("  concurrently: GET /api/v1/auth/me", reads_out)
        print(f"{'resident memory after load (VmRSS)':<58} {rss_mib(server.pid):>10.1f} MiB", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
