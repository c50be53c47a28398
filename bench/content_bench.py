#!/usr/bin/env python3
"""Content benchmark: image listing, board listing and thumbnail serving (with 304
revalidation) on a multi-user server holding 10,000 images and 200 boards across 5 users.

Users, one real upload and the image the thumbnails come from go through the API; the bulk
of the rows is then inserted with sqlite3 (the API's per-request cost is what is measured, not
the insert rate). Usage: bench/run.sh content (builds the release binary first).
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from auth_bench import BINARY, free_port, report, request, rss_mib, wrk  # noqa: E402

USERS = 5
BOARDS_PER_USER = 40
IMAGES_PER_USER = 2000


def upload_png(base, token):
    """Uploads a tiny generated PNG through the API and returns its DTO."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    w, h = 64, 64
    raw = b"".join(b"\x00" + bytes([x % 256, y % 256, 128]) * w for y in range(h) for x in [0])
    raw = b"".join(b"\x00" + b"".join(bytes([x * 4 % 256, y * 4 % 256, 128]) for x in range(w)) for y in range(h))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{base}/api/v1/images/upload?image_category=general&is_intermediate=false",
                                 data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def main():
    root = tempfile.mkdtemp(prefix="atelier-content-bench-")
    port = free_port()
    with open(os.path.join(root, "invokeai.yaml"), "w") as f:
        f.write(f"schema_version: 4.0.3\nmultiuser: true\nport: {port}\n")
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
        request(f"{base}/api/v1/auth/setup", "POST",
                {"email": "admin@example.com", "password": "Bench-Pass-1", "display_name": "Admin"})
        _, login = request(f"{base}/api/v1/auth/login", "POST",
                           {"email": "admin@example.com", "password": "Bench-Pass-1"})
        admin = login["token"]
        tokens, ids = [], []
        for u in range(USERS):
            _, user = request(f"{base}/api/v1/auth/users", "POST",
                              {"email": f"user{u}@example.com", "password": "Bench-Pass-1"}, admin)
            _, login = request(f"{base}/api/v1/auth/login", "POST",
                               {"email": f"user{u}@example.com", "password": "Bench-Pass-1"})
            tokens.append(login["token"])
            ids.append(user["user_id"])
        sample = upload_png(base, tokens[0])

        db = sqlite3.connect(os.path.join(root, "databases", "atelier.db"), timeout=30)
        with db:
            for u, user_id in enumerate(ids):
                boards = []
                for b in range(BOARDS_PER_USER):
                    board_id = str(uuid.uuid4())
                    vis = ["private", "shared", "public", "private"][b % 4]
                    db.execute("INSERT INTO boards (board_id, board_name, user_id, board_visibility) VALUES (?, ?, ?, ?)",
                               (board_id, f"Board {u}-{b}", user_id, vis))
                    boards.append(board_id)
                for i in range(IMAGES_PER_USER):
                    name = f"{uuid.uuid4()}.png"
                    created = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d} 12:{i % 60:02d}:{(i * 7) % 60:02d}.{i % 1000:03d}"
                    db.execute(
                        "INSERT INTO images (image_name, image_origin, image_category, width, height, metadata,"
                        " is_intermediate, starred, user_id, created_at, updated_at, board_id)"
                        " VALUES (?, 'internal', ?, 512, 512, ?, FALSE, ?, ?, ?, ?, ?)",
                        (name, "general" if i % 5 else "user", json.dumps({"prompt": f"image {i}", "seed": i}),
                         i % 17 == 0, user_id, created, created,
                         boards[i % BOARDS_PER_USER] if i % 4 else None))
        db.close()
        _, page = request(f"{base}/api/v1/images/?limit=50", token=tokens[0])
        _, boards = request(f"{base}/api/v1/boards/?all=true", token=tokens[0])
        print(f"{'images of user0 (total) / boards user0 can see':<58} {page['total']:>6} / {len(boards)}", flush=True)
        print(f"{'idle resident memory (VmRSS)':<58} {rss_mib(server.pid):>10.1f} MiB", flush=True)

        report("GET /api/v1/images/?limit=50 (user, 2,001 own images)",
               wrk(f"{base}/api/v1/images/?limit=50", tokens[0]).communicate()[0])
        report("GET /api/v1/images/?limit=50&board_id=<board> (user)",
               wrk(f"{base}/api/v1/images/?limit=50&board_id={boards[0]['board_id']}", tokens[0]).communicate()[0])
        report("GET /api/v1/boards/?all=true (user)",
               wrk(f"{base}/api/v1/boards/?all=true", tokens[0]).communicate()[0])
        report("GET /api/v1/boards/?all=true (admin, 200 boards)",
               wrk(f"{base}/api/v1/boards/?all=true", admin).communicate()[0])
        thumb = f"{base}/api/v1/images/i/{sample['image_name']}/thumbnail"
        report("GET thumbnail (200, bytes from disk)", wrk(thumb, tokens[0]).communicate()[0])
        etag_lua = os.path.join(root, "etag.lua")
        with open(etag_lua, "w") as f:
            f.write(f'wrk.headers["If-None-Match"] = "\\"{sample["image_name"]}-thumbnail\\""\n')
        report("GET thumbnail with If-None-Match (304)", wrk(thumb, tokens[0], script=etag_lua).communicate()[0])
        print(f"{'resident memory after load (VmRSS)':<58} {rss_mib(server.pid):>10.1f} MiB", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
