"""Model and checkpoint builders shared by several test modules (``from helpers import ...``).

Test modules never import each other: what more than one of them needs lives here (model builders,
checkpoint writers, task set-ups) or in ``conftest.py`` (tiny sizes, WAV corpora, the
``fairseq-hydra-train`` runner and its override lists).
"""

import contextlib
import io
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from fairseq.data import Dictionary
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config
from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig
from omegaconf import OmegaConf, open_dict

import sew_plugin.models  # noqa: F401
from sew_plugin.models.sew import SEWConfig, SEWModel
from sew_plugin.models.sew_ctc import SEWCtc, SEWCtcConfig
from sew_plugin.models.sew_d import SEWDConfig, SEWDModel
from sew_plugin.models.st_sew import StSEWConfig, StSEWModel

from conftest import TINY_SEW


# ---- the sew command line in this process ------------------------------------------------------

def command_line_text(arg) -> str:
    """A command-line argument from a path, bytes (a file name in no encoding) or a number."""
    return os.fsdecode(arg) if isinstance(arg, (str, bytes, os.PathLike)) else str(arg)


def sew_here(*args, expect=0) -> subprocess.CompletedProcess:
    """``sew ARGS`` run in this process (``sew_plugin.cli.main``, what the console script calls),
    its stdout and stderr captured; asserts its exit status is ``expect``. For tests whose subject is
    the command's work, not the script: a subprocess spends 4 s importing torch and fairseq again.
    What a command sets for its process is put back: torch's thread count (``--threads``) and the
    environment (``main`` quiets the libraries' logging through variables)."""
    from sew_plugin.cli import main

    out, err, threads, environ = io.StringIO(), io.StringIO(), torch.get_num_threads(), dict(os.environ)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([command_line_text(a) for a in args])
        except SystemExit as stop:
            code = stop.code
        finally:
            torch.set_num_threads(threads)
            os.environ.clear()
            os.environ.update(environ)
    run = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    assert code == expect, run.stdout + run.stderr
    return run


SEW = str(Path(sys.executable).with_name("sew"))


def sew_script(*args, expect=0, timeout=600) -> subprocess.CompletedProcess:
    """``sew ARGS``: the console script in a subprocess, as a user runs it (``sew_here`` for the
    other calls); asserts it printed no traceback and exited with ``expect``."""
    run = subprocess.run([SEW, *map(command_line_text, args)], capture_output=True, text=True, errors="replace",
                         timeout=timeout)
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == expect, run.stdout + run.stderr
    return run


# ---- tiny pre-training models (eval mode unless said otherwise) --------------------------------

def tiny_sew(**overrides) -> SEWModel:
    cfg = OmegaConf.structured(SEWConfig(**{**TINY_SEW, "quantize_targets": True, **overrides}))
    return SEWModel.build_model(cfg).eval()


def tiny_sew_d(**overrides) -> SEWDModel:
    cfg = OmegaConf.structured(SEWDConfig(**{**TINY_SEW, "quantize_targets": True, **overrides}))
    return SEWDModel.build_model(cfg).eval()


def tiny_st_sew(**overrides) -> StSEWModel:
    cfg = OmegaConf.structured(StSEWConfig(**{**TINY_SEW, "quantize_targets": True, **overrides}))
    return StSEWModel.build_model(cfg).eval()


CIF = dict(squeeze_factor=1, compressor="cif", mask_length=2, num_negatives=5, quantize_targets=True)


def tiny_cif(model=SEWModel, config=SEWConfig, **overrides):
    """A tiny CIF-compressed pre-training model (in training mode, as built)."""
    extra = dict(position_buckets=8, max_position_embeddings=16) if model is SEWDModel else {}
    return model.build_model(OmegaConf.structured(config(**{**TINY_SEW, **CIF, **extra, **overrides})))


# ---- tiny CTC models -------------------------------------------------------------------------

def tiny_ctc(pretraining_cfg, name, **ctc):
    """``sew_ctc`` on a tiny random encoder: the pre-training cfg goes in as ``w2v_args``, as fairseq
    stores it in a fine-tuned checkpoint (``w2v_path`` is then unused), so no pre-training run is needed."""
    model_cfg = OmegaConf.structured(pretraining_cfg)
    with open_dict(model_cfg):
        model_cfg._name = name
    w2v_args = OmegaConf.create({"model": model_cfg, "task": {"_name": "audio_pretraining", "data": ".", "normalize": False}})
    cfg = SEWCtcConfig(w2v_args=w2v_args, w2v_path="unused.pt", data=".", normalize=False, apply_mask=False, layerdrop=0.0, final_dropout=0.0,
                       dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, **ctc)
    vocab = Dictionary()
    for c in "|ETAONS":
        vocab.add_symbol(c)
    return SEWCtc.build_model(OmegaConf.structured(cfg), Namespace(target_dictionary=vocab))


