"""The run's SQLite state store. The controller is its only writer; the CLI reads it read-only.

What lives here is what must survive a controller crash: the prompt queue and its leases, every
acknowledged trajectory group, trainer steps and their commit state, role/job records, events,
fault records and checkpoints. A trajectory group is written (and committed to disk) before the
rollout is told it was received; a prompt item is leased to one holder at a time and marked done
exactly once.

Item states:   queued -> leased -> done            (leased -> queued when the holder dies or releases)
Group states:  queued -> delivered -> trained -> consumed          (trainer step committed)
               queued -> dropped_stale                             (older than max_staleness)
               delivered|trained -> queued                         (trainer died; role-based restore)
               delivered|trained -> dropped_rollback               (full restart from a checkpoint)
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from slurm_rl import protocol as P
from slurm_rl.data.order import problem_at

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS problems(idx INTEGER PRIMARY KEY, prompt TEXT NOT NULL, answer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items(
  id INTEGER PRIMARY KEY, problem_idx INTEGER NOT NULL, state TEXT NOT NULL, holder TEXT,
  lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0, created REAL, done_at REAL);
CREATE INDEX IF NOT EXISTS items_state ON items(state, id);
CREATE INDEX IF NOT EXISTS items_holder ON items(holder) WHERE holder IS NOT NULL;
CREATE TABLE IF NOT EXISTS groups(
  id TEXT PRIMARY KEY, item_id INTEGER NOT NULL, problem_idx INTEGER NOT NULL, version INTEGER NOT NULL,
  wepoch INTEGER NOT NULL, slot TEXT NOT NULL, incarnation INTEGER NOT NULL, created REAL NOT NULL,
  state TEXT NOT NULL, step INTEGER, n INTEGER NOT NULL, reward REAL NOT NULL, payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS groups_state ON groups(state, created);
CREATE TABLE IF NOT EXISTS steps(
  id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER NOT NULL, wepoch INTEGER NOT NULL, t_start REAL,
  t_end REAL NOT NULL, wait_s REAL, state TEXT NOT NULL, trainer TEXT NOT NULL, n_groups INTEGER, reward REAL,
  metrics TEXT, UNIQUE(step, trainer));
CREATE INDEX IF NOT EXISTS steps_step ON steps(step, state);
CREATE TABLE IF NOT EXISTS roles(
  slot TEXT PRIMARY KEY, kind TEXT NOT NULL, idx INTEGER NOT NULL, state TEXT NOT NULL,
  incarnation INTEGER NOT NULL, job_id TEXT, node TEXT, phase TEXT, progress INTEGER, version INTEGER,
  last_hb REAL, restarts INTEGER NOT NULL DEFAULT 0, detail TEXT, updated REAL, phase_since REAL);
CREATE TABLE IF NOT EXISTS jobs(
  job_id TEXT PRIMARY KEY, slot TEXT NOT NULL, incarnation INTEGER NOT NULL, backend TEXT NOT NULL,
  state TEXT NOT NULL, nodes TEXT, submitted REAL, started REAL, ended REAL, exit_code INTEGER,
  signal INTEGER, pid INTEGER, extra TEXT);
CREATE TABLE IF NOT EXISTS events(
  id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, kind TEXT NOT NULL, slot TEXT, job_id TEXT,
  node TEXT, msg TEXT NOT NULL, data TEXT);
CREATE TABLE IF NOT EXISTS faults(
  id INTEGER PRIMARY KEY AUTOINCREMENT, slot TEXT NOT NULL, kind TEXT NOT NULL, node TEXT,
  injected INTEGER NOT NULL, t_fault REAL NOT NULL, t_detect REAL, t_decide REAL, t_scheduled REAL,
  t_loaded REAL, t_synced REAL, t_recovered REAL, action TEXT, reason TEXT, replay_s REAL, data TEXT);
CREATE TABLE IF NOT EXISTS checkpoints(step INTEGER PRIMARY KEY, path TEXT NOT NULL, t REAL NOT NULL,
  valid INTEGER NOT NULL DEFAULT 1);
"""


