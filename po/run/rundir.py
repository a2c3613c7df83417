"""Decide what a start does with its run directory: start fresh, resume, or refuse. Runs before any model loads.

- A finished run (summary.json) is never changed: every start is refused unless `trainer.overwrite=true`
  (`po.run.lock.refuse_finished`, checked before anything is written).
- `trainer.resume=auto` (default): resume from the newest intact checkpoint of RUN_DIR/checkpoints; with none,
  start fresh.
- `trainer.resume=never`: start fresh; a folder that already holds a run is refused.
- `trainer.resume=PATH`: resume from that checkpoint folder.
- `trainer.overwrite=true`: delete the previous run's outputs and start fresh.

Trust: a checkpoint holds pickles (optimizer, scheduler, RNG and DeepSpeed states) and unpickling can run any code.
A start therefore resumes only from checkpoints this run directory wrote itself: each checkpoint's manifest carries
the run id that the first start stored in RUN_DIR/run_id. Any other checkpoint (`trainer.resume=PATH` elsewhere, or
one copied into RUN_DIR/checkpoints) needs `trainer.trust_checkpoint=true`.

On resume, `metrics.jsonl` is cut back to what was logged up to the checkpoint (no duplicated steps), the data
fingerprint stored at the first start must match (the checkpoint's data order and position mean nothing on other
data), and the `PREEMPTED` marker is removed. `prepare_run_dir` runs on global rank 0 only, while it holds the run
directory's lock (`po.run.lock.claim_run_dir`); the other ranks receive its `RunStart`.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from po.atomic import remove_stale_temporaries, write_json_atomic, write_text_atomic
from po.data.options import sources_of
from po.data.sources import BUILTIN, SUFFIXES
from po.errors import ConfigError, POError
from po.fingerprint import json_sha256, sha256_file
from po.run.lock import refuse_finished
from po.run.paths import RunPaths
from po.trainer import checkpoints

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunStart:
    """What `prepare_run_dir` decided (sent from rank 0 to every rank)."""

    resume: str | None          # the checkpoint to resume from, or None for a fresh start
    run_id: str                 # this run's id, written into every checkpoint's manifest
    record_fingerprint: bool    # no data fingerprint stored yet: store it once the data is loaded
    replaced: bool = False      # trainer.overwrite=true removed a previous run


def hub_revision(dataset_id: str) -> str:
    """The commit of the local Hugging Face cache's snapshot of `dataset_id`, found without network."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=dataset_id, repo_type="dataset", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - not cached, not a valid id: recorded as such
        return f"unresolved: no snapshot in the local Hugging Face cache ({type(exc).__name__})"
    return Path(folder).name


def data_sources_fingerprint(data_cfg: DictConfig) -> dict:
    """What the `data` group reads, so that a resume can tell whether it changed.

    Sources: `data.path` and `data.eval_path`, or the `path` and `eval_path` of every `data.mixture` entry.
    - files: sha256 of every local data file (for a folder, every data file under it), by resolved path;
    - hub: for each Hugging Face dataset id, the revision (commit) of its snapshot in the local cache, or
      "unresolved: ..." when there is none (then its content cannot be checked);
    - settings: sha256 of the group's settings (mixture weights and options included).
    """
    files, hub = {}, {}
    for source in sources_of(data_cfg):
        for value in (source.path, source.eval_path):
            if not value or value == "None":
                continue
            value = str(BUILTIN[value]()) if value in BUILTIN else value
            local = Path(value).expanduser()
            if local.is_dir():
                found = sorted(p for p in local.rglob("*") if p.suffix in SUFFIXES and p.is_file())
            elif local.is_file():
                found = [local]
            elif local.suffix in SUFFIXES or value.startswith((".", "/", "~")):
                continue  # a missing local file: loading the data reports it
            else:
                hub[value] = hub_revision(value)
                continue
            for path in found:
                files[str(path.resolve())] = sha256_file(path)
    return {"files": files, "hub": hub, "settings": json_sha256(OmegaConf.to_container(data_cfg, resolve=True))}


def record_fingerprint(paths: RunPaths, data_cfg: DictConfig) -> None:
    """Store the data fingerprint (after the data is loaded, so that hub datasets are in the local cache)."""
    write_json_atomic(paths.data_fingerprint, data_sources_fingerprint(data_cfg), indent=1)


