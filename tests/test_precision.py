"""``--dtype``: a model converted once to bf16, fp16 or int8 holds its weights in that format, takes
the fp32 waveform as before, and gives CTC log-probabilities close to fp32's, a padded batch
what each utterance gives alone (within the format's tolerance); the commands carry the option."""

import json

import pytest
import torch

from sew_plugin.cli import main as sew
from sew_plugin.inference.precision import context_network, kept_in_fp32, parameter_count, set_precision
from sew_plugin.modules.feature_extractor import GroupedConvFeatureExtractor, group_feature_extractors
from sew_plugin.modules.int8_linear import Int8Conv1d, Int8Linear
from sew_plugin.modules.masked_group_norm import mask_feature_norm

from conftest import waveform_batch, write_manifest, write_wav_corpus
from helpers import LETTERS, ctc_model, infer_result, model_cfg, tiny_ctc, write_checkpoint

# max |log-probability - fp32's| on the tiny random models (bf16: 8 bits of mantissa, fp16: 11, int8:
# 7 per value), measured 0.058, 0.0069 and 0.036; int8 0.12-0.22 over seeds 0-3 and every kind since
# the extractor's convolutions are int8 too (twelve of them, on 8-64 channels here; the demo's trained
# SEW-D moved from 0.042 to 0.050 in mean |log-probability| and by 0.18 in WER). Padded vs alone 1e-3
# (fp16) and 2e-6 (int8: each frame quantized from itself; fp16's products are not batch-invariant on
# the CPU). bf16: 0 to 0.025
# over seeds 0-5 and every kind: the fp32 waveform block's GELU (PyTorch's vectorized loop with a
# scalar tail placed by the tensor's size) can differ by an fp32 ulp between a padded batch and the
# utterance alone, and the bf16 rounding of its output then by one bf16 step (2^-8 relative), which
# the tiny random models amplify (2^-5, as in test_position_bias)
CLOSE_TO_FP32 = {"bf16": 0.15, "fp16": 0.02, "int8": 0.3}
BATCH_EQUALS_ALONE = {"bf16": 2**-5, "fp16": 5e-3, "int8": 1e-4}


FAIRSEQ_EXTRACTOR = ":fairseq-extractor"  # a wav2vec 2.0 built by hand, not by load_checkpoint


def twins(kind: str, **ctc):
    """Two copies of one random tiny CTC model with a GroupNorm front end, its statistics over each
    utterance's own frames, its extractor the plugin's (as ``load_checkpoint`` sets them for
    inference; ``wav2vec2:fairseq-extractor`` keeps fairseq's)."""
    kind, fairseq_extractor = kind.removesuffix(FAIRSEQ_EXTRACTOR), kind.endswith(FAIRSEQ_EXTRACTOR)
    first = ctc_model(kind, "default", **ctc)
    second = ctc_model(kind, "default", **ctc)
    second.load_state_dict(first.state_dict())
    for model in (first, second):
        mask_feature_norm(model)
        if not fairseq_extractor:
            assert group_feature_extractors(model) == (kind == "wav2vec2")  # the others' are the plugin's
    return first, second


def lprobs(model, source, padding):
    """(B, T, V) log-probabilities and the (B, T) frame padding of a waveform batch."""
    with torch.no_grad():
        out = model(source=source, padding_mask=padding)
        frames = out["padding_mask"]
        return model.get_normalized_probs(out, log_probs=True).transpose(0, 1), frames


