"""The command line without real runs: help, completion, every error path, the views at 80 and 120
columns, sweep files, simulate. Runs are fakes written straight into a state store (`fake_run`),
so each test takes milliseconds; tests/test_cli_runs.py does the same against real runs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from rich.console import Console

from slurm_rl.cli import cli
from slurm_rl.cli.view import _parse_since
from slurm_rl.config import RunConfig
from slurm_rl.errors import BadInput
from slurm_rl.report import (
    ettr_breakdown,
    fault_badput,
    open_store,
    report_dict,
    status_dict,
)
from slurm_rl.rundir import RunDir
from slurm_rl.store import Store
from slurm_rl.ui.status import StatusView, activity

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
SIM_DATA = Path(__file__).resolve().parent / "sim" / "data" / "pair-a"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = ("launch", "status", "events", "inject", "stop", "resume", "report", "export", "ls", "sweep", "simulate")


def schema_check(name: str, obj: Any) -> None:
    """Validate against docs/schemas/NAME.json (which must itself be a valid JSON Schema)."""
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(obj, schema)


def invoke(*args: str, **kw: Any) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)


# ----------------------------------------------------------------------------- a fake run
def fake_run(root: Path, name: str = "fake", *, state: str = "running", steps: int = 30) -> RunDir:
    """A run directory with a store as the controller writes it: four roles (one PENDING in the
    queue, one loading, one restoring, one SUSPECT), 30 steps, a trainer fault that rolled two steps
    back and a rollout fault, events. No process runs."""
    run = RunDir(root / name)
    run.create()
    cfg = RunConfig.model_validate({"name": name, "algorithm": {"steps": 100}, "rollout": {"engine": "hf"}})
    run.config.write_text(cfg.to_yaml())
    now = time.time()
    t0 = now - 60.0
    st = Store(run.db)
    try:
        st.set_metas(run_state=state, created=t0 - 5, started=t0, trainer_version=steps, committed=steps - 2,
                     wepoch=1, heartbeat=now)
        if state in ("finished", "failed", "stopped"):
            st.set_metas(ended=now, end_reason=f"{state} for a test")
        # steps 1..steps, 1 s each from t0+10; steps 11, 12 of the first trainer rolled back
        for i in range(1, steps + 1):
            t_end = t0 + 10 + i
            st.conn.execute("INSERT INTO steps(step, wepoch, t_start, t_end, wait_s, state, trainer, n_groups, reward,"
                            " metrics) VALUES(?,?,?,?,?,?,?,?,?,?)",
                            (i, 0, t_end - 1, t_end, 0.2 if i != 20 else 0.9, "committed", "trainer/0#1", 2,
                             0.1 + i / 100, json.dumps({"staleness_mean": 1.0})))
        for i in (11, 12):
            st.conn.execute("INSERT INTO steps(step, wepoch, t_start, t_end, wait_s, state, trainer, n_groups, reward,"
                            " metrics) VALUES(?,?,?,?,?,?,?,?,?,?)",
                            (i, 0, t0 + 10 + i - 1.5, t0 + 10 + i - 0.6, 0.1, "rolled_back", "trainer/0#0", 2, 0.1,
                             "{}"))
        f1 = st.open_fault("trainer/0", "crash", "local1", True, t0 + 22.5)
        st.update_fault(f1, t_detect=t0 + 23, t_decide=t0 + 23, t_scheduled=t0 + 23, t_loaded=t0 + 24,
                        t_synced=t0 + 24.5, t_recovered=t0 + 25, action="promote spare/0", reason="process exited")
        f2 = st.open_fault("rollout/1", "hang", "local3", True, t0 + 29.5)
        st.update_fault(f2, t_detect=t0 + 31, t_decide=t0 + 31, t_scheduled=t0 + 31.5, t_loaded=t0 + 33,
                        t_synced=t0 + 33.2, t_recovered=t0 + 33.5, action="submit rollout/1", reason="hung")
        roles = [("trainer/0", "trainer", 0, "STARTING", "restoring", "step 28", "J1", "local1"),
                 ("rollout/0", "rollout", 0, "READY", "generating", "16 prompts x 8 at v30", "J2", "local2"),
                 ("rollout/1", "rollout", 1, "PENDING", "loading", "", "J5", None),
                 ("spare/0", "spare", 0, "SUSPECT", "idle", "standby", "J4", "local4")]
        for slot, kind, idx, rstate, phase, detail, job, node in roles:
            st.upsert_role(slot, kind, idx, rstate, 2, job, node, phase, 7, steps, None if rstate == "PENDING"
                           else now - (3.0 if rstate == "SUSPECT" else 0.2), 1 if slot == "trainer/0" else 0,
                           detail, now)
            st.record_job(job, slot, 2, "local", "PENDING" if rstate == "PENDING" else "RUNNING", now - 12)
        for kind, slot, dt, msg in [("run_started", None, 0, "run started"),
                                    ("submitted", "rollout/1", 0.1, "rollout/1 submitted"),
                                    ("fault_injected", "trainer/0", 22.5, "injected crash into trainer/0"),
                                    ("dead", "trainer/0", 23, "trainer/0 is DEAD: process exited"),
                                    ("trainer_restored", "trainer/0", 23.1, "spare/0 -> trainer/0"),
                                    ("recovered", "trainer/0", 25, "trainer/0 recovered"),
                                    ("suspect", "spare/0", 58, "spare/0 is SUSPECT: no heartbeat for 1.0s"),
                                    ("submitted", "rollout/1", 48, "rollout/1 incarnation 2 submitted")]:
            st.event(t0 + dt, kind, msg, slot=slot)
    finally:
        st.close()
    run.write_meta(name=name, backend="local", recovery="role-based", created=t0 - 5)
    return run


@pytest.fixture
def fake(tmp_path: Path) -> RunDir:
    return fake_run(tmp_path)


@pytest.fixture
def ended(tmp_path: Path) -> RunDir:
    return fake_run(tmp_path, "ended", state="finished")


# ----------------------------------------------------------------------------- help, version, completion
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    res = invoke(command, "--help")
    assert res.exit_code == 0
    assert "Example" in res.output and f"slurm-rl {command}" in res.output


def test_top_level_help_lists_commands_in_session_order_with_exit_codes() -> None:
    res = invoke("--help")
    assert res.exit_code == 0
    listed = re.findall(r"^  (\w+)\s{2,}", res.output.split("Commands:")[1], re.MULTILINE)
    assert tuple(listed) == COMMANDS
    assert "130 interrupted" in res.output and "_SLURM_RL_COMPLETE=bash_source" in res.output
    assert invoke("--version").exit_code == 0


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert invoke("lauch").exit_code == 2
    assert invoke("status", "--wacth", "x").exit_code == 2


def test_bash_completion_script_and_values(fake: RunDir) -> None:
    script = CliRunner().invoke(cli, [], prog_name="slurm-rl", env={"_SLURM_RL_COMPLETE": "bash_source"})
    assert script.exit_code == 0 and "_slurm_rl_completion" in script.output and "complete -o nosort" in script.output

    def complete(words: str) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        env = {"_SLURM_RL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        res = CliRunner().invoke(cli, [], prog_name="slurm-rl", env=env)
        return [line.split(",", 1)[1] for line in res.output.splitlines() if "," in line]

    assert {"status", "sweep", "simulate"} <= set(complete("slurm-rl s"))
    assert set(complete(f"slurm-rl inject {fake.path} ")) == {"trainer/0", "rollout/0", "rollout/1", "spare/0"}
    assert complete(f"slurm-rl inject {fake.path} rollout/0 --fault n") == ["node-down"]
    assert "dead" in complete(f"slurm-rl events {fake.path} --kind d")


# ----------------------------------------------------------------------------- status
def test_status_json_of_a_fake_run_matches_the_schema(fake: RunDir) -> None:
    res = invoke("status", str(fake.path), "--json")
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    schema_check("status", st)
    assert st["source"] == "store" and not st["live"] and st["state"] == "running"
    by = {r["slot"]: r for r in st["roles"]}
    assert by["rollout/1"]["job_state"] == "PENDING" and by["rollout/1"]["state_age_s"] >= 11
    assert by["trainer/0"]["phase"] == "restoring"


@pytest.mark.parametrize("width", [80, 120])
def test_status_view_fits_the_width_and_reads_without_colour(fake: RunDir, width: int) -> None:
    st = status_dict(fake, live=True)
    con = Console(width=width, record=True, color_system=None, force_terminal=False)
    con.print(StatusView(st))
    text = con.export_text()
    assert not ANSI.search(text)
    assert max(len(line) for line in text.splitlines()) <= width
    for slot in ("trainer/0", "rollout/0", "rollout/1", "spare/0"):
        assert slot in text
    # what is in progress, with how long: queue wait, checkpoint restore, a suspect
    assert re.search(r"rollout/1\s+queued 1\d(\.\d)?s \(job J5\)", text)
    assert re.search(r"trainer/0\s+restoring checkpoint [\d.]+m?\d*s?: step 28", text)
    assert "spare/0    SUSPECT" in text
    assert "[" + "#" * 5 in text            # the progress bar without colour
    if width >= 110:
        assert "heartbeat" in text and "16 prompts x 8 at v30" in text


def test_status_view_in_colour_and_spinners_on_a_terminal(fake: RunDir) -> None:
    con = Console(width=120, record=True, force_terminal=True, color_system="truecolor")
    con.print(StatusView(status_dict(fake, live=True)))
    out = con.export_text(styles=True)
    assert ANSI.search(out)
    assert any(ch in out for ch in "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")


def test_activity_lines_for_each_starting_phase() -> None:
    base = {"slot": "rollout/0", "state": "STARTING", "state_age_s": 4.0, "job_id": "77"}
    assert activity({**base, "phase": "loading", "detail": "starting vllm engine"}) == \
        "loading model 4.0s: starting vllm engine"
    assert activity({**base, "phase": "restoring", "detail": "step 20"}) == "restoring checkpoint 4.0s: step 20"
    assert activity({**base, "phase": "syncing_weights", "detail": "v3 40%"}) == "pulling weights 4.0s: v3 40%"
    assert activity({**base, "state": "PENDING", "job_state": "PENDING", "state_age_s": 125}) == \
        "queued 2m05s (job 77)"
    assert "waiting for it to connect" in activity({**base, "state": "PENDING", "job_state": "RUNNING",
                                                    "job_running_s": 2.0})
    assert activity({**base, "state": "READY", "phase": "generating"}) is None


def test_status_text_and_watch_of_an_ended_run(ended: RunDir) -> None:
    res = invoke("status", str(ended.path))
    assert res.exit_code == 0 and "finished" in res.output and "state store" in res.output
    res = invoke("status", str(ended.path), "--watch")      # the run is over: shows it once, returns
    assert res.exit_code == 0 and "finished" in res.output


def test_status_errors(tmp_path: Path, fake: RunDir) -> None:
    res = invoke("status", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    (tmp_path / "plain").mkdir()
    res = invoke("status", str(tmp_path / "plain"))
    assert res.exit_code == 2 and "not a slurm-rl run directory" in res.output
    res = invoke("status", str(fake.path), "--watch", "--json")
    assert res.exit_code == 2
    fake.db.write_bytes(b"this is not sqlite")
    res = invoke("status", str(fake.path))
    assert res.exit_code == 3 and "state store" in res.output


# ----------------------------------------------------------------------------- events
def test_events_json_filters_and_schema(fake: RunDir) -> None:
    res = invoke("events", str(fake.path), "--json")
    assert res.exit_code == 0
    lines = [json.loads(x) for x in res.output.splitlines()]
    for e in lines:
        schema_check("event", e)
    assert [e["kind"] for e in lines][:3] == ["run_started", "submitted", "fault_injected"]
    assert lines[2]["t_rel"] == pytest.approx(22.5, abs=0.01)
    dead = invoke("events", str(fake.path), "--json", "--kind", "dead", "--kind", "recovered").output.splitlines()
    assert [json.loads(x)["kind"] for x in dead] == ["dead", "recovered"]
    r1 = invoke("events", str(fake.path), "--json", "--slot", "rollout/1").output.splitlines()
    assert {json.loads(x)["slot"] for x in r1} == {"rollout/1"} and len(r1) == 2
    late = invoke("events", str(fake.path), "--json", "--since", "+40s").output.splitlines()
    assert [json.loads(x)["kind"] for x in late] == ["suspect", "submitted"]


def test_events_text_has_relative_times_and_kinds(fake: RunDir) -> None:
    res = invoke("events", str(fake.path))
    assert res.exit_code == 0
    assert re.search(r"\+\s+23\.00s\s+dead\s+trainer/0\s+trainer/0 is DEAD", res.output)
    res = invoke("events", str(fake.path), "--absolute", "--kind", "dead")
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+dead", res.output)


@pytest.mark.parametrize("args, message", [
    (("--kind", "ded"), "did you mean 'dead'"),
    (("--since", "yesterday"), "is not a time"),
    (("--slot", "roll/1"), "is not ROLE/INDEX"),
])
def test_events_errors(fake: RunDir, args: tuple[str, ...], message: str) -> None:
    res = invoke("events", str(fake.path), *args)
    assert res.exit_code == 2 and message in res.output


def test_parse_since_forms() -> None:
    now, t0 = 1_000_000.0, 999_000.0
    assert _parse_since("90s", now, t0) == now - 90
    assert _parse_since("1h30m", now, t0) == now - 5400
    assert _parse_since("+2m", now, t0) == t0 + 120
    assert isinstance(_parse_since("14:05", now, t0), float)
    assert isinstance(_parse_since("2025-01-31T14:05", now, t0), float)
    with pytest.raises(BadInput):
        _parse_since("+10s", now, None)
    with pytest.raises(BadInput):
        _parse_since("soon", now, t0)


# ----------------------------------------------------------------------------- inject / stop / resume
@pytest.mark.parametrize("target, fault, code, message", [
    ("roll/1", "crash", 2, "is not ROLE/INDEX"),
    ("rollout/x", "crash", 2, "is not ROLE/INDEX"),
    ("rollout/1", "crahs", 2, "did you mean 'crash'"),
    ("rollout/1", "exit:x", 2, "exit:N"),
    ("rollout/7", "crash", 2, "has no role rollout/7"),
    ("rollout/1", "crash", 3, "controller of fake is not running"),
])
def test_inject_errors(fake: RunDir, target: str, fault: str, code: int, message: str) -> None:
    res = invoke("inject", str(fake.path), target, "--fault", fault)
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output


def test_inject_resume_stop_on_an_ended_run(ended: RunDir) -> None:
    res = invoke("inject", str(ended.path), "rollout/1", "--fault", "crash")
    assert res.exit_code == 2 and "has ended (finished)" in res.output
    res = invoke("resume", str(ended.path))
    assert res.exit_code == 2 and "nothing to resume" in res.output
    res = invoke("stop", str(ended.path))
    assert res.exit_code == 0 and "already finished" in res.output


def test_stop_without_a_controller_cancels_from_the_store(fake: RunDir) -> None:
    res = invoke("stop", str(fake.path))
    assert res.exit_code == 0, res.output
    assert "stopped" in res.output
    assert report_dict(fake)["state"] == "stopped"


# ----------------------------------------------------------------------------- report / ls
def test_report_json_text_and_plots_of_a_fake_run(fake: RunDir, tmp_path: Path) -> None:
    res = invoke("report", str(fake.path), "--json", "--plot", str(tmp_path / "plots"))
    assert res.exit_code == 0
    rep = json.loads(res.stdout)
    schema_check("report", rep)
    assert {(m["role"], m["kind"]) for m in rep["mttr"]} == {("trainer", "crash"), ("rollout", "hang")}
    for name in ("reward.png", "goodput.png", "recovery.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 5000
    for width in (80, 120):
        text = invoke("report", str(fake.path), env={"COLUMNS": str(width)}).output
        assert "MTTR" in text and "replay" in text and "idle" in text
        assert max(len(line) for line in text.splitlines()) <= width


def test_fault_badput_adds_up_to_the_run_badput(fake: RunDir) -> None:
    conn = open_store(fake)
    try:
        meta = {r[0]: json.loads(r[1]) for r in conn.execute("SELECT key, value FROM meta")}
        now = time.time()
        per = fault_badput(conn, meta, now)
        total = ettr_breakdown(conn, meta, now)
    finally:
        conn.close()
    assert sum(v["idle_s"] for v in per.values()) == pytest.approx(total["idle_s"], abs=1e-6)
    assert sum(v["replay_s"] for v in per.values()) == pytest.approx(total["replay_s"], abs=1e-6)
    # the rolled-back steps belong to the trainer crash (fault 1), not to the rollout hang
    assert per[1]["replay_s"] == pytest.approx(1.8, abs=1e-6) and per[2]["replay_s"] == 0
    assert total["idle_s"] > 0 and per[2]["idle_s"] == pytest.approx(total["idle_s"])


def test_report_errors(tmp_path: Path, fake: RunDir) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = invoke("report", str(fake.path), "--plot", str(blocker / "plots"))
    assert res.exit_code == 2 and "cannot write plots" in res.output
    assert invoke("report", str(tmp_path / "nope")).exit_code == 2


def test_ls_lists_runs_and_sweeps(tmp_path: Path) -> None:
    fake_run(tmp_path, "a", state="finished")
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "sweep.json").write_text("{}")
    fake_run(tmp_path / "sw", "b", state="failed")
    (tmp_path / "not-a-run").mkdir()
    res = invoke("ls", str(tmp_path), "--json")
    assert res.exit_code == 0
    rows = json.loads(res.output)
    schema_check("ls", rows)
    assert [(r["run"], r["state"]) for r in rows] == [("a", "finished"), ("sw/b", "failed")]
    text = invoke("ls", str(tmp_path), env={"COLUMNS": "80"}).output
    assert "sw/b" in text and max(len(line) for line in text.splitlines()) <= 80


def test_ls_errors_and_empty(tmp_path: Path) -> None:
    res = invoke("ls", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "is not a directory" in res.output
    res = invoke("ls", str(tmp_path))
    assert res.exit_code == 0 and "no runs" in res.output


# ----------------------------------------------------------------------------- launch errors
def test_launch_errors_name_the_file_and_key(tmp_path: Path) -> None:
    res = invoke("launch", str(tmp_path / "missing.yaml"))
    assert res.exit_code == 2 and "does not exist" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  replcas: 2\n")
    res = invoke("launch", str(bad))
    assert res.exit_code == 2 and f"{bad}:2" in res.output and "Did you mean 'rollout.replicas'" in res.output
    res = invoke("launch", "configs/demo.yaml", "--set", "rollout.replicas=0")
    assert res.exit_code == 2 and "rollout.replicas" in res.output


# ----------------------------------------------------------------------------- sweep files
def write(tmp_path: Path, text: str, name: str = "sw.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """\
name: t
base: {base}
max_concurrent: 2
set:
  rollout.engine: hf
