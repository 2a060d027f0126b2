"""Figures of a run, read from its store: status, report, ETTR and badput attribution.

ETTR (effective training time ratio) = productive training time / wall time, where
  * wall time runs from the moment the trainer has its first batch of data to the end of the
    run (initial start-up, jobs queued and models loaded until the first batch is generated, is
    reported separately as `startup_s`: it is the same for every recovery policy and has nothing
    to do with faults);
  * productive time is the sum, over trainer steps that were kept (committed, never rolled
    back), of the step's duration (the interval since the previous step of the same trainer
    committed, or for the first step of a trainer since it asked for data), less "idle": the
    part of its wait for data that falls inside a fault's window (fault to recovery) and
    exceeds the run's median wait, i.e. the trainer starved because rollouts were lost.
Everything else is badput: `replay` (steps computed and then rolled back), `idle` (starvation
above the median), and `recovery` (no trainer step in progress: detection, scheduling, loading,
weight sync after a trainer fault or a full restart).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from slurm_rl.report_eval import (
    eval_summary,
    latest_eval,
    reward_errors,
)
from slurm_rl.rundir import RunDir
from slurm_rl.store import check_schema, connect, group_ids_in_store, read_counts, read_events

# 2: the wall time starts when the trainer has its first batch (1: when it first asked for data,
# which counted its wait for the rollouts' start-up as training time)
REPORT_SCHEMA = 2
STATUS_SCHEMA = 1


def _meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return {r[0]: json.loads(r[1]) for r in conn.execute("SELECT key, value FROM meta")}


def open_store(run: RunDir) -> sqlite3.Connection:
    conn = connect(run.db, readonly=True)
    try:
        check_schema(conn, run.db)
    except BaseException:
        conn.close()
        raise
    return conn


def acked_group_ids(run: RunDir) -> set[str]:
    ids: set[str] = set()
    for f in run.acks.glob("*.log"):
        try:
            raw = f.read_bytes()
        except OSError:
            continue
        # every ack ends with a newline: a final line without one was cut by a crash mid-write, not an ack
        complete, _, _ = raw.rpartition(b"\n")
        # a damaged journal (non-UTF-8 bytes) costs its damaged lines, never the report
        lines = complete.decode("utf-8", errors="replace").splitlines()
        ids.update(line.strip() for line in lines if line.strip() and "\ufffd" not in line)
    return ids


def _steps(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM steps ORDER BY step, id").fetchall()


def _fault_windows(conn: sqlite3.Connection, end: float) -> list[tuple[float, float]]:
    out = []
    for r in conn.execute("SELECT t_fault, t_recovered FROM faults"):
        if r[0] is not None:
            out.append((float(r[0]), float(r[1]) if r[1] is not None else end))
    return out


def _overlap(a: float, b: float, windows: list[tuple[float, float]]) -> float:
    """Length of [a, b] covered by the union of windows."""
    spans = sorted((max(a, s), min(b, e)) for s, e in windows if e > a and s < b)
    total, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def _train_start(steps: list[sqlite3.Row]) -> float:
    """When training starts: the earliest step's data arrived (its wait before is start-up)."""
    first = min(steps, key=lambda s: float(s["t_start"] or s["t_end"]))
    t0 = float(first["t_start"] or first["t_end"])
    return min(float(first["t_end"]), t0 + float(first["wait_s"] or 0.0))


def _kept_steps(kept: list[sqlite3.Row], windows: list[tuple[float, float]], t_train: float
                ) -> Iterator[tuple[float, float, float, float]]:
    """For each kept step: (duration, start of its wait for data, that wait, starved part of it).

    The duration of back-to-back steps of one trainer is the interval between their commits
    (reporting included); the starved part is the wait inside a fault window beyond the median wait.
    Nothing before `t_train` counts (the first step's wait for the rollouts to start is start-up)."""
    waits = [float(s["wait_s"] or 0.0) for s in kept]
    med = statistics.median(waits) if waits else 0.0
    prev = None
    for s in kept:
        t_end = float(s["t_end"])
        t_start = float(s["t_start"] or t_end)
        if prev is not None and prev["step"] == s["step"] - 1 and prev["trainer"] == s["trainer"]:
            t_start = min(t_start, float(prev["t_end"]))
        dur = max(0.0, t_end - max(t_start, t_train))
        w0 = float(s["t_start"] or t_end)
        w1 = w0 + float(s["wait_s"] or 0.0)
        w0 = max(w0, t_train)
        wait = max(0.0, w1 - w0)
        yield dur, w0, wait, min(_overlap(w0, w0 + wait, windows), max(0.0, wait - med), dur)
        prev = s


