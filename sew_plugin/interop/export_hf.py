"""``sew export-hf CHECKPOINT OUT_DIR``: a fairseq checkpoint of this plugin as a HuggingFace
``transformers`` model directory.

Written files:

- ``config.json`` and ``model.safetensors``: ``SEWModel`` / ``SEWDModel`` for a pre-trained ``sew`` /
  ``sew_d`` checkpoint, ``SEWForCTC`` / ``SEWDForCTC`` for a ``sew_ctc`` checkpoint with a SEW or
  SEW-D encoder (fairseq's ``w2v_encoder.proj`` is the ``lm_head``);
- ``preprocessor_config.json``: ``Wav2Vec2FeatureExtractor`` at 16 kHz, normalising each utterance
  when the checkpoint's task did (``task.normalize``), with attention masks for layer-norm front ends;
- CTC only: ``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of a
  ``Wav2Vec2CTCTokenizer``. The logits keep fairseq's column order; fairseq's CTC blank (``<s>``,
  index 0) is named ``<pad>`` there, because transformers uses the pad id as the blank, and fairseq's
  unused ``<pad>`` (index 1) is named ``<s>``.

Before anything is written, the converted model is run beside the checkpoint's on one second of
noise and must agree (the largest difference is printed). Models transformers cannot represent
(St-SEW, CIF compression, early exits, input downsampling, several CTC frames per step, pre-LN
layers, no squeeze) are refused with the reason. An existing, non-empty OUT_DIR is refused unless
``--force``; then only the files above are replaced. A fine-tuned checkpoint without its target
dictionary inside reads it from the folder it was trained from (``task.data``; for the original
release's checkpoints a folder on their training machine): ``--data FOLDER`` names another one, as
for ``sew export-onnx``.

The outputs are the checkpoint's for single utterances. In a padded batch, transformers (>= 5) keeps
ceil(T / s) squeezed frames of an utterance of T frames, one of them half padding when the squeeze
factor s does not divide T, where this plugin (and the original SEW) keeps floor(T / s): such padded
utterances get other outputs there; the report's last line says so.

Example::

    sew export-hf finetune/checkpoint_best.pt sew-tiny-ctc
    sew export-hf sew_mid_100h.pt sew-mid-100h --data data     # data/dict.ltr.txt: the release's letters
    # then, in Python: transformers.AutoModelForCTC.from_pretrained("sew-tiny-ctc"),
    # Wav2Vec2CTCTokenizer.from_pretrained("sew-tiny-ctc"), AutoFeatureExtractor.from_pretrained(...)
"""

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..data.errors import DataError
from . import load_with_data, with_blank_weight

SAMPLE_RATE = 16000
# transformers files this exporter writes or that a previous export (or save) may have left
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "preprocessor_config.json", "processor_config.json", "vocab.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "tokenizer.json", "generation_config.json")
CHECK_TOLERANCE = 1e-3  # largest difference on the check input, relative to the output scale (>= 1)


def check_out_dir(out_dir: Path, force: bool) -> None:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "exists and is not a directory: OUT_DIR names the model directory to write")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DataError(out_dir, "exists and is not empty; choose a new directory, or pass --force to replace "
                                 "the transformers model files in it")


def unsupported(model) -> Tuple[object, List[str]]:
    """``(encoder, reasons)``: the SEW / SEW-D encoder of ``model`` and why transformers cannot
    represent ``model`` (empty when it can)."""
    from ..models.sew import SEWModel
    from ..models.sew_ctc import SEWCtc
    from ..models.st_sew import StSEWModel

    reasons = []
    if isinstance(model, SEWCtc):
        mcfg = model.cfg
        encoder = model.w2v_encoder.w2v_model
        if str(mcfg.get("exit_layers", "") or "").strip():
            reasons.append(f"early-exit CTC heads (model.exit_layers={mcfg.exit_layers!r}): SEWForCTC has one head "
                           "after the last layer")
        if str(mcfg.get("input_downsample", "none")) != "none":
            reasons.append(f"input downsampling (model.input_downsample={mcfg.input_downsample!r}): SEWForCTC takes "
                           "the 16 kHz waveform straight into its feature extractor")
        if mcfg.get("ctc_frames_per_step", 1) > 1:
            reasons.append(f"model.ctc_frames_per_step={mcfg.ctc_frames_per_step}: SEWForCTC's head emits one CTC "
                           "frame per encoder frame")
        if mcfg.get("blank_weight", 0) != 0 and mcfg.get("blank_mode", "add") != "add":
            reasons.append(f"model.blank_mode={mcfg.blank_mode!r} with model.blank_weight={mcfg.blank_weight}: "
                           "a blank logit set to a constant is not a linear head")
    else:
        encoder = model
    if isinstance(encoder, StSEWModel):
        reasons.append("St-SEW (stochastic squeeze and pooled attention): transformers' SEW has one fixed squeeze "
                       "factor and no key/query pooling")
        return encoder, reasons
    if not isinstance(encoder, SEWModel):
        reasons.append(f"the encoder is {type(encoder).__name__}, not SEW or SEW-D (export-hf converts those only)")
        return encoder, reasons
    ecfg = encoder.cfg
    if str(ecfg.get("compressor", "squeeze")) == "cif":
        reasons.append("CIF compression (model.compressor=cif): transformers' SEW squeezes by a fixed factor, "
                       "not by learned variable-length integration")
        return encoder, reasons
    if ecfg.layer_norm_first:
        reasons.append("model.layer_norm_first=true: transformers' SEW layers are post-LN only")
    if ecfg.squeeze_factor == 1:
        reasons.append("model.squeeze_factor=1: transformers' SEW always squeezes and upsamples")
    return encoder, reasons


