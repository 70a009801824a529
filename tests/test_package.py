"""Package surface: the ``sew`` command, the shipped configs (in a checkout and in a wheel) and the
Python version the Makefile accepts."""

import os
import shutil
import subprocess
import sys
import zipfile
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
ALL_NAMES = {group: sorted(p.stem for p in ALL_CONFIGS if p.parent.name == group) for group in ("pretraining", "finetuning")}


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


@pytest.mark.slow
def test_a_wheel_carries_every_config_and_presets_reads_them_from_it(tmp_path):
    """``pip install .`` (not editable): the configs travel as ``sew_plugin/configs`` and presets
    finds them there, not in the checkout (the cwd elsewhere, the installed wheel first on the path)."""
    src = tmp_path / "src"  # the build writes build/ and *.egg-info: not into the checkout, where others run
    for folder in ("sew_plugin", "configs"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src],
                   check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("sew_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"sew_plugin/{p.relative_to(REPO).as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    assert configs and configs <= names
    assert {"sew_plugin/modules/position_bias.c", "sew_plugin/modules/int8_rows.c"} <= names  # compiled where they run
    metadata = zipfile.ZipFile(wheel).read("sew_plugin-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Python: >=3.11,<3.12" in metadata

    subprocess.run([*pip, "install", "-q", "--no-deps", "--target", tmp_path / "site", wheel], check=True, capture_output=True)
    code = ("import sew_plugin; from sew_plugin import presets; print(sew_plugin.__file__); "
            "print(presets.CONFIG_DIR); print(*presets.available('pretraining')); "
            "print(presets.load_config('sew_tiny').model.encoder_embed_dim); "
            "from sew_plugin.modules import kernels; print((kernels.FOLDER / 'int8_rows.c').is_file())")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert run.returncode == 0, run.stderr[-2000:]
    module, config_dir, names, width, kernel_source = run.stdout.splitlines()
    assert module.startswith(str(tmp_path / "site")) and config_dir == str(tmp_path / "site" / "sew_plugin" / "configs")
    assert names.split() == presets.available("pretraining") == ALL_NAMES["pretraining"]
    assert width == "512" and kernel_source == "True"


def test_presets_in_the_checkout_read_the_top_level_configs():
    assert Path(str(presets.CONFIG_DIR)) == REPO / "configs"  # the editable install maps sew_plugin.configs there
    assert {group: presets.available(group) for group in ALL_NAMES} == ALL_NAMES


@pytest.mark.parametrize("version, refused", [("3.12", True), ("3.10", True), ("3.11", False)])
def test_make_refuses_a_python_other_than_3_11_before_creating_the_environment(tmp_path, version, refused):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho {version}\n")  # answers the version query; cannot create a venv
    fake.chmod(0o755)
    run = subprocess.run(["make", "-C", REPO, f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}", "install"],
                         capture_output=True, text=True)
    assert run.returncode != 0  # a fake Python cannot create the environment either
    assert ("sew_plugin needs Python 3.11" in run.stderr) == refused, run.stderr
    if refused:
        assert f"is Python '{version}'" in run.stderr and f"{fake} -m venv" not in run.stdout