@pytest.mark.parametrize("kind", ["sew", "sew_d", "st_sew", "wav2vec2", "wav2vec2" + FAIRSEQ_EXTRACTOR])
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "int8"])
def test_a_converted_model_holds_its_format_and_computes_close_to_fp32(kind, dtype):
    fp32, model = twins(kind, **({"operating_point": "2,2,1"} if kind == "st_sew" else {}))
    extractor = model.w2v_encoder.w2v_model.feature_extractor
    assert isinstance(extractor, GroupedConvFeatureExtractor) != kind.endswith(FAIRSEQ_EXTRACTOR)
    parameters = parameter_count(fp32)
    set_precision(model, dtype)
    if dtype == "int8":  # the context network's linear layers and the plugin's extractor convolutions
        # after the waveform's block are int8, everything else stays fp32
        assert not any(isinstance(m, torch.nn.Linear) for m in context_network(model).modules())
        assert sum(isinstance(m, Int8Linear) for m in context_network(model).modules()) >= 8
        assert isinstance(model.w2v_encoder.proj, torch.nn.Linear)  # the CTC head
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        convs = [block[0] for block in extractor.conv_layers]
        if isinstance(extractor, GroupedConvFeatureExtractor):
            assert isinstance(convs[0], torch.nn.Conv1d) and convs[0].in_channels == 1  # the waveform's, fp32
            assert len(convs) > 1 and all(isinstance(c, Int8Conv1d) for c in convs[1:])
        else:  # fairseq's own extractor is left as it is
            assert not any(isinstance(c, Int8Conv1d) for c in convs)
    else:
        want = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        # convolutions of 2..31 input channels per group and the waveform's block stay fp32
        fp32_parts = {id(p) for m in kept_in_fp32(model) for p in m.parameters()}
        waveform_block = extractor.conv_layers[0] if isinstance(extractor, GroupedConvFeatureExtractor) else None
        assert fp32_parts  # the tiny models have such convolutions, so the rule is exercised
        assert {p.dtype for p in model.parameters() if id(p) not in fp32_parts} == {want}
        assert {p.dtype for p in model.parameters() if id(p) in fp32_parts} == {torch.float32}
        # and their own fp32 values, not values rounded to the model's format and cast back
        want_values = [v for m in kept_in_fp32(fp32) for v in m.state_dict().values()]
        got_values = [v for m in kept_in_fp32(model) for v in m.state_dict().values()]
        assert len(got_values) == len(want_values) > 0 and all(map(torch.equal, got_values, want_values))
        assert waveform_block is None or {p.dtype for p in waveform_block.parameters()} == {torch.float32}
        assert {b.dtype for b in model.buffers() if b.is_floating_point()} <= {want}
    assert parameter_count(model) == parameters and model.inference_dtype == dtype

    source, padding = waveform_batch([16000, 6400])  # fp32 audio in, as the commands pass it
    reference, frames = lprobs(fp32, source, padding)
    got, got_frames = lprobs(model, source, padding)
    valid = ~frames if frames is not None else torch.ones(got.shape[:2], dtype=torch.bool)
    assert got.dtype == torch.float32 and torch.isfinite(got[valid]).all()  # the log-softmax in fp32
    assert torch.equal(got_frames, frames) if frames is not None else got_frames is None
    assert (got - reference).abs()[valid].max() < CLOSE_TO_FP32[dtype]
    assert (got.argmax(-1) == reference.argmax(-1))[valid].float().mean() > 0.9

    alone, _ = lprobs(model, source[1:, :6400], padding[1:, :6400])
    assert (got[1, : alone.size(1)] - alone[0]).abs().max() < BATCH_EQUALS_ALONE[dtype]


@pytest.mark.parametrize("method", ["conv", "resample", "avgpool"])
def test_a_bf16_model_with_input_downsampling_takes_the_fp32_waveform(method):
    # the downsampler shortens the waveform before the extractor's fp32 waveform block: kept fp32
    # with it (in bf16 the learned and resampling filters refused the fp32 waveform)
    fp32, model = twins("sew", input_downsample=method, input_downsample_factor=2)
    set_precision(model, "bf16")
    kept = model.input_downsampler
    assert kept in kept_in_fp32(model)
    assert {t.dtype for t in (*kept.parameters(), *kept.buffers()) if t.is_floating_point()} <= {torch.float32}
    # with their own fp32 values, the resampler's non-persistent filter too (not rounded to bf16 and back)
    own = [*fp32.input_downsampler.parameters(), *fp32.input_downsampler.buffers()]
    assert all(map(torch.equal, [*kept.parameters(), *kept.buffers()], own))
    assert method == "avgpool" or own
    source, padding = waveform_batch([16000, 6400])
    reference, frames = lprobs(fp32, source, padding)
    got, _ = lprobs(model, source, padding)
    valid = ~frames if frames is not None else torch.ones(got.shape[:2], dtype=torch.bool)
    assert (got - reference).abs()[valid].max() < CLOSE_TO_FP32["bf16"]


