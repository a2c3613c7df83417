"""Bad values and crafted `_target_`s fail in one line before anything loads, and change nothing on disk.

- Through the real CLI: a table of bad values (booleans, integers, floats, names, loss hyperparameters, targets),
  each one `po-train: error:` line naming the key, no traceback, no run outputs.
- `_target_`s outside the kinds a group documents are refused before anything is called: a file that
  `builtins.open(..., "w")` would truncate is unchanged, a pickle payload `torch.load` would run does not run.
- `trainer.overwrite=no` is refused, not read as true: a finished run stays byte-identical.
- A run that would train 0 steps is an error after the data loads and before the model loads.
"""

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import po.models.policy
import po.run.job
from po.errors import ConfigError
from tests.helpers.faults import JOB, env, finished_run
from tests.helpers.runs import compose_cfg, run_train

OUTPUTS = ("model", "metrics.jsonl", "summary.json", "resolved_config.yaml", "checkpoints")


def po_train(tmp_path: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    env_vars = env()
    env_vars.pop("DS_ACCELERATOR", None)  # as a user's shell: DeepSpeed's notices must not appear either
    return subprocess.run([sys.executable, "-m", "po.cli", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env_vars)


def assert_one_line_error(proc: subprocess.CompletedProcess, run_dir: Path, needle: str) -> str:
    assert proc.returncode not in (0, None), proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("po-train: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert needle in errors[0], errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not [name for name in OUTPUTS if (run_dir / name).exists()], "a run started: it should not have"
    return errors[0]


BAD_VALUES = [  # (override, what the one error line must name)
    ("trainer.overwrite=no", "trainer.overwrite=no"),                            # a bad boolean
    ("data.max_rows=1.5", "data.max_rows=1.5"),                                  # a bad integer
    ("trainer.per_device_train_batch_size=-2", "trainer.per_device_train_batch_size=-2"),
    ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps=0"),
    ("trainer.learning_rate=abc", "trainer.learning_rate=abc"),
    ("seed=abc", "seed=abc"),
    ("trainer.lr_scheduler_type=cosine_bogus", "trainer.lr_scheduler_type=cosine_bogus"),
    ("loss.beta=abc", "loss.beta=abc"),
    ("loss.beta=inf", "loss.beta=inf"),
]


@pytest.mark.parametrize("override,needle", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_bad_value_is_one_line_before_anything_loads(tmp_path, override, needle):
    proc = po_train(tmp_path, [override])
    line = assert_one_line_error(proc, tmp_path / "run", needle)
    assert "use" in line or "expected" in line, f"the line should say what to use: {line}"


def test_loss_target_outside_preference_losses_truncates_nothing_cli(tmp_path):
    """Today `builtins.open(file, mode="w")` ran as the 'loss' and emptied the file."""
    victim = tmp_path / "precious.txt"
    victim.write_text("results that took a week\n")
    proc = po_train(tmp_path, ["~loss.beta", "~loss.label_smoothing", "loss._target_=builtins.open",
                               f"+loss.file={victim}", "+loss.mode=w"])
    assert_one_line_error(proc, tmp_path / "run", "loss._target_=builtins.open")
    assert victim.read_text() == "results that took a week\n"


class _Payload:
    """Unpickling this creates the marker file (a stand-in for any code a crafted pickle could run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_torch_load_target_runs_no_pickle(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    payload = tmp_path / "payload.pt"
    payload.write_bytes(pickle.dumps(_Payload(marker)))
    cfg = compose_cfg(["~loss.beta", "~loss.label_smoothing", "loss._target_=torch.load", f"+loss.f={payload}",
                       "+loss.weights_only=false"])
    with pytest.raises(ConfigError, match=r"loss\._target_=torch\.load.*PreferenceLoss"):
        po.run.job.train(cfg, tmp_path / "run")
    assert not marker.exists(), "the pickle payload ran"


def test_nested_target_in_loss_group_is_not_built(tmp_path):
    """Hydra instantiates nested `_target_`s first: a nested `builtins.open` would truncate before DPOLoss fails."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    cfg = compose_cfg(["+loss.inner._target_=builtins.open", f"+loss.inner.file={victim}", "+loss.inner.mode=w"])
    with pytest.raises(ConfigError, match=r"loss\.inner\._target_"):
        po.run.job.train(cfg, tmp_path / "run")
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("group", ["model", "data", "reference", "peft", "deepspeed", "trainer", "eval"])
def test_target_in_other_groups_is_refused(tmp_path, group):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    cfg = compose_cfg([f"+{group}.sneaky._target_=builtins.open", f"+{group}.sneaky.file={victim}",
                       f"+{group}.sneaky.mode=w", "trainer.max_steps=1", "eval.before_training=false"])
    with pytest.raises(ConfigError, match=rf"{group}\.sneaky\._target_=builtins\.open"):
        po.run.job.train(cfg, tmp_path / "run")
    assert victim.read_text() == "keep me\n"


@pytest.mark.slow
def test_overwrite_no_leaves_a_finished_run_untouched(tmp_path):
    """`trainer.overwrite=no` was read with Python truthiness ("no" is true) and deleted the previous run."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run(), run_dir)
    before = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="trainer.overwrite=no"):
        run_train(run_dir, JOB + ["trainer.overwrite=no"])
    after = {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def _write_pairs(path: Path, n: int) -> Path:
    path.write_text("".join(f'{{"prompt": "question {i}?", "chosen": "a good answer {i}", '
                            f'"rejected": "no {i}"}}\n' for i in range(n)))
    return path


def test_zero_step_run_is_refused_after_data_before_model(tmp_path, monkeypatch):
    """6 pairs and a batch of 8 with dataloader_drop_last=true: today 0 steps are trained and the run 'succeeds'."""
    data = _write_pairs(tmp_path / "prefs.jsonl", 6)

    def no_model(*args, **kwargs):
        raise AssertionError("the policy was loaded for a run that cannot train")

    monkeypatch.setattr(po.models.policy, "load_policy", no_model)
    cfg = compose_cfg(["data=jsonl", f"data.path={data}", "data.eval_fraction=0",
                       f"data.cache_dir={tmp_path / 'cache'}", "trainer.per_device_train_batch_size=8"])
    with pytest.raises(ConfigError) as exc:
        po.run.job.train(cfg, tmp_path / "run")
    message = str(exc.value)
    assert "6 training pairs" in message and "0 steps" in message
    assert "trainer.dataloader_drop_last=false" in message and "per_device_train_batch_size" in message
    assert "\n" not in message
    assert not (tmp_path / "run" / "model").exists()


def test_zero_step_check_counts_the_global_batch(tmp_path, monkeypatch):
    """12 pairs, 8 per device x 2 accumulation = 16 per optimizer step: refused; 2 processes of 4 x 1 = 8: fine."""
    from po.run.values import check_trains

    trainer = compose_cfg(["trainer.per_device_train_batch_size=8", "trainer.gradient_accumulation_steps=2"]).trainer
    with pytest.raises(ConfigError, match=r"12 training pairs .*global batch of 16"):
        check_trains(trainer, 12, world_size=1)
    check_trains(trainer, 16, world_size=1)
    small = compose_cfg(["trainer.per_device_train_batch_size=4"]).trainer
    with pytest.raises(ConfigError, match=r"global batch of 12 .*3 processes"):
        check_trains(small, 8, world_size=3)
    check_trains(small, 8, world_size=2)
    no_drop = compose_cfg(["trainer.dataloader_drop_last=false", "trainer.per_device_train_batch_size=8"]).trainer
    check_trains(no_drop, 3, world_size=1)  # one short batch: trains
    with pytest.raises(ConfigError, match="no training pairs"):
        check_trains(no_drop, 0, world_size=1)