@dataclass(frozen=True)
class QueueCounts:
    items_queued: int
    items_leased: int
    items_done: int
    groups_queued: int
    groups_delivered: int
    groups_trained: int
    groups_consumed: int
    groups_dropped_stale: int
    groups_dropped_rollback: int
    samples_generated: int
    samples_consumed: int
    samples_dropped_stale: int
    samples_dropped_rollback: int
    samples_pending: int          # queued + delivered + trained (not yet committed)


@dataclass(frozen=True)
class EventRow:
    id: int
    t: float
    kind: str
    slot: str | None
    job_id: str | None
    node: str | None
    msg: str
    data: dict[str, Any]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a group acknowledged to a rollout is on disk even if the machine loses power.
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.row_factory = sqlite3.Row
    return conn


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """A store written by another slurm-rl version is refused: its tables may mean something else."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    except sqlite3.OperationalError:
        return                                   # no meta table yet: a store being created
    if row is not None and json.loads(row[0]) != SCHEMA_VERSION:
        from slurm_rl.errors import BadInput

        raise BadInput(f"{path} was written with state schema {json.loads(row[0])}; this slurm-rl reads schema "
                       f"{SCHEMA_VERSION}", hint="open the run with the slurm-rl version that launched it")


_group_enc = msgspec.msgpack.Encoder()
_group_dec = msgspec.msgpack.Decoder(P.GroupMsg)


class Store:
    """Writer API (controller only). Every method is one transaction."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = connect(path)
        self.conn.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0                           # open tx() blocks: an inner one joins the outer transaction
        if self.get_meta("schema") is None:
            self.set_meta("schema", SCHEMA_VERSION)
        check_schema(self.conn, path)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction. Nested: the inner block joins the outer one, which commits (or rolls back)
        everything; so several writer methods can be made one transaction by an enclosing tx()."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self._depth = 0
                self.conn.execute("ROLLBACK")
                raise
            else:
                self._depth = 0
                self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, json.dumps(value)))

    def set_metas(self, **values: Any) -> None:
        with self.tx() as c:
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                          [(k, json.dumps(v)) for k, v in values.items()])

    # ------------------------------------------------------------------ problems
    def load_problems(self, problems: Iterable[tuple[str, str]], *, shuffle: bool = False, seed: int = 0) -> int:
        """The training problems, in file order; with `shuffle`, each epoch hands them out in a
        fresh order drawn from `seed` (slurm_rl.data.order)."""
        with self.tx() as c:
            c.execute("DELETE FROM problems")
            c.executemany("INSERT INTO problems(idx, prompt, answer) VALUES(?, ?, ?)",
                          ((i, p, a) for i, (p, a) in enumerate(problems)))
            n = c.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
            c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                          [("cursor", "0"), ("shuffle", json.dumps(shuffle)), ("order_seed", json.dumps(seed))])
        return n

    def problem_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM problems").fetchone()[0]

    # ------------------------------------------------------------------ leases
    def lease(self, holder: str, n: int, now: float, lease_s: float) -> list[P.ProblemLease]:
        """Lease up to n items: requeued ones first, then fresh ones from the data cursor."""
        out: list[P.ProblemLease] = []
        with self.tx() as c:
            rows = c.execute("SELECT id FROM items WHERE state='queued' ORDER BY id LIMIT ?", (n,)).fetchall()
            ids = [r[0] for r in rows]
            need = n - len(ids)
            if need > 0:
                total = c.execute("SELECT COUNT(*) FROM problems").fetchone()[0]
                if total:
                    meta = dict(c.execute("SELECT key, value FROM meta WHERE key IN "
                                          "('cursor', 'shuffle', 'order_seed')").fetchall())
                    cursor = int(json.loads(meta["cursor"]))
                    shuffle = bool(json.loads(meta.get("shuffle", "false")))
                    seed = int(json.loads(meta.get("order_seed", "0")))
                    for k in range(need):
                        idx = problem_at(cursor + k, total, shuffle=shuffle, seed=seed)
                        cur = c.execute("INSERT INTO items(problem_idx, state, created) VALUES(?, 'queued', ?)",
                                        (idx, now))
                        ids.append(cur.lastrowid)
                    c.execute("UPDATE meta SET value=? WHERE key='cursor'", (json.dumps(cursor + need),))
            for item_id in ids:
                c.execute("UPDATE items SET state='leased', holder=?, lease_until=?, attempts=attempts+1 "
                          "WHERE id=?", (holder, now + lease_s, item_id))
            if ids:
                q = ",".join("?" * len(ids))
                for r in c.execute(f"SELECT i.id, i.problem_idx, p.prompt, p.answer FROM items i "
                                   f"JOIN problems p ON p.idx=i.problem_idx WHERE i.id IN ({q}) ORDER BY i.id", ids):
                    out.append(P.ProblemLease(item_id=r[0], problem_idx=r[1], prompt=r[2], answer=r[3]))
        return out

    def release(self, holder: str, item_ids: Sequence[int]) -> int:
        if not item_ids:
            return 0
        with self.tx() as c:
            q = ",".join("?" * len(item_ids))
            return c.execute(f"UPDATE items SET state='queued', holder=NULL, lease_until=NULL "
                             f"WHERE state='leased' AND holder=? AND id IN ({q})", (holder, *item_ids)).rowcount

    def requeue_holder_prefix(self, prefix: str) -> int:
        """Return every lease of a dead role (all its incarnations: holder = 'slot#inc')."""
        with self.tx() as c:
            return c.execute("UPDATE items SET state='queued', holder=NULL, lease_until=NULL "
                             "WHERE state='leased' AND holder LIKE ?", (prefix + "#%",)).rowcount

    def expire_leases(self, now: float) -> int:
        with self.tx() as c:
            return c.execute("UPDATE items SET state='queued', holder=NULL, lease_until=NULL "
                             "WHERE state='leased' AND lease_until < ?", (now,)).rowcount

    def leases_held(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items WHERE state='leased'").fetchone()[0]

    # ------------------------------------------------------------------ trajectory groups
    def submit_groups(self, holder: str, slot: str, incarnation: int, groups: Sequence[P.GroupMsg], now: float,
                      *, trainer_version: int, max_staleness: int, wepoch: int,
                      committed: int) -> tuple[list[str], list[str]]:
        """Store groups whose item this holder still leases. Idempotent for a group id already stored.

        Returns (accepted, rejected). Accepted groups are durable when this returns.
        """
        accepted: list[str] = []
        rejected: list[str] = []
        with self.tx() as c:
            for g in groups:
                if c.execute("SELECT 1 FROM groups WHERE id=?", (g.group_id,)).fetchone():
                    accepted.append(g.group_id)          # a retry of something already stored
                    continue
                item = c.execute("SELECT state, holder FROM items WHERE id=?", (g.item_id,)).fetchone()
                if item is None or item["state"] != "leased" or item["holder"] != holder:
                    rejected.append(g.group_id)          # lease lost (expired, or holder declared dead)
                    continue
                if g.wepoch != wepoch and g.version > committed:
                    # generated with weights that were never committed and are gone with a dead trainer
                    c.execute("UPDATE items SET state='queued', holder=NULL, lease_until=NULL WHERE id=?",
                              (g.item_id,))
                    rejected.append(g.group_id)
                    continue
                stale = trainer_version - g.version > max_staleness
                reward = sum(s.reward for s in g.samples) / max(1, len(g.samples))
                c.execute("INSERT INTO groups(id, item_id, problem_idx, version, wepoch, slot, incarnation, created,"
                          " state, n, reward, payload) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                          (g.group_id, g.item_id, g.problem_idx, g.version, g.wepoch, slot, incarnation, now,
                           "dropped_stale" if stale else "queued", len(g.samples), reward, _group_enc.encode(g)))
                c.execute("UPDATE items SET state='done', holder=NULL, lease_until=NULL, done_at=? WHERE id=?",
                          (now, g.item_id))
                accepted.append(g.group_id)
        return accepted, rejected

    def fetch_batch(self, trainer: str, step: int, n: int, max_staleness: int) -> list[P.GroupMsg]:
        """n groups for trainer step `step`, or [] if fewer than n fresh groups wait.

        Asking again for the same step returns the same groups (a retried request).
        """
        with self.tx() as c:
            again = c.execute("SELECT payload FROM groups WHERE state='delivered' AND step=? ORDER BY created, id",
                              (step,)).fetchall()
            if again:
                return [_group_dec.decode(r[0]) for r in again]
            c.execute("UPDATE groups SET state='dropped_stale' WHERE state='queued' AND version < ?",
                      (step - max_staleness,))
            rows = c.execute("SELECT id, payload FROM groups WHERE state='queued' ORDER BY created, id LIMIT ?",
                             (n,)).fetchall()
            if len(rows) < n:
                return []
            c.executemany("UPDATE groups SET state='delivered', step=? WHERE id=?", [(step, r[0]) for r in rows])
            return [_group_dec.decode(r[1]) for r in rows]

    def step_done(self, msg: P.StepDone, trainer: str) -> None:
        with self.tx() as c:
            reward = msg.metrics.get("reward_mean")
            # one row per computation of a step: a step redone after a rollback keeps the undone row
            # (replay time); a retried report from the same trainer incarnation is ignored
            c.execute("INSERT OR IGNORE INTO steps(step, wepoch, t_start, t_end, wait_s, state, trainer, n_groups,"
                      " reward, metrics) VALUES(?,?,?,?,?,?,?,?,?,?)",
                      (msg.version, msg.wepoch, msg.t_start, msg.t_end, msg.wait_s, "done", trainer,
                       len(msg.group_ids), reward, json.dumps(msg.metrics)))
            if msg.group_ids:
                q = ",".join("?" * len(msg.group_ids))
                c.execute(f"UPDATE groups SET state='trained', step=? WHERE id IN ({q}) AND state='delivered'",
                          (msg.version - 1, *msg.group_ids))

    def commit_through(self, version: int) -> int:
        """Steps up to `version` are safe (another holder has the weights, or a checkpoint does)."""
        with self.tx() as c:
            n = c.execute("UPDATE steps SET state='committed' WHERE step<=? AND state='done'", (version,)).rowcount
            c.execute("UPDATE groups SET state='consumed' WHERE state='trained' AND step < ?", (version,))
            return n

    def rollback_after(self, step: int, *, regenerate: bool, now: float) -> tuple[int, int, float]:
        """Undo steps after `step`. Their groups go back to the queue, or (regenerate=True, a full
        restart from a checkpoint) are dropped and their problems queued again as new items.

        Also returns groups delivered to a trainer that died mid-step.
        Returns (steps undone, groups affected, seconds those steps had taken: the replay cost).
        """
        with self.tx() as c:
            replay = c.execute("SELECT COALESCE(SUM(t_end - COALESCE(t_start, t_end)), 0) FROM steps "
                               "WHERE step>? AND state IN ('done','committed')", (step,)).fetchone()[0]
            steps = c.execute("UPDATE steps SET state='rolled_back' WHERE step>? AND state IN ('done','committed')",
                              (step,)).rowcount
            rows = c.execute("SELECT id, problem_idx, length(payload) FROM groups WHERE state IN "
                             "('delivered','trained') OR (state='consumed' AND step>=?)", (step,)).fetchall()
            # queued groups made with weights newer than `step` belong to the abandoned lineage: the new
            # trainer at `step` must not train on them; their problems are asked again
            newer = c.execute("SELECT id, problem_idx, length(payload) FROM groups WHERE state='queued' AND version>?",
                              (step,)).fetchall()
            # a group whose payload was pruned cannot go back to the queue: its problem is asked again
            again = (rows if regenerate else [r for r in rows if r[2] == 0]) + newer
            requeue = [] if regenerate else [r for r in rows if r[2] > 0]
            c.executemany("UPDATE groups SET state='dropped_rollback' WHERE id=?", [(r[0],) for r in again])
            c.executemany("INSERT INTO items(problem_idx, state, created) VALUES(?, 'queued', ?)",
                          [(r[1], now) for r in again])
            c.executemany("UPDATE groups SET state='queued', step=NULL WHERE id=?", [(r[0],) for r in requeue])
            return steps, len(rows) + len(newer), float(replay)

    def prune_consumed_payloads(self, before_step: int) -> int:
        """Free the trajectories of groups no rollback to `before_step` or later gives back (their rows
        stay, for the audit): a long run's store would otherwise grow by every trajectory trained on."""
        with self.tx() as c:
            return c.execute("UPDATE groups SET payload=X'' WHERE state='consumed' AND step<? AND length(payload)>0",
                             (before_step,)).rowcount

    def counts(self) -> QueueCounts:
        return read_counts(self.conn)

    def queued_groups(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM groups WHERE state='queued'").fetchone()[0]

    # ------------------------------------------------------------------ roles, jobs
    def upsert_role(self, slot: str, kind: str, idx: int, state: str, incarnation: int, job_id: str | None,
                    node: str | None, phase: str | None, progress: int, version: int, last_hb: float | None,
                    restarts: int, detail: str, now: float) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO roles(slot, kind, idx, state, incarnation, job_id, node, phase, progress,"
                      " version, last_hb, restarts, detail, updated) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                      (slot, kind, idx, state, incarnation, job_id, node, phase, progress, version, last_hb,
                       restarts, detail, now))

    def upsert_roles(self, rows: Sequence[tuple[Any, ...]]) -> None:
        with self.tx() as c:
            c.executemany("INSERT OR REPLACE INTO roles(slot, kind, idx, state, incarnation, job_id, node, phase,"
                          " progress, version, last_hb, restarts, detail, updated, phase_since)"
                          " VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def roles(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM roles ORDER BY kind, idx").fetchall()

    def record_job(self, job_id: str, slot: str, incarnation: int, backend: str, state: str, submitted: float,
                   pid: int | None = None) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO jobs(job_id, slot, incarnation, backend, state, submitted, pid)"
                      " VALUES(?,?,?,?,?,?,?)", (job_id, slot, incarnation, backend, state, submitted, pid))

    def update_job(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE jobs SET {cols} WHERE job_id=?", (*fields.values(), job_id))

    def jobs(self, active_only: bool = False) -> list[sqlite3.Row]:
        q = "SELECT * FROM jobs"
        if active_only:
            q += " WHERE state NOT IN ('COMPLETED','FAILED','CANCELLED','TIMEOUT','NODE_FAIL','OUT_OF_MEMORY'," \
                 "'PREEMPTED','BOOT_FAIL','DEADLINE')"
        return self.conn.execute(q + " ORDER BY submitted").fetchall()

    # ------------------------------------------------------------------ events, faults, checkpoints
    def event(self, t: float, kind: str, msg: str, *, slot: str | None = None, job_id: str | None = None,
              node: str | None = None, data: dict[str, Any] | None = None) -> int:
        with self.tx() as c:
            cur = c.execute("INSERT INTO events(t, kind, slot, job_id, node, msg, data) VALUES(?,?,?,?,?,?,?)",
                            (t, kind, slot, job_id, node, msg, json.dumps(data or {})))
            return int(cur.lastrowid or 0)

    def open_fault(self, slot: str, kind: str, node: str | None, injected: bool, t_fault: float,
                   data: dict[str, Any] | None = None) -> int:
        with self.tx() as c:
            cur = c.execute("INSERT INTO faults(slot, kind, node, injected, t_fault, data) VALUES(?,?,?,?,?,?)",
                            (slot, kind, node, int(injected), t_fault, json.dumps(data or {})))
            return int(cur.lastrowid or 0)

    def update_fault(self, fault_id: int, once: tuple[str, ...] = (), **fields: Any) -> None:
        """Set a fault's columns; those named in `once` only where still unset."""
        if not fields:
            return
        cols = ", ".join(f"{k}=COALESCE({k}, ?)" if k in once else f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE faults SET {cols} WHERE id=?", (*fields.values(), fault_id))

    def faults(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM faults ORDER BY id").fetchall()

    def checkpoint_steps(self, *, at_most: int, limit: int) -> list[int]:
        """The newest `limit` valid checkpoint steps at or before `at_most`, newest first."""
        return [r[0] for r in self.conn.execute("SELECT step FROM checkpoints WHERE valid=1 AND step<=? "
                                                "ORDER BY step DESC LIMIT ?", (at_most, limit))]

    def add_checkpoint(self, step: int, path: str, t: float) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO checkpoints(step, path, t, valid) VALUES(?,?,?,1)", (step, path, t))

    def invalidate_checkpoint(self, step: int) -> None:
        with self.tx() as c:
            c.execute("UPDATE checkpoints SET valid=0 WHERE step=?", (step,))

    def newest_checkpoint(self) -> tuple[int, str] | None:
        row = self.conn.execute("SELECT step, path FROM checkpoints WHERE valid=1 ORDER BY step DESC LIMIT 1"
                                ).fetchone()
        return None if row is None else (row[0], row[1])

    def steps(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM steps ORDER BY step, id").fetchall()


# ---------------------------------------------------------------------- read side (CLI)


def read_counts(conn: sqlite3.Connection) -> QueueCounts:
    items = dict(conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    g: dict[str, tuple[int, int]] = {r[0]: (r[1], r[2] or 0) for r in
                                     conn.execute("SELECT state, COUNT(*), SUM(n) FROM groups GROUP BY state")}

    def gc(s: str) -> int:
        return g.get(s, (0, 0))[0]

    def gs(*states: str) -> int:
        return sum(g.get(s, (0, 0))[1] for s in states)

    return QueueCounts(
        items_queued=items.get("queued", 0), items_leased=items.get("leased", 0), items_done=items.get("done", 0),
        groups_queued=gc("queued"), groups_delivered=gc("delivered"), groups_trained=gc("trained"),
        groups_consumed=gc("consumed"), groups_dropped_stale=gc("dropped_stale"),
        groups_dropped_rollback=gc("dropped_rollback"),
        samples_generated=gs(*g.keys()), samples_consumed=gs("consumed"), samples_dropped_stale=gs("dropped_stale"),
        samples_dropped_rollback=gs("dropped_rollback"), samples_pending=gs("queued", "delivered", "trained"),
    )


def read_events(conn: sqlite3.Connection, *, after_id: int = 0, limit: int | None = None) -> list[EventRow]:
    q = "SELECT * FROM events WHERE id>? ORDER BY id"
    args: tuple[Any, ...] = (after_id,)
    if limit is not None:
        q = "SELECT * FROM (SELECT * FROM events WHERE id>? ORDER BY id DESC LIMIT ?) ORDER BY id"
        args = (after_id, limit)
    return [EventRow(id=r["id"], t=r["t"], kind=r["kind"], slot=r["slot"], job_id=r["job_id"], node=r["node"],
                     msg=r["msg"], data=json.loads(r["data"] or "{}")) for r in conn.execute(q, args)]


def group_ids_in_store(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT id FROM groups")}