# The letters of ``ctc_model``'s head and of the dictionaries written beside its checkpoints.
LETTERS = list("|ETAONS")


def encoder_config(kind: str, extractor_mode: str = "layer_norm"):
    if kind == "sew":
        return SEWConfig(**TINY_SEW, extractor_mode=extractor_mode, _name="sew")
    if kind == "sew_d":
        return SEWDConfig(**TINY_SEW, extractor_mode=extractor_mode, position_buckets=8, max_position_embeddings=32,
                          _name="sew_d")
    if kind == "st_sew":
        return StSEWConfig(**{**TINY_SEW, "squeeze_factor": 1}, extractor_mode=extractor_mode, _name="st_sew")
    if kind == "sew_cif":
        return SEWConfig(**{**TINY_SEW, "squeeze_factor": 1}, compressor="cif", extractor_mode=extractor_mode,
                         _name="sew")
    assert kind == "wav2vec2"  # fairseq's own, with its default GroupNorm front end
    return Wav2Vec2Config(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
                          conv_feature_layers="[(16,10,5)] + [(16,3,2)]*4 + [(16,2,2)]*2", conv_pos=8,
                          conv_pos_groups=4, encoder_layerdrop=0.0, _name="wav2vec2")


def resolved(model_cfg, task_cfg) -> dict:
    """A whole fairseq config (as a checkpoint stores it: a plain dict, interpolations resolved)."""
    full = OmegaConf.structured(FairseqConfig())
    with open_dict(full):
        full.model, full.task = model_cfg, task_cfg
    return OmegaConf.to_container(full, resolve=True, enum_to_str=True)


def letters() -> Dictionary:
    d = Dictionary()
    for c in LETTERS:
        d.add_symbol(c)
    return d


def ctc_model(kind: str, extractor_mode: str = "layer_norm", sew_ctc: bool = False, **ctc):
    """A tiny fine-tuned-shape CTC model with random weights: the encoder's config is given as
    ``w2v_args`` (what a fine-tuned checkpoint carries), so no pre-training checkpoint is needed.
    fairseq's wav2vec 2.0 gets fairseq's ``wav2vec_ctc`` head unless ``sew_ctc``."""
    task = OmegaConf.structured(AudioPretrainingConfig(data="unused", normalize=False, _name="audio_pretraining"))
    w2v_args = OmegaConf.create(resolved(OmegaConf.structured(encoder_config(kind, extractor_mode)), task))
    common = dict(w2v_args=w2v_args, w2v_path="pretrained.pt", data="unused", normalize=False, apply_mask=False, layerdrop=0.0,
                  final_dropout=0.0, dropout=0.0, activation_dropout=0.0, attention_dropout=0.0)
    if kind == "wav2vec2" and not sew_ctc:
        cfg, cls = Wav2Vec2CtcConfig(**common, **ctc, _name="wav2vec_ctc"), Wav2VecCtc
    else:
        cfg, cls = SEWCtcConfig(**common, **ctc, _name="sew_ctc"), SEWCtc
    return cls.build_model(OmegaConf.structured(cfg), Namespace(target_dictionary=letters())).eval()


# ---- checkpoints written as fairseq (or the original SEW release) wrote them ------------------

def write_checkpoint(model, path, data, task_name="audio_finetuning") -> None:
    """``model`` as fairseq writes a fine-tuned checkpoint: cfg as a plain dict, weights, history (no
    target dictionary: it is read from ``data``)."""
    task = OmegaConf.structured(AudioFinetuningConfig(data=str(data), labels="ltr", normalize=False,
                                                      _name=task_name))
    state = {
        "cfg": resolved(model.cfg, task),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "ctc", "optimizer_name": "adam", "lr_scheduler_state": {"best": 1.0},
                               "num_updates": 10}],
        "extra_state": {"train_iterator": {"epoch": 1}},
    }
    torch.save(state, path)


