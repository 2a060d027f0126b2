"""Pure parsers for Slurm command output: squeue, sacct, sinfo, sbatch, node lists and exit codes.

No I/O here. Every function takes the text a command printed and returns typed records; the
exact command lines that produce that text live next to the field lists below, so the two cannot
drift apart (`slurm_rl.slurm.query` builds its commands from them).

Malformed output never raises IndexError/ValueError: a line that does not fit is skipped with a
warning (a truncated last line is the usual case), and output of which no line fits raises
`SlurmOutputError` naming the command and quoting the first offending line.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence

from slurm_rl.backends.base import JobStatus, NodeStatus
from slurm_rl.errors import BackendError
from slurm_rl.states import JobState, NodeHealth

log = logging.getLogger("slurm_rl.slurm")


class SlurmOutputError(BackendError):
    """A Slurm command printed something slurm-rl cannot read (another Slurm version, a wrapper)."""


# ------------------------------------------------------------------------------------ field lists
# squeue --Format: no header (the exit_code column has an empty header in 22.05), fixed order,
# `:|` = no padding and "|" after the field. Name goes last: it is the only free-text field we
# control the producer of, and a stray "|" in it then stays inside the name.
SQUEUE_FIELDS: tuple[str, ...] = ("JobArrayID", "JobID", "State", "exit_code", "Reason", "NodeList", "Name")
SQUEUE_FORMAT = ",".join(f"{f}:|" for f in SQUEUE_FIELDS[:-1]) + f",{SQUEUE_FIELDS[-1]}:"

# sacct --parsable2 with header: columns are looked up by name, so extra/reordered ones are fine.
SACCT_FIELDS: tuple[str, ...] = ("JobID", "JobIDRaw", "State", "ExitCode", "NodeList", "Reason", "JobName")

# sinfo --Node --Format, no header; Reason last because admins write free text there.
SINFO_FIELDS: tuple[str, ...] = ("NodeList", "StateComplete", "StateLong", "Reason")
SINFO_FORMAT = ",".join(f"{f}:|" for f in SINFO_FIELDS[:-1]) + f",{SINFO_FIELDS[-1]}:"


# ------------------------------------------------------------------------------------ node lists
_GROUP_SPLIT = re.compile(r",(?![^\[]*\])")   # commas outside brackets
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_MAX_EXPANDED = 100_000                       # a typo like n[1-99999999] must not eat the memory


def expand_nodelist(text: str) -> tuple[str, ...]:
    """Expand a Slurm hostlist (`n[1-3,5]`, `gpu-[01-04]`, `a1,b[2-3]`, `r[1-2]-n[01-02]`).

    Empty, `(null)`, `None assigned` and `N/A` mean no nodes. Zero padding is kept (`gpu-[01-04]`
    gives `gpu-01`...). Raises SlurmOutputError for an unbalanced bracket or a bad range.
    """
    text = text.strip()
    if text in ("", "(null)", "None assigned", "N/A", "None"):
        return ()
    out: list[str] = []
    for group in _GROUP_SPLIT.split(text):
        if not group:
            continue
        out.extend(_expand_group(group, text, budget=_MAX_EXPANDED - len(out)))
        if len(out) > _MAX_EXPANDED:
            raise SlurmOutputError(f"node list {text!r} expands to more than {_MAX_EXPANDED} names")
    # keep order, drop duplicates ("n1,n[1-2]")
    return tuple(dict.fromkeys(out))


def _expand_group(group: str, whole: str, budget: int = _MAX_EXPANDED) -> list[str]:
    names = [""]
    pos = 0
    while pos < len(group):
        if group[pos] == "[":
            end = group.find("]", pos)
            if end < 0:
                raise SlurmOutputError(f"node list {whole!r}: '[' without ']'")
            suffixes = _expand_ranges(group[pos + 1:end], whole)
            # check the product before building it: r[1-99999]-n[1-99999] is 10^10 names
            if len(names) * len(suffixes) > budget:
                raise SlurmOutputError(f"node list {whole!r} expands to more than {_MAX_EXPANDED} names")
            names = [n + s for n in names for s in suffixes]
            if len(names) > _MAX_EXPANDED:
                raise SlurmOutputError(f"node list {whole!r} expands to more than {_MAX_EXPANDED} names")
            pos = end + 1
        elif group[pos] == "]":
            raise SlurmOutputError(f"node list {whole!r}: ']' without '['")
        else:
            nxt = group.find("[", pos)
            nxt = len(group) if nxt < 0 else nxt
            if "]" in group[pos:nxt]:
                raise SlurmOutputError(f"node list {whole!r}: ']' without '['")
            names = [n + group[pos:nxt] for n in names]
            pos = nxt
    return names


def _expand_ranges(spec: str, whole: str) -> list[str]:
    out: list[str] = []
    for part in spec.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise SlurmOutputError(f"node list {whole!r}: bad range {part!r} in brackets")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise SlurmOutputError(f"node list {whole!r}: range {part!r} goes backwards")
        if int(hi) - int(lo) + len(out) > _MAX_EXPANDED:
            raise SlurmOutputError(f"node list {whole!r} expands to more than {_MAX_EXPANDED} names")
        width = len(lo)   # "01-04" keeps two digits; "1-10" has width 1 and pads nothing
        out.extend(f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
    return out


# ------------------------------------------------------------------------------------ exit codes
@dataclasses.dataclass(frozen=True, slots=True)
class ExitInfo:
    """How a job's process ended: `exit_code` when it exited, `signal` when a signal killed it."""

    exit_code: int | None = None
    signal: int | None = None


