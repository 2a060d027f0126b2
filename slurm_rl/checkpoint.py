"""Trainer checkpoints: written asynchronously, renamed into place atomically, verified on load.

    checkpoints/step-000040/   weights.safetensors  optimizer.pt  meta.json (sizes + xxh3 hashes)

A checkpoint directory only exists under its final name once every file is written and synced,
so a crash mid-write leaves a `.tmp` directory that is ignored and cleaned up. On restore each
file is checked against meta.json; a truncated or corrupted checkpoint is skipped and the previous
one used, and the caller is told (to record an event). A full disk fails the save, not the trainer.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

if TYPE_CHECKING:
    import torch

# torch and safetensors are imported where tensors are written or read, not at module level: the
# controller only verifies checkpoints (hashes and meta), and importing torch would cost it ~200 MB.

log = logging.getLogger("slurm_rl.checkpoint")

_NAME = "step-{:06d}"


class CheckpointError(ValueError):
    """A checkpoint file that is not what slurm-rl writes (and is refused, not read)."""


def load_plain(path: Path) -> Any:
    """A torch file of tensors and plain data (dicts, lists, numbers, strings), onto the CPU: never
    unpickled as code (`weights_only`), and a checkpoint written on a GPU restores on a CPU."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise CheckpointError(f"{path} holds objects that are not plain data (tensors, dicts, lists, numbers, "
                              f"strings): refused, not unpickled ({first})") from e


@dataclass(frozen=True)
class SaveResult:
    step: int
    path: Path | None
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Restored:
    step: int
    path: Path
    skipped: tuple[str, ...]       # checkpoints that failed verification, newest first


def _hash_file(path: Path) -> tuple[int, str]:
    h = xxhash.xxh3_64()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


_FILES = ("weights.safetensors", "optimizer.pt")
_UNDONE = ".undone"


def _mtime(d: Path) -> float:
    """When checkpoint directory `d` was written (its meta.json is written last)."""
    for p in (d / "meta.json", d):
        try:
            return p.stat().st_mtime
        except OSError:
            continue
    return 0.0


def list_steps(root: Path) -> list[int]:
    """Steps of the checkpoint directories under root (finished ones: no .tmp)."""
    out = []
    for p in root.glob("step-*"):
        if p.is_dir() and not p.name.endswith(".tmp"):
            try:
                out.append(int(p.name.split("-", 1)[1]))
            except ValueError:
                continue
    return sorted(out)


def verify(root: Path, step: int) -> str:
    """'' if checkpoint `step` is complete and intact, else what is wrong with it. Never raises."""
    d = root / _NAME.format(step)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({e.__class__.__name__})"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or any(not isinstance(files.get(n), dict) for n in _FILES):
        return "meta.json does not describe the checkpoint's files"
    for name in _FILES:
        want = files[name]
        try:
            size, digest = _hash_file(d / name)
        except OSError as e:
            return f"{name} unreadable ({e.__class__.__name__})"
        if size != want.get("size"):
            return f"{name} has {size} bytes, expected {want.get('size')} (truncated?)"
        if digest != want.get("xxh3"):
            return f"{name} checksum mismatch (corrupted)"
    return ""


def signature(root: Path, step: int) -> tuple[tuple[int, int, int] | None, ...]:
    """(inode, size, mtime) of the files `verify` reads: a change means the checkpoint must be checked again."""
    d = root / _NAME.format(step)
    out: list[tuple[int, int, int] | None] = []
    for name in ("meta.json", *_FILES):
        try:
            st = (d / name).stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def newest_valid(root: Path, at_most: int | None = None,
                 cache: dict[int, tuple[tuple[Any, ...], str]] | None = None) -> tuple[Restored | None, list[str]]:
    """Newest intact checkpoint with step <= at_most, and messages about the ones skipped.

    `cache` (step -> (signature, problem)) saves re-hashing an unchanged checkpoint; one whose files
    changed since (damaged, or written again) is verified again.
    """
    skipped: list[str] = []
    for step in reversed(list_steps(root)):
        if at_most is not None and step > at_most:
            continue
        if cache is not None:
            sig = signature(root, step)
            hit = cache.get(step)
            problem = hit[1] if hit is not None and hit[0] == sig else verify(root, step)
            cache[step] = (sig, problem)
        else:
            problem = verify(root, step)
        if not problem:
            return Restored(step, root / _NAME.format(step), tuple(skipped)), skipped
        skipped.append(f"step {step}: {problem}")
    return None, skipped


