"""Detection and recovery decisions: a pure function of a snapshot.

`decide(now, view)` looks at every role slot and returns the actions to take, each with the
reason it was taken. No I/O happens here; the controller loop applies the actions (sends
commands, submits and cancels jobs, writes the store). That keeps every rule testable without
processes: see tests/test_policy.py.

Detection (role-aware):
  * one signal makes a role SUSPECT: heartbeat silence longer than `suspect_after_s`, or the end
    of the controller's idle connection to the process (slurm_rl.liveness: its kernel closes it
    the moment the process dies, so a crash is looked at in milliseconds, not after the silence);
  * a second signal confirms it DEAD: the liveness probe of its endpoint is refused or times out
    (process or node gone), its job reached a terminal Slurm state, its node is DOWN, or the
    silence outlasts `hang_after_s` (the phase timeout when shorter, and always while loading or
    restoring): a SIGSTOPped process still accepts connections, so only time tells a hang, unless
    the job's batch agent, outside the role's step, sees the silent process stopped (dead after two
    missed heartbeats) or using no CPU for `hang_idle_after_s` (one busy in native code gets
    `hang_after_s`);
  * a terminal job state or a DOWN node is conclusive on its own (the process is gone);
  * heartbeats without progress for longer than the phase timeout (a wedged main loop) are DEAD
    too, except in waiting phases (idle, waiting_for_data): waiting is never a fault;
  * a DRAIN on a role's node moves the role off gracefully: a warm standby is made ready
    first, then the role is stopped (a trainer checkpoints first) and the standby takes over.

Recovery (role-based): only the failed role restarts. A dead rollout is replaced by a warm
spare (no queue wait), by a spare still starting when this run's measured start times say it is
ready before a new job would be (its slot waits for it), or by a new job that excludes suspect
nodes; a dead trainer is restored from
a warm standby (the trainer-shaped one of spare.trainer_nodes first, else a spare, else the
rollout holding the newest weights: those two only for a one-process trainer) at the newest committed
step, unless that rollout is the only one generating and this run's measured start times say a
cold trainer job is back sooner than another rollout (promoted, the trainer would have no data).
Restart budgets escalate to a full restart from the newest checkpoint, then to a stop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from slurm_rl.controller.view import (  # the policy's vocabulary, used as pol.View, pol.Dead, ...
    Action,
    AddSpare,
    AwaitSpare,
    Clear,
    Dead,
    ExcludeNode,
    FinishMove,
    FullRestart,
    Probe,
    ProbeResult,
    PromoteSpare,
    PromoteTrainer,
    SlotView,
    StartMove,
    StartTimes,
    StopRun,
    Submit,
    Suspect,
    Thresholds,
    View,
)
from slurm_rl.states import JobState, NodeHealth, Phase, RoleKind, RoleState

__all__ = ["decide", "assess", "ProbeResult", "SlotView", "Thresholds", "View", "StartTimes", "Action", "Suspect", "Clear", "Probe", "Dead", "ExcludeNode", "PromoteSpare", "AwaitSpare", "PromoteTrainer", "Submit", "AddSpare", "StartMove", "FinishMove", "FullRestart", "StopRun"]


# ------------------------------------------------------------------------------- detection


# phases in which native code (model load, checkpoint restore) may hold the interpreter long enough
# to delay the heartbeat thread: only their phase timeout confirms a hang there
_LONG_SILENCE_OK = frozenset({Phase.LOADING, Phase.RESTORING})


def _timeout(view: View, phase: Phase) -> float:
    return float(view.thresholds.phase_timeouts.get(phase, 60.0))


def assess(now: float, s: SlotView, view: View) -> Action | None:
    """The detection verdict for one live slot: Dead, Suspect, Probe, Clear or nothing."""
    slot = s.slot
    if s.goodbye:
        if s.stop_requested:
            return None        # it stopped on request (a move, the end of the run): not a fault
        return Dead("it exited on its own (said goodbye without being asked to stop)", slot, ("role exited",))
    if s.job_state is not None and s.job_state.terminal:
        if s.stop_requested:
            return None        # a role we asked to stop has ended: handled as a move, not a fault
        detail = f" ({s.job_exit})" if s.job_exit else ""
        return Dead(f"job {s.job_id} is {s.job_state.value}{detail}", slot,
                    ("job " + s.job_state.value,))
    if s.node_health is NodeHealth.DOWN:
        return Dead(f"node {s.node} is DOWN", slot, ("node down",))
    if not s.connected or s.last_hb is None:
        # queue wait is not a fault; but a job that runs and never says hello is stuck starting
        # (a hung import, a dead GPU, a hung file system): judged by the loading timeout
        if s.job_state is JobState.RUNNING and _stopped_before_hello(now, s, view.thresholds):
            return Dead(f"job {s.job_id} runs but its process is stopped (state T) and never connected", slot,
                        ("job running", "process stopped"))
        if s.job_state is JobState.RUNNING and s.job_running_since is not None:
            limit = _timeout(view, Phase.LOADING)
            if now - s.job_running_since > limit:
                return Dead(f"job {s.job_id} has run {now - s.job_running_since:.0f}s without connecting "
                            f"(loading timeout {limit:g}s)", slot, ("job running", "never connected"))
        return None
    silence = now - s.last_hb
    limit = _timeout(view, s.phase)
    silence_limit = limit if s.phase in _LONG_SILENCE_OK else min(limit, view.thresholds.hang_after_s)
    if silence > silence_limit:
        return Dead(f"no heartbeat for {silence:.1f}s in phase {s.phase.value} (hang timeout {silence_limit:g}s)",
                    slot, ("heartbeat lost", "hang timeout"))
    hung = _hung_by_agent(now, s, view, silence)
    if hung is not None:
        return hung
    if s.state is RoleState.SUSPECT:
        assert s.suspect_since is not None
        if s.link_lost_at is not None and s.last_hb <= s.link_lost_at and silence > view.thresholds.suspect_after_s:
            # its kernel closed the connection (the process exited) and it has said nothing since:
            # gone, even if its port still answers a probe (a child that inherited the socket, a
            # port reused); a link cut under a live process is followed by heartbeats (cleared)
            return Dead(f"its liveness connection closed and no heartbeat for {silence:.1f}s since", slot,
                        ("liveness link closed", "heartbeat lost"))
        if s.probe is not None and s.probe_at is not None and s.probe_at >= s.suspect_since \
                and s.probe.confirms_death:
            return Dead(f"{s.suspect_reason} and its endpoint is {'unreachable' if s.probe is ProbeResult.TIMEOUT else 'closed'}",
                        slot, ("heartbeat lost", f"probe {s.probe.value}"))
        if s.last_hb > s.suspect_since and silence < view.thresholds.suspect_after_s:
            return Clear("heartbeats resumed", slot)
        if not s.probe_pending and (s.probe_at is None or s.probe_at < s.suspect_since):
            return Probe("confirm a suspect role", slot)
        return None
    if silence > view.thresholds.suspect_after_s:
        return Suspect(f"no heartbeat for {silence:.1f}s", slot)
    if s.link_lost_at is not None:
        return Suspect("its liveness connection closed", slot)
    if not s.phase.waiting and s.progress_at is not None and now - s.progress_at > limit:
        return Dead(f"no progress for {now - s.progress_at:.1f}s in phase {s.phase.value} (timeout {limit:g}s)",
                    slot, ("heartbeat without progress", "phase timeout"))
    return None


def _stopped_before_hello(now: float, s: SlotView, t: Thresholds) -> bool:
    """A job whose process its agent sees stopped, and not using CPU for a while, before it said hello."""
    return (t.use_process_state and s.proc_state == "T" and s.proc_at is not None
            and now - s.proc_at <= t.suspect_after_s and s.cpu_moved_at is not None
            and now - s.cpu_moved_at > t.suspect_after_s)


def _hung_by_agent(now: float, s: SlotView, view: View, silence: float) -> Action | None:
    """The second hang signal: what the job's batch agent saw of the silent process (slurm_rl.roles.agent).

    Only while the agent's view is fresh and newer than the last heartbeat, and never for a job
    Slurm itself suspended (its processes are stopped on purpose). A stopped process is hung in
    any phase; "no CPU" is not used while loading or restoring (reading a model from a slow file
    system legitimately sleeps in the kernel with the interpreter held).
    """
    t = view.thresholds
    if not t.use_process_state or silence <= t.stopped_after_s or s.proc_at is None or s.last_hb is None:
        return None
    if s.proc_at <= s.last_hb or now - s.proc_at > t.suspect_after_s or s.job_state is JobState.SUSPENDED:
        return None
    if s.proc_state == "T":       # it cannot run until someone continues it, and missed two heartbeats
        return Dead(f"no heartbeat for {silence:.1f}s and its process is stopped (state T)", s.slot,
                    ("heartbeat lost", "process stopped"))
    idle = s.cpu_moved_at is None or s.cpu_moved_at <= s.last_hb
    if s.proc_state != "R" and idle and silence > max(t.hang_idle_after_s, t.suspect_after_s) \
            and s.phase not in _LONG_SILENCE_OK:
        return Dead(f"no heartbeat for {silence:.1f}s and its process used no CPU meanwhile (state "
                    f"{s.proc_state}): hung", s.slot, ("heartbeat lost", "no CPU use"))
    return None


# ------------------------------------------------------------------------------- recovery


class _Pool:
    """Standbys not yet promised to anyone during this decision.

    Only roles heard from within the suspect threshold qualify: a process that hung a moment ago
    still looks READY, and promoting it would stall the recovery it was meant to provide.
    """

    def __init__(self, slots: Sequence[SlotView], dead: set[str], now: float, fresh_s: float):
        live = [s for s in slots if s.slot not in dead and s.last_hb is not None and now - s.last_hb < fresh_s]
        self.spares = sorted((s for s in live if s.kind is RoleKind.SPARE and s.ready and s.reserved_for is None),
                             key=lambda s: (-s.version, s.index))
        self.rollouts = sorted((s for s in live if s.kind is RoleKind.ROLLOUT and s.ready),
                               key=lambda s: (-s.version, s.index))
        self.trainer_spares = [s for s in live if s.kind is RoleKind.TRAINER_SPARE and s.ready
                               and s.reserved_for is None]

    def take_trainer_spare(self, *, peek: bool = False) -> SlotView | None:
        """The trainer-shaped standby (spare.trainer_nodes), if it is ready and promised to no one."""
        if not self.trainer_spares:
            return None
        return self.trainer_spares[0] if peek else self.trainer_spares.pop(0)

    def take_spare(self, avoid_node: str | None = None, *, peek: bool = False) -> SlotView | None:
        return self._take(self.spares, avoid_node, peek)

    def take_rollout(self, avoid_node: str | None = None, *, peek: bool = False) -> SlotView | None:
        return self._take(self.rollouts, avoid_node, peek)

    @staticmethod
    def _take(pool: list[SlotView], avoid_node: str | None, peek: bool) -> SlotView | None:
        """The best standby (newest weights), among equals one off `avoid_node`: a fault that took
        a node's role may be taking the node's other roles too (found a moment later)."""
        if not pool:
            return None
        i = next((i for i, s in enumerate(pool) if s.version == pool[0].version
                  and (not avoid_node or s.node != avoid_node)), 0)
        return pool[i] if peek else pool.pop(i)


# how long a trainer's restore waits for a standby on the dead trainer's own node to be heard from
# after the death (its next heartbeat is due within one interval): if the node itself failed, the
# standby is gone too and is found dead meanwhile instead of being promoted
_COLOCATED_WAIT_S = 0.5


def _trainer_standby(now: float, view: View, pool: _Pool, by_slot: Mapping[str, SlotView], dead: SlotView, *,
                     peek: bool = False) -> tuple[SlotView | None, str]:
    """The standby a dead trainer is restored on: a reserved one, a spare, else (policy permitting) a
    rollout; with none, why a cold trainer job is started instead ("" when there is simply none)."""
    t = view.thresholds
    reserved = _reserved(by_slot, dead.slot)
    if reserved is not None:
        return reserved, ""
    # the trainer-shaped standby first (configured on its own, whatever recovery.standby says of
    # spares and rollouts): its shards are built, it has the trainer's resources, and taking it
    # leaves every engine generating
    shaped = pool.take_trainer_spare(peek=peek)
    if shaped is not None or t.standby == "none":
        return shaped, ""
    if view.trainer_shape != (1, 1):
        # only a standby of the trainer's own shape (nodes x ranks) can hold its shards
        n, r = view.trainer_shape
        why = f"no warm standby has the trainer's shape ({n} node(s) x {r} rank(s))"
        waiting = [x for x in view.slots if x.kind is RoleKind.TRAINER_SPARE and x.slot != dead.slot]
        if waiting:
            why = f"the trainer-shaped standby {waiting[0].slot} is not ready ({waiting[0].state.value})"
        return None, why
    spare_no, rollout_no = (view.standby_misfit.get(k, "") for k in (RoleKind.SPARE, RoleKind.ROLLOUT))
    standby = None if spare_no else pool.take_spare(dead.node, peek=peek)
    if standby is None and t.standby == "spare-then-rollout" and rollout_no:
        return None, "; ".join(w for w in (spare_no, rollout_no) if w)
    if standby is None and t.standby == "spare-only" and spare_no:
        return None, spare_no
    if standby is None and t.standby == "spare-then-rollout":
        candidate = pool.take_rollout(dead.node, peek=True)
        why = _cold_trainer_sooner(now, view, pool, candidate) if candidate is not None else ""
        if why:
            return None, why
        standby = pool.take_rollout(dead.node, peek=peek)
    return standby, ""


def _rollout_back_in(now: float, s: SlotView, engine: float) -> float:
    """Seconds until `s` generates as a rollout, by the measured engine start (inf: it will not):
    a rollout job starting, or a spare a dead rollout's slot waits for (AwaitSpare)."""
    if not s.state.alive:
        return float("inf")
    if s.kind is RoleKind.SPARE and s.reserved_for is not None and s.reserved_for.startswith(RoleKind.ROLLOUT.value):
        if s.ready:
            return 0.0                        # promoted in this very tick
    elif s.kind is not RoleKind.ROLLOUT:
        return float("inf")
    return float("inf") if s.starting_since is None else max(0.0, engine - (now - s.starting_since))