def test_sew_d_position_tables_are_cached_in_the_inference_format():
    _, model = twins("sew_d")
    set_precision(model, "bf16")
    source, padding = waveform_batch([8000])
    lprobs(model, source, padding)
    attention = context_network(model).encoder.layer[0].attention.self
    _, whole, (_, pos_key, pos_query) = attention._tables
    assert {t.dtype for t in (*whole, pos_key, pos_query)} == {torch.bfloat16}
    assert pos_key.is_contiguous() and pos_query.is_contiguous()


def test_a_converted_model_is_not_converted_again_and_training_is_refused():
    fp32, model = twins("sew")
    set_precision(model, "int8")
    with pytest.raises(ValueError, match="already runs in int8"):
        set_precision(model, "bf16")
    with pytest.raises(ValueError, match="is for inference"):
        set_precision(fp32.train(), "bf16")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        set_precision(fp32.eval(), "fp8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision")
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    rows = write_wav_corpus(folder / "wav", [16000, 24000, 8000])
    write_manifest(folder / "test.tsv", folder / "wav", rows)
    (folder / "test.ltr").write_text("E T A |\n" * len(rows))
    torch.manual_seed(3)
    write_checkpoint(ctc_model("sew_d", "default"), folder / "ckpt.pt", folder)
    return folder


@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_sew_infer_and_transcribe_run_in_the_dtype_asked_for(corpus, capsys, dtype):
    out = corpus / f"results_{dtype}"
    assert sew(["infer", str(corpus / "ckpt.pt"), str(corpus / "test.tsv"), "--dtype", dtype,
                "--results-dir", str(out)]) == 0
    assert f"parameters, {dtype}" in capsys.readouterr().out
    summary = json.loads(infer_result(out).read_text())
    assert summary["dtype"] == dtype and summary["utterances_transcribed"] == 3

    from sew_plugin.inference.transcriber import Transcriber

    transcriber = Transcriber.from_checkpoint(corpus / "ckpt.pt", dtype=dtype)
    transcript = transcriber.transcribe(corpus / "wav" / "utt001.wav")
    assert transcript.settings["dtype"] == dtype and transcriber.model.inference_dtype == dtype


def test_fp16_on_the_cpu_is_refused_with_the_formats_that_run_there(corpus, capsys):
    with pytest.raises(SystemExit) as stop:
        sew(["infer", str(corpus / "ckpt.pt"), str(corpus / "test.tsv"), "--dtype", "fp16"])
    assert "fp16 is for GPUs" in str(stop.value) and "use bf16 or int8" in str(stop.value)


def test_sew_d_trains_in_bf16_with_gradients_through_both_position_terms():
    """fairseq's ``common.bf16`` training holds the model in bf16: the position terms' gathers keep
    their gradients there (the int16 gather of inference is for tensors without autograd)."""
    model = ctc_model("sew_d").to(torch.bfloat16).train()
    source, padding = waveform_batch([8000, 6000])
    out = model(source=source.to(torch.bfloat16), padding_mask=padding)
    out["encoder_out"].float().pow(2).mean().backward()
    encoder = context_network(model).encoder
    attention = encoder.layer[0].attention.self
    for weight in (encoder.rel_embeddings.weight, attention.key_proj.weight, attention.query_proj.weight):
        assert weight.grad is not None and torch.isfinite(weight.grad.float()).all() and weight.grad.abs().sum() > 0


def test_int8_products_are_counted_as_multiply_accumulates():
    """torch's counter does not know ``torch._int_mm``: ``mac_counts`` counts it, so an int8 model
    has the MACs of its fp32 twin (``sew sweep``'s GMACs, ``sew bench``'s column)."""
    from sew_plugin.inference.bench import count_macs

    fp32, model = twins("sew_d")
    set_precision(model, "int8")
    source, padding = waveform_batch([8000])
    counts = []
    for m in (fp32, model):
        lprobs(m, source, padding)  # fills SEW-D's position tables, as a timed forward finds them
        counts.append(count_macs(m, lambda x, m=m: m(source=x, padding_mask=None), source))
    assert counts[0] > 0 and abs(counts[1] - counts[0]) < 1e-6 * counts[0]


