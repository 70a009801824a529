"""A padded batch gives each utterance what it gives alone, for the papers' GroupNorm front end
(``extractor_mode: default``) too: every model family, loaded as ``load_checkpoint`` loads it for
inference (``sew_plugin.modules.masked_group_norm``), with rows 1.5 to 10 times shorter than the
longest and a row shorter than one squeezed frame; fp32, eval, within 1e-5."""

import pytest
import torch

from sew_plugin.checkpoint import load_checkpoint
from sew_plugin.inference.settings import set_exit_policy
from sew_plugin.modules.masked_group_norm import MaskedGroupNorm, mask_feature_norm

from conftest import waveform_batch
from helpers import LETTERS, ctc_model, write_checkpoint

MODELS = {  # name -> (encoder kind, sew_ctc keys, fairseq's wav2vec 2.0 under sew_ctc)
    "sew": ("sew", {}, False),
    "sew_d": ("sew_d", {}, False),
    "st_sew_111": ("st_sew", {"operating_point": "1,1,1"}, False),
    "st_sew_222": ("st_sew", {"operating_point": "2,2,2"}, False),
    "sew_cif": ("sew_cif", {"cif_lambda": 1.0}, False),
    "sew_down2": ("sew", {"input_downsample": "resample", "input_downsample_factor": 2}, False),
    "sew_exits": ("sew", {"exit_layers": "1"}, False),  # under an exit policy, set below
    "wav2vec2_sew_ctc": ("wav2vec2", {}, True),
    "wav2vec2_ctc": ("wav2vec2", {}, False),
}
# the longest row, rows 1.5x and 10x shorter, and one of 500 samples: one 20 ms frame (none squeezed);
# 1000 under 2x input downsampling, the fewest it takes (500 once downsampled)
LENGTHS = [40000, 26667, 4000, 500]


def lengths(name):
    return LENGTHS[:3] + [1000] if name == "sew_down2" else LENGTHS


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_invariance")
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    models = {}
    for i, (name, (kind, ctc, through_sew_ctc)) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        write_checkpoint(ctc_model(kind, "default", sew_ctc=through_sew_ctc, **ctc), folder / f"{name}.pt", folder)
        models[name] = load_checkpoint(folder / f"{name}.pt")[0]
    # mean entropy below 2.3 nats: with random weights (about log 11 = 2.4) some utterances leave at
    # the first exit, the others run on, each decided alone
    set_exit_policy(models["sew_exits"], "entropy", threshold=2.3)
    return models


def logits(model, source, padding):
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
    mask = out["padding_mask"]
    x = out["encoder_out"].transpose(0, 1)
    return x, (torch.full(x.shape[:1], x.size(1)) if mask is None else (~mask).sum(-1))


@pytest.mark.parametrize("name", MODELS)
def test_each_utterance_of_a_padded_batch_gets_its_logits_alone(loaded, name):
    model = loaded[name]
    assert any(isinstance(m, MaskedGroupNorm) and m.masked for m in model.modules())
    source, padding = waveform_batch(lengths(name), seed=2)
    together, frames = logits(model, source, padding)
    if name == "sew_exits":  # the batch holds utterances leaving at either exit
        with torch.no_grad():
            assert set(model(source=source, padding_mask=padding)["exit_layer"].tolist()) == {1, 2}
    for i, n in enumerate(lengths(name)):
        alone, alone_frames = logits(model, source[i : i + 1, :n], None)
        assert frames[i] == alone_frames[0], (name, n)
        diff = (together[i, : frames[i]] - alone[0, : frames[i]]).abs().max() if frames[i] else 0.0
        assert diff <= 1e-5, (name, n, float(diff))


@pytest.mark.parametrize("name", ["sew", "sew_d", "st_sew_222", "sew_cif"])
def test_the_encoder_features_are_batch_invariant_too(loaded, name):
    w2v = loaded[name].w2v_encoder.w2v_model
    source, padding = waveform_batch(LENGTHS[:3], seed=4)
    with torch.no_grad():
        together = w2v(source, padding_mask=padding, mask=False, features_only=True)
        for i, n in enumerate(LENGTHS[:3]):
            alone = w2v(source[i : i + 1, :n], padding_mask=None, mask=False, features_only=True)["x"][0]
            valid = ~together["padding_mask"][i]
            assert (together["x"][i][valid] - alone[: int(valid.sum())]).abs().max() <= 1e-5, (name, n)


