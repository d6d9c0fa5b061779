#!/usr/bin/env python3
"""Generates an application-like SQLite database for the snapshot benchmark.

Tables: users (200k, UNIQUE email, some avatars as blobs, NULLs), events (1.5M, foreign key
to users, JSON-ish text payloads, NULL reals), documents (5k rows of ~8 KiB text and 4 KiB
blobs: overflow pages), tags (300k, WITHOUT ROWID, composite key), settings (a table without
a declared key). Deterministic for a given scale.

With a third argument `plain`, the same tables and rows without secondary indexes, UNIQUE
or foreign keys (primary keys only): the schema the benchmark's floor has, so that ferry and
the floor do the same work.

usage: snapshot-vs-pgloader-gen.py <out.db> [scale=1.0] [plain]
"""
import os
import random
import sqlite3
import sys

out = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
plain = len(sys.argv) > 3 and sys.argv[3] == "plain"
if os.path.exists(out):
    os.remove(out)
rng = random.Random(42)
db = sqlite3.connect(out)
schema = """
PRAGMA journal_mode = WAL;
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, score REAL,
                    created_at DATETIME, active BOOLEAN, avatar BLOB);
CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), kind TEXT,
                     payload TEXT, value REAL, at INTEGER);
CREATE INDEX events_user ON events (user_id);
CREATE INDEX events_kind_at ON events (kind, at);
CREATE TABLE documents (id INTEGER PRIMARY KEY, title TEXT, body TEXT, data BLOB);
CREATE TABLE tags (tag TEXT NOT NULL, item_id INTEGER NOT NULL, weight REAL,
                   PRIMARY KEY (tag, item_id)) WITHOUT ROWID;
CREATE TABLE settings (k TEXT, v TEXT);
"""
if plain:
    schema = (schema.replace(" UNIQUE,", ",").replace(" REFERENCES users(id)", "")
              .replace("CREATE INDEX events_user ON events (user_id);", "")
              .replace("CREATE INDEX events_kind_at ON events (kind, at);", ""))
db.executescript(schema)

n_users = int(200_000 * scale)
n_events = int(1_500_000 * scale)
n_docs = int(5_000 * scale)
n_tags = int(300_000 * scale)
kinds = ["login", "logout", "view", "click", "purchase", "error"]

def users():
    for i in range(1, n_users + 1):
        yield (i, f"user {i} {rng.choice(['Ana', 'Bo', 'Chloé', 'Dmitri', '李'])}",
               f"user{i}@example.com" if i % 50 else None,
               rng.random() * 1000 if i % 7 else None,
               f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:{i % 60:02d}",
               i % 2,
               rng.randbytes(64) if i % 10 == 0 else None)

def events():
    for i in range(1, n_events + 1):
        yield (i, 1 + (i * 7919) % n_users, kinds[i % len(kinds)],
               '{"page": "/p/%d", "ms": %d, "ok": %s}' % (i % 1000, i % 5000, "true" if i % 3 else "false"),
               (i % 1000) / 7.0 if i % 5 else None,
               1_700_000_000 + i)

def documents():
    for i in range(1, n_docs + 1):
        yield (i, f"document {i}", ("lorem ipsum dolor sit amet " * 300)[: 6000 + i % 4000], rng.randbytes(4096))

def tags():
    seen = set()
    i = 0
    while len(seen) < n_tags:
        t = f"tag{i % 5000}"
        item = (i * 31) % (n_tags * 2)
        i += 1
        if (t, item) in seen:
            continue
        seen.add((t, item))
        yield (t, item, (i % 100) / 10.0)

db.executemany("INSERT INTO users VALUES (?,?,?,?,?,?,?)", users())
db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?)", events())
db.executemany("INSERT INTO documents VALUES (?,?,?,?)", documents())
db.executemany("INSERT INTO tags VALUES (?,?,?)", tags())
db.executemany("INSERT INTO settings VALUES (?,?)", [(f"key{i}", f"value {i}") for i in range(100)])
db.commit()
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
db.close()
total = n_users + n_events + n_docs + n_tags + 100
print(f"{out}: {total} rows")