def check_fingerprint(paths: RunPaths, data_cfg: DictConfig) -> None:
    """Refuse (one line naming the file or dataset) when the data differs from what this run started with."""
    stored_path = paths.data_fingerprint
    if not stored_path.is_file():
        return
    stored = json.loads(stored_path.read_text())
    current = data_sources_fingerprint(data_cfg)
    advice = ("resuming would continue a data order and position that no longer exist. Restore the original data, "
              "or start a new run (a new hydra.run.dir, or trainer.overwrite=true)")
    for path, digest in stored["files"].items():
        if current["files"].get(path) != digest:
            state = "is missing" if path not in current["files"] else "has changed (sha256 differs)"
            raise POError(f"data file {path} {state} since this run started ({stored_path}); {advice}")
    extra = sorted(set(current["files"]) - set(stored["files"]))
    if extra:
        raise POError(f"data file {extra[0]} was not part of this run when it started ({stored_path}); {advice}")
    for dataset, revision in stored.get("hub", {}).items():
        now = current["hub"].get(dataset, "not a data source any more")
        if revision.startswith("unresolved"):
            log.warning("Hugging Face dataset %s: its revision was not known when this run started (%s), so its "
                        "content cannot be checked now", dataset, revision)
        elif now != revision:
            raise POError(f"Hugging Face dataset {dataset} is now at revision {now} in the local cache; this run "
                          f"started on revision {revision} ({stored_path}); {advice}")
    if stored["settings"] != current["settings"]:
        raise POError(f"the data settings (data.*) differ from those this run started with ({stored_path}); {advice}")


def truncate_log(path: Path, step: int, keep_at_step: int | None = None) -> None:
    """Keep the records of `path` (JSON lines) up to `step`; drop the interrupted run's end-of-training record
    and any line a kill cut in half. `keep_at_step`: keep only the first N records logged at `step` itself (those
    logged before its checkpoint was saved; a final evaluation logged later at the same step is dropped)."""
    if not path.is_file():
        return
    kept, at_step = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) > step or "train_runtime" in record:
            continue
        if record.get("step", 0) == step:
            at_step += 1
            if keep_at_step is not None and at_step > keep_at_step:
                continue
        kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def eval_before_from_metrics(paths: RunPaths) -> dict:
    """The evaluation logged before the first step (step 0) of this run, for the summary of a resumed run."""
    path = paths.metrics
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step") == 0 and any(k.startswith("eval_") for k in record):
            return {k: v for k, v in record.items() if k != "step"}
    return {}


def previous_outputs(paths: RunPaths) -> list[str]:
    """What a previous run left in the run directory (Hydra's .hydra/ and log files and po's lock file do not
    count)."""
    found = []
    if paths.checkpoints.is_dir() and any(paths.checkpoints.iterdir()):
        found.append("checkpoints/")
    for path in (paths.summary, paths.metrics, paths.model):
        if path.exists():
            found.append(path.name)
    return found


def read_run_id(paths: RunPaths) -> str | None:
    try:
        return paths.run_id.read_text().strip() or None
    except OSError:
        return None


def _new_run_id(paths: RunPaths) -> str:
    run_id = uuid.uuid4().hex
    write_text_atomic(paths.run_id, run_id + "\n")
    return run_id


def _clear(targets: tuple[Path, ...]) -> None:
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _start_fresh(paths: RunPaths, clear: bool, replaced: bool = False) -> RunStart:
    if clear:
        _clear(paths.outputs() + ((paths.hydra,) if replaced else ()))
    return RunStart(resume=None, run_id=_new_run_id(paths), record_fingerprint=True, replaced=replaced)


def _logged_at(checkpoint: Path, step: int) -> int | None:
    """How many records the Trainer had logged at `step` when it saved `checkpoint` (None when unknown)."""
    try:
        history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    except (OSError, ValueError, KeyError):
        return None
    return sum(1 for entry in history if entry.get("step") == step)


