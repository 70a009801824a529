"""The ``sew`` command line itself: help that names every option's default, exit statuses, a
pre-trained checkpoint refused where a fine-tuned one is needed, and output kept to results (the
libraries' log levels set before torch starts)."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest
import torch

import sew_plugin
from conftest import write_manifest, write_wav_corpus
from helpers import pretrained_checkpoint
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
    ("tune-lm", {"--lm-weight": "[0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]", "--word-score": "[-2.0, -1.0, 0.0, 1.0, 2.0]",
                 "--beam": "50", "--batch-size": "8"}),
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


def test_options_a_run_would_not_read_are_refused_before_any_file_is_touched(tmp_path, capsys):
    results = tmp_path / "results"
    for argv, reason in (
        (["infer", "none.pt", "none.tsv", "--nbest", "1", "--results-dir", str(results)],
         "--nbest is for --exit-policy nbest (fairseq's --nbest, the hypotheses printed, has no equivalent here)"),
        (["infer", "none.pt", "none.tsv", "--kenlm-model", "lm.arpa", "--sil-weight", "1"],
         "--lm is for --decoder kenlm; --sil-score is for --decoder kenlm (this run would ignore them)"),
        (["sweep", "none.pt", "none.tsv", "--points", "1,1,1", "--exit-layer", "3"],
         "one exit layer is sew infer --exit-policy layer --exit-layer K"),
    ):
        with pytest.raises(SystemExit) as refused:
            sew(argv)
        assert reason in str(refused.value), refused.value
    assert not results.exists()  # refused before the results folder is made or the manifest read


@pytest.mark.parametrize("command", ["infer", "sweep", "export-onnx"])
def test_a_pretrained_checkpoint_is_refused_where_a_ctc_one_is_needed(tmp_path, capsys, command):
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


QUIET = {"KINETO_LOG_LEVEL": "6", "TORCH_CPP_LOG_LEVEL": "ERROR"}  # what sew_plugin.cli._quiet_libraries sets
TEXT_TO_SPEECH = "fairseq.tasks.text_to_speech"  # logs its tensorboardX hint at INFO on import

# Run as the console script runs main (the plugin's CLI imported, nothing else yet): the two variables
# as torch saw them when it was imported (c10 reads TORCH_CPP_LOG_LEVEL then), and the fairseq logger's level.
AT_TORCH_IMPORT = """
import json, logging, os, sys
seen = {}
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.update({k: os.environ.get(k) for k in %r})
sys.meta_path.insert(0, Spy())
from sew_plugin.cli import main
torch_before_main = "torch" in sys.modules
main(["user-dir"])
import torch  # noqa: F401  (already imported if the command needed it)
print(json.dumps({"torch_before_main": torch_before_main, "at_torch_import": seen,
                  "level": logging.getLogger(%r).level}))
""" % (sorted(QUIET), TEXT_TO_SPEECH)


def test_main_quiets_the_libraries_before_torch_starts():
    """fairseq's tensorboardX hint, kineto's profiler_start/stop lines and c10's allocator warning
    (``sew bench`` profiles the CPU forward for its peak memory) are kept out of the output by levels
    main sets before torch is imported: the logger's to WARNING, kineto's and c10's by variable."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET}
    run = subprocess.run([sys.executable, "-c", AT_TORCH_IMPORT], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    user_dir, report = run.stdout.splitlines()
    assert user_dir == str(Path(sew_plugin.__file__).parent)
    assert json.loads(report) == {"torch_before_main": False, "at_torch_import": QUIET, "level": logging.WARNING}


def test_a_users_own_library_log_levels_are_kept(monkeypatch):
    """The variables are defaults only: set them to see those messages again."""
    from sew_plugin.cli import _quiet_libraries

    logger = logging.getLogger(TEXT_TO_SPEECH)
    monkeypatch.setenv("KINETO_LOG_LEVEL", "2")
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    level = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        _quiet_libraries()
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(level)
    assert (os.environ["KINETO_LOG_LEVEL"], os.environ["TORCH_CPP_LOG_LEVEL"]) == ("2", "ERROR")


@pytest.mark.slow
def test_sew_bench_prints_its_results_and_nothing_else():
    """The installed script, profiling included: stdout holds exactly the progress lines, the machine
    line and the table; stderr is empty (no library's hint, profiler line or allocator warning)."""
    run = subprocess.run([SEW, "bench", "--models", "sew_d_tiny", "--baseline", "sew_d_tiny", "--seconds", "0.1",
                          "--batch-size", "1", "--repeat", "1", "--warmup", "0", "--threads", "1"],
                         capture_output=True, text=True, timeout=300,
                         env={**{k: v for k, v in os.environ.items() if k not in ("KINETO_LOG_LEVEL", "TORCH_CPP_LOG_LEVEL")},
                              "OMP_NUM_THREADS": "1"})  # the script must quiet the libraries itself
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    from sew_plugin.inference.bench import to_markdown

    header, rule = to_markdown([], "sew_d_tiny").splitlines()
    number = r"[0-9]+(\.[0-9]+)?"
    expected = [
        re.escape("building sew_d_tiny"),
        r"sew_d_tiny batch 1 0\.1 s: [0-9]+ ms, x1\.00 vs sew_d_tiny",
        "",
        rf"1 threads, torch {re.escape(torch.__version__)}, device cpu, fp32; SEW-D's position bias: "
        r"compiled kernel \(.+; -O3 .+\); SEW-D's linear weights: (packed once in oneDNN's layout|PyTorch's products) "
        r"\(.+\)",
        "",
        re.escape(header),
        re.escape(rule),
        rf"\| sew_d_tiny \| 1 \| 0\.1 \| 24\.1 \| [0-9]+ \| [0-9]+-[0-9]+ \| {number} \| 1\.00x( \| {number}){{5}} \| - \| - \|",
        "",  # the table ends its last line, print its own
    ]
    lines = run.stdout.splitlines()
    assert len(lines) == len(expected) and all(re.fullmatch(p, line) for p, line in zip(expected, lines)), run.stdout
