#!/usr/bin/env python3
"""Data for benches/scripts/archive-restore.sh.

usage: archive-gen.py build DB SIZE_MB      a fresh WAL-mode database of about SIZE_MB
       archive-gen.py changes DB N [PER_TXN] N logged row changes, PER_TXN (1000) per transaction
       archive-gen.py digest DB             per-table row count and content digest, as JSON

The database is a realistic mix: `users` (integer key, short text and a bio of a few hundred
bytes, a unique email), `posts` (integer key, foreign key to users, text body of 200-600
bytes, an index on user_id), `attachments` (integer key, blobs of 1-8 KiB) and `events`
(a rowid table without a declared key, a JSON-ish text payload). Sizes are split about
20/40/25/15 % between them. Rows are generated from a fixed seed, 100k rows per transaction.

`changes` writes exactly N row changes that SQLite really applies (every UPDATE hits an
existing row and changes it, every DELETE removes an existing row), so the log holds N row
changes: 60 % updates (posts bodies, users bios, a few attachments), 25 % inserts (events,
posts) and 15 % deletes (events, oldest first; inserted events keep the supply ahead).
"""
import hashlib
import json
import os
import random
import sqlite3
import sys
import time

SEED = 7
# A pool of text to slice from: generating every string character by character would make a
# 1 GB build take minutes in Python.
WORDS = (
    "ferry archive restore segment base snapshot record change apply replay shadow capture "
    "sqlite postgres ledger invoice customer order payment shipping address note comment "
    "status pending active closed draft published review approved rejected lorem ipsum dolor"
).split()


def text_pool(rng, size):
    out = []
    n = 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


class Text:
    def __init__(self, rng):
        self.rng = rng
        self.pool = text_pool(rng, 1 << 20)

    def __call__(self, lo, hi):
        n = self.rng.randint(lo, hi)
        start = self.rng.randrange(0, len(self.pool) - n)
        return self.pool[start : start + n]