grid:
  recovery.policy: [role-based, full-restart]
  rollout.replicas: [1, 2]
runs:
  - {{name: a}}
  - {{name: b, spare.replicas: 0}}
metrics: [steps, ettr, mttr_s]
"""


def test_sweep_dry_run_lists_grid_times_list(tmp_path: Path) -> None:
    f = write(tmp_path, GOOD.format(base=Path("configs/demo.yaml").resolve()))
    res = invoke("sweep", str(f), "--dry-run", "--json", "--runs-dir", str(tmp_path / "runs"))
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    schema_check("sweep-plan", plan)
    assert len(plan["runs"]) == 8 and plan["keys"] == ["recovery.policy", "rollout.replicas", "spare.replicas"]
    names = [r["run"] for r in plan["runs"]]
    assert len(set(names)) == 8 and names[0] == "a_1-role-based_rollout.replicas-1"
    assert plan["runs"][-1]["overrides"] == {"rollout.engine": "hf", "recovery.policy": "full-restart",
                                             "rollout.replicas": 2, "spare.replicas": 0}
    assert plan["summary_csv"] == str(tmp_path / "runs" / "t" / "summary.csv")
    text = invoke("sweep", str(f), "--dry-run").output
    assert "8 runs" in text and "full-restart" in text
    assert not (tmp_path / "runs").exists()                 # a dry run writes nothing


def test_sweep_base_is_found_next_to_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(Path("configs/demo.yaml").read_text())
    f = write(tmp_path, "base: base.yaml\ngrid: {algorithm.steps: [5, 10]}\n")
    plan = json.loads(invoke("sweep", str(f), "--dry-run", "--json").output)
    assert plan["sweep"] == "sw" and plan["base"] == str(tmp_path / "base.yaml") and len(plan["runs"]) == 2
    assert plan["runs"][0]["run"] == "1-steps-5"


@pytest.mark.parametrize("text, where, message", [
    ("base: {base}\ngird:\n  rollout.replicas: [1]\n", ":2", "unknown key 'gird'. Did you mean 'grid'?"),
    ("base: {base}\ngrid:\n  rollout.replcas: [1, 2]\n", ":3", "Did you mean 'rollout.replicas'?"),
    ("base: {base}\ngrid:\n  rollout: [1, 2]\n", ":3", "'rollout' is a section"),
    ("base: {base}\ngrid:\n  rollout.replicas: [1, 0]\n", ":3", "run '2-replicas-0'"),
    ("base: {base}\ngrid:\n  rollout.replicas: []\n", ":3", "has no values"),
    ("base: {base}\nset:\n  recovery.policy: sometimes\n", ":3", "recovery.policy: must be"),
    ("base: {base}\nruns:\n  - {{name: x}}\n  - {{name: x}}\n", ":4", "'x' is used twice"),
    ("base: {base}\nruns:\n  - [1, 2]\n", ":3", "must be a mapping"),
    ("base: {base}\nruns: 3\n", ":2", "must be a list"),
    ("base: {base}\nmetrics: [ettr, mtr_s]\n", ":2", "Did you mean 'mttr_s'?"),
    ("base: {base}\nmax_concurrent: 0\n", ":2", "max_concurrent"),
    ("base: {base}\nname: 'has space'\n", ":2", "not usable as a directory name"),
    ("base: nowhere.yaml\n", ":1", "not found"),
    ("grid: {{rollout.replicas: [1]}}\n", "sw.yaml", "base:"),
    ("base: {base}\ngrid: [oops\n", ":3", "not valid YAML"),
    ("- just\n- a list\n", "sw.yaml", "a sweep file is a mapping"),
])
def test_bad_sweep_files_are_exit_2_with_file_line_and_key(tmp_path: Path, text: str, where: str,
                                                          message: str) -> None:
    f = write(tmp_path, text.format(base=Path("configs/demo.yaml").resolve()))
    res = invoke("sweep", str(f), "--dry-run")
    assert res.exit_code == 2, res.output
    assert message in res.output and where in res.output and "Traceback" not in res.output


def test_sweep_missing_file_and_bad_set(tmp_path: Path) -> None:
    assert invoke("sweep", str(tmp_path / "none.yaml")).exit_code == 2
    res = invoke("sweep", "configs/sweep-example.yaml", "--dry-run", "--set", "rollout.engin=hf")
    assert res.exit_code == 2 and "Did you mean 'rollout.engine'" in res.output


def test_the_example_sweep_is_valid() -> None:
    res = invoke("sweep", "configs/sweep-example.yaml", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert len(plan["runs"]) == 4 and plan["max_concurrent"] == 2
    assert all(r["overrides"]["backend"] == "local" and r["overrides"]["rollout.engine"] == "hf"
               for r in plan["runs"])


# ----------------------------------------------------------------------------- simulate
def test_simulate_table_json(tmp_path: Path) -> None:
    res = invoke("simulate", "--rates", "0,0.1", "--trials", "1", "--spares", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    schema_check("simulate", out)
    rows = out["table"]["rows"]
    assert {(r["policy"], r["spares"]) for r in rows} == {("role-based", 0), ("role-based", 1),
                                                          ("full-restart", 0), ("full-restart", 1)}
    assert len(rows) == 3 * 4                                # 2 rates + the 10%-of-nodes row, x4 columns
    text = invoke("simulate", "--rates", "0.1", "--trials", "1", "--fraction-failing", "0").output
    assert "ETTR vs failure rate" in text and "role, 2 spares" in text


def test_simulate_with_a_trainer_shaped_standby_beats_cold_trainer_restarts() -> None:
    args = ("simulate", "--rates", "0.2", "--fraction-failing", "0", "--trials", "2", "--days", "1", "--spares", "1",
            "--json")
    base = json.loads(invoke(*args).output)
    res = invoke(*args, "--trainer-spare")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    schema_check("simulate", out)
    assert out["table"]["config"]["topology"]["trainer_spares"] == 1

    def ettr(o: dict, policy: str) -> float:
        return next(r["ettr"]["mean"] for r in o["table"]["rows"] if r["policy"] == policy and r["spares"] == 0)

    assert ettr(out, "role-based") > ettr(base, "role-based")


def test_simulate_validation_against_measured_reports() -> None:
    res = invoke("simulate", "--measured", str(SIM_DATA / "role-based.json"), str(SIM_DATA / "full-restart.json"),
                 "--bench-config", str(SIM_DATA / "config.yaml"), "--no-table", "--trials", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    schema_check("simulate", out)
    assert [r["policy"] for r in out["validation"][0]["rows"]] == ["role-based", "full-restart"]


@pytest.mark.parametrize("args, message", [
    (("--rates", "a,b"), "comma-separated"),
    (("--kinds", "meteor=1"), "KIND=WEIGHT"),
    (("--trials", "0"), "--trials"),
    (("--no-table",), "nothing to do"),
    (("--measured", "/nope/a.json", "/nope/b.json", "--no-table"), "cannot read report"),
])
def test_simulate_errors(args: tuple[str, ...], message: str) -> None:
    res = invoke("simulate", *args)
    assert res.exit_code == 2 and message in res.output
