"""Package surface: the ``sew`` command and the shipped configs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sew_plugin import presets

from conftest import REPO

SEW = str(Path(sys.executable).with_name("sew"))


def test_user_dir_prints_the_importable_plugin_directory():
    out = subprocess.run([SEW, "user-dir"], capture_output=True, text=True, check=True).stdout.strip()
    path = Path(out)
    assert path == REPO / "sew_plugin"
    assert (path / "__init__.py").is_file() and (path / "models" / "sew.py").is_file()


def test_sew_without_a_subcommand_fails_with_usage():
    run = subprocess.run([SEW], capture_output=True, text=True)
    assert run.returncode != 0 and "usage: sew" in run.stderr


ALL_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_keeps_every_batch(path):
    """fairseq drops the last batch unless required_batch_size_multiple is 1 (environment.md)."""
    cfg = presets.load_config(path.stem, path.parent.name)
    assert cfg.dataset.required_batch_size_multiple == 1


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.stem)
def test_config_files_do_not_repeat_recipe_keys(path):
    """The recipe is merged after each file (see the comment in the files); a repeated key would
    silently lose to the recipe."""
    own = yaml.safe_load(path.read_text())
    recipe = yaml.safe_load((path.parent / "_recipe.yaml").read_text())
    for section, values in own.items():
        if isinstance(values, dict) and isinstance(recipe.get(section), dict):
            assert not set(values) & set(recipe[section]), (path.name, section)


def test_sew_sizes_follow_the_paper_table():
    sizes = {
        name: (cfg.encoder_embed_dim, cfg.encoder_attention_heads, cfg.encoder_ffn_embed_dim, cfg.encoder_layers, cfg.encoder_layerdrop, cfg.wfe_c_channels, cfg.squeeze_factor, cfg.conv_pos)
        for name in ("sew_tiny", "sew_small", "sew_mid")
        for cfg in [presets.model_config(name)]
    }
    assert sizes == {
        "sew_tiny": (512, 8, 2048, 12, 0.05, 64, 2, 31),
        "sew_small": (768, 12, 3072, 12, 0.05, 64, 2, 31),
        "sew_mid": (768, 12, 3072, 24, 0.2, 64, 2, 31),
    }
