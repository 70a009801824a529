import pytest

from sew_plugin.modules.feature_extractor import parse_conv_layers, total_stride, wfe_c, wfe_o


def test_wfe_c_c64_l1_matches_the_paper_layout():
    layers = parse_conv_layers(wfe_c(64, 1))
    assert [c for c, _, _ in layers] == [64, 128, 128, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512]
    assert [k for _, k, _ in layers] == [10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1]
    assert [s for _, _, s in layers] == [5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]
    assert total_stride(layers) == 320


@pytest.mark.parametrize("extra", [0, 2])
def test_wfe_c_extra_pointwise_layers(extra):
    layers = parse_conv_layers(wfe_c(96, extra))
    assert len(layers) == 7 + 6 * extra
    assert total_stride(layers) == 320
    assert sum(1 for _, k, s in layers if k == 1 and s == 1) == 6 * extra
    assert layers[-1][0] == 8 * 96


def test_wfe_o_is_wav2vec2s_extractor():
    layers = parse_conv_layers(wfe_o(512))
    assert layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


@pytest.mark.parametrize(
    "spec", ["[(64,10,5)", "[(64,10)]", "[]", "[(64,0,5)]", "__import__('os')", "[(64,10,5.0)]"]
)
def test_malformed_layer_strings_name_the_key(spec):
    with pytest.raises(ValueError, match="model.conv_feature_layers"):
        parse_conv_layers(spec)


def test_wfe_c_rejects_bad_sizes():
    with pytest.raises(ValueError, match="channel base"):
        wfe_c(0)
    with pytest.raises(ValueError, match="extra pointwise"):
        wfe_c(64, -1)


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_fairseq_extractors_run_grouped_with_the_same_parameters_and_fp32_outputs(mode, monkeypatch):
    import copy

    import torch
    from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
    from torch import nn

    from sew_plugin.modules.feature_extractor import GroupedConvFeatureExtractor, group_feature_extractors

    torch.manual_seed(0)
    layers = parse_conv_layers("[(32,10,5)] + [(32,3,2)]*2 + [(32,2,2)]")
    fairseq = ConvFeatureExtractionModel(layers, dropout=0.0, mode=mode).eval()
    model = nn.Sequential(copy.deepcopy(fairseq))
    assert group_feature_extractors(model) == 1 and group_feature_extractors(model) == 0  # once
    grouped = model[0]
    assert type(grouped) is GroupedConvFeatureExtractor
    assert list(grouped.state_dict()) == list(fairseq.state_dict())
    x = torch.randn(3, 4000)
    with torch.no_grad():  # one group: fairseq's result for the batch
        assert torch.equal(grouped(x), fairseq(x))
    # in groups of one utterance, with and without autograd: fairseq's result for each alone
    monkeypatch.setattr(GroupedConvFeatureExtractor, "GROUP_BYTES", 1)
    with torch.no_grad():
        want = torch.cat([fairseq(x[i : i + 1]) for i in range(3)])
        assert torch.equal(grouped(x), want)
    assert torch.equal(grouped(x).detach(), want)
    with pytest.raises(ValueError, match="shorter than the feature extractor's receptive field"):
        grouped(x[:, :59])  # its receptive field: 60 samples