def connect(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


SCHEMA = """
CREATE TABLE users(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  email TEXT NOT NULL UNIQUE,
  bio TEXT,
  created_at INTEGER NOT NULL
);
CREATE TABLE posts(
  id INTEGER PRIMARY KEY,
  user_id INTEGER NOT NULL REFERENCES users(id),
  title TEXT NOT NULL,
  body TEXT NOT NULL,
  score REAL NOT NULL DEFAULT 0,
  updated_at INTEGER NOT NULL
);
CREATE INDEX posts_user ON posts(user_id);
CREATE TABLE attachments(
  id INTEGER PRIMARY KEY,
  post_id INTEGER NOT NULL REFERENCES posts(id),
  name TEXT NOT NULL,
  data BLOB NOT NULL
);
CREATE TABLE events(
  kind TEXT NOT NULL,
  at INTEGER NOT NULL,
  payload TEXT
);
CREATE TABLE bench_meta(k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""

BATCH = 100_000


def build(path, size_mb):
    if os.path.exists(path):
        sys.exit(f"archive-gen: {path} exists; remove it or choose another path")
    rng = random.Random(SEED)
    text = Text(rng)
    budget = size_mb * 1024 * 1024
    # Average bytes per row (payload plus SQLite overhead), measured once on this generator.
    n_users = max(1000, int(budget * 0.20 / 420))
    n_posts = max(1000, int(budget * 0.40 / 500))
    n_att = max(1000, int(budget * 0.25 / 4700))
    n_events = max(1000, int(budget * 0.15 / 190))
    db = connect(path)
    db.executescript(SCHEMA)
    now = int(time.time())

    def batched(total, make, sql):
        i = 1
        while i <= total:
            hi = min(total, i + BATCH - 1)
            db.execute("BEGIN")
            db.executemany(sql, (make(k) for k in range(i, hi + 1)))
            db.execute("COMMIT")
            i = hi + 1

    batched(
        n_users,
        lambda k: (k, text(8, 24), f"user{k}@example.com", text(200, 500), now - k),
        "INSERT INTO users VALUES (?,?,?,?,?)",
    )
    batched(
        n_posts,
        lambda k: (k, rng.randint(1, n_users), text(20, 80), text(200, 600), rng.random() * 100, now),
        "INSERT INTO posts VALUES (?,?,?,?,?,?)",
    )
    batched(
        n_att,
        lambda k: (k, rng.randint(1, n_posts), f"file{k}.bin", rng.randbytes(rng.randint(1024, 8192))),
        "INSERT INTO attachments VALUES (?,?,?,?)",
    )
    batched(
        n_events,
        lambda k: (rng.choice(("login", "view", "edit", "buy")), now + k, text(60, 200)),
        "INSERT INTO events(kind, at, payload) VALUES (?,?,?)",
    )
    db.executemany(
        "INSERT INTO bench_meta VALUES (?,?)",
        [("users", n_users), ("posts", n_posts), ("attachments", n_att), ("events", n_events)],
    )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = os.path.getsize(path)
    print(
        json.dumps(
            {"bytes": size, "users": n_users, "posts": n_posts, "attachments": n_att, "events": n_events}
        )
    )


def changes(path, total, per_txn):
    rng = random.Random(SEED + 1)
    text = Text(rng)
    db = connect(path)
    db.execute("PRAGMA busy_timeout=10000")
    meta = dict(db.execute("SELECT k, v FROM bench_meta"))
    n_users, n_att = meta["users"], meta["attachments"]
    n_posts_orig = meta["posts"]
    next_post = db.execute("SELECT max(id) FROM posts").fetchone()[0] + 1
    lo_event, hi_event = db.execute("SELECT min(rowid), max(rowid) FROM events").fetchone()
    next_event = hi_event + 1
    done = 0
    counts = {"update": 0, "insert": 0, "delete": 0}
    t0 = time.time()
    while done < total:
        n = min(per_txn, total - done)
        applied = 0
        # Capture sees each transaction's net effect, so a row touched twice in one transaction
        # would log one change: every change in a transaction touches a different row.
        touched = set()
        events_at_begin = next_event

        def pick(table, hi):
            while True:
                k = rng.randint(1, hi)
                if (table, k) not in touched:
                    touched.add((table, k))
                    return k

        db.execute("BEGIN IMMEDIATE")
        for _ in range(n):
            r = rng.random()
            if r < 0.60:
                s = rng.random()
                # Every update writes a value no row holds yet (the counter), so it is a real change.
                if s < 0.6:
                    c = db.execute(
                        "UPDATE posts SET body = ?, score = score + 1, updated_at = ? WHERE id = ?",
                        (text(200, 600), done + applied, pick("posts", n_posts_orig)),
                    ).rowcount
                elif s < 0.95:
                    c = db.execute(
                        "UPDATE users SET bio = ?, created_at = ? WHERE id = ?",
                        (text(200, 500), -(done + applied), pick("users", n_users)),
                    ).rowcount
                else:
                    c = db.execute(
                        "UPDATE attachments SET name = ? WHERE id = ?",
                        (f"v{done + applied}.bin", pick("attachments", n_att)),
                    ).rowcount
                counts["update"] += c
            elif r < 0.85 or lo_event >= events_at_begin:
                if rng.random() < 0.7:
                    c = db.execute(
                        "INSERT INTO events(rowid, kind, at, payload) VALUES (?,?,?,?)",
                        (next_event, "insert", done + applied, text(60, 200)),
                    ).rowcount
                    next_event += 1
                else:
                    c = db.execute(
                        "INSERT INTO posts VALUES (?,?,?,?,?,?)",
                        (next_post, rng.randint(1, n_users), text(20, 80), text(200, 600), 0.0, done + applied),
                    ).rowcount
                    next_post += 1
                counts["insert"] += c
            else:
                c = db.execute("DELETE FROM events WHERE rowid = ?", (lo_event,)).rowcount
                lo_event += 1
                counts["delete"] += c
            if c != 1:
                db.execute("ROLLBACK")
                sys.exit(f"archive-gen: a change touched {c} rows instead of 1 (generator bug)")
            applied += 1
        db.execute("COMMIT")
        done += applied
    db.close()
    secs = time.time() - t0
    print(json.dumps({"changes": done, "seconds": round(secs, 3), **counts}))


def digest(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out = {}
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY 1")]
    for t in tables:
        h = hashlib.sha256()
        n = 0
        q = '"' + t.replace('"', '""') + '"'
        pk = [(r[2] or "").upper() for r in db.execute(f"PRAGMA table_info({q})") if r[5]]
        # The rowid is a row's identity only when it is the key (INTEGER PRIMARY KEY) or there is
        # no declared key; a restore rebuilds other tables by their declared key, not the rowid.
        ident = "rowid, " if pk in ([], ["INTEGER"]) else ""
        order = "rowid" if ident else ", ".join(str(i + 1) for i in range(len(pk)))
        for row in db.execute(f"SELECT {ident}* FROM {q} ORDER BY {order}"):
            h.update(repr(row).encode())
            n += 1
        out[t] = {"rows": n, "sha256": h.hexdigest()[:16]}
    print(json.dumps(out, sort_keys=True))


def main(argv):
    try:
        if len(argv) == 4 and argv[1] == "build":
            build(argv[2], int(argv[3]))
        elif len(argv) in (4, 5) and argv[1] == "changes":
            changes(argv[2], int(argv[3]), int(argv[4]) if len(argv) == 5 else 1000)
        elif len(argv) == 3 and argv[1] == "digest":
            digest(argv[2])
        else:
            sys.exit(__doc__)
    except (sqlite3.Error, OSError, ValueError, KeyError) as e:
        sys.exit(f"archive-gen {' '.join(argv[1:])}: {e}")


if __name__ == "__main__":
    main(sys.argv)