def put_in_place(tmp: Path, final: Path) -> None:
    """Rename the finished directory `tmp` to `final`, durably. An existing checkpoint of the same
    step is moved aside, not deleted first: there is no moment without one."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except OSError:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    def __init__(self, root: Path, keep: int):
        self.root = root
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        self._q: queue.Queue[tuple[int, dict[str, torch.Tensor], dict[str, Any], dict[str, Any]] | None] = queue.Queue()
        self.done: queue.SimpleQueue[SaveResult] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._worker, name="checkpoint", daemon=True)
        self._thread.start()
        self._pending = 0
        self._lock = threading.Lock()
        for stale in self.root.glob("*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    # ---------------------------------------------------------------- save
    def save_async(self, step: int, weights: Mapping[str, torch.Tensor], optimizer: dict[str, Any],
                   meta: dict[str, Any]) -> None:
        """Queue a save. `weights` must not change afterwards (pass an immutable published version)."""
        with self._lock:
            self._pending += 1
        self._q.put((step, dict(weights), optimizer, meta))

    def save(self, step: int, weights: Mapping[str, torch.Tensor], optimizer: dict[str, Any],
             meta: dict[str, Any]) -> SaveResult:
        return self._write(step, dict(weights), optimizer, meta)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def wait(self, timeout_s: float = 300.0) -> None:
        deadline = time.time() + timeout_s
        while self.pending and time.time() < deadline:
            time.sleep(0.02)

    def _worker(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            step, weights, optimizer, meta = item
            try:
                res = self._write(step, weights, optimizer, meta)
            except BaseException as e:  # the writer must outlive any one failed save
                res = SaveResult(step, None, f"{e.__class__.__name__}: {e}")
            with self._lock:
                self._pending -= 1
            self.done.put(res)

    def _write(self, step: int, weights: dict[str, torch.Tensor], optimizer: dict[str, Any],
               meta: dict[str, Any]) -> SaveResult:
        t0 = time.time()
        final = self.root / _NAME.format(step)
        tmp = self.root / (_NAME.format(step) + ".tmp")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            import torch
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
            torch.save(optimizer, tmp / "optimizer.pt")
            files = {}
            for name in ("weights.safetensors", "optimizer.pt"):
                with open(tmp / name, "rb+") as f:
                    os.fsync(f.fileno())
                size, digest = _hash_file(tmp / name)
                files[name] = {"size": size, "xxh3": digest}
            with open(tmp / "meta.json", "w") as f:
                f.write(json.dumps({"step": step, "time": time.time(), "files": files, **meta}))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            put_in_place(tmp, final)
        except Exception as e:
            # a full disk surfaces as OSError, safetensors' SafetensorError or torch's RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            log.error("checkpoint at step %d failed: %s", step, e)
            return SaveResult(step, None, f"{e.__class__.__name__}: {e}", time.time() - t0)
        self.prune(step)
        return SaveResult(step, final, "", time.time() - t0)

    def prune(self, written: int | None = None) -> None:
        """Keep the newest `keep` checkpoints of the lineage that wrote `written` (default: the one
        written last, by meta.json's mtime); never `written` itself. A checkpoint of a higher step
        than the one just written holds steps that were undone (a rollback resumed below it): it is
        deleted, as is everything `set_aside_after` set aside."""
        steps = self.steps()
        if written is None:
            if not steps:
                return
            written = max(steps, key=lambda s: _mtime(self.root / _NAME.format(s)))
        lineage = [s for s in steps if s <= written]
        drop = [s for s in steps if s > written] + lineage[:-max(self.keep, 1)]
        for s in drop:
            shutil.rmtree(self.root / _NAME.format(s), ignore_errors=True)
        for undone in self.root.glob("*" + _UNDONE):
            shutil.rmtree(undone, ignore_errors=True)

    def set_aside_after(self, step: int) -> list[int]:
        """A trainer resumed at `step`: checkpoints of later steps hold undone steps of an older lineage
        (a restore at their step would take its weights), so they are renamed out of sight now (a
        rename: nothing slow on the restore's path) and deleted by the next save's prune."""
        moved = []
        for s in self.steps():
            if s > step:
                d = self.root / _NAME.format(s)
                shutil.rmtree(d.with_name(d.name + _UNDONE), ignore_errors=True)
                try:
                    os.replace(d, d.with_name(d.name + _UNDONE))
                    moved.append(s)
                except OSError as e:
                    log.warning("cannot set aside checkpoint %s of an undone step: %s", d, e)
        return moved

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=60)

    # ---------------------------------------------------------------- restore
    def steps(self) -> list[int]:
        return list_steps(self.root)

    def verify(self, step: int) -> str:
        """'' if the checkpoint is complete and intact, else what is wrong with it."""
        return verify(self.root, step)

    def newest_valid(self, at_most: int | None = None) -> tuple[Restored | None, list[str]]:
        """Newest intact checkpoint with step <= at_most, and messages about the ones skipped."""
        return newest_valid(self.root, at_most)

    def load_weights(self, step: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.root / _NAME.format(step) / "weights.safetensors"))

    def load_optimizer(self, step: int) -> dict[str, Any]:
        return load_plain(self.root / _NAME.format(step) / "optimizer.pt")

    def meta(self, step: int) -> dict[str, Any]:
        return json.loads((self.root / _NAME.format(step) / "meta.json").read_text())