def _hf_classes(encoder, ctc: bool):
    import transformers

    from ..models.sew_d import SEWDModel

    if isinstance(encoder, SEWDModel):
        return transformers.SEWDConfig, (transformers.SEWDForCTC if ctc else transformers.SEWDModel), "sew_d"
    return transformers.SEWConfig, (transformers.SEWForCTC if ctc else transformers.SEWModel), "sew"


def ctc_vocabulary(dictionary, blank: int) -> List[str]:
    """Token names by id for ``Wav2Vec2CTCTokenizer``: fairseq's symbols, with the CTC blank named
    ``<pad>`` (transformers' blank is the pad id) and fairseq's own pad renamed to the blank's name."""
    names = list(dictionary.symbols)
    pad = dictionary.pad()
    if blank != pad:
        names[blank], names[pad] = names[pad], names[blank]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"the target dictionary repeats symbols {duplicates}; a tokenizer vocabulary cannot")
    return names


def _build(model, cfg, task, encoder, ctc: bool):
    """The equivalent transformers model (eval mode), and for CTC the token names by id."""
    from .hf import sew_ctc_state_dict_to_hf, sew_d_hf_config_kwargs, sew_hf_config_kwargs, sew_state_dict_to_hf

    config_cls, model_cls, prefix = _hf_classes(encoder, ctc)
    ecfg = encoder.cfg
    kwargs = (sew_d_hf_config_kwargs if prefix == "sew_d" else sew_hf_config_kwargs)(ecfg)
    kwargs.update(
        mask_time_prob=ecfg.mask_prob, mask_time_length=ecfg.mask_length,
        mask_feature_prob=ecfg.mask_channel_prob, mask_feature_length=ecfg.mask_channel_length,
        apply_spec_augment=bool(model.cfg.get("apply_mask", True)) if ctc else True,
    )
    names = None
    if ctc:
        dictionary = task.target_dictionary
        blank = dictionary.index(task.blank_symbol) if hasattr(task, "blank_symbol") else 0
        names = ctc_vocabulary(dictionary, blank)
        ids = {n: i for i, n in enumerate(names)}
        kwargs.update(vocab_size=len(names), pad_token_id=blank, bos_token_id=ids.get("<s>"),
                      eos_token_id=ids.get("</s>"), final_dropout=model.cfg.final_dropout)
        state = sew_ctc_state_dict_to_hf(model.state_dict(), prefix)
        if model.cfg.get("blank_weight", 0):  # fairseq adds it to the blank logit at decoding: bake it in
            state["lm_head.bias"] = state["lm_head.bias"].clone()
            state["lm_head.bias"][0] += model.cfg.blank_weight
    else:
        state = sew_state_dict_to_hf(model.state_dict())
    hf = model_cls(config_cls(**kwargs)).eval()
    own = set(hf.state_dict())
    state = {k: v for k, v in state.items() if k in own or not k.endswith("masked_spec_embed")}  # no masking: none
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"its parameters do not fit {model_cls.__name__}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    return hf, names


