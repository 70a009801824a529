"""The ``sew`` command line itself: help that names every option's default, exit statuses, a
pre-trained checkpoint refused where a fine-tuned one is needed, and output kept to results."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from conftest import write_manifest, write_wav_corpus
from sew_plugin.cli import main as sew

SEW = str(Path(sys.executable).with_name("sew"))


def help_entries(capsys, command: str) -> Dict[str, str]:
    """``sew COMMAND --help``: each argument's entry, its wrapped lines joined, by its name."""
    with pytest.raises(SystemExit) as info:
        sew([command, "--help"])
    assert info.value.code == 0
    entries, name, listing = {}, None, False
    for line in capsys.readouterr().out.splitlines():
        if line in ("positional arguments:", "options:"):
            listing, name = True, None
        elif listing and line.startswith("  ") and not line.startswith("   "):
            name = line.split()[0].rstrip(",")
            entries[name] = line.strip()
        elif listing and name and line.startswith("   "):
            entries[name] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("command, defaults", [
    ("bench", {"--models": "['sew_d_mid', 'hf:sew_d_mid', 'w2v2_base']", "--seconds": "[10.0]",
               "--batch-size": "[1, 8]", "--repeat": "5", "--warmup": "1", "--baseline": "w2v2_base",
               "--device": "cpu", "--dtype": "fp32"}),
    ("infer", {"--lm-weight": "2.0", "--word-score": "-1.0", "--sil-score": "0.0", "--beam": "50",
               "--beam-threshold": "25.0", "--warmup": "1", "--batch-size": "8"}),
    ("sweep", {"--lm-weight": "2.0", "--beam": "50", "--warmup": "1"}),
])
def test_help_gives_every_option_a_text_and_its_default(capsys, command, defaults):
    entries = help_entries(capsys, command)
    for option, default in defaults.items():
        entry = entries[option]
        assert entry.endswith(f"(default: {default})"), entry
        assert len(entry.split()) > 4, f"{option} has no help text: {entry}"  # name, metavar, '(default:', value
    assert "(default: None)" not in " ".join(entries.values())  # options off unless given show none


@pytest.mark.parametrize("command, arguments", [
    ("manifest", ["audio_dir", "--dest"]), ("labels", ["--dest"]), ("lexicon", ["words", "--dest"]), ("lm", ["--dest"]),
])
def test_positionals_and_dest_options_have_help(capsys, command, arguments):
    entries = help_entries(capsys, command)
    for argument in arguments:
        assert len(entries[argument].split()) > 2, entries[argument]  # more than 'NAME' or '--dest DEST'


def test_user_dir_help_describes_it(capsys):
    with pytest.raises(SystemExit):
        sew(["user-dir", "--help"])
    assert "common.user_dir=$(sew user-dir)" in capsys.readouterr().out


def test_usage_and_data_errors_both_exit_2_without_a_traceback(tmp_path):
    """The installed script: a misused option (a command's own check, after argparse's) and bad input."""
    usage = subprocess.run([SEW, "sweep", "none.pt", "none.tsv", "--thresholds", "0.1"], capture_output=True, text=True)
    data = subprocess.run([SEW, "infer", "none.pt", str(tmp_path / "missing.tsv")], capture_output=True, text=True)
    assert (usage.returncode, data.returncode) == (2, 2)
    assert usage.stderr.strip() == "sew sweep: error: --thresholds needs --exit-policy entropy, similarity or nbest"
    assert data.stderr.strip().startswith(f"sew infer: error: {tmp_path / 'missing.tsv'}")
    assert "Traceback" not in usage.stderr + data.stderr


@pytest.mark.parametrize("command", ["infer", "sweep", "export-onnx"])
def test_a_pretrained_checkpoint_is_refused_where_a_ctc_one_is_needed(tmp_path, capsys, command):
    from test_export_hf import pretrained_checkpoint

    checkpoint = pretrained_checkpoint(tmp_path / "pretrained.pt", "sew")
    rows = write_wav_corpus(tmp_path / "audio", [16000])
    write_manifest(tmp_path / "valid.tsv", tmp_path / "audio", rows)
    (tmp_path / "valid.ltr").write_text("H I |\n")
    argv = {"infer": [str(tmp_path / "valid.tsv")], "sweep": [str(tmp_path / "valid.tsv"), "--points", "1,1,1"],
            "export-onnx": [str(tmp_path / "model.onnx")]}[command]
    with pytest.raises(SystemExit) as info:
        sew([command, str(checkpoint), *argv])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"sew {command}: error: {checkpoint}: SEWModel is not a CTC model: "
                                               f"{command} takes fine-tuned sew_ctc or wav2vec_ctc checkpoints")


def test_library_noise_is_silenced(tmp_path):
    """fairseq's tensorboardX hint, kineto's profiler_start/stop lines and c10's allocator warning
    (``sew bench`` profiles the CPU forward for its peak memory) stay out of the output."""
    run = subprocess.run([SEW, "bench", "--models", "sew_d_tiny", "--baseline", "sew_d_tiny", "--seconds", "0.1",
                          "--batch-size", "1", "--repeat", "1", "--warmup", "0", "--threads", "1"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr
    for noise in ("tensorboardX", "profiler_start", "USDT", "CPUAllocator", "Memory block of unknown size"):
        assert noise not in run.stderr + run.stdout, noise
