"""Decide what a start does with its run directory: start fresh, resume, or refuse. Runs before any model loads.

- `trainer.resume=auto` (default): resume from the newest intact checkpoint of RUN_DIR/checkpoints; with none,
  start fresh, except when the folder holds a finished run (summary.json), which is never overwritten.
- `trainer.resume=never`: start fresh; a folder that already holds a run is refused.
- `trainer.resume=PATH`: resume from that checkpoint folder.
- `trainer.overwrite=true`: delete the previous run's outputs and start fresh.

On resume, `metrics.jsonl` is cut back to the checkpoint's step (no duplicated steps), the data fingerprint stored
at the first start must match (the checkpoint's data order and position mean nothing on other data), and the
`PREEMPTED` marker is removed. Only the main process (RANK 0) changes files; every rank takes the same decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from po import checkpoints
from po.distributed import is_main_process
from po.errors import ConfigError, POError
from po.guard import REPORT
from po.preemption import MARKER

log = logging.getLogger(__name__)

FINGERPRINT = "data_fingerprint.json"
OUTPUTS = ("checkpoints", "metrics.jsonl", "summary.json", "model", MARKER, FINGERPRINT, REPORT)


def data_fingerprint(data_cfg: DictConfig) -> dict:
    """sha256 of every local data file the `data` group reads, plus a hash of the group's settings.

    Hub datasets (`data.path` that is no local file) are recorded by name only: their content is not checked.
    """
    from po.data.sources import BUILTIN, SUFFIXES

    files = {}
    for key in ("path", "eval_path"):
        value = data_cfg.get(key)
        if not value:
            continue
        value = str(BUILTIN[value]()) if value in BUILTIN else value
        local = Path(value).expanduser()
        found = sorted(p for p in local.rglob("*") if p.suffix in SUFFIXES) if local.is_dir() else [local]
        for path in found:
            if path.is_file():
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                files[str(path.resolve())] = digest.hexdigest()
    settings = json.dumps(OmegaConf.to_container(data_cfg, resolve=True), sort_keys=True, default=str)
    return {"files": files, "settings": hashlib.sha256(settings.encode()).hexdigest()}


def check_fingerprint(run_dir: Path, current: dict) -> None:
    stored_path = run_dir / FINGERPRINT
    if not stored_path.is_file():
        return
    stored = json.loads(stored_path.read_text())
    advice = ("resuming would continue a data order and position that no longer exist. Restore the original data, "
              "or start a new run (a new hydra.run.dir, or trainer.overwrite=true)")
    for path, digest in stored["files"].items():
        if current["files"].get(path) != digest:
            state = "is missing" if path not in current["files"] else "has changed (sha256 differs)"
            raise POError(f"data file {path} {state} since this run started ({stored_path}); {advice}")
    extra = sorted(set(current["files"]) - set(stored["files"]))
    if extra:
        raise POError(f"data file {extra[0]} was not part of this run when it started ({stored_path}); {advice}")
    if stored["settings"] != current["settings"]:
        raise POError(f"the data settings (data.*) differ from those this run started with ({stored_path}); {advice}")


def truncate_log(path: Path, step: int) -> None:
    """Keep the records of `path` (JSON lines) up to `step`; drop the interrupted run's end-of-training record
    and any line a kill cut in half."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= step and "train_runtime" not in record:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def eval_before_from_metrics(run_dir: Path) -> dict:
    """The evaluation logged before the first step (step 0) of this run, for the summary of a resumed run."""
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step") == 0 and any(k.startswith("eval_") for k in record):
            return {k: v for k, v in record.items() if k != "step"}
    return {}


def previous_outputs(run_dir: Path) -> list[str]:
    """What a previous run left in `run_dir` (Hydra's own .hydra/ and log files do not count)."""
    found = []
    ckpt = run_dir / "checkpoints"
    if ckpt.is_dir() and any(ckpt.iterdir()):
        found.append("checkpoints/")
    for name in ("summary.json", "metrics.jsonl", "model"):
        if (run_dir / name).exists():
            found.append(name)
    return found


