"""Checkpoints of the original SEW release (``sew_asapp``) load with this plugin as the user dir.

The test writes checkpoints the way the release stored them: its model and task names, its config
fields (those beyond fairseq's included, at the papers' values), fairseq's checkpoint layout and the
release's parameter names (sew.md sections 1 and 6); the weights are those of this plugin's model,
so "loads into a model that computes the same function" is checked output for output.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary

from conftest import TINY_SEW, hydra_train, waveform_batch, write_manifest, write_wav_corpus
from helpers import write_release_checkpoint

from sew_plugin.checkpoint import load_checkpoint
from sew_plugin.models.original import ReleaseCtc, ReleaseSEWDModel, ReleaseSEWModel
from sew_plugin.models.sew import SEWConfig, SEWModel
from sew_plugin.models.sew_d import SEWDConfig, SEWDModel

SEW = str(Path(sys.executable).with_name("sew"))

# The release's wav2vec 2.0 model fields (FeatMLPWav2Vec2Config), all of which this plugin also has.
SHARED_FIELDS = """extractor_mode encoder_layers encoder_embed_dim encoder_ffn_embed_dim encoder_attention_heads
activation_fn dropout attention_dropout activation_dropout encoder_layerdrop dropout_input dropout_features final_dim
layer_norm_first conv_feature_layers conv_bias logit_temp quantize_targets quantize_input same_quantizer target_glu
feature_grad_mult latent_vars latent_groups latent_dim mask_length mask_prob mask_selection mask_other
no_mask_overlap mask_min_space mask_channel_length mask_channel_prob mask_channel_selection mask_channel_other
no_mask_channel_overlap mask_channel_min_space num_negatives negatives_from_everywhere cross_sample_negatives
codebook_negatives conv_pos conv_pos_groups latent_temp use_mlp mlp_hidden_size""".split()
DEBERTA_FIELDS = """max_position_embeddings position_buckets share_att_key relative_attention position_biased_input
pos_att_type norm_rel_ebd""".split()
# The release's own fields, at the values of the papers' SEW models.
RELEASE_ONLY = dict(
    squeeze_method="default", mlp_version="v3", mlp_num_layers=2, mlp_act_type="relu", proj_mlp_norm_type="bn",
    share_final_proj=False, final_proj_momentum=-1.0, spec_feature_only=False, fbank_dim=0, mfcc_dim=0,
    conv_hidden_sizes="[32, 32]", conv_kernel_sizes="[3, 3]", conv_strides="[2, 2]", conv_exp_ratios="[1., 4.]",
    conv_use_pad=False, encoder_input_embed_dim=-1, conv_flatten_dim=-1, subsample_type="conv2dv4",
    conv_norm_type="none", conv_act_type="relu", conv_kaiming_init=False, feature_extractor_type="default",
    chunk_mode="chunk",
)
LETTERS = list("ETAONIHSRDLUC|")


def release_task(data: Path, labels=None) -> dict:
    return dict(_name="audio_pretraining_features", data=str(data), labels=labels, sample_rate=16000,
                normalize=False, enable_padding=False, max_sample_size=250000, min_sample_size=0,
                eval_wer=False, autoregressive=False, load_with_librosa=False, fbank_dim=0, mfcc_dim=0,
                audio_feat_frame_length=25.0, audio_feat_frame_shift=10.0)


def release_model_cfg(model: SEWModel, name: str, **changes) -> dict:
    cfg = model.cfg
    fields = SHARED_FIELDS + (DEBERTA_FIELDS if name == "squeeze_wav2vec2_deberta" else [])
    out = {k: (list(getattr(cfg, k)) if k == "latent_temp" else getattr(cfg, k)) for k in fields}
    out = {k: (str(v) if k.endswith(("_selection", "extractor_mode", "activation_fn")) else v) for k, v in out.items()}
    return {"_name": name, "squeeze_factor": cfg.squeeze_factor, **out, **RELEASE_ONLY, **changes}


def tiny(kind: str) -> SEWModel:
    torch.manual_seed(0)
    common = dict(TINY_SEW, use_mlp=True, quantize_targets=True, extractor_mode="layer_norm")
    if kind == "sew_d":
        return SEWDModel(SEWDConfig(**common, position_buckets=16, max_position_embeddings=32)).eval()
    return SEWModel(SEWConfig(**common)).eval()


RELEASE_NAMES = {"sew": ("squeeze_wav2vec2", ReleaseSEWModel), "sew_d": ("squeeze_wav2vec2_deberta", ReleaseSEWDModel)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_data")
    rows = write_wav_corpus(root / "audio", [16000 + 1600 * i for i in range(6)])
    write_manifest(root / "train.tsv", root / "audio", rows)
    write_manifest(root / "valid.tsv", root / "audio", rows)
    d = Dictionary()
    for c in LETTERS:
        d.add_symbol(c)
    d.save(str(root / "dict.ltr.txt"))
    for split in ("train", "valid"):
        (root / f"{split}.ltr").write_text("".join("T H E | C A T |\n" for _ in rows))
    return root


@pytest.fixture(scope="module", params=["sew", "sew_d"])
def pretrained(request, tmp_path_factory, data):
    model = tiny(request.param)
    name, _ = RELEASE_NAMES[request.param]
    path = tmp_path_factory.mktemp("release") / "checkpoint_best.pt"
    write_release_checkpoint(path, release_model_cfg(model, name), release_task(data), model.state_dict(), "wav2vec")
    return request.param, model, path


def features(model, source, padding):
    with torch.no_grad():
        return model(source, padding_mask=padding, mask=False, features_only=True)["x"]


def test_pretrained_checkpoint_loads_through_fairseq_and_computes_the_same_function(pretrained):
    kind, ours, path = pretrained
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    loaded = models[0].eval()
    assert type(loaded) is RELEASE_NAMES[kind][1] and type(task).__name__ == "SewAudioPretrainingTask"
    source, padding = waveform_batch([16000, 12800, 9600])
    assert torch.equal(features(loaded, source, padding), features(ours, source, padding))


@pytest.mark.slow
def test_fine_tuning_from_a_release_checkpoint_with_fairseq_hydra_train(pretrained, data, tmp_path):
    kind, ours, path = pretrained
    run = hydra_train(tmp_path, "finetuning", "10m", [
        f"task.data={data}", f"model.w2v_path={path}", "common.cpu=true", "common.fp16=false",
        "distributed_training.distributed_world_size=1", "dataset.num_workers=0", "dataset.max_tokens=60000",
        "optimization.max_update=2", "model.freeze_finetune_updates=0", "model.mask_length=2",
        "model.mask_channel_length=4"])
    assert run.returncode == 0, run.stderr[-3000:]
    model, cfg, task = load_checkpoint(tmp_path / "ckpt" / "checkpoint_last.pt")
    encoder = model.w2v_encoder.w2v_model
    assert type(encoder) is RELEASE_NAMES[kind][1]
    assert cfg.model.w2v_args.model._name == RELEASE_NAMES[kind][0]


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, data):
    """A ``wav2vec_ctc_v2`` checkpoint of the release: its pre-training cfg stored as ``w2v_args``."""
    encoder = tiny("sew")
    d = Dictionary.load(str(data / "dict.ltr.txt"))
    torch.manual_seed(1)
    proj = torch.nn.Linear(encoder.cfg.encoder_embed_dim, len(d))
    weights = {f"w2v_encoder.w2v_model.{k}": v for k, v in encoder.state_dict().items()
               if not k.startswith(("quantizer.", "project_q.", "final_proj."))}
    weights.update({"w2v_encoder.proj.weight": proj.weight.detach(), "w2v_encoder.proj.bias": proj.bias.detach()})
    w2v_args = {"_name": None, "common": {"_name": None, "seed": 1}, "task": release_task(data),
                "model": release_model_cfg(encoder, "squeeze_wav2vec2")}
    model_cfg = dict(_name="wav2vec_ctc_v2", w2v_path="/the/release/machine/pretrained.pt", w2v_args=w2v_args,
                     normalize=False, data=str(data), apply_mask=True, mask_prob=0.5, layerdrop=0.1,
                     output_upsample=0, chunk_mode="flat", drop_upsample_layers=0)
    path = tmp_path_factory.mktemp("release_ctc") / "checkpoint_best.pt"
    # the release fine-tuned with the fairseq of its day: audio_pretraining with labels (sew.md section 1)
    task = dict(release_task(data, labels="ltr"), _name="audio_pretraining", eval_wer=False)
    for key in ("load_with_librosa", "fbank_dim", "mfcc_dim", "audio_feat_frame_length", "audio_feat_frame_shift"):
        task.pop(key)
    write_release_checkpoint(path, model_cfg, task, weights, "ctc")
    return encoder, proj, path


def test_fine_tuned_checkpoint_loads_and_gives_the_same_logits(fine_tuned):
    encoder, proj, path = fine_tuned
    model, cfg, task = load_checkpoint(path)
    assert type(model) is ReleaseCtc and type(model.w2v_encoder.w2v_model) is ReleaseSEWModel
    assert len(task.target_dictionary) == len(proj.weight)
    source, padding = waveform_batch([16000, 11200])
    with torch.no_grad():
        logits = model(source=source, padding_mask=padding)["encoder_out"].transpose(0, 1)
        expected = proj(features(encoder, source, padding))
    assert torch.allclose(logits, expected, atol=1e-6)


def test_fine_tuned_checkpoint_of_the_release_task_loads_through_fairseq(fine_tuned, tmp_path):
    """Stored with the release's own task (its infer.py ran --task audio_pretraining_features), a
    fine-tuned checkpoint loads through fairseq.checkpoint_utils too; stored with fairseq 0.10's
    audio_pretraining, fairseq 0.12 has no dictionary for it and the error says what to use."""
    encoder, proj, path = fine_tuned
    with pytest.raises(ValueError, match="sew_plugin.checkpoint.load_checkpoint"):
        checkpoint_utils.load_model_ensemble_and_task([str(path)])
    state = torch.load(path, weights_only=True)
    state["cfg"]["task"] = release_task(state["cfg"]["task"]["data"], labels="ltr")
    torch.save(state, tmp_path / "release_task.pt")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "release_task.pt")])
    source, padding = waveform_batch([16000, 11200])
    with torch.no_grad():
        logits = models[0].eval()(source=source, padding_mask=padding)["encoder_out"].transpose(0, 1)
        expected = proj(features(encoder, source, padding))
    assert type(task).__name__ == "SewAudioFinetuningTask"
    assert torch.allclose(logits, expected, atol=1e-6)


@pytest.mark.slow
def test_sew_infer_transcribes_with_a_release_checkpoint(fine_tuned, data):
    _, _, path = fine_tuned
    run = subprocess.run([SEW, "infer", str(path), str(data / "valid.tsv")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "transcribed 6 of 6 utterances" in run.stdout


@pytest.mark.parametrize("key, value, message", [
    ("squeeze_method", "multi-layer", "model.squeeze_method must be 'default'"),
    ("fbank_dim", 80, "model.fbank_dim must be 0: filter-bank inputs are not supported"),
    ("mlp_version", "v1", "model.mlp_version must be 'v3' with model.use_mlp"),
    ("final_proj_momentum", 0.99, "model.final_proj_momentum must be < 0"),
])
def test_release_options_this_plugin_does_not_build_are_refused_by_key(tmp_path, data, key, value, message):
    model = tiny("sew")
    path = write_release_checkpoint(tmp_path / "x.pt", release_model_cfg(model, "squeeze_wav2vec2", **{key: value}),
                                    release_task(data), model.state_dict(), "wav2vec")
    with pytest.raises(ValueError, match=message):
        checkpoint_utils.load_model_ensemble_and_task([str(path)])


def test_release_ctc_with_an_output_upsampler_is_refused_by_key(fine_tuned, tmp_path):
    state = torch.load(fine_tuned[2], weights_only=True)
    state["cfg"]["model"]["output_upsample"] = 2
    torch.save(state, tmp_path / "up.pt")
    with pytest.raises(ValueError, match="model.output_upsample must be 0"):
        load_checkpoint(tmp_path / "up.pt")


def test_spectrogram_tasks_are_refused_by_key(tmp_path, data):
    model = tiny("sew")
    task = dict(release_task(data), fbank_dim=80)
    path = write_release_checkpoint(tmp_path / "x.pt", release_model_cfg(model, "squeeze_wav2vec2"), task,
                                    model.state_dict(), "wav2vec")
    with pytest.raises(ValueError, match="task.fbank_dim must be 0"):
        checkpoint_utils.load_model_ensemble_and_task([str(path)])
