"""Early exit: layer-wise encoders, exit heads, the joint loss, and per-utterance exit policies."""

import math
import re
from argparse import Namespace

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models.wav2vec.wav2vec2 import TransformerEncoder, Wav2Vec2Config, Wav2Vec2Model
from omegaconf import OmegaConf

import sew_plugin.models  # noqa: F401
from sew_plugin.models.sew import SEWConfig, SEWModel
from sew_plugin.models.sew_ctc import SEWCtc, SEWCtcConfig
from sew_plugin.models.sew_d import SEWDConfig, SEWDModel
from sew_plugin.models.st_sew import StSEWConfig, StSEWModel
from sew_plugin.modules.early_exit import exit_head, make_policy, parse_exit_layers, parse_exit_weights
from sew_plugin.modules.layerwise import make_steppable

from conftest import TINY_SEW, hydra_train, waveform_batch, write_manifest, write_wav_corpus

LAYERS = 4
TINY = {**TINY_SEW, "encoder_layers": LAYERS, "extractor_mode": "layer_norm"}


def pretraining_models():
    w2v = dict(encoder_layers=LAYERS, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
               conv_feature_layers="[(16,10,5)] + [(16,3,2)]*4 + [(16,2,2)]*2", conv_pos=8, conv_pos_groups=4,
               extractor_mode="layer_norm", encoder_layerdrop=0.0)
    return {
        "wav2vec2": lambda: Wav2Vec2Model.build_model(OmegaConf.structured(Wav2Vec2Config(**w2v))),
        "sew": lambda: SEWModel.build_model(OmegaConf.structured(SEWConfig(**TINY))),
        "sew_d": lambda: SEWDModel.build_model(OmegaConf.structured(SEWDConfig(**TINY, position_buckets=8, max_position_embeddings=16))),
        "st_sew": lambda: StSEWModel.build_model(OmegaConf.structured(StSEWConfig(**{**TINY, "squeeze_factor": 1}, operating_point="2,2,1"))),
    }


@pytest.mark.parametrize("name", sorted(pretraining_models()))
def test_layer_by_layer_run_is_the_encoder_forward(name):
    model = pretraining_models()[name]().eval()
    source, padding = waveform_batch([16000, 11000, 7000])
    with torch.no_grad():
        before = model(source, padding_mask=padding, mask=False, features_only=True)
        encoder = make_steppable(model.encoder)
        assert hasattr(encoder, "begin") and (name != "wav2vec2" or type(encoder) is not TransformerEncoder)
        after = model(source, padding_mask=padding, mask=False, features_only=True)
        names = set(model.state_dict())
    assert torch.equal(before["x"], after["x"])
    assert len(after["layer_results"]) == LAYERS
    for (x0, *_), (x1, *_) in zip(before["layer_results"], after["layer_results"]):
        assert torch.equal(x0, x1)
    assert names == set(pretraining_models()[name]().state_dict())  # re-classing renames nothing


def test_exit_layer_and_weight_parsing_name_the_key():
    assert parse_exit_layers("4, 2", 6) == [2, 4] and parse_exit_layers("", 6) == []
    with pytest.raises(ValueError, match="model.exit_layers='6'"):
        parse_exit_layers("6", 6)
    assert parse_exit_weights("", 3) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="model.exit_loss_weights='1,2'"):
        parse_exit_weights("1,2", 3)
    with pytest.raises(ValueError, match="model.exit_head='conv'"):
        exit_head(8, 5, "conv")


# ---- CTC models with exits, built from a real (tiny) fairseq pre-training checkpoint ----