def ettr_breakdown(conn: sqlite3.Connection, meta: dict[str, Any], now: float | None = None) -> dict[str, float]:
    """Productive time and badput of a run (definitions in the module docstring)."""
    steps = _steps(conn)
    kept = [s for s in steps if s["state"] in ("done", "committed")]
    rolled = [s for s in steps if s["state"] == "rolled_back"]
    started = float(meta.get("started") or 0.0)
    end = float(meta.get("ended") or now or time.time())
    if not steps:
        return {"wall_s": 0.0, "startup_s": max(0.0, end - started) if started else 0.0,
                "trainer_startup_s": None, "productive_s": 0.0,
                "ettr": 0.0, "replay_s": 0.0, "idle_s": 0.0, "recovery_s": 0.0}
    t_train = _train_start(steps)
    if meta.get("run_state") == "finished" and kept:
        # the run is over when the last step is committed; stop-time teardown is not training time
        end = max(float(s["t_end"]) for s in kept)
    wall = max(1e-9, end - t_train)
    productive = idle = 0.0
    for dur, _, _, starved in _kept_steps(kept, _fault_windows(conn, end), t_train):
        productive += dur - starved
        idle += starved
    replay = sum(max(0.0, float(s["t_end"]) - max(t_train, float(s["t_start"] or s["t_end"]))) for s in rolled)
    recovery = max(0.0, wall - productive - idle - replay)
    asked = min(float(s["t_start"] or s["t_end"]) for s in steps)
    return {"wall_s": wall, "startup_s": max(0.0, t_train - started) if started else 0.0,
            "trainer_startup_s": max(0.0, asked - started) if started else 0.0,
            "productive_s": productive, "ettr": min(1.0, productive / wall), "replay_s": replay, "idle_s": idle,
            "recovery_s": recovery}


# a trainer_restore event's breakdown of the restore (slurm_rl.roles.trainer.restore_split): the
# parts of a trainer fault's `load` (t_scheduled -> t_loaded)
RESTORE_PARTS = ("build_s", "verify_s", "weights_s", "optimizer_s")


def _restore_parts(conn: sqlite3.Connection) -> list[tuple[float, dict[str, float]]]:
    out = []
    for t, data in conn.execute("SELECT t, data FROM events WHERE kind='trainer_restore' ORDER BY id"):
        try:
            d = json.loads(data or "{}")
            out.append((float(t), {k: float(d[k]) for k in RESTORE_PARTS if k in d}))
        except (ValueError, TypeError):
            continue
    return out


def _fault_rows(conn: sqlite3.Connection, t0: float) -> list[dict[str, Any]]:
    out = []
    restores = _restore_parts(conn)
    for r in conn.execute("SELECT * FROM faults ORDER BY id"):
        def rel(k: str, r: sqlite3.Row = r) -> float | None:
            v = r[k]
            return None if v is None else round(float(v) - t0, 3)

        def span(a: str, b: str, r: sqlite3.Row = r) -> float | None:
            return None if r[a] is None or r[b] is None else round(max(0.0, float(r[b]) - float(r[a])), 3)

        role, _, idx = str(r["slot"]).partition("/")
        out.append({
            "id": r["id"], "role": role, "index": int(idx) if idx.isdigit() else None, "slot": r["slot"],
            "kind": r["kind"], "node": r["node"], "injected": bool(r["injected"]),
            "t_fault": rel("t_fault"), "t_detect": rel("t_detect"), "t_decide": rel("t_decide"),
            "t_scheduled": rel("t_scheduled"), "t_loaded": rel("t_loaded"), "t_synced": rel("t_synced"),
            "t_recovered": rel("t_recovered"),
            "detect_s": span("t_fault", "t_detect"), "schedule_s": span("t_decide", "t_scheduled"),
            "load_s": span("t_scheduled", "t_loaded"), "sync_s": span("t_loaded", "t_synced"),
            "recover_s": span("t_fault", "t_recovered"), "action": r["action"], "reason": r["reason"],
        })
        if role == "trainer" and r["t_detect"] is not None:
            # the restore this fault led to: the first one reported after its detection (and not
            # after its recovery), each restore counted for one fault
            end = float(r["t_recovered"]) + 1.0 if r["t_recovered"] is not None else float("inf")
            hit = next((i for i, (t, _) in enumerate(restores) if float(r["t_detect"]) <= t <= end), None)
            if hit is not None:
                out[-1].update({k: round(v, 3) for k, v in restores.pop(hit)[1].items()})
    return out


