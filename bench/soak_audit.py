"""The soak's verdict (bench/soak.py): its invariants I1-I7 checked against the run's store and
report, the recovery-time distribution, and the printed summary."""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from soak import Soak

KINDS = ("crash", "hang", "exit", "node-down", "drain")
TERMINAL_JOB = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def audit(soak: Soak, rep: dict[str, Any], leftovers: list[str], t_ready: float) -> dict[str, dict[str, Any]]:
    q = soak.query
    res: dict[str, dict[str, Any]] = {}

    # I1 ------------------------------------------------------------------------------
    t = rep["trajectories"]
    res["I1 no trajectory lost"] = {
        "ok": t["lost"] == 0 and rep["groups"]["lost"] == 0 and bool(t["accounted"]),
        "detail": f"{rep['groups']['acknowledged']} groups acknowledged to rollouts, all {rep['groups']['stored']} "
                  f"in the store, lost {rep['groups']['lost']}; samples generated {t['generated']} = consumed "
                  f"{t['consumed']} + stale {t['dropped_stale']} + rolled back {t['dropped_rollback']} + "
                  f"queued {t['queued']} ({'holds' if t['accounted'] else 'BROKEN'})"}

    # I2 ------------------------------------------------------------------------------
    kept = q("SELECT step, n_groups FROM steps WHERE state IN ('done', 'committed') ORDER BY step")
    used = {r[0]: r[1] for r in q("SELECT step, COUNT(*) FROM groups WHERE state IN ('consumed', 'trained') "
                                         "GROUP BY step")}
    wrong = [(k["step"], k["n_groups"], used.get(k["step"] - 1, 0)) for k in kept
             if used.get(k["step"] - 1, 0) != k["n_groups"]]
    kept_steps = {k["step"] for k in kept}
    orphans = sum(n for s, n in used.items() if s + 1 not in kept_steps)
    twice = q("SELECT item_id, COUNT(*) c FROM groups GROUP BY item_id HAVING c > 1")
    # (a set here, not NOT EXISTS: groups has no index on item_id, and a long soak has 50k of each)
    with_group = {r[0] for r in q("SELECT DISTINCT item_id FROM groups")}
    done_without = sum(1 for r in q("SELECT id FROM items WHERE state='done'") if r[0] not in with_group)
    group_not_done = q("SELECT COUNT(*) FROM groups g JOIN items i ON i.id = g.item_id WHERE i.state != 'done'")[0][0]
    n_used = sum(used.values())
    res["I2 each group consumed once, each prompt done once"] = {
        "ok": not wrong and not orphans and not twice and not done_without and not group_not_done,
        "detail": f"{n_used} groups consumed by {len(kept)} kept steps, each step exactly its batch "
                  f"({len(wrong)} mismatches{': ' + str(wrong[:5]) if wrong else ''}), {orphans} consumed by no "
                  f"kept step; prompt items done twice: {len(twice)}; done items without a group: {done_without}; "
                  f"groups whose item is not done: {group_not_done}"}

    # I3 ------------------------------------------------------------------------------
    # The promise: a committed step (held by a second holder or checkpointed) is never undone while
    # one holder of it survives. When every holder is lost together with the trainer, the controller
    # falls back to the newest version still held and says so (event commit_lost): such a drop is
    # outside the guarantee's condition, allowed and listed; any other drop fails the invariant.
    steps = [k["step"] for k in kept]
    contiguous = steps == list(range(1, len(steps) + 1))
    lost_events = [(r["t"], json.loads(r["data"] or "{}")) for r in q("SELECT t, data FROM events WHERE "
                                                                       "kind='commit_lost' ORDER BY id")]

    def explained(t: float, to: int) -> bool:
        return any(abs(et - t) < 5.0 and int(d.get("restore_point", -1)) == to for et, d in lost_events)

    drops, unexplained = [], []
    for a, b in zip(soak.samples, soak.samples[1:]):
        if b.committed < a.committed:
            drops.append((round(b.t - t_ready, 1), a.committed, b.committed))
            if not explained(b.t, b.committed):
                unexplained.append(drops[-1])
    below = []
    seen_max = 0
    for s in soak.samples:
        if s.committed < seen_max and explained(s.t, s.committed):
            seen_max = s.committed                      # rolled back knowingly (commit_lost)
        if s.step < seen_max:
            below.append((round(s.t - t_ready, 1), s.step, seen_max))
        seen_max = max(seen_max, s.committed)
    rolled = q("SELECT COUNT(*) FROM steps WHERE state='rolled_back'")[0][0]
    res["I3 steps never go back past a committed step"] = {
        "ok": contiguous and not unexplained and not below,
        "detail": f"{len(soak.samples)} samples of the committed step: {len(unexplained)} unexplained decreases"
                  f"{': ' + str(unexplained[:3]) if unexplained else ''}; trainer step below a committed one "
                  f"{len(below)} times{': ' + str(below[:3]) if below else ''}; kept steps 1..{steps[-1] if steps else 0}"
                  f" {'contiguous, each once' if contiguous else 'NOT contiguous'}; {rolled} uncommitted step "
                  f"computations undone (allowed); every holder of the committed step lost with the trainer "
                  f"(commit_lost, outside the guarantee): {len(lost_events)}"
                  + (f" {[(d.get('committed'), d.get('restore_point')) for _, d in lost_events][:5]}" if lost_events else ""),
        "commit_lost": len(lost_events)}

    # I4 ------------------------------------------------------------------------------
    jobs = q("SELECT job_id, slot, state FROM jobs")
    stale = [f"{j['job_id']} ({j['slot']}) {j['state']}" for j in jobs if j["state"] not in TERMINAL_JOB]
    alive_jobs: list[str] = []
    if soak.backend == "slurm":
        out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
        alive_jobs = [x for x in out.splitlines() if f"slurm-rl/{soak.run.name}/" in x]
    else:
        for f in (soak.run.path / "jobs").glob("*.json"):
            try:
                rec = json.loads(f.read_text())
                p = psutil.Process(rec["pid"])
                if abs(p.create_time() - rec["create_time"]) < 1.0 and p.status() != psutil.STATUS_ZOMBIE:
                    alive_jobs.append(f"{rec['job_id']} pid {rec['pid']}")
            except (OSError, ValueError, KeyError, psutil.Error):
                continue
    res["I4 no job or process left after stop"] = {
        "ok": not leftovers and not alive_jobs and not stale,
        "detail": f"{len(jobs)} jobs submitted; still alive after stop: {len(alive_jobs)} {alive_jobs[:3]} "
                  f"({'squeue' if soak.backend == 'slurm' else 'local job records'}); processes of the run: "
                  f"{len(leftovers)} {leftovers[:3]}; store job rows not marked ended: {len(stale)} {stale[:3]}",
        "stale_job_rows": stale}

    # I5 ------------------------------------------------------------------------------
    live = [s for s in soak.samples if s.t >= t_ready and s.rss]
    n = len(live)
    early = statistics.median(s.rss for s in live[: max(1, n // 4)]) if live else 0
    late = statistics.median(s.rss for s in live[-max(1, n // 4):]) if live else 0
    growth = (late - early) / early if early else 0.0
    mib = 1 << 20
    slope = 0.0
    if n > 10:
        xs = [s.t - live[0].t for s in live]
        ys = [s.rss / mib for s in live]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 3600 if den else 0.0
    lat_early = [ms for t, ms in soak.status_ms[: max(1, len(soak.status_ms) // 4)]]
    lat_late = [ms for t, ms in soak.status_ms[-max(1, len(soak.status_ms) // 4):]]
    res["I5 controller memory flat"] = {
        "ok": bool(live) and late <= early * 1.15 + 8 * mib,
        "detail": f"RSS median first quarter {early / mib:.1f} MiB, last quarter {late / mib:.1f} MiB "
                  f"({100 * growth:+.1f}%; limit +15% + 8 MiB), fitted trend {slope:+.1f} MiB/h over "
                  f"{(live[-1].t - live[0].t) / 60 if live else 0:.1f} min; status request "
                  f"{statistics.median(lat_early) if lat_early else float('nan'):.0f} ms early, "
                  f"{statistics.median(lat_late) if lat_late else float('nan'):.0f} ms late (median)",
        "rss_early_mib": early / mib, "rss_late_mib": late / mib, "trend_mib_per_h": slope}

    # I6 ------------------------------------------------------------------------------
    unrecovered = [f"#{f['id']} {f['slot']} {f['kind']}" for f in rep["faults"] if f["t_recovered"] is None]
    full = rep["restarts"]["full"]
    failed = rep["state"] == "failed"
    res["I6 every fault recovered, role by role"] = {
        "ok": not unrecovered and full == 0 and not failed and not soak.stuck,
        "detail": f"{len(rep['faults'])} fault records, {len(unrecovered)} never recovered "
                  f"{unrecovered[:5]}; episodes that did not settle: {len(soak.stuck)}; full restarts {full}; "
                  f"final state {rep['state']} ({rep.get('end_reason')})"}

    # I7 ------------------------------------------------------------------------------
    conn = sqlite3.connect(f"file:{soak.run.db}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    res["I7 store intact"] = {"ok": integrity == "ok", "detail": f"PRAGMA integrity_check: {integrity}"}

    # I8 ------------------------------------------------------------------------------
    disk = soak.disk_episodes
    if disk:
        bad = [d.episode for d in disk if d.exit_code != 75 or not d.resumed or d.error]
        stops = [d.stop_s for d in disk if d.stop_s is not None]
        res["I8 disk full: the controller stops cleanly, the run resumes"] = {
            "ok": not bad,
            "detail": f"{len(disk)} disk-full episodes: controller exit codes {[d.exit_code for d in disk]} "
                      f"(75 wanted), stopped {min(stops, default=0):.1f}-{max(stops, default=0):.1f} s after the "
                      f"disk filled; disk_full event written {sum(d.event for d in disk)} times (when the store "
                      f"could still take it); role processes kept across the stop "
                      f"{sum(d.roles_kept for d in disk)}/{sum(d.roles_before for d in disk)}; resumed "
                      f"{sum(d.resumed for d in disk)}/{len(disk)}" + (f"; FAILED episodes {bad}" if bad else "")}
    return res


def distribution(rep: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in rep["faults"]:
        groups[(f["role"], f["kind"])].append(f)
    rows = []
    for (role, kind), fs in sorted(groups.items()):
        rec = [f["recover_s"] for f in fs if f["recover_s"] is not None]
        det = [f["detect_s"] for f in fs if f["detect_s"] is not None]
        rows.append({"role": role, "kind": kind, "n": len(fs), "recovered": len(rec),
                     "min": min(rec, default=None), "median": statistics.median(rec) if rec else None,
                     "p90": pct(rec, 0.9) if rec else None, "max": max(rec, default=None),
                     "detect_median": statistics.median(det) if det else None,
                     "detect_max": max(det, default=None)})
    return rows


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:6.2f}"


def print_summary(soak: Soak, rep: dict[str, Any], results: dict[str, dict[str, Any]], dist: list[dict[str, Any]],
                  t_ready: float, t_end: float) -> None:
    ok_inj = [i for i in soak.injections if i.ok]
    by_kind = Counter(i.fault for i in ok_inj)
    print()
    print(f"== soak of {soak.run.name}: {(t_end - t_ready) / 60:.1f} min under faults, {rep['steps']} committed steps, "
          f"ETTR {rep['ettr']:.1%}")
    print(f"== faults injected: {len(ok_inj)} ({len(soak.injections) - len(ok_inj)} refused: target gone meanwhile)")
    print("   by kind:   " + ", ".join(f"{k} {by_kind.get(k, 0)}" for k in (*KINDS, "controller-kill", "disk-full")))
    by_role = Counter(i.slot.split("/")[0] for i in ok_inj)
    print("   by role:   " + ", ".join(f"{k} {v}" for k, v in sorted(by_role.items())))
    eps = Counter(i.episode_kind for i in ok_inj if not i.second)
    pairs = sum(1 for i in ok_inj if i.second and i.episode_kind == "pair")
    during = [i for i in ok_inj if i.second and i.episode_kind == "recovery"]
    kills = sum(1 for i in ok_inj if i.fault == "controller-kill")
    print(f"   episodes:  single {eps.get('single', 0)}, trainer+rollout at once {pairs}, controller killed "
          f"mid-recovery and resumed {kills}, disk full and resumed {by_kind.get('disk-full', 0)}, "
          f"fault into a replacement while it starts {len(during)} "
          f"({', '.join(sorted(Counter(f'{i.target_state}/{i.target_phase}' for i in during)))})")
    rows = Counter(f["kind"] for f in rep["faults"])
    print(f"   fault records in the store: {len(rep['faults'])} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(rows.items()))}; node-down counts every role on the node, "
          f"detected:* are deaths nobody injected)")
    print("== invariants")
    for name, r in results.items():
        print(f"   [{'PASS' if r['ok'] else 'FAIL'}] {name}: {r['detail']}")
    print("== recovery time, fault -> recovered (s), from `slurm-rl report --json`")
    print(f"   {'role':8s} {'kind':16s} {'n':>3s} {'min':>6s} {'median':>6s} {'p90':>6s} {'max':>6s}   "
          f"{'detect med':>10s} {'max':>6s}")
    for d in dist:
        print(f"   {d['role']:8s} {d['kind']:16s} {d['n']:3d} {_f(d['min'])} {_f(d['median'])} {_f(d['p90'])} "
              f"{_f(d['max'])}   {_f(d['detect_median']):>10s} {_f(d['detect_max'])}"
              + ("" if d["recovered"] == d["n"] else f"   ({d['n'] - d['recovered']} not recovered)"))
    allrec = [f["recover_s"] for f in rep["faults"] if f["recover_s"] is not None]
    if allrec:
        print(f"   {'all':8s} {'':16s} {len(allrec):3d} {_f(min(allrec))} {_f(statistics.median(allrec))} "
              f"{_f(pct(allrec, 0.9))} {_f(max(allrec))}")
    print("== result: " + ("every invariant held" if all(r["ok"] for r in results.values())
                          else "FAILED: " + ", ".join(k for k, r in results.items() if not r["ok"])))