def test_int8_linear_in_row_blocks_computes_what_one_block_computes(monkeypatch):
    linear = torch.nn.Linear(24, 40)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(3, 13, 24)  # 39 rows
    whole = layer(x)
    monkeypatch.setattr(Int8Linear, "BLOCK_BYTES", 1)  # 16 rows at a time: blocks of 16, 16 and 7
    blocks = layer(x)
    assert blocks.shape == (3, 13, 40) and torch.equal(blocks, whole)
    assert (whole - linear(x)).abs().max() < 0.02 * linear(x).abs().max()


@pytest.mark.parametrize("kernel, stride, bias", [(3, 2, False), (1, 1, False), (2, 2, True), (4, 3, True)])
def test_an_int8_convolution_computes_the_convolution_window_by_window(kernel, stride, bias):
    conv = torch.nn.Conv1d(24, 40, kernel, stride, bias=bias)
    layer = Int8Conv1d.from_conv(conv)
    x = torch.randn(3, 24, 101)
    want, got = conv(x), layer(x)
    assert got.shape == want.shape and (got - want).abs().max() < 0.02 * want.abs().max()
    for b in range(3):  # each window quantized from itself: the batch gives what each gives alone
        assert torch.equal(layer(x[b : b + 1])[0], got[b])
    # the result lies in (B, T, C) memory, which the next int8 convolution reads in place, with what
    # it computes from the same values laid out plainly
    following = Int8Conv1d.from_conv(torch.nn.Conv1d(40, 8, 1))
    assert got.transpose(1, 2).is_contiguous()
    assert torch.equal(following(got), following(got.contiguous()))


@pytest.mark.parametrize("conv", [torch.nn.Conv1d(8, 8, 3, groups=2), torch.nn.Conv1d(8, 8, 3, padding=1)])
def test_an_int8_convolution_refuses_groups_and_padding(conv):
    with pytest.raises(ValueError, match="one group, no padding and no dilation"):
        Int8Conv1d.from_conv(conv)


def test_the_similarity_exit_compares_layers_in_fp32():
    """In bf16, cosine similarities near 1 round to steps of 0.004, which would merge the thresholds
    a sweep compares: the policy gets them in fp32."""
    from sew_plugin.inference.settings import set_exit_policy

    model = tiny_ctc(model_cfg("sew"), "sew", exit_layers="1,2").eval()  # 3 layers: exits after 1 and 2
    set_precision(model, "bf16")
    set_exit_policy(model, "similarity", 2.0)  # never leaves: every similarity reaches the policy
    seen, decide = [], model.exit_runner.policy.decide

    def recording(layer, lprobs, frames, similarity):
        seen.append(similarity)
        return decide(layer, lprobs, frames, similarity)

    model.exit_runner.policy.decide = recording
    source, padding = waveform_batch([16000, 12000])
    lprobs(model, source, padding)
    similarity = seen[-1]  # after layer 2: against layer 1
    assert similarity.dtype == torch.float32 and bool((similarity > -1).all())
    assert not torch.equal(similarity, similarity.to(torch.bfloat16).float())  # not rounded to bf16


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_bf16_model_whose_waveform_block_is_fp32_runs_with_autograd_and_traced():
    """Every path through the extractor casts each block's input to its convolution's format: with
    32 channels its later blocks are bf16 while the waveform's is fp32 (the tiny models' narrow
    convolutions would all stay fp32 and hide a missing cast)."""
    from helpers import tiny_sew_d

    model = set_precision(tiny_sew_d(wfe_c_channels=32).eval(), "bf16")
    blocks = model.feature_extractor.conv_layers
    assert blocks[0][0].weight.dtype == torch.float32 and blocks[1][0].weight.dtype == torch.bfloat16
    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, mask=False, features_only=True)["x"]

    source, _ = waveform_batch([6000])
    features = Features()
    with torch.no_grad():
        eager = features(source)
        traced = torch.jit.trace(features, source, check_trace=False)(source)
    with_autograd = features(source)
    # traced and with autograd the GELUs are not fused (modules.onednn): a bf16 rounding apart
    assert eager.dtype == traced.dtype == with_autograd.dtype == torch.bfloat16
    assert torch.allclose(traced.float(), eager.float(), atol=0.05, rtol=0.05)
    # traced, the attention is PyTorch's fused kernel; with autograd, products around a softmax:
    # the same sums in another order, a bf16 rounding apart at most
    assert torch.allclose(traced.float(), with_autograd.float(), atol=2**-8, rtol=2**-7)