def test_fairseqs_batch_statistics_are_what_training_keeps_by_default():
    """Without the masked statistics (a model built for training), a short row of a padded batch is
    normalised with the padding: far from what it gives alone. The masked norm alone is fairseq's."""
    model = ctc_model("sew", "default")
    assert not any(isinstance(m, MaskedGroupNorm) for m in model.modules())
    source, padding = waveform_batch([32000, 8000], seed=3)
    batch_stats, frames = logits(model, source, padding)
    alone, _ = logits(model, source[1:, :8000], None)
    assert (batch_stats[1, : frames[1]] - alone[0]).abs().max() > 1e-2
    assert mask_feature_norm(model) == 1
    masked, _ = logits(model, source, padding)
    assert (masked[1, : frames[1]] - alone[0]).abs().max() <= 1e-5
    alone_masked, _ = logits(model, source[1:, :8000], None)
    assert torch.equal(alone_masked, alone)  # one utterance: fairseq's function, bit for bit


def test_sew_infer_refuses_rows_too_short_for_a_downsampling_model_by_line(tmp_path, capsys):
    """500 samples pass the manifest's 400-sample check but give a 2x-downsampling model no frame:
    refused by manifest line before any forward (alone it failed inside the model, in a batch it
    silently got no words)."""
    from sew_plugin.cli import main as sew

    from conftest import write_manifest, write_wav_corpus

    (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    rows = write_wav_corpus(tmp_path / "wav", [16000, 500, 9000])
    write_manifest(tmp_path / "test.tsv", tmp_path / "wav", rows)
    write_checkpoint(ctc_model("sew", "default", input_downsample="resample", input_downsample_factor=2),
                     tmp_path / "ckpt.pt", tmp_path)
    for batch in ("1", "8"):
        assert sew(["infer", str(tmp_path / "ckpt.pt"), str(tmp_path / "test.tsv"), "--batch-size", batch]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sew infer: error: 1 bad manifest rows") and f"{tmp_path / 'test.tsv'}:3" in err, err
        assert "500 samples; this model downsamples its input and needs at least 799" in err


def test_groups_of_rows_get_their_rows_of_the_given_statistics_and_a_mismatch_is_refused():
    from fairseq.modules import Fp32GroupNorm

    from sew_plugin.modules.masked_group_norm import given_statistics, rows

    torch.manual_seed(0)
    norm = MaskedGroupNorm.convert(Fp32GroupNorm(4, 4), torch.nn.Conv1d(1, 4, 10, 5))
    x = torch.randn(3, 4, 50)
    mean, var = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    with given_statistics(mean, var):
        whole = norm(x)
        with rows(1, 3):  # rows 1 and 2 of the batch, as an extractor running it in groups hands them
            assert torch.equal(norm(x[1:3]), whole[1:3])
        with pytest.raises(ValueError, match="given statistics of 3 rows for a batch of 2"):
            norm(x[1:3])  # never normalised by its own frames unseen


def test_an_extractor_in_groups_refuses_statistics_for_another_batch(monkeypatch):
    from sew_plugin.modules.feature_extractor import GroupedConvFeatureExtractor, parse_conv_layers
    from sew_plugin.modules.masked_group_norm import given_statistics

    extractor = GroupedConvFeatureExtractor(parse_conv_layers("[(4,10,5)] + [(4,3,2)]"), mode="default").eval()
    mask_feature_norm(extractor)
    monkeypatch.setattr(GroupedConvFeatureExtractor, "GROUP_BYTES", 1)  # groups of one
    x = torch.randn(4, 800)
    with torch.no_grad(), given_statistics(torch.zeros(5, 4), torch.ones(5, 4)):
        # each group's slice of the 5 rows would match its group of one: the extractor checks the whole
        with pytest.raises(ValueError, match="given statistics of 5 rows for a batch of 4"):
            extractor(x)


def test_a_wav2vec2_encoder_with_input_downsampling_refuses_short_input_counting_its_own_samples():
    from sew_plugin.modules.feature_extractor import group_feature_extractors

    model = ctc_model("wav2vec2", "default", sew_ctc=True, input_downsample="avgpool", input_downsample_factor=2)
    assert model.min_source_samples == 0  # fairseq's extractor does not say its receptive field
    group_feature_extractors(model)  # what load_checkpoint does: the plugin's extractor says it
    least = model.min_source_samples
    assert least > model.w2v_encoder.w2v_model.feature_extractor.min_samples
    with pytest.raises(ValueError, match=f"waveform of {least - 1} samples .* at least {least} samples"):
        model.check_downsampled_length(least - 1)
    model.check_downsampled_length(least)
