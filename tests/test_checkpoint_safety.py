"""A checkpoint must not run code: one carrying a malicious pickle is refused, by name, by every
loader of the plugin (``sew infer``, ``sew sweep``, ``w2v_path`` / ``exit_init`` readers, a
``fairseq-hydra-train`` resume), and the code in it never runs."""

import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

from conftest import hydra_train, write_manifest, write_wav_corpus

from sew_plugin.checkpoint import load_checkpoint
from sew_plugin.data.checkpoints import load_state, read_weights
from sew_plugin.data.errors import DataError
from sew_plugin.models.sew_ctc import SEWCtc, SEWCtcConfig

SEW = str(Path(sys.executable).with_name("sew"))


class Payload:
    """Unpickling this calls ``os.system``: what a poisoned checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def poisoned(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "poisoned.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "cfg": {"model": {"_name": "sew"}}, "extra": Payload(marker)}, path)
    yield path
    assert not marker.exists(), "the checkpoint's code ran"


REFUSED = r"refused: the checkpoint holds a Python object \((posix|os|nt)\.system\) outside the allow-list"


@pytest.mark.parametrize("load", [load_state, read_weights, load_checkpoint])
def test_python_loaders_refuse_a_poisoned_checkpoint_by_name(poisoned, load):
    with pytest.raises(DataError, match=REFUSED) as err:
        load(poisoned)
    assert err.value.where == str(poisoned)


@pytest.mark.parametrize("command", ["infer", "sweep"])
def test_cli_refuses_a_poisoned_checkpoint_without_a_traceback(poisoned, tmp_path, command):
    rows = write_wav_corpus(tmp_path / "audio", [16000])
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", rows)
    (tmp_path / "valid.ltr").write_text("A |\n")  # sew sweep needs references before it loads anything
    extra = ["--exit-policy", "entropy", "--thresholds", "0.5"] if command == "sweep" else []
    run = subprocess.run([SEW, command, str(poisoned), str(tmp_path / "valid.tsv"), *extra],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"sew {command}: error: {poisoned}: refused:"), run.stderr
    assert "Traceback" not in run.stderr


def test_fine_tuning_refuses_a_poisoned_pretrained_checkpoint(poisoned):
    cfg = OmegaConf.structured(SEWCtcConfig(w2v_path=str(poisoned), normalize=False))
    with pytest.raises(DataError, match=REFUSED):
        SEWCtc.build_model(cfg, Namespace(target_dictionary=Dictionary()))


def test_early_exit_training_refuses_a_poisoned_backbone(poisoned):
    with pytest.raises(DataError, match=REFUSED):  # model.exit_init, read before any weight is used
        SEWCtc.load_backbone(None, str(poisoned))


@pytest.mark.slow
def test_a_resume_from_a_poisoned_checkpoint_stops_before_training(poisoned, tmp_path):
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir()
    (save_dir / "checkpoint_last.pt").write_bytes(poisoned.read_bytes())
    run = hydra_train(tmp_path, "pretraining", "sew_tiny", ["task.data=/nonexistent", "common.cpu=true"])
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fairseq-hydra-train: error: {save_dir / 'checkpoint_last.pt'}: refused:")
    assert "Traceback" not in run.stderr


def test_the_allow_list_holds_exactly_what_fairseq_stores():
    import sew_plugin.models  # noqa: F401

    allowed = set(torch.serialization.get_safe_globals())
    assert {Dictionary, Namespace} <= allowed
    assert not any(getattr(g, "__module__", "").startswith(("os", "posix", "subprocess", "builtins")) for g in allowed)