def parse_exit_code(text: str) -> ExitInfo:
    """sacct/scontrol `ExitCode=code:signal`: `3:0` -> exit 3, `0:9` -> signal 9, `` -> unknown."""
    text = text.strip()
    m = re.fullmatch(r"(\d+):(\d+)", text)
    if not m:
        if text:
            log.warning("unreadable Slurm exit code %r, ignored", text)
        return ExitInfo()
    code, sig = int(m.group(1)), int(m.group(2))
    if sig:
        # a signal death: "0:9". Slurm puts 0 in the code part then; keep a non-zero one if present.
        return ExitInfo(exit_code=code or None, signal=sig)
    return ExitInfo(exit_code=code, signal=None)


def parse_wait_status(text: str) -> ExitInfo:
    """squeue `exit_code`: the raw wait(2) status - 768 is `exit 3`, 9 is SIGKILL."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        if text not in ("", "N/A"):
            log.warning("unreadable squeue exit status %r, ignored", text)
        return ExitInfo()
    status = int(text)
    sig = status & 0x7F
    if sig:
        return ExitInfo(exit_code=None, signal=sig)
    return ExitInfo(exit_code=(status >> 8) & 0xFF, signal=None)


# ------------------------------------------------------------------------------------ job states
# Short codes (squeue %t) and the states JobState has no member for. Where a state means "held or
# about to run again" it maps to the closest active state, so the controller keeps waiting.
_JOB_STATE_ALIASES: dict[str, JobState] = {
    "PD": JobState.PENDING, "CF": JobState.CONFIGURING, "R": JobState.RUNNING,
    "CG": JobState.COMPLETING, "S": JobState.SUSPENDED, "RQ": JobState.REQUEUED,
    "RS": JobState.RESIZING, "CD": JobState.COMPLETED, "F": JobState.FAILED,
    "CA": JobState.CANCELLED, "TO": JobState.TIMEOUT, "NF": JobState.NODE_FAIL,
    "OOM": JobState.OUT_OF_MEMORY, "PR": JobState.PREEMPTED, "BF": JobState.BOOT_FAIL,
    "DL": JobState.DEADLINE,
    "RH": JobState.REQUEUED, "REQUEUE_HOLD": JobState.REQUEUED,
    "RF": JobState.REQUEUED, "REQUEUE_FED": JobState.REQUEUED,
    "RD": JobState.PENDING, "RESV_DEL_HOLD": JobState.PENDING,
    "SE": JobState.REQUEUED, "SPECIAL_EXIT": JobState.REQUEUED,   # requeued and held after an exit code
    "SO": JobState.COMPLETING, "STAGE_OUT": JobState.COMPLETING,
    "ST": JobState.SUSPENDED, "STOPPED": JobState.SUSPENDED,      # SIGSTOPped, still holds its nodes
    "SI": JobState.RUNNING, "SIGNALING": JobState.RUNNING,
    "RV": JobState.CANCELLED, "REVOKED": JobState.CANCELLED,      # federation: started on a sibling
    "LAUNCH_FAILED": JobState.FAILED,
}


def parse_job_state(text: str) -> JobState:
    """`RUNNING`, `CANCELLED by 0`, `CANCELLED+` (truncated sacct), `PD`, ... -> JobState.

    Anything unknown is UNKNOWN (logged), never an exception: a new Slurm state must not stop
    the controller.
    """
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    if not word:
        return JobState.UNKNOWN
    try:
        return JobState(word)
    except ValueError:
        pass
    state = _JOB_STATE_ALIASES.get(word)
    if state is None:
        log.warning("unknown Slurm job state %r, reported as UNKNOWN", text)
        return JobState.UNKNOWN
    return state


def _clean_reason(text: str) -> str:
    text = text.strip()
    return "" if text in ("None", "(null)", "N/A") else text


# ------------------------------------------------------------------------------------ node states
# Flags Slurm appends to a short/long node state; "*" is the one that matters (not responding).
_NODE_SUFFIXES = "*~#!%$@^-"
_DOWN_WORDS = frozenset({"down", "fail", "failing", "failg", "not_responding", "inval", "invalid", "invalid_reg"})
_DRAIN_WORDS = frozenset({"drain", "drained", "draining", "drng"})
_OK_WORDS = frozenset({
    "idle", "alloc", "allocated", "mix", "mixed", "comp", "completing", "resv", "reserved",
    "maint", "plnd", "planned", "blocked", "npc", "perfctrs", "boot", "booting", "powered_down",
    "powering_down", "powering_up", "power_down", "power_up", "powered_off", "cloud",
    "reboot_requested", "reboot_issued", "dynamic_future", "dynamic_norm",
})
_UNKNOWN_WORDS = frozenset({"unk", "unknown", "future", "futr", "end"})


def node_health(state: str) -> NodeHealth:
    """Map any sinfo/scontrol node state (`down*`, `mixed+drain`, `drng`, `idle~`) to NodeHealth.

    DOWN wins over DRAIN (a drained node that stopped answering is gone); a `*` suffix (not
    responding) is DOWN even while the base state still says idle/alloc - slurmctld marks the
    node down a few seconds later anyway, and the roles on it are already unreachable.
    """
    s = state.strip().lower()
    if not s:
        return NodeHealth.UNKNOWN
    not_responding = "*" in s
    words = [w.strip(_NODE_SUFFIXES) for w in s.split("+")]
    if not_responding or any(w in _DOWN_WORDS for w in words):
        return NodeHealth.DOWN
    if any(w in _DRAIN_WORDS for w in words):
        return NodeHealth.DRAIN
    if words[0] in _UNKNOWN_WORDS:
        return NodeHealth.UNKNOWN
    if words[0] in _OK_WORDS:
        return NodeHealth.OK
    log.warning("unknown Slurm node state %r, reported as UNKNOWN", state)
    return NodeHealth.UNKNOWN


# ------------------------------------------------------------------------------------ records
# States in which the role's own process decided how the job ended. In the others Slurm ended
# it (cancel, time limit, node failure, ...) and the exit status is an artefact that even
# differs by source: squeue says SIGTERM/143 for a cancelled job where sacct says 0:0.
_OWN_EXIT_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.OUT_OF_MEMORY})


def _exit_of(state: JobState, info: ExitInfo) -> ExitInfo:
    return info if state in _OWN_EXIT_STATES else ExitInfo()


@dataclasses.dataclass(frozen=True, slots=True)
class SqueueRecord:
    """One job (or het component) as `squeue` shows it; `raw_id` is the plain numeric id."""

    job_id: str            # "12", "9+1", "7_3"
    raw_id: str            # "12", "10", "15"
    state: JobState
    state_text: str
    exit: ExitInfo
    reason: str
    nodes: tuple[str, ...]
    name: str

    def to_status(self) -> JobStatus:
        """JobStatus for the controller; exit code/signal only when the role's process ended the job."""
        ex = _exit_of(self.state, self.exit)
        return JobStatus(job_id=self.job_id, state=self.state, nodes=self.nodes, exit_code=ex.exit_code,
                         signal=ex.signal, reason=self.reason)