def require_trust(checkpoint: Path, paths: RunPaths, trust: bool, how: str) -> None:
    """Refuse a checkpoint this run directory did not write, unless `trainer.trust_checkpoint=true`."""
    own_folder = checkpoint.resolve().parent == paths.checkpoints.resolve()
    run_id = read_run_id(paths)
    manifest = checkpoints.read_manifest(checkpoint) or {}
    if own_folder and run_id is not None and manifest.get("run_id") == run_id:
        return
    if trust:
        log.warning("resuming from %s, which this run directory did not write (trainer.trust_checkpoint=true)",
                    checkpoint)
        return
    reason = ("it is outside this run directory" if not own_folder else
              "its manifest does not carry this run's id: it was copied here from another run, or written by an "
              "older po")
    raise ConfigError(
        f"{how}: checkpoint {checkpoint} was not written by this run directory ({reason}). Its optimizer, scheduler, "
        "RNG and DeepSpeed states are Python pickles, and loading a pickle can run any code: if you trust where it "
        "came from, run again with trainer.trust_checkpoint=true")


def _resume_from(trainer_cfg: DictConfig, data_cfg: DictConfig, paths: RunPaths, checkpoint: Path) -> RunStart:
    check_fingerprint(paths, data_cfg)
    step = checkpoints.step_of(checkpoint)
    if step is None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        step = int(state["global_step"])
    max_steps = trainer_cfg.get("max_steps", -1)
    if isinstance(max_steps, int) and 0 < max_steps < step:
        raise ConfigError(
            f"checkpoint {checkpoint} is at step {step}, past trainer.max_steps={max_steps}: resuming it would give a "
            f"model trained for more steps than asked; set trainer.max_steps>={step}, or resume an earlier checkpoint "
            "with trainer.resume=PATH")
    if checkpoint.parent.resolve() == paths.checkpoints.resolve():
        for moved in checkpoints.set_aside_newer(checkpoint.parent, step):
            log.warning("set aside %s: it is newer than the checkpoint this run resumes from", moved)
    truncate_log(paths.metrics, step, _logged_at(checkpoint, step))
    truncate_log(paths.nonfinite_steps, step)
    paths.preempted.unlink(missing_ok=True)
    run_id = read_run_id(paths) or _new_run_id(paths)
    log.info("resuming from %s (step %d)", checkpoint, step)
    return RunStart(resume=str(checkpoint), run_id=run_id, record_fingerprint=not paths.data_fingerprint.is_file())


def prepare_run_dir(trainer_cfg: DictConfig, data_cfg: DictConfig, paths: RunPaths) -> RunStart:
    """Apply `trainer.resume`, `trainer.overwrite` and `trainer.trust_checkpoint` to `run_dir` (global rank 0, with
    the run directory locked); return what the start does."""
    run_dir = paths.root
    resume = str(trainer_cfg.get("resume", "auto"))
    overwrite = trainer_cfg.get("overwrite", False) is True
    trust = trainer_cfg.get("trust_checkpoint", False) is True
    refuse_finished(run_dir, overwrite)
    for leftover in remove_stale_temporaries(run_dir):
        log.warning("removed %s, left by a process stopped while writing it", leftover)
    output_dir = paths.checkpoints
    existing = previous_outputs(paths)
    if overwrite:
        if existing:
            log.warning("trainer.overwrite=true: deleting the previous run's %s in %s", ", ".join(existing), run_dir)
        return _start_fresh(paths, clear=True, replaced=True)
    if resume == "never":
        if existing:
            raise ConfigError(
                f"run directory {run_dir} already holds a run ({', '.join(existing)}); choose a new hydra.run.dir, "
                "continue it with trainer.resume=auto, or replace it with trainer.overwrite=true")
        return _start_fresh(paths, clear=False)
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
        require_trust(checkpoint, paths, trust, f"trainer.resume={resume}")
        return _resume_from(trainer_cfg, data_cfg, paths, checkpoint)
    checkpoint, skipped = checkpoints.newest_complete(output_dir)
    for reason in skipped:
        log.warning("ignoring checkpoint %s", reason)
    if checkpoint is not None:
        require_trust(checkpoint, paths, trust, "trainer.resume=auto")
        checkpoints.remove_incomplete(output_dir)
        return _resume_from(trainer_cfg, data_cfg, paths, checkpoint)
    checkpoints.remove_incomplete(output_dir)
    if skipped:
        raise POError(f"no intact checkpoint in {output_dir} ({'; '.join(skipped)}); resume from a specific one "
                      "with trainer.resume=PATH, or start over with trainer.overwrite=true")
    if existing:
        check_fingerprint(paths, data_cfg)
        log.warning("run directory %s has outputs (%s) but no checkpoint: the previous attempt stopped before its "
                    "first checkpoint; starting over", run_dir, ", ".join(existing))
    return _start_fresh(paths, clear=bool(existing))