def _start_fresh(run_dir: Path, fingerprint: dict, clear: bool) -> None:
    if not is_main_process():
        return
    if clear:
        for name in OUTPUTS:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (run_dir / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1))


def _resume_from(run_dir: Path, checkpoint: Path, fingerprint: dict) -> str:
    check_fingerprint(run_dir, fingerprint)
    step = checkpoints.step_of(checkpoint)
    if step is None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step = int(state["global_step"])
    if is_main_process():
        if checkpoint.parent.resolve() == (run_dir / "checkpoints").resolve():
            for moved in checkpoints.set_aside_newer(checkpoint.parent, step):
                log.warning("set aside %s: it is newer than the checkpoint this run resumes from", moved)
        for name in ("metrics.jsonl", REPORT):
            truncate_log(run_dir / name, step)
        (run_dir / MARKER).unlink(missing_ok=True)
        if not (run_dir / FINGERPRINT).is_file():
            (run_dir / FINGERPRINT).write_text(json.dumps(fingerprint, indent=1))
    log.info("resuming from %s (step %d)", checkpoint, step)
    return str(checkpoint)


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> str | None:
    """Apply `trainer.resume` / `trainer.overwrite` to `run_dir`; return the checkpoint to resume from, or None."""
    run_dir = Path(run_dir)
    resume = str(cfg.trainer.get("resume", "auto"))
    overwrite = bool(cfg.trainer.get("overwrite", False))
    fingerprint = data_fingerprint(cfg.data)
    output_dir = run_dir / "checkpoints"
    existing = previous_outputs(run_dir)
    if overwrite:
        if existing:
            log.warning("trainer.overwrite=true: deleting the previous run's %s in %s", ", ".join(existing), run_dir)
        _start_fresh(run_dir, fingerprint, clear=True)
        return None
    if resume == "never":
        if existing:
            raise ConfigError(
                f"run directory {run_dir} already holds a run ({', '.join(existing)}); choose a new hydra.run.dir, "
                "continue it with trainer.resume=auto, or replace it with trainer.overwrite=true")
        _start_fresh(run_dir, fingerprint, clear=False)
        return None
    if resume != "auto":
        checkpoint = Path(resume).expanduser()
        if not (checkpoint / "trainer_state.json").is_file():
            raise ConfigError(f"trainer.resume={resume}: not a checkpoint folder (no trainer_state.json)")
        if checkpoints.read_manifest(checkpoint) is None:
            log.warning("%s has no %s: resuming without checking its files", checkpoint, checkpoints.MANIFEST)
        else:
            problem = checkpoints.verify(checkpoint)
            if problem:
                raise POError(f"trainer.resume={resume}: this checkpoint is damaged: {problem}; "
                              "pick another checkpoint or use trainer.resume=auto")
        return _resume_from(run_dir, checkpoint, fingerprint)
    if is_main_process():
        checkpoints.remove_incomplete(output_dir)
    checkpoint, skipped = checkpoints.newest_complete(output_dir)
    for reason in skipped:
        log.warning("ignoring checkpoint %s", reason)
    if checkpoint is not None:
        return _resume_from(run_dir, checkpoint, fingerprint)
    if skipped:
        raise POError(f"no intact checkpoint in {output_dir} ({'; '.join(skipped)}); resume from a specific one "
                      "with trainer.resume=PATH, or start over with trainer.overwrite=true")
    if (run_dir / "summary.json").is_file():
        raise ConfigError(
            f"run directory {run_dir} holds a finished run (summary.json) and no checkpoint to resume; choose a new "
            "hydra.run.dir, or replace it with trainer.overwrite=true")
    if existing:
        check_fingerprint(run_dir, fingerprint)
        log.warning("run directory %s has outputs (%s) but no checkpoint: the previous attempt stopped before its "
                    "first checkpoint; starting over", run_dir, ", ".join(existing))
    _start_fresh(run_dir, fingerprint, clear=bool(existing))
    return None