PRETRAINING = {"sew": (SEWConfig, SEWModel), "sew_d": (SEWDConfig, SEWDModel), "st_sew": (StSEWConfig, StSEWModel)}


def model_cfg(name, **overrides):
    """The tiny (3-layer) pre-training cfg of ``name`` in ``PRETRAINING``, with its ``_name``."""
    cfg = OmegaConf.structured(PRETRAINING[name][0](**{**TINY_SEW, "encoder_layers": 3, **overrides}))
    with open_dict(cfg):
        cfg._name = name
    return cfg


def perturbed(model):
    """Biases and norm parameters off their 0 / 1 start, so a mapping slip cannot hide."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_checkpoint(path: Path, model_section, task_section, state_dict, task_state=None) -> Path:
    """A checkpoint as fairseq writes it (plain containers, weights, task state)."""
    torch.save({
        "args": None,
        "cfg": {"_name": None, "common": {"user_dir": "/elsewhere/sew_plugin"},
                "model": OmegaConf.to_container(model_section, resolve=True, enum_to_str=True), "task": task_section},
        "model": state_dict,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "CtcCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": task_state or {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
    }, path)
    return path


def pretrained_checkpoint(path, name, normalize=False, **overrides) -> Path:
    """A pre-training checkpoint of a tiny perturbed ``name`` model (``sew``, ``sew_d`` or ``st_sew``)."""
    cfg = model_cfg(name, quantize_targets=True, **overrides)
    model = perturbed(PRETRAINING[name][1].build_model(cfg).eval())
    task = {"_name": "sew_audio_pretraining", "data": str(path.parent), "normalize": normalize}
    return save_checkpoint(path, cfg, task, model.state_dict())


def write_release_checkpoint(path: Path, model_cfg: dict, task_cfg: dict, weights: dict, criterion: str) -> Path:
    """fairseq's checkpoint layout as the release wrote it (hydra era: a ``cfg``, no ``args``)."""
    torch.save({
        "args": None,
        "cfg": {"_name": None, "common": {"_name": None, "seed": 1}, "task": task_cfg, "model": model_cfg,
                "criterion": {"_name": criterion}},
        "model": weights,
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 100}],
        "extra_state": {}, "last_optimizer_state": None,
    }, path)
    return path


# ---- the training tasks, set up in-process -----------------------------------------------------

def pretraining_task(data: Path, **cfg):
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig
    from sew_plugin.tasks.audio import SewAudioPretrainingTask

    return SewAudioPretrainingTask.setup_task(OmegaConf.structured(AudioPretrainingConfig(data=str(data), tpu=False, seed=1, **cfg)))


def finetuning_task(data: Path, **cfg):
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
    from sew_plugin.tasks.audio import SewAudioFinetuningTask

    cfg.setdefault("labels", "ltr")
    return SewAudioFinetuningTask.setup_task(OmegaConf.structured(AudioFinetuningConfig(data=str(data), tpu=False, seed=1, **cfg)))


# ---- what a fairseq-hydra-train checkpoint tells of how it trained -----------------------------

def half_precision_record(path: Path):
    """``(optimizer wrapper, floating model tensors, those that are not bf16 values)`` of a checkpoint.

    fairseq saves a bf16 model's weights as fp32 (``utils.move_to_cpu``), so the stored dtype says
    nothing; but a model the trainer held in bf16 has only bf16-representable values, while fp32 Adam
    steps leave practically none. The wrapper is ``FP16Optimizer`` on fairseq's half-precision path
    (``common.fp16`` / ``common.bf16``: fp32 master weights), ``FairseqAdam`` in fp32."""
    from sew_plugin.data.checkpoints import load_state

    state = load_state(path)
    floating = {k: v for k, v in state["model"].items() if v.is_floating_point()}
    not_bf16 = [k for k, v in floating.items() if not torch.equal(v.to(torch.bfloat16).to(v.dtype), v)]
    return state["optimizer_history"][-1]["optimizer_name"], len(floating), not_bf16


# ---- sew infer's results ----------------------------------------------------------------------

def infer_result(results_dir: Path, kind: str = "summary") -> Path:
    """The one ``kind`` file (summary, hypotheses, hypo.word, ...) ``sew infer --results-dir`` wrote."""
    found = sorted(Path(results_dir).glob(f"{kind}-*"))
    assert len(found) == 1, found
    return found[0]


class OpNames(TorchDispatchMode):
    """Every operation's name run inside."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))
