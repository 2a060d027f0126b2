"""Rollout: lease prompts, generate a group of completions each, score them, hand them in.

Between batches it applies the newest weight version (pulled from any holder, then served to
others). Every group carries the weight version that generated it. A group counts as delivered
only when the controller acknowledges it (it is then on disk); the acknowledged ids are
journalled in the run's acks/ folder so a loss audit does not trust the store alone.

Prompts are built as the task says (template, system prompt, chat template) and scored by the
task's reward, loaded once per process; a reward that fails scores 0 and is reported as a
`reward_error` event naming the records. rollout/0 also runs the held-out eval whenever the
version it holds reaches the next multiple of `algorithm.eval_every`, reported as an `eval` event.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import uuid

from slurm_rl import protocol as P
from slurm_rl.rl.task import Problem
from slurm_rl.roles.host import RoleHost
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase

log = logging.getLogger("slurm_rl.roles.rollout")


class AckJournalError(RuntimeError):
    """The ack journal cannot be appended to (a full disk): the rollout stops, a fault like any other."""


class AckJournal:
    """Acknowledged group ids, one a line. Only whole lines: a write cut short (a disk filling up
    mid-line) is undone, so the next line is not glued to a partial one."""

    def __init__(self, rt: RoleRuntime):
        self.path = rt.run.acks / f"{rt.job_id or 'nojob'}.{os.getpid()}.log"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, ids: list[str]) -> None:
        if not ids:
            return
        data = ("\n".join(ids) + "\n").encode()
        start = os.fstat(self.fd).st_size
        done = 0
        try:
            while done < len(data):
                n = os.write(self.fd, data[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device (nothing written)")
                done += n
        except OSError as e:
            try:
                os.ftruncate(self.fd, start)       # whole lines only
            except OSError:
                pass
            raise AckJournalError(f"cannot append {len(ids)} acknowledged group id(s) to the ack journal {self.path}: "
                                  f"{e.strerror or e}; they are stored (the controller acknowledged them), only "
                                  f"the journal the loss audit reads lacks them; this rollout stops") from e


def run_rollout(rt: RoleRuntime, host: RoleHost) -> P.Command | None:
    from slurm_rl.rl.prompts import builder_for

    cfg = rt.cfg
    alg = cfg.algorithm
    engine = host.ensure_engine()
    builder = builder_for(host.tokenizer, cfg.task)
    scorer = host.reward_scorer()
    records = host.problem_records()
    evaluator = _evaluator(rt, host, builder, scorer)
    journal = AckJournal(rt)
    batches = 0
    while True:
        cmd = rt.next_command()
        if cmd is not None:
            if cmd.op == "stop":
                return None
            if cmd.op == "become":
                return cmd
        if rt.needs_sync():
            rt.sync_newest(host.apply_weights)
        version, wepoch = rt.held_version, rt.held_wepoch
        if evaluator is not None and evaluator.due(version):
            cmd = _evaluate(rt, evaluator, engine, version, wepoch)
            if cmd is not None:
                return None if cmd.op == "stop" else cmd
            continue                  # newer weights may have arrived meanwhile
        reply = rt.call(P.LeaseRequest(ident=rt.ident, max_items=cfg.rollout.prompts_per_batch, version=version,
                                       wepoch=wepoch), timeout_s=5.0, attempts=1)
        if reply is None or reply.pause or not reply.leases:
            rt.set_phase(Phase.IDLE, reply.pause if reply is not None else "controller unreachable")
            time.sleep(0.1 if reply is not None else 0.5)
            continue
        leases = reply.leases
        rt.set_phase(Phase.GENERATING, f"{len(leases)} prompts x {alg.group_size} at v{version}")
        problems = [_problem(records, le) for le in leases]
        texts = [builder.text(p) for p in problems]
        prompt_ids = [builder.ids(p) for p in problems]
        outs = engine.generate(prompt_ids, n=alg.group_size, max_tokens=alg.max_new_tokens,
                               temperature=alg.temperature, seed=cfg.seed * 1_000_003 + leases[0].item_id)
        groups: list[P.GroupMsg] = []
        tokens = 0
        for le, p, text, pids, comps in zip(leases, problems, texts, prompt_ids, outs):
            record = p.to_json()
            samples = [P.SampleMsg(completion_ids=list(c.token_ids), logprobs=[float(x) for x in c.logprobs],
                                   reward=scorer(text, c.text, record), text=c.text) for c in comps]
            tokens += sum(len(c.token_ids) for c in comps)
            groups.append(P.GroupMsg(group_id=uuid.uuid4().hex, item_id=le.item_id, problem_idx=le.problem_idx,
                                     prompt_ids=list(pids), samples=samples, version=version, wepoch=wepoch))
        rt.bump(tokens)
        _report_reward_errors(rt, scorer, "training", version)
        _hand_in(rt, journal, groups)
        batches += 1


def _problem(records: dict[int, Problem], le: P.ProblemLease) -> Problem:
    """The leased problem with its full record (extra fields for a user reward), as loaded at launch."""
    p = records.get(le.problem_idx)
    if p is not None and p.prompt == le.prompt:
        return Problem(id=p.id, prompt=le.prompt, answer=le.answer, meta=p.meta)
    return Problem(id=str(le.problem_idx), prompt=le.prompt, answer=le.answer)


def _evaluator(rt: RoleRuntime, host: RoleHost, builder, scorer):
    from slurm_rl.rl.evaluation import Evaluator

    alg = rt.cfg.algorithm
    if rt.ident.index != 0 or not alg.eval_every:
        return None
    problems = host.eval_problems()
    if not problems:
        return None
    return Evaluator(problems, every=alg.eval_every, builder=builder, scorer=scorer, max_tokens=alg.max_new_tokens,
                     chunk=rt.cfg.rollout.prompts_per_batch * alg.group_size)


def _evaluate(rt: RoleRuntime, evaluator, engine, version: int, wepoch: int) -> P.Command | None:
    """One eval of the held version, reported as an event; a stop or promotion arriving between
    chunks abandons it and is returned."""
    from slurm_rl.rl.evaluation import EVENT_KIND

    pending: list[P.Command] = []
    seen = [0]

    def between(done: int, total: int, tokens: int) -> bool:
        rt.bump(tokens - seen[0])
        seen[0] = tokens
        rt.set_phase(Phase.GENERATING, f"eval {done}/{total} at v{version}")
        cmd = rt.next_command()
        if cmd is not None and cmd.op in ("stop", "become"):
            pending.append(cmd)
            return False
        return True

    rt.set_phase(Phase.GENERATING, f"eval 0/{len(evaluator.problems)} at v{version}")
    result = evaluator.run(engine, version, between_chunks=between)
    _report_reward_errors(rt, evaluator.scorer, "eval", version)
    if result is None:
        return pending[0] if pending else None
    log.info("%s", result.message())
    rt.call(P.RoleEvent(ident=rt.ident, kind=EVENT_KIND, msg=result.message(), data=result.event_data(wepoch)),
            timeout_s=10.0, attempts=3)
    return None


def _report_reward_errors(rt: RoleRuntime, scorer, split: str, version: int) -> None:
    """One `reward_error` event per batch that had any: how many, which records, the first error."""
    errors = scorer.take_errors()
    if not errors:
        return
    ids = list(dict.fromkeys(rid for rid, _ in errors))
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    log.warning("reward failed %d time(s) on %s problem(s) %s: %s", len(errors), split, shown, errors[0][1])
    rt.call(P.RoleEvent(ident=rt.ident, kind="reward_error",
                        msg=f"reward {rt.cfg.task.reward_spec} failed on {len(errors)} {split} sample(s) "
                            f"(scored 0) at v{version}, records {shown}: {errors[0][1]}",
                        data={"count": str(len(errors)), "split": split, "version": str(version),
                              "record_ids": ",".join(ids[:50]), "error": errors[0][1]}),
            timeout_s=10.0, attempts=3)


def _hand_in(rt: RoleRuntime, journal: AckJournal, groups: list[P.GroupMsg]) -> None:
    """Submit until the controller answers; a retry of stored groups is acknowledged again."""
    delay = 0.2
    while True:
        reply = rt.call(P.SubmitGroups(ident=rt.ident, groups=groups), timeout_s=10.0, attempts=2)
        if reply is not None:
            journal.write(list(reply.accepted))
            if reply.rejected:
                log.info("%d group(s) not accepted (lease lost or weights rolled back)", len(reply.rejected))
            return
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
