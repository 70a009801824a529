"""``sew infer`` gives byte-identical hypotheses whatever the batching, for a GroupNorm front end
(``extractor_mode: default``), and so does the exported ONNX graph run on padded batches: 40
utterances of 0.5 to 20 s at ``--batch-size`` 1, 8 and 32 and with ``--max-tokens``."""

import numpy as np
import pytest
import torch

from sew_plugin.cli import main as sew
from sew_plugin.inference.decoding import ViterbiDecoder
from sew_plugin.inference.transcribe import check_inputs, collate, load_batch, plan_batches

from conftest import write_manifest, write_wav_corpus
from helpers import LETTERS, ctc_model, write_checkpoint

pytestmark = pytest.mark.slow  # a 40-utterance corpus transcribed five times

SECONDS = np.random.default_rng(0).permutation(np.linspace(0.5, 20.0, 40))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batching")
    (folder / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    rows = write_wav_corpus(folder / "wav", [int(16000 * s) for s in SECONDS])
    write_manifest(folder / "test.tsv", folder / "wav", rows)
    (folder / "test.ltr").write_text("E T A |\n" * len(rows))
    torch.manual_seed(11)
    model = ctc_model("sew", "default")
    write_checkpoint(model, folder / "ckpt.pt", folder)
    return folder


def hypotheses(corpus, *options) -> bytes:
    out = corpus / ("results" + "_".join(options))
    assert sew(["infer", str(corpus / "ckpt.pt"), str(corpus / "test.tsv"), "--results-dir", str(out), *options]) == 0
    return (out / "hypotheses-ckpt.pt-test.tsv").read_bytes()


def test_sew_infer_hypotheses_do_not_depend_on_the_batching(corpus):
    alone = hypotheses(corpus, "--batch-size", "1")
    assert alone.count(b"\n") == 41 and len(set(alone.split(b"\n")[1:-1])) > 1  # 40 distinct-ish rows
    for options in (["--batch-size", "8"], ["--batch-size", "32"], ["--max-tokens", "640000"]):
        assert hypotheses(corpus, *options) == alone, options


def test_the_onnx_graph_on_padded_batches_gives_the_same_hypotheses(corpus, tmp_path):
    pytest.importorskip("onnxruntime")
    from sew_plugin.checkpoint import load_checkpoint
    from sew_plugin.interop import onnx as export

    model, _, task = load_checkpoint(corpus / "ckpt.pt")
    session = export.session(export.export(model, tmp_path / "model.onnx"), threads=2)
    decoder = ViterbiDecoder(task.target_dictionary)
    manifest, _ = check_inputs(corpus / "test.tsv", None)
    lengths = [n for _, n in manifest.entries]

    def transcripts(batch_size):
        hyps = {}
        for batch in plan_batches(lengths, batch_size):
            source, padding = collate(load_batch(manifest, batch), normalize=False)
            logits, frames = export.run_session(session, source, padding)
            for row, i in enumerate(batch):
                hyps[i] = decoder.decode(torch.log_softmax(logits[row, : frames[row]], -1))
        return [hyps[i] for i in range(len(lengths))]

    alone = transcripts(1)
    assert transcripts(16) == alone
    with torch.no_grad():  # and they are PyTorch's
        for i in range(0, len(lengths), 7):
            source, padding = collate(load_batch(manifest, [i]), normalize=False)
            out = model(source=source, padding_mask=padding)
            lprobs = model.get_normalized_probs(out, log_probs=True).transpose(0, 1)[0]
            assert decoder.decode(lprobs) == alone[i]