def _cold_trainer_sooner(now: float, view: View, pool: _Pool, candidate: SlotView) -> str:
    """Why a cold trainer job beats promoting `candidate` when it is the only rollout generating, or "".

    Promoted, it leaves the new trainer without data until another rollout is ready (one already
    starting or a spare a rollout slot waits for, else the backfill of its own slot: a full engine
    start). A cold trainer job leaves it
    generating into the buffer meanwhile. Judged by this run's own measured start times; without
    them, the rollout is promoted."""
    if any(r.slot != candidate.slot for r in pool.rollouts):
        return ""
    cold, engine = view.start_s.get(RoleKind.TRAINER), view.start_s.get(RoleKind.ROLLOUT)
    if cold is None or engine is None:
        return ""
    back = min([_rollout_back_in(now, x, engine) for x in view.slots] + [engine])   # else: its own backfill
    if cold >= back:
        return ""
    return (f"{candidate.slot}, the only rollout generating, keeps generating: promoted, the trainer would "
            f"wait ~{back:.0f}s for another rollout; a cold trainer is ready in ~{cold:.0f}s (measured)")


def _unconfirmed_neighbour(now: float, dead: SlotView, standby: SlotView | None) -> bool:
    """A standby sharing a node with the dead trainer (any rank's, for multi-node jobs) not heard
    from since the death: wait for it, the node may be what failed."""
    if standby is None or not (dead.all_nodes & standby.all_nodes) or standby.last_hb is None:
        return False
    if dead.job_state is not None and dead.job_state.terminal:
        return False            # its own job ended: the process died, nothing says the node did
    seen = max((t for t in (dead.link_lost_at, dead.suspect_since) if t is not None), default=None)
    return seen is not None and standby.last_hb <= seen and now - seen < _COLOCATED_WAIT_S




