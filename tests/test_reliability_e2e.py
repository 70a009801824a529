"""Long runs survive their accidents: data-parallel training equals gradient accumulation, a killed
run resumes to the same parameters, and a checkpoint cut short is refused by name.

Everything runs the real ``fairseq-hydra-train`` in subprocesses on CPU; data-parallel ranks are
separate processes joined by torch.distributed's gloo backend (README "Multi-GPU and multi-node").
``criterion.seed_per_batch=true`` makes masks, negatives, Gumbel noise and dropout a function of the
step and the batch, which is what lets two layouts of the same batches agree exactly.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY_PRETRAINING, TINY_W2V2_PRETRAINING, hydra_train, hydra_train_command, pretraining_corpus

from sew_plugin.checkpoint import load_checkpoint
from sew_plugin.data.checkpoints import read_weights, verify_checkpoint
from sew_plugin.data.errors import DataError

pytestmark = pytest.mark.slow  # every test runs fairseq-hydra-train (or torchrun) in subprocesses

# One thread per process: the same float summation order in every run of a comparison.
THREADS = 1
LAYOUT_KEYS = ("distributed_training.distributed_world_size", "optimization.update_freq", "optimization.max_update")
TINY = [o for o in TINY_PRETRAINING if not o.startswith(LAYOUT_KEYS)] + [
    "dataset.max_tokens=50000",  # 5 batches of 1-2 utterances per epoch
    "lr_scheduler.warmup_updates=2",
    "lr_scheduler.total_num_update=32",
    "criterion.seed_per_batch=true",
]
# Parameters must agree to float32 rounding; BatchNorm running statistics are buffers that every
# data-parallel worker keeps from its own batches (as in any DDP without SyncBatchNorm).
TOLERANCE = 1e-6
PER_WORKER_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return pretraining_corpus(tmp_path_factory.mktemp("corpus"))


def train_logs(log: str):
    """The ``train_inner`` records of a fairseq json log, in order."""
    return [json.loads(line[line.index("{"):]) for line in log.splitlines() if "[train_inner]" in line]


def whole(path) -> bool:
    try:
        verify_checkpoint(path)
        return True
    except DataError:
        return False


def max_parameter_difference(a_path, b_path):
    a, b = read_weights(a_path), read_weights(b_path)
    assert a.keys() == b.keys()
    params = [k for k in a if not k.endswith(PER_WORKER_BUFFERS)]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in params)


TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# README "Multi-GPU and multi-node", on CPU: fairseq's torchrun path asks CUDA for the device count,
# so the rank comes from torchrun's environment through the config and gloo replaces NCCL.
CPU_DATA_PARALLEL = [
    "distributed_training.distributed_init_method=env://",
    "distributed_training.distributed_rank=${oc.env:RANK}",
    "distributed_training.distributed_backend=gloo",
    "distributed_training.distributed_no_spawn=true",
    "distributed_training.device_id=0",
]


def data_parallel(tmp_path, config, overrides, world_size=2):
    """One data-parallel run of ``world_size`` CPU processes, launched by torchrun."""
    cmd = hydra_train_command(tmp_path, "pretraining", config, [
        *overrides, f"distributed_training.distributed_world_size={world_size}", *CPU_DATA_PARALLEL])
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    run = subprocess.run([TORCHRUN, "--standalone", f"--nproc_per_node={world_size}", *cmd], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout + run.stderr


@pytest.mark.parametrize("config", ["sew_tiny", "sew_d_tiny"])
def test_two_workers_equal_one_worker_accumulating_two_batches(tmp_path, corpus, config):
    common = [f"task.data={corpus}", *TINY, "optimization.max_update=6"]
    accumulated = hydra_train(tmp_path / "accumulated", "pretraining", config, [
        *common, "distributed_training.distributed_world_size=1", "optimization.update_freq=[2]"], threads=THREADS)
    assert accumulated.returncode == 0, accumulated.stderr[-4000:]
    log = data_parallel(tmp_path / "parallel", config, [*common, "optimization.update_freq=[1]"])
    assert "distributed init (rank 1)" in log

    # the same batches per update (fairseq shards batch i to worker i % 2; accumulation takes 2 in a row)
    one, two = train_logs(accumulated.stdout), train_logs(log)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert (a["nsentences"], a["ntokens"], a["loss"]) == (b["nsentences"], b["ntokens"], b["loss"])
    # ...and the same parameters after the last one
    diff = max_parameter_difference(tmp_path / "accumulated/ckpt/checkpoint_last.pt",
                                    tmp_path / "parallel/ckpt/checkpoint_last.pt")
    assert diff <= TOLERANCE


def test_fairseqs_wav2vec2_pretraining_repeats_under_its_seed(tmp_path, corpus):
    """Two runs of the baseline, fairseq's own wav2vec 2.0, with one seed: the same losses and parameters
    (its masks came from OS entropy before the plugin's task seeded them: losses differed from the first update)."""
    runs = []
    for name in ("first", "second"):
        run = hydra_train(tmp_path / name, "pretraining", "w2v2_base",
                          [f"task.data={corpus}", *TINY_W2V2_PRETRAINING, "optimization.max_update=3"], threads=THREADS)
        assert run.returncode == 0, run.stderr[-4000:]
        runs.append(train_logs(run.stdout))
    assert len(runs[0]) == 3 and [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]
    assert max_parameter_difference(tmp_path / "first/ckpt/checkpoint_last.pt", tmp_path / "second/ckpt/checkpoint_last.pt") == 0


RESUME = ["distributed_training.distributed_world_size=1", "optimization.update_freq=[1]", "optimization.max_update=30",
          "checkpoint.save_interval_updates=4", "checkpoint.keep_interval_updates=2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("uninterrupted")
    run = hydra_train(out, "pretraining", "sew_tiny", [f"task.data={corpus}", *TINY, *RESUME], threads=THREADS)
    assert run.returncode == 0, run.stderr[-4000:]
    return out


def test_run_killed_after_a_checkpoint_resumes_to_the_same_parameters(tmp_path, corpus, uninterrupted):
    overrides = [f"task.data={corpus}", *TINY, *RESUME]
    cmd = hydra_train_command(tmp_path, "pretraining", "sew_tiny", overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    last = tmp_path / "ckpt" / "checkpoint_last.pt"
    with open(tmp_path / "killed.log", "w") as log:
        run = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        while not whole(last) and run.poll() is None:  # fairseq copies checkpoint_last.pt: wait for all of it
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["optimizer_history"][-1]["num_updates"]
    assert 0 < killed_at < 30

    resumed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"@ {killed_at} updates" in resumed.stdout  # "Loaded checkpoint ... (epoch E @ N updates)"
    assert len(train_logs(resumed.stdout)) == 30 - killed_at
    assert max_parameter_difference(last, uninterrupted / "ckpt/checkpoint_last.pt") <= TOLERANCE


def test_a_truncated_last_checkpoint_is_refused_by_name_and_the_previous_one_resumes(tmp_path, corpus, uninterrupted):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    previous = max((uninterrupted / "ckpt").glob("checkpoint_*_*.pt"), key=lambda p: p.stat().st_mtime)
    (ckpt / previous.name).write_bytes(previous.read_bytes())
    os.utime(ckpt / previous.name, (time.time() - 60,) * 2)
    last = ckpt / "checkpoint_last.pt"
    whole = (uninterrupted / "ckpt" / "checkpoint_last.pt").read_bytes()
    last.write_bytes(whole[: len(whole) // 2])  # a copy killed half-way

    overrides = [f"task.data={corpus}", *TINY, *RESUME]
    refused = hydra_train(tmp_path, "pretraining", "sew_tiny", overrides, threads=THREADS)
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith(f"fairseq-hydra-train: error: {last}: checkpoint is truncated")
    assert f"checkpoint.restore_file={ckpt / previous.name}" in message
    assert "Traceback" not in refused.stderr

    # the plugin's own loaders (sew infer / sweep / bench, w2v_path readers) refuse it by name too
    for load in (load_checkpoint, read_weights):
        with pytest.raises(DataError, match="checkpoint is truncated") as err:
            load(last)
        assert str(err.value).startswith(f"{last}: ")

    # ...and the run goes on from the previous checkpoint
    updates = int(previous.stem.split("_")[-1])
    resumed = hydra_train(tmp_path, "pretraining", "sew_tiny", [
        *overrides, f"checkpoint.restore_file={ckpt / previous.name}"], threads=THREADS)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"@ {updates} updates" in resumed.stdout and len(train_logs(resumed.stdout)) == 30 - updates
    assert max_parameter_difference(last, uninterrupted / "ckpt/checkpoint_last.pt") <= TOLERANCE