@dataclasses.dataclass(frozen=True, slots=True)
class SacctRecord:
    """One job allocation line of `sacct -X --parsable2` (steps are not asked for)."""

    job_id: str
    raw_id: str
    state: JobState
    state_text: str        # "CANCELLED by 0" keeps who cancelled
    exit: ExitInfo
    reason: str
    nodes: tuple[str, ...]
    name: str

    def to_status(self) -> JobStatus:
        """JobStatus for the controller; `CANCELLED by UID` keeps the uid in the reason."""
        reason = self.reason
        extra = self.state_text.strip().split(" ", 1)[1] if " " in self.state_text.strip() else ""
        if extra:
            reason = f"{reason} ({extra})" if reason else extra
        ex = _exit_of(self.state, self.exit)
        return JobStatus(job_id=self.job_id, state=self.state, nodes=self.nodes, exit_code=ex.exit_code,
                         signal=ex.signal, reason=reason)


@dataclasses.dataclass(frozen=True, slots=True)
class SinfoRecord:
    """One node as `sinfo --Node` shows it."""

    name: str
    state: str             # StateComplete, e.g. "allocated+drain", "down+not_responding"
    state_long: str        # StateLong, e.g. "draining", "down*"
    health: NodeHealth
    reason: str

    def to_status(self) -> NodeStatus:
        """NodeStatus for the controller (raw state is the complete one, with every flag)."""
        return NodeStatus(name=self.name, health=self.health, state=self.state, reason=self.reason)