def decide(now: float, view: View) -> list[Action]:
    """All actions for this tick, in the order they must be applied."""
    if view.restarting or view.stopping:
        return []
    t = view.thresholds
    actions: list[Action] = []
    deaths: list[tuple[SlotView, Dead]] = []
    by_slot = {s.slot: s for s in view.slots}
    for s in view.slots:
        if not s.state.alive:
            continue
        verdict = assess(now, s, view)
        if isinstance(verdict, Dead):
            deaths.append((s, verdict))
        elif verdict is not None:
            actions.append(verdict)

    if deaths and t.full_restart_policy:
        actions += [d for _, d in deaths]
        return actions + _full_restart(view, "recovery policy is full-restart: " +
                                       "; ".join(f"{s.slot}: {d.reason}" for s, d in deaths))

    # the trainer first: it gets the first pick of standbys
    deaths.sort(key=lambda sd: (sd[0].kind is not RoleKind.TRAINER, sd[0].kind is RoleKind.SPARE, sd[0].index))
    dead_slots = {s.slot for s, _ in deaths}
    pool = _Pool(view.slots, dead_slots, now, t.suspect_after_s * 0.75)
    failures = dict(view.node_failures)
    excluded = set(view.excluded_nodes)
    awaited: set[str] = set()             # spares a dead rollout started waiting for in this tick
    for s, d in deaths:
        if s.kind is RoleKind.TRAINER and _unconfirmed_neighbour(
                now, s, _trainer_standby(now, view, pool, by_slot, s, peek=True)[0]):
            continue                  # decided again next tick, once the neighbour is heard from or dead
        actions.append(d)
        if s.restarts_in_window >= t.restart_budget:
            return actions + _full_restart(
                view, f"{s.slot} failed {s.restarts_in_window + 1} times, over its restart budget of {t.restart_budget}")
        if s.node and s.node not in excluded and not (s.goodbye or s.stop_requested):
            failures[s.node] = failures.get(s.node, 0) + 1
            if failures[s.node] >= t.exclude_node_after:
                excluded.add(s.node)
                actions.append(ExcludeNode(f"{failures[s.node]} role failures on {s.node}", s.node))
        avoid = tuple(sorted(excluded | ({s.node} if s.node else set())))
        if s.kind is RoleKind.ROLLOUT:
            spare = _reserved(by_slot, s.slot) or pool.take_spare(s.node)
            starting = None if spare is not None else _starting_spare(now, view, dead_slots, awaited)
            if spare is not None:
                actions.append(PromoteSpare(f"replace dead {s.slot} with warm {spare.slot}", spare.slot, s.slot))
                actions += _backfill(spare, t, avoid)
            elif starting is not None:
                sp, left, new = starting
                awaited.add(sp.slot)
                actions.append(AwaitSpare(f"replace dead {s.slot} with {sp.slot}, ready in ~{left:.0f}s (a new "
                                          f"job takes ~{new:.0f}s, measured)", sp.slot, s.slot))
            else:
                actions.append(Submit(f"replace dead {s.slot} (no warm spare)", s.slot, avoid))
        elif s.kind is RoleKind.TRAINER:
            standby, why_cold = _trainer_standby(now, view, pool, by_slot, s)
            if standby is not None:
                actions.append(PromoteTrainer(f"restore trainer on warm {standby.slot} at committed step "
                                              f"{view.committed_version}", standby.slot, view.committed_version))
                actions += _backfill(standby, t, avoid)
            else:
                actions.append(Submit(f"restart trainer cold from step {view.committed_version} "
                                      f"({why_cold or 'no warm standby'})", s.slot, avoid))
        elif s.kind is RoleKind.TRAINER_SPARE:
            actions.append(Submit(f"replace dead {s.slot}", s.slot, avoid, backfill=True))
        else:
            if s.index < t.spare_replicas and not s.extra:
                actions.append(Submit(f"replace dead {s.slot}", s.slot, avoid, backfill=True))
    actions += _awaiting(now, view, dead_slots)
    actions += _moves(view, pool, dead_slots)
    return actions