LETTERS = list("|ETAONS")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny SEW, SEW-D, St-SEW and fairseq wav2vec 2.0 checkpoints (4 layers, padding-exact front end)."""
    from conftest import TINY_PRETRAINING, TINY_PRETRAINING_COMMON, TINY_W2V2_PRETRAINING

    root = tmp_path_factory.mktemp("exits")
    rows = write_wav_corpus(root / "audio", [16000 + 800 * i for i in range(6)])
    (root / "data").mkdir()
    for split in ("train", "valid"):
        write_manifest(root / "data" / f"{split}.tsv", root / "audio", rows)
    four = ["model.encoder_layers=4", "+model.extractor_mode=layer_norm", "optimization.max_update=2"]
    out = {}
    configs = (("sew", "sew_tiny", TINY_PRETRAINING), ("sew_d", "sew_d_tiny", TINY_PRETRAINING),
               ("st_sew", "st_sew_base", TINY_PRETRAINING_COMMON + ["model.wfe_c_channels=8", "+model.operating_point='2,2,1'"]),
               ("wav2vec2", "w2v2_base", TINY_W2V2_PRETRAINING))
    for name, config, tiny in configs:
        tiny = [o for o in tiny if not o.startswith(("model.encoder_layers=", "optimization.max_update="))]
        run = hydra_train(root / name, "pretraining", config, [f"task.data={root / 'data'}", *tiny, *four])
        assert run.returncode == 0, run.stderr[-3000:]
        out[name] = root / name / "ckpt" / "checkpoint_last.pt"
    return root / "data", out


def letters_task():
    d = Dictionary()
    for c in LETTERS:
        d.add_symbol(c)
    return Namespace(target_dictionary=d)


def ctc_model(pretrained, name="sew", **exits):
    data, ckpts = pretrained
    cfg = SEWCtcConfig(w2v_path=str(ckpts[name]), data=str(data), normalize=False, ddp_backend="legacy_ddp", apply_mask=False, layerdrop=0.0,
                       final_dropout=0.0, dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, **exits)
    return SEWCtc.build_model(OmegaConf.structured(cfg), letters_task()).eval()


def layer_calls(model):
    """Count the calls of each encoder layer (forward hooks)."""
    counts = [0] * LAYERS
    layers = model.w2v_encoder.w2v_model.encoder.layers
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.mark.parametrize("name", ["sew", "sew_d", "st_sew", "wav2vec2"])
@pytest.mark.slow
def test_joint_loss_is_the_weighted_sum_of_per_exit_ctc_losses(pretrained, name):
    from sew_plugin.criterions.ctc_exits import CtcExitsCriterion
    from fairseq.criterions.ctc import CtcCriterionConfig

    model = ctc_model(pretrained, name, exit_layers="1,3", exit_loss_weights="0.5,2,1", exit_head="mlp")
    task = letters_task()
    criterion = CtcExitsCriterion(CtcCriterionConfig(zero_infinity=True, post_process="letter", sentence_avg=True), task)
    source, padding = waveform_batch([16000, 12000])
    d = task.target_dictionary
    targets = [torch.tensor([d.index(c) for c in "NO|SET"]), torch.tensor([d.index(c) for c in "TEA"])]
    sample = {"net_input": {"source": source, "padding_mask": padding}, "id": torch.arange(2),
              "target": torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=d.pad()),
              "target_lengths": torch.tensor([6, 3]), "ntokens": 9}
    with torch.no_grad():
        loss, _, logging = criterion(model, sample)
        out = model(source=source, padding_mask=padding)

    def ctc(logits):
        lprobs = model.get_normalized_probs({"encoder_out": logits, "padding_mask": out["padding_mask"]}, log_probs=True)
        lengths = (~out["padding_mask"]).sum(-1)
        return torch.nn.functional.ctc_loss(lprobs, torch.cat(targets), lengths, sample["target_lengths"],
                                            blank=0, reduction="sum", zero_infinity=True)

    separate = 0.5 * ctc(out["exit_logits"][1]) + 2 * ctc(out["exit_logits"][3]) + 1 * ctc(out["encoder_out"])
    assert set(out["exit_logits"]) == {1, 3}
    assert torch.allclose(loss, separate, rtol=1e-5)
    assert logging["exit1_loss"] == pytest.approx(ctc(out["exit_logits"][1]).item(), rel=1e-5)
    assert "exit3_w_errors" in logging  # validation counts per exit


@pytest.mark.slow
def test_exit_policy_that_always_exits_first_computes_no_later_layer(pretrained):
    model = ctc_model(pretrained, exit_layers="1,2,3")
    source, padding = waveform_batch([16000, 12000, 9000])
    with torch.no_grad():
        every_exit = model(source=source, padding_mask=padding)["exit_logits"]
        calls = layer_calls(model)
        model.exit_runner.policy = make_policy("entropy", threshold=math.inf)
        out = model(source=source, padding_mask=padding)
    assert calls == [1, 0, 0, 0]
    assert out["exit_layer"].tolist() == [1, 1, 1]
    assert torch.equal(out["encoder_out"], every_exit[1])


@pytest.mark.parametrize("policy", ["entropy", "similarity", "layer"])
@pytest.mark.slow
def test_exit_policy_that_never_exits_is_the_full_model(pretrained, policy):
    model = ctc_model(pretrained, exit_layers="1,2,3")
    source, padding = waveform_batch([16000, 12000, 9000])
    with torch.no_grad():
        full = model(source=source, padding_mask=padding)["encoder_out"]
        model.exit_runner.policy = make_policy(policy, threshold=-math.inf if policy == "entropy" else math.inf, layer=None)
        out = model(source=source, padding_mask=padding)
    assert out["exit_layer"].tolist() == [LAYERS] * 3
    assert torch.equal(out["encoder_out"], full)


@pytest.mark.slow
def test_exit_decisions_are_per_utterance(pretrained):
    model = ctc_model(pretrained, exit_layers="2")
    source, padding = waveform_batch([16000, 12000])
    with torch.no_grad():
        lprobs = torch.log_softmax(model(source=source, padding_mask=padding)["exit_logits"][2], -1)
        entropy = -(lprobs.exp() * lprobs).sum(-1)  # (T, B)
        frames = (~model(source=source, padding_mask=padding)["padding_mask"]).sum(-1)
        means = [entropy[: frames[b], b].mean().item() for b in range(2)]
        calls = layer_calls(model)
        model.exit_runner.policy = make_policy("entropy", threshold=sum(means) / 2)
        together = model(source=source, padding_mask=padding)
        assert sorted(together["exit_layer"].tolist()) == [2, LAYERS]  # one leaves after layer 2
        assert calls == [1, 1, 1, 1]  # layers 3-4 ran once, for the other utterance only
        for b in range(2):
            n = int((~padding[b]).sum())
            alone = model(source=source[b : b + 1, :n], padding_mask=padding[b : b + 1, :n])
            assert alone["exit_layer"].item() == together["exit_layer"][b].item()
            t = alone["encoder_out"].size(0)
            assert (alone["encoder_out"][:, 0] - together["encoder_out"][:t, b]).abs().max() < 1e-4


@pytest.mark.slow
def test_exit_init_must_exist_and_match_the_model(pretrained, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.exit_init="):
        ctc_model(pretrained, exit_layers="2", exit_init=str(tmp_path / "missing.pt"))
    # a pre-training checkpoint is not a fine-tuned CTC model of this backbone
    with pytest.raises(ValueError, match="does not match this model"):
        ctc_model(pretrained, exit_layers="2", exit_init=str(pretrained[1]["sew"]))


@pytest.mark.slow
def test_exits_refuse_an_unknown_training_mode(pretrained):
    with pytest.raises(ValueError, match="model.exit_training='sometimes'"):
        ctc_model(pretrained, exit_layers="2", exit_training="sometimes")


@pytest.mark.parametrize("keys, message", [
    (dict(input_downsample_factor=2), "model.input_downsample_factor=2 needs model.input_downsample"),
    (dict(input_downsample="pool", input_downsample_factor=2), "model.input_downsample='pool'"),
    (dict(input_downsample="conv", input_downsample_factor=5), "model.input_downsample_factor=5"),
    (dict(ctc_frames_per_step=0), "model.ctc_frames_per_step"),
    (dict(ctc_frames_per_step=2, exit_layers="1"), "model.ctc_frames_per_step > 1 is not supported with model.exit_layers"),
    (dict(cif_lambda=1.0), "model.cif_lambda applies to encoders pre-trained with model.compressor=cif"),
])
@pytest.mark.slow
def test_bad_sew_ctc_compression_keys_name_the_key(pretrained, keys, message):
    """The other compute-reduction keys of sew_ctc (input downsampling, CIF) on a plain SEW encoder."""
    with pytest.raises(ValueError, match=re.escape(message)):
        ctc_model(pretrained, "sew", **keys)
