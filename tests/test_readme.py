"""The README's commands are the ones a newcomer copies: every ``fairseq-hydra-train`` command in its
bash blocks is given to the real entry point with hydra's ``--cfg job`` (compose the config, print it,
train nothing). argparse takes the options before the overrides only, a recipe file that does not
exist or an override of a key the recipe lacks (without ``+``) fails here as it would for a user."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sew_plugin import USER_DIR

ROOT = Path(__file__).resolve().parent.parent
ENTRY = Path(sys.executable).parent / "fairseq-hydra-train"


def bash_commands(text: str):
    """The commands of the README's ```bash blocks, continuation lines joined, comments dropped."""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        yield from (line for line in block.replace("\\\n", " ").splitlines() if line.strip())


def training_commands():
    commands = []
    for line in bash_commands((ROOT / "README.md").read_text()):
        line = line.replace("$(which fairseq-hydra-train)", "fairseq-hydra-train").replace("$(sew user-dir)", USER_DIR)
        tokens = shlex.split(line, comments=True)
        if "fairseq-hydra-train" in tokens:
            commands.append(tokens[tokens.index("fairseq-hydra-train") + 1:])
    return commands


COMMANDS = training_commands()


def test_the_readme_shows_the_recipes_training_commands():
    assert len(COMMANDS) >= 8
    assert {args[args.index("--config-name") + 1] for args in COMMANDS} >= {"sew_d_mid", "100h", "w2v2_base_cif"}


@pytest.mark.parametrize("args", COMMANDS, ids=[f"{i}-{a[a.index('--config-name') + 1]}" if "--config-name" in a else str(i)
                                               for i, a in enumerate(COMMANDS)])
@pytest.mark.slow
def test_readme_training_command_composes_its_config(args, tmp_path):
    args = [a.replace("$PWD", str(tmp_path)) for a in args]
    run = subprocess.run([str(ENTRY), "--cfg", "job", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"user_dir: {USER_DIR}" in run.stdout
    # hydra runs the job in a fresh outputs/<date>/<time>/: only an absolute save_dir lets the same
    # command resume (README: "Resuming after a crash")
    save_dirs = re.findall(r"^  save_dir: (.*)$", run.stdout, flags=re.M)
    assert save_dirs and Path(save_dirs[0]).is_absolute(), save_dirs


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    """Each ```python block runs, in a folder with what the snippets name: a fine-tuned checkpoint
    (ckpt.pt), its dictionary (data/dict.ltr.txt), a 40 s stereo 44.1 kHz recording (talk.flac), and
    a lexicon and bigram LM of words of the checkpoint's letters (lexicon.txt, lm.arpa)."""
    import numpy as np
    import soundfile as sf
    import torch

    from helpers import LETTERS, ctc_model, write_checkpoint
    from test_decoding import write_arpa, write_lexicon

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    torch.manual_seed(0)
    write_checkpoint(ctc_model("sew"), tmp_path / "ckpt.pt", tmp_path / "data")
    noise = np.random.default_rng(0).uniform(-0.2, 0.2, (44100 * 40, 2)).astype(np.float32)
    sf.write(tmp_path / "talk.flac", noise, 44100)
    words = ["EAST", "NOTE", "SEA", "TOAST", "ONE"]
    write_lexicon(tmp_path / "lexicon.txt", words)
    write_arpa(tmp_path / "lm.arpa", {w: -0.7 for w in words}, [("SEA", "TOAST", -0.3)])
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "talk.srt").read_text().startswith("1\n00:00:")  # the srt the snippet writes