# a starting spare is waited for only when at least this share of a new job's start is saved: waiting
# also delays the spare's own backfill, where a new job would have started both at once
_AWAIT_SAVES = 0.25


def _starting_spare(now: float, view: View, dead: set[str], taken: set[str]
                    ) -> tuple[SlotView, float, float] | None:
    """A spare still starting that is ready clearly before a new rollout job would be, by this run's
    measured engine start: (spare, seconds left, seconds a new job takes), the soonest; None if none."""
    new = view.start_s.get(RoleKind.ROLLOUT)
    if new is None:
        return None
    best = None
    for x in view.slots:
        if (x.kind is RoleKind.SPARE and x.state in (RoleState.PENDING, RoleState.STARTING) and not x.extra
                and x.starting_since is not None and x.reserved_for is None and x.slot not in dead | taken):
            left = max(0.0, new - (now - x.starting_since))
            if left <= (1 - _AWAIT_SAVES) * new and (best is None or left < best[1]):
                best = (x, left, new)
    return best


def _awaiting(now: float, view: View, dead: set[str]) -> list[Action]:
    """Dead rollout slots waiting for a starting spare (AwaitSpare): promote it once ready and heard
    from; if it died, submit the rollout's own replacement after all."""
    out: list[Action] = []
    t = view.thresholds
    for r in view.slots:
        if r.kind is not RoleKind.ROLLOUT or r.state is not RoleState.DEAD or r.slot in dead:
            continue
        spare = next((x for x in view.slots if x.reserved_for == r.slot and x.kind is RoleKind.SPARE), None)
        avoid = tuple(sorted(set(view.excluded_nodes) | ({r.node} if r.node else set())))
        if spare is not None and spare.slot not in dead and spare.ready and spare.last_hb is not None \
                and now - spare.last_hb < t.suspect_after_s * 0.75:
            out.append(PromoteSpare(f"replace dead {r.slot} with {spare.slot}, now warm", spare.slot, r.slot,
                                    awaited=True))
            out += _backfill(spare, t, avoid)
        elif spare is None or spare.slot in dead or not spare.state.alive:
            what = f"{spare.slot} it waited for is gone" if spare is not None else "no spare is coming"
            out.append(Submit(f"replace dead {r.slot} ({what})", r.slot, avoid))
    return out