def _check(model, hf, ctc: bool) -> float:
    """Largest difference between the checkpoint's model and ``hf`` on one second of noise."""
    source = torch.randn(1, SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if ctc:
            ours = with_blank_weight(model(source=source, padding_mask=None)["encoder_out"].transpose(0, 1),
                                     model.cfg.get("blank_weight", 0) or 0)  # "set" is refused before this
            theirs = hf(source).logits
        else:
            ours = model(source, padding_mask=None, mask=False, features_only=True)["x"]
            theirs = hf(source).last_hidden_state
    if ours.shape != theirs.shape:
        raise ValueError(f"the converted model gives outputs of shape {tuple(theirs.shape)}, the checkpoint's "
                         f"{tuple(ours.shape)}")
    diff = (ours - theirs).abs().max().item()
    if not diff <= CHECK_TOLERANCE * max(1.0, ours.abs().max().item()):
        raise ValueError(f"the converted model does not reproduce the checkpoint's outputs (max abs diff {diff:.3g} "
                         "on one second of noise)")
    return diff


def _save_tokenizer(names: List[str], folder: Path) -> None:
    from transformers import Wav2Vec2CTCTokenizer

    special = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps({n: i for i, n in enumerate(names)}, ensure_ascii=False, indent=2) + "\n")
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), word_delimiter_token="|", do_lower_case=False, **special)
    tokenizer.save_pretrained(str(folder))
    # transformers >= 5 keeps these in tokenizer_config.json; earlier versions read this file
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _file_mode() -> int:
    """Permissions of a new file under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def batch_caveat(squeeze_factor: int) -> str:
    """The one line the report adds for a squeezing model: transformers (>= 5) pools a padded batch's
    attention mask with ``max_pool1d``, so a padded utterance of T frames keeps ceil(T / s) squeezed
    frames there, one of them half padding when s does not divide T; fairseq's SEW (and this plugin)
    keeps floor(T / s), as for the utterance alone. The longest utterance of a batch is not padded."""
    return (f"note: in a padded batch, transformers keeps ceil(T / s) squeezed frames of an utterance of T 20 ms "
            f"frames where this plugin keeps floor(T / s): padded utterances whose frame count is not a multiple of "
            f"s={squeeze_factor} get other outputs there; run them alone (or batch equal lengths) for identical "
            f"outputs")


GROUP_NORM_CAVEAT = (
    "note: this model's front end is GroupNorm (extractor_mode default): in a padded batch transformers normalises "
    "each utterance's first-layer features over the padded length, with or without an attention mask, so padded "
    "utterances get other logits than alone (and their padded frames decode to letters); batch with sew infer, "
    "which normalises each utterance over its own frames, or run transformers one utterance at a time")


def export_hf(checkpoint: Path, out_dir: Path, force: bool = False, data: Optional[Path] = None) -> str:
    """Write ``checkpoint`` as a transformers model directory ``out_dir``; the report to print (its
    first line what was written, then a caveat on padded batches). ``data``: the folder with the
    target dictionary, if not where the checkpoint was trained (``--data``)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_out_dir(out_dir, force)

    from transformers import Wav2Vec2FeatureExtractor

    from ..models.sew_ctc import SEWCtc

    model, cfg, task = load_with_data(checkpoint, data)
    ctc = isinstance(model, SEWCtc)
    encoder, reasons = unsupported(model)
    if reasons:
        raise DataError(checkpoint, "transformers cannot represent this model: " + "; ".join(reasons))
    try:
        hf, names = _build(model, cfg, task, encoder, ctc)
        diff = _check(model, hf, ctc)
    except (ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise DataError(checkpoint, f"transformers cannot represent this model: {message}") from None

    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
        do_normalize=bool(cfg.task.get("normalize", False)),
        return_attention_mask=hf.config.feat_extract_norm == "layer",
    )
    # written beside OUT_DIR first, so a failure leaves no half-written model in it
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hf.save_pretrained(str(staging))
        extractor.save_pretrained(str(staging))
        if ctc:
            _save_tokenizer(names, staging)
        out_dir.mkdir(exist_ok=True)
        for name in MODEL_FILES:
            (out_dir / name).unlink(missing_ok=True)
        written = sorted(p.name for p in staging.iterdir())
        mode = _file_mode()
        for name in written:
            shutil.move(str(staging / name), str(out_dir / name))
            (out_dir / name).chmod(mode)  # transformers writes the weights owner-only (0600)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    params = sum(p.numel() for p in hf.parameters())
    vocab = f", vocabulary of {len(names)} (blank {names[hf.config.pad_token_id]!r} = id {hf.config.pad_token_id})" if ctc else ""
    report = (f"{type(hf).__name__} ({params / 1e6:.2f}M parameters{vocab}) written to {out_dir}: "
              f"{', '.join(written)}; max abs diff to the checkpoint on 1 s of noise: {diff:.2e}")
    squeeze = encoder.cfg.squeeze_factor
    notes = [batch_caveat(squeeze)] if squeeze > 1 else []
    if hf.config.feat_extract_norm == "group":  # so its preprocessor passes no attention mask, as transformers expects
        notes.append(GROUP_NORM_CAVEAT)
    return "\n".join([report, *notes])