def _rollback_capable(f: sqlite3.Row) -> bool:
    """Could this fault have rolled trainer steps back? A trainer loss, or any fault under full restart."""
    return str(f["slot"]).startswith("trainer/") or "full restart" in str(f["action"] or "")


def fault_badput(conn: sqlite3.Connection, meta: dict[str, Any],
                 now: float | None = None) -> dict[int, dict[str, float]]:
    """Replay and idle time of `ettr_breakdown`, attributed to the faults that caused them.

    Idle: each kept step's starved time (computed exactly as in `ettr_breakdown`) is shared among
    the faults whose windows overlap its wait for data, in proportion to the overlap, so the
    per-fault idle times add up to the run's idle badput. Replay: a rolled-back step belongs to the
    first fault that could roll steps back (a trainer fault, or any fault under full restart) at or
    after the step ended; the steps of a rollback were done but not yet committed when it hit.
    Returns {fault id: {"replay_s", "idle_s"}}; faults without any are present with zeros.
    """
    faults = conn.execute("SELECT * FROM faults ORDER BY id").fetchall()
    out: dict[int, dict[str, float]] = {int(f["id"]): {"replay_s": 0.0, "idle_s": 0.0} for f in faults}
    steps = _steps(conn)
    if not faults or not steps:
        return out
    kept = [s for s in steps if s["state"] in ("done", "committed")]
    end = float(meta.get("ended") or now or time.time())
    if meta.get("run_state") == "finished" and kept:
        end = max(float(s["t_end"]) for s in kept)          # as ettr_breakdown
    windows = {int(f["id"]): (float(f["t_fault"]), float(f["t_recovered"]) if f["t_recovered"] is not None else end)
               for f in faults if f["t_fault"] is not None}
    for _, w0, wait, starved in _kept_steps(kept, list(windows.values()), _train_start(steps)):
        if starved <= 0:
            continue
        shares = {fid: _overlap(w0, w0 + wait, [w]) for fid, w in windows.items()}
        total = sum(shares.values())
        for fid, o in shares.items():
            if o > 0:
                out[fid]["idle_s"] += starved * o / total
    if any(f["replay_s"] is not None for f in faults):
        # the controller recorded each rollback's cost on the faults that caused it
        for f in faults:
            out[int(f["id"])]["replay_s"] = float(f["replay_s"] or 0.0)
        return out
    capable = [f for f in faults if f["t_fault"] is not None and _rollback_capable(f)]
    for s in (s for s in steps if s["state"] == "rolled_back"):
        t_end = float(s["t_end"])
        dur = max(0.0, t_end - float(s["t_start"] or t_end))
        later = [f for f in capable if float(f["t_fault"]) >= t_end - 1.0]   # 1 s: clocks of two processes
        cause = later[0] if later else (capable[-1] if capable else None)
        if cause is not None:
            out[int(cause["id"])]["replay_s"] += dur
    return out