def _reserved(by_slot: Mapping[str, SlotView], target: str) -> SlotView | None:
    for s in by_slot.values():
        if s.reserved_for == target and s.ready:
            return s
    return None


def _backfill(standby: SlotView, t: Thresholds, avoid: tuple[str, ...]) -> list[Action]:
    """Refill the slot a promoted standby left (extra spares started for a move are not refilled)."""
    if standby.kind is RoleKind.SPARE and (standby.extra or standby.index >= t.spare_replicas):
        return []
    return [Submit(f"backfill {standby.slot} after its promotion", standby.slot, avoid, backfill=True)]


def _moves(view: View, pool: _Pool, dead: set[str]) -> list[Action]:
    """Graceful moves off draining nodes: standby first, then stop, then hand over."""
    out: list[Action] = []
    pending_extra = {s.reserved_for for s in view.slots if s.kind is RoleKind.SPARE and s.reserved_for
                     and s.state.alive}
    for s in view.slots:
        if s.slot in dead or not s.state.alive or s.kind in (RoleKind.SPARE, RoleKind.TRAINER_SPARE):
            continue
        if s.moving:
            spare = next((x for x in view.slots if x.reserved_for == s.slot), None)
            if s.goodbye or (s.job_state is not None and s.job_state.terminal):
                if spare is not None and spare.ready:
                    out.append(FinishMove(f"{s.slot} stopped on draining {s.node}; {spare.slot} takes over",
                                          s.slot, spare.slot))
            continue
        if s.node_health is not NodeHealth.DRAIN or not s.ready:
            continue
        reserved = next((x for x in view.slots if x.reserved_for == s.slot and x.state.alive), None)
        if reserved is not None:
            if reserved.ready:
                out.append(StartMove(f"node {s.node} is draining; {reserved.slot} is ready to take over",
                                     s.slot, reserved.slot))
            continue
        if s.kind is RoleKind.TRAINER:
            shaped = pool.take_trainer_spare()
            if shaped is not None:
                out.append(StartMove(f"node {s.node} is draining; the trainer-shaped standby {shaped.slot} takes "
                                     "over", s.slot, shaped.slot))
                continue
            if view.trainer_shape != (1, 1) or view.standby_misfit.get(RoleKind.SPARE):
                continue          # no standby of its shape to hand it to: it trains on until the node goes
        spare = pool.take_spare()
        if spare is not None:
            out.append(StartMove(f"node {s.node} is draining; warm {spare.slot} takes over", s.slot, spare.slot))
        elif s.slot not in pending_extra:
            out.append(AddSpare(f"node {s.node} is draining and no spare is ready: start one first", s.slot))
    return out


def _full_restart(view: View, reason: str) -> list[Action]:
    if view.full_restarts >= view.thresholds.max_full_restarts:
        return [StopRun(f"{reason}; {view.full_restarts} full restarts already done "
                        f"(recovery.max_full_restarts={view.thresholds.max_full_restarts})", failed=True)]
    return [FullRestart(reason)]