_JOB_ID = re.compile(r"^\d+([_+]\d+)?$")


def is_job_id(text: str) -> bool:
    """`12`, `9+1` (het component) or `7_3` (array task): what squeue/sacct accept as a job id."""
    return bool(_JOB_ID.match(text))


def _fields(line: str, n: int) -> list[str] | None:
    """Split a `|` line into exactly n fields; extra "|" belong to the last (free text) field."""
    parts = line.split("|", n - 1)
    if len(parts) != n:
        return None
    return parts


def _finish(parsed: int, bad: list[str], command: str) -> None:
    if bad:
        log.warning("%s: skipped %d unreadable line(s), first: %r", command, len(bad), bad[0][:200])
        if not parsed:
            raise SlurmOutputError(
                f"{command} printed output slurm-rl cannot read (first line: {bad[0][:200]!r})",
                hint="slurm-rl reads Slurm 22.05+ output; check `which " + command + "` is the real Slurm command")


def parse_squeue(text: str) -> list[SqueueRecord]:
    """Parse `squeue --noheader --Format=<SQUEUE_FORMAT>` output."""
    out: list[SqueueRecord] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        f = _fields(line, len(SQUEUE_FIELDS))
        if f is None or not _JOB_ID.match(f[0].strip()) or not f[1].strip().isdigit():
            bad.append(line)
            continue
        try:
            nodes = expand_nodelist(f[5])
        except SlurmOutputError:
            bad.append(line)
            continue
        out.append(SqueueRecord(
            job_id=f[0].strip(), raw_id=f[1].strip(), state=parse_job_state(f[2]), state_text=f[2].strip(),
            exit=parse_wait_status(f[3]), reason=_clean_reason(f[4]), nodes=nodes, name=f[6].strip(),
        ))
    _finish(len(out), bad, "squeue")
    return out