def mttr_table(faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean time to recovery per (role, fault kind), split into its parts (detect, schedule, load,
    weight sync; a trainer's load again into build, verify, weights and optimizer, from its restore
    events), with the mean replay and idle time a fault of that kind cost (`fault_badput`)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in faults:
        if f["recover_s"] is not None:
            groups[(f["role"], f["kind"])].append(f)
    rows = []
    for (role, kind), fs in sorted(groups.items()):
        def mean(k: str, fs: list[dict[str, Any]] = fs) -> float | None:
            vals = [f[k] for f in fs if f.get(k) is not None]
            return round(sum(vals) / len(vals), 3) if vals else None

        rows.append({"role": role, "kind": kind, "count": len(fs), "mttr_s": mean("recover_s"),
                     "detect_s": mean("detect_s"), "schedule_s": mean("schedule_s"), "load_s": mean("load_s"),
                     "sync_s": mean("sync_s"), "replay_s": mean("replay_s"), "idle_s": mean("idle_s"),
                     **{k: mean(k) for k in RESTORE_PARTS}})
    return rows


def pace(conn: sqlite3.Connection, kept: list[sqlite3.Row]) -> dict[str, float | None]:
    """How fast the run went when nothing was wrong (the simulator's calibration): the median kept
    step and the trainer's median wait for data in it; a rollout's batch (groups handed in at once)
    and the time it takes when the rollout generates back to back (the 20th percentile of the gaps
    between one rollout's consecutive batches: longer gaps are pauses, a full buffer or stale weights)."""
    durs = [float(s["t_end"]) - float(s["t_start"]) for s in kept if s["t_start"] is not None]
    waits = [float(s["wait_s"] or 0.0) for s in kept]
    by_role: dict[tuple[str, int], list[float]] = defaultdict(list)
    for slot, inc, created in conn.execute("SELECT slot, incarnation, created FROM groups ORDER BY created"):
        by_role[(slot, inc)].append(float(created))
    gaps: list[float] = []
    sizes: list[int] = []
    for ts in by_role.values():
        batches: list[list[float]] = []
        for t in ts:                             # one batch's groups are stored within milliseconds
            if batches and t - batches[-1][-1] <= 0.05:
                batches[-1].append(t)
            else:
                batches.append([t])
        sizes += [len(b) for b in batches]
        gaps += [b[0] - a[0] for a, b in zip(batches, batches[1:], strict=False)]

    def r(v: float | None) -> float | None:
        return round(v, 4) if v is not None else None

    return {"step_s": r(statistics.median(durs)) if durs else None,
            "wait_s": r(statistics.median(waits)) if waits else None,
            "rollout_batch_groups": r(statistics.median(sizes)) if sizes else None,
            "rollout_batch_s": r(statistics.quantiles(gaps, n=5)[0]) if len(gaps) >= 5 else None}


def trainer_shape(conn: sqlite3.Connection) -> dict[str, Any]:
    """The trainer's world size and the distinct nodes its ranks ran on, over every incarnation."""
    rows = conn.execute("SELECT kind, node, data FROM events WHERE slot='trainer/0' AND kind IN "
                        "('connected', 'rank_connected', 'trainer_restored')").fetchall()
    world, nodes = 1, set()
    for r in rows:
        data = json.loads(r["data"]) if r["data"] else {}
        if r["node"]:
            nodes.add(r["node"])
        if r["kind"] == "trainer_restored":      # a standby's nodes, promoted: its ranks said hello as the standby
            nodes.update(data.get("nodes") or [])
        if r["kind"] in ("connected", "trainer_restored"):
            world = max(world, int(data.get("world_size") or 1))
    return {"world_size": world, "nodes": sorted(nodes)}


def report_dict(run: RunDir, *, now: float | None = None) -> dict[str, Any]:
    """The run's report (schema in docs/cli.md). Works while the run is live and after it ended."""
    conn = open_store(run)
    try:
        meta = _meta(conn)
        counts = read_counts(conn)
        steps = _steps(conn)
        kept = [s for s in steps if s["state"] in ("done", "committed") and s["reward"] is not None]
        rewards = [float(s["reward"]) for s in kept]
        first = rewards[:10]
        last = rewards[-10:]
        br = ettr_breakdown(conn, meta, now)
        t0 = float(meta.get("started") or 0.0)
        faults = _fault_rows(conn, t0)
        attributed = fault_badput(conn, meta, now)
        for f in faults:
            extra = attributed.get(int(f["id"]), {"replay_s": 0.0, "idle_s": 0.0})
            f["replay_s"] = round(extra["replay_s"], 3)
            f["idle_s"] = round(extra["idle_s"], 3)
        acked = acked_group_ids(run)
        stored = group_ids_in_store(conn)
        lost_groups = len(acked - stored)
        restarts = Counter(e.slot.split("/")[0] for e in read_events(conn) if e.kind == "dead" and e.slot)
        cfg_group = _group_size(run)
        full_restarts = int(meta.get("full_restarts", 0))
        return {
            "schema": REPORT_SCHEMA,
            "run": run.name,
            "state": meta.get("run_state", "unknown"),
            "end_reason": meta.get("end_reason"),
            "fatal": meta.get("fatal"),         # {kind, slot, message}: a role that could not run ended it
            "backend": (run.read_meta().get("backend")),
            "recovery": (run.read_meta().get("recovery")),
            "steps": int(meta.get("committed", 0)),
            "steps_computed": len(steps),
            "wall_s": round(br["wall_s"], 3),
            "startup_s": round(br["startup_s"], 3),
            "trainer_startup_s": None if br["trainer_startup_s"] is None else round(br["trainer_startup_s"], 3),
            "ettr": round(br["ettr"], 4),
            "productive_s": round(br["productive_s"], 3),
            "badput": {"replay_s": round(br["replay_s"], 3), "idle_s": round(br["idle_s"], 3),
                       "recovery_s": round(br["recovery_s"], 3)},
            "reward": {"first": round(sum(first) / len(first), 4) if first else None,
                       "last": round(sum(last) / len(last), 4) if last else None,
                       "curve": [round(r, 4) for r in rewards]},
            "trajectories": {
                "generated": counts.samples_generated, "consumed": counts.samples_consumed,
                "dropped_stale": counts.samples_dropped_stale, "dropped_rollback": counts.samples_dropped_rollback,
                "queued": counts.samples_pending, "lost": lost_groups * cfg_group,
                "accounted": counts.samples_generated == counts.samples_consumed + counts.samples_dropped_stale
                + counts.samples_dropped_rollback + counts.samples_pending,
            },
            "groups": {"acknowledged": len(acked), "stored": len(stored), "lost": lost_groups},
            "faults": faults,
            "mttr": mttr_table(faults),
            "restarts": {"trainer": restarts.get("trainer", 0), "rollout": restarts.get("rollout", 0),
                         "spare": restarts.get("spare", 0), "trainer_spare": restarts.get("trainer-spare", 0),
                         "full": full_restarts},
            "scheduler_calls": meta.get("scheduler_calls", {}),
            "pace": pace(conn, kept),
            "trainer": trainer_shape(conn),
            "eval": eval_summary(conn),
            "reward_errors": reward_errors(conn),
        }
    finally:
        conn.close()


def _group_size(run: RunDir) -> int:
    try:
        import yaml

        return int(yaml.safe_load(run.config.read_text())["algorithm"]["group_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 1


# events that change a role's state: the newest one per slot dates the current state
_STATE_EVENTS = ("submitted", "connected", "ready", "suspect", "cleared", "dead", "promoted", "trainer_restored",
                 "move_started", "moved", "goodbye", "full_restart")


def _role_rows(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    jobs = {r["job_id"]: r for r in conn.execute("SELECT job_id, state, submitted, started FROM jobs")}
    q = ",".join("?" * len(_STATE_EVENTS))
    since = {r[0]: float(r[1]) for r in conn.execute(
        f"SELECT slot, MAX(t) FROM events WHERE slot IS NOT NULL AND kind IN ({q}) GROUP BY slot", _STATE_EVENTS)}
    roles = []
    for r in conn.execute("SELECT * FROM roles ORDER BY CASE kind WHEN 'trainer' THEN 0 WHEN 'rollout' THEN 1 "
                          "ELSE 2 END, idx"):
        job = jobs.get(r["job_id"]) if r["job_id"] else None
        t_state = since.get(r["slot"])
        if r["state"] == "PENDING" and job is not None and job["submitted"] is not None:
            t_state = float(job["submitted"])       # queue wait counts from the submission itself
        roles.append({"slot": r["slot"], "role": r["kind"], "index": r["idx"], "state": r["state"],
                      "incarnation": r["incarnation"], "phase": r["phase"], "progress": r["progress"],
                      "detail": r["detail"] or "", "job_id": r["job_id"], "job_state": job["state"] if job else None,
                      "job_running_s": None if job is None or job["started"] is None or job["state"] != "RUNNING"
                      else round(max(0.0, now - float(job["started"])), 2),
                      "node": r["node"], "version": r["version"],
                      "heartbeat_age_s": None if r["last_hb"] is None else round(now - float(r["last_hb"]), 2),
                      "phase_age_s": None if "phase_since" not in r.keys() or r["phase_since"] is None
                      else round(now - float(r["phase_since"]), 2),
                      "state_age_s": None if t_state is None else round(max(0.0, now - t_state), 2),
                      "restarts": r["restarts"]})
    return roles


def status_dict(run: RunDir, *, live: bool, n_events: int = 10) -> dict[str, Any]:
    """What `slurm-rl status` shows (schema: docs/schemas/status.json). Also the controller's answer
    to a status request, so it must stay cheap and must not raise on a half-written store."""
    conn = open_store(run)
    try:
        meta = _meta(conn)
        now = time.time()
        roles = _role_rows(conn, now)
        steps = conn.execute("SELECT step, reward, metrics FROM steps WHERE state IN ('done','committed') "
                             "ORDER BY step DESC LIMIT 10").fetchall()
        rewards = [float(s["reward"]) for s in steps if s["reward"] is not None]
        staleness = [json.loads(s["metrics"] or "{}").get("staleness_mean") for s in steps]
        staleness = [x for x in staleness if x is not None]
        counts = read_counts(conn)
        br = ettr_breakdown(conn, meta, now)
        events = [{"id": e.id, "t": e.t, "kind": e.kind, "slot": e.slot, "node": e.node, "msg": e.msg}
                  for e in read_events(conn, limit=n_events)] if n_events > 0 else []
        run_meta = run.read_meta()
        return {
            "schema": STATUS_SCHEMA,
            "run": run.name, "path": str(run.path), "live": live, "source": "store",
            "backend": run_meta.get("backend"), "recovery": run_meta.get("recovery"),
            "state": meta.get("run_state", "unknown"), "end_reason": meta.get("end_reason"),
            "t": round(now, 3), "started": meta.get("started"),
            "controller_heartbeat_age_s": None if meta.get("heartbeat") is None else round(now - meta["heartbeat"], 2),
            "step": int(meta.get("trainer_version", 0)), "committed": int(meta.get("committed", 0)),
            "steps_total": _total_steps(run), "weight_version": int(meta.get("trainer_version", 0)),
            "wepoch": int(meta.get("wepoch", 0)),
            "reward": round(sum(rewards) / len(rewards), 4) if rewards else None,
            "staleness": round(sum(staleness) / len(staleness), 3) if staleness else None,
            "ettr": round(br["ettr"], 4),
            "eval": latest_eval(conn),
            "queue": {"groups_waiting": counts.groups_queued, "leases": counts.items_leased,
                      "generated": counts.samples_generated, "consumed": counts.samples_consumed},
            "roles": roles, "events": events,
        }
    finally:
        conn.close()


def read_status(run: RunDir, *, n_events: int = 10) -> dict[str, Any]:
    """The freshest status there is: the live controller's own answer when it is reachable (from any
    host, through the control plane), else the run directory's state store."""
    from slurm_rl import protocol as P
    from slurm_rl.controlplane import ask, controller_alive
    from slurm_rl.errors import SlurmRLError

    if controller_alive(run):
        try:
            reply = ask(run, P.StatusRequest(events=n_events), timeout_s=2.0)
            if reply.ok and reply.payload:
                st = json.loads(reply.payload)
                st.update(live=True, source="controller")
                return st
        except (SlurmRLError, ValueError):
            pass            # busy, gone since, or an answer we cannot read: the store still is the truth
        return status_dict(run, live=True, n_events=n_events)
    return status_dict(run, live=False, n_events=n_events)


def _total_steps(run: RunDir) -> int | None:
    try:
        import yaml

        return int(yaml.safe_load(run.config.read_text())["algorithm"]["steps"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