def parse_sacct(text: str) -> list[SacctRecord]:
    """Parse `sacct --parsable2` output with a header line (columns found by name).

    Step lines (`12.batch`, `12.0`) are ignored: the allocation line carries the job's state.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    header = lines[0].split("|")
    missing = [c for c in ("JobID", "State", "ExitCode") if c not in header]
    if missing:
        raise SlurmOutputError(f"sacct output has no {', '.join(missing)} column (header: {lines[0][:200]!r})",
                               hint="slurm-rl runs sacct with --parsable2 and a header; a wrapper may strip it")
    col = {name: i for i, name in enumerate(header)}
    out: list[SacctRecord] = []
    bad: list[str] = []

    def get(parts: list[str], name: str) -> str:
        i = col.get(name)
        return parts[i] if i is not None and i < len(parts) else ""

    for line in lines[1:]:
        parts = line.split("|")
        if len(parts) < len(header):
            bad.append(line)
            continue
        if len(parts) > len(header):   # a "|" inside the last column (JobName)
            parts = [*parts[:len(header) - 1], "|".join(parts[len(header) - 1:])]
        job_id = get(parts, "JobID").strip()
        if "." in job_id:              # a step
            continue
        if not _JOB_ID.match(job_id):
            bad.append(line)
            continue
        try:
            nodes = expand_nodelist(get(parts, "NodeList"))
        except SlurmOutputError:
            bad.append(line)
            continue
        state_text = get(parts, "State")
        out.append(SacctRecord(
            job_id=job_id, raw_id=get(parts, "JobIDRaw").strip() or job_id, state=parse_job_state(state_text),
            state_text=state_text.strip(), exit=parse_exit_code(get(parts, "ExitCode")),
            reason=_clean_reason(get(parts, "Reason")), nodes=nodes, name=get(parts, "JobName").strip(),
        ))
    _finish(len(out), bad, "sacct")
    return out


def parse_sinfo(text: str) -> list[SinfoRecord]:
    """Parse `sinfo --noheader --Node --Format=<SINFO_FORMAT>`; a node in several partitions appears once."""
    out: dict[str, SinfoRecord] = {}
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        f = _fields(line, len(SINFO_FIELDS))
        name = f[0].strip() if f else ""
        if f is None or not name or not f[1].strip() or any(c in name for c in "[], "):
            bad.append(line)
            continue
        state = f[1].strip().lower()
        state_long = f[2].strip().lower()
        # both spellings: StateLong has the "*"/"~" suffixes, StateComplete every "+flag"
        health = node_health(f"{state}+{state_long}" if state_long else state)
        out.setdefault(name, SinfoRecord(name=name, state=state, state_long=state_long, health=health,
                                         reason=_clean_reason(f[3])))
    _finish(len(out), bad, "sinfo")
    return list(out.values())


def parse_partitions(text: str) -> tuple[list[str], str | None]:
    """Partition names from `sinfo --noheader --format=%P` (in order, no duplicates) and the
    default one, which sinfo marks with a trailing `*` (None when the cluster has none)."""
    names: list[str] = []
    default: str | None = None
    for line in text.splitlines():
        name = line.strip()
        if not name:
            continue
        if name.endswith("*"):
            name = name[:-1]
            default = name
        if name not in names:
            names.append(name)
    return names, default


def parse_sbatch_job_id(text: str) -> str:
    """`sbatch --parsable` prints `123` or `123;cluster`; anything else is a SlurmOutputError."""
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    job_id = first.split(";", 1)[0]
    if not job_id.isdigit():
        raise SlurmOutputError(f"sbatch --parsable printed {text.strip()[:200]!r}, expected a job id")
    return job_id


def statuses(records: Iterable[SqueueRecord | SacctRecord]) -> dict[str, JobStatus]:
    """JobStatus by id, for records indexed by both their display id and raw id."""
    out: dict[str, JobStatus] = {}
    for r in records:
        st = r.to_status()
        out.setdefault(r.raw_id, st)
        out[r.job_id] = st
    return out


def join_nodes(nodes: Sequence[str]) -> str:
    """A comma list for --exclude/--nodelist (Slurm accepts plain lists; sorted for stable scripts)."""
    return ",".join(sorted(dict.fromkeys(n.strip() for n in nodes if n.strip())))
