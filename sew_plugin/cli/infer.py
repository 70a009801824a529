"""``sew infer``: transcribe a manifest with a CTC checkpoint; WER, UER, and where the time goes.

Every utterance of the manifest is transcribed exactly once (batches never drop a remainder) and
the count is checked. References come from the label file beside the manifest
(``<split>.<labels>``, e.g. ``valid.ltr``): without ``--labels`` a missing ``.ltr`` only means no
WER (the summary says so), a file named by ``--labels`` must exist. Timing separates the model
forward from decoding; the real-time factor is processing time over audio duration. The first
batch runs ``--warmup`` untimed forwards first, so one-time costs (first-call allocations, thread
pools) are not charged to it; ``--warmup-every-batch`` warms every batch (each new shape has first-call
costs of its own), as ``sew sweep`` does, so that the two commands' times compare.

    sew infer ckpt.pt data/dev_other.tsv --results-dir results/greedy
    sew infer ckpt.pt data/dev_other.tsv --decoder kenlm --lm lm.arpa --lexicon lexicon.txt

The options of fairseq's ``examples/speech_recognition/infer.py`` that users type by habit are
accepted with the same meaning (``--results-path``, ``--w2l-decoder``, ``--kenlm-model``/``--lm-model``,
``--sil-weight``, ``--unk-weight``, ``--post-process letter``); ``--gen-subset`` is refused with the
way to say it here (the manifest itself, not a data folder and a subset).
"""

import argparse
import contextlib
import dataclasses
import math
from pathlib import Path

from ..data.errors import DataError, output_dir, refuse_existing
from ..inference.decoding import DECODERS, BeamOptions, ParallelDecoder, build_decoder
from ..inference.precision import DTYPES
from ..inference.settings import (NBEST, READ_BY, load_for_inference, require_fixed_cif_lambda,
                                  require_fixed_operating_point, set_cif_lambda, set_exit_policy, set_operating_point,
                                  unread)
from ..inference.transcribe import (LABELS, Batching, check_inputs, label_path, result_paths, transcribe,
                                    write_results)
from ..modules.early_exit import POLICIES
from .options import at_least, device, finite, refusing


def add_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint (sew_ctc, wav2vec_ctc, ...)")
    p.add_argument("manifest", type=Path, help="fairseq manifest (.tsv) to transcribe")
    add_decoding_arguments(p)
    p.add_argument("--warmup-every-batch", action="store_true",
                   help="run the --warmup forwards before every batch, not only the first: steady-state times, "
                   "measured as sew sweep measures its points")
    p.add_argument("--results-dir", "--results-path", type=Path,
                   help="write fairseq's hypo.word-CHECKPOINT-SPLIT.txt, ref.word-, hypo.units-, ref.units- files, "
                   "hypotheses-CHECKPOINT-SPLIT.tsv and summary-CHECKPOINT-SPLIT.json here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in --results-dir (those not written again are removed)")
    add_setting_arguments(p)
    for option, hint in FAIRSEQ_ONLY.items():
        p.add_argument(option, type=_refused(option, hint), help=argparse.SUPPRESS)


# fairseq's infer.py options with no equivalent here, refused with the way to say it
FAIRSEQ_ONLY = {
    "--gen-subset": "sew infer takes the manifest itself: pass DATA/{}.tsv as its second argument instead of "
                    "fairseq's data folder and --gen-subset {}",
    "--path": "sew infer takes the checkpoint as its first argument",
    "--task": "sew infer takes the task from the checkpoint",
    "--criterion": "sew infer needs no criterion: it reads the task and model from the checkpoint",
}


def _refused(option: str, hint: str):
    def parse(text: str):
        raise argparse.ArgumentTypeError(hint.format(text, text))

    return parse


def add_setting_arguments(p) -> None:
    """The setting a model runs at: St-SEW's point, CIF's lambda, the early-exit threshold."""
    p.add_argument("--operating-point", help="St-SEW: fixed 'S_f,S_k,S_q' to run at, e.g. 2,2,1")
    p.add_argument("--cif-lambda", type=float, help="CIF models: the lambda in [0, 2) to run at (sets the frame period)")
    p.add_argument("--threshold", type=float, help="--exit-policy entropy/similarity/nbest: the exit threshold")


def add_decoding_arguments(p, tuning: bool = False) -> None:
    """Decoder, batching and device options, shared by ``sew infer``, ``sew sweep`` and (``tuning``)
    ``sew tune-lm``."""
    p.add_argument("--labels", help=f"reference label extension beside the manifest, ltr or wrd; the file "
                   f"must exist (default: {LABELS} when <split>.{LABELS} exists, else no WER)")
    add_decoder_arguments(p, tuning)
    p.add_argument("--batch-size", type=at_least(1), default=8, help="utterances per forward")
    if tuning:  # nothing is timed
        p.set_defaults(warmup=0)
    else:
        p.add_argument("--warmup", type=at_least(0), default=1,
                       help="untimed forwards of the first batch before it is timed (0: time the first call too)")
    p.add_argument("--max-tokens", type=at_least(0), default=0, help="if > 0, cap on padded samples per batch instead")


# sew tune-lm's grid: from no LM (the lexicon alone) to past the papers' 2, and word scores around the papers' -1
TUNING_LM_WEIGHTS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
TUNING_WORD_SCORES = [-2.0, -1.0, 0.0, 1.0, 2.0]


def add_decoder_arguments(p, tuning: bool = False) -> None:
    """Decoder, device and exit-policy options, shared by ``sew infer``, ``sew sweep`` and ``sew transcribe``;
    with ``tuning`` (``sew tune-lm``) the kenlm decoder alone, with lists of LM weights and word scores."""
    if tuning:
        p.set_defaults(decoder="kenlm")
        p.add_argument("--lm", "--kenlm-model", "--lm-model", type=Path, required=True,
                       help="KenLM language model (ARPA or binary)")
        p.add_argument("--lexicon", type=Path, required=True, help="flashlight lexicon (WORD W O R D |)")
        p.add_argument("--lm-weight", type=at_least(0.0, float), nargs="+", default=TUNING_LM_WEIGHTS,
                       help="the LM weights to try")
        p.add_argument("--word-score", type=finite, nargs="+", default=TUNING_WORD_SCORES,
                       help="the word scores to try, at each LM weight")
    else:
        p.add_argument("--decoder", "--w2l-decoder", default="viterbi", choices=list(DECODERS),
                       help="greedy (viterbi) or flashlight-text's lexicon beam search with a KenLM model (kenlm)")
        p.add_argument("--lm", "--kenlm-model", "--lm-model", type=Path,
                       help="KenLM language model (ARPA or binary) for --decoder kenlm")
        p.add_argument("--lexicon", type=Path, help="flashlight lexicon (WORD W O R D |) for --decoder kenlm")
        p.add_argument("--lm-weight", type=at_least(0.0, float), default=BeamOptions.lm_weight,
                       help="--decoder kenlm: weight of the LM score; the default is the papers' (sew tune-lm "
                       "chooses it for a model on held-out data)")
        p.add_argument("--word-score", type=finite, default=BeamOptions.word_score,
                       help="--decoder kenlm: score added per word (an insertion penalty); the default is the papers'")
    p.add_argument("--sil-score", "--sil-weight", type=float, default=BeamOptions.sil_score,
                   help="--decoder kenlm: score added per silence (|)")
    p.add_argument("--unk-score", "--unk-weight", type=float, default=BeamOptions.unk_score,
                   help="--decoder kenlm: score of a word outside the lexicon (-inf: never produced)")
    p.add_argument("--post-process", choices=["letter"], default="letter",
                   help="how label symbols become words; letters joined at | (fairseq's letter), the only one here")
    p.add_argument("--beam", type=at_least(1), default=BeamOptions.beam,
                   help="--decoder kenlm: hypotheses kept; the default is the papers'")
    p.add_argument("--beam-size-token", type=at_least(0), default=BeamOptions.beam_size_token,
                   help="--decoder kenlm: letters tried per frame (0: the whole vocabulary)")
    p.add_argument("--beam-threshold", type=float, default=BeamOptions.beam_threshold,
                   help="--decoder kenlm: drop hypotheses scoring this far below the best")
    p.add_argument("--decode-workers", type=at_least(1), default=1,
                   help=("processes running the grid's beam searches at once, each with its own copy of the LM "
                         "(the results are those of one process)" if tuning else "--decoder kenlm: processes running "
                         "the beam search on several utterances at once (the results are the serial ones)"))
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                   help="number format of the model, converted once at load: bf16 (CPUs with AVX512-BF16 or AMX, "
                   "GPUs), fp16 (GPUs), int8 (the CPU: the transformer's linear layers and the feature extractor's "
                   "convolutions after the first in int8, each frame quantized from itself)")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--exit-policy", choices=POLICIES,
                   help="early-exit models: leave at --exit-layer (layer), or at the first exit whose mean "
                   "posterior entropy is below --threshold (entropy), whose cosine similarity to the previous "
                   "layer is above it (similarity), or whose N-best confidence reaches it (nbest, --decoder kenlm)")
    p.add_argument("--exit-layer", type=int, help="--exit-policy layer: the exit layer")
    p.add_argument("--nbest", type=at_least(1), default=NBEST, help="--exit-policy nbest: hypotheses in the confidence")


def results_files(args):
    """Where ``--results-dir`` results go, checked before any work: a folder that can be written,
    without the results of an earlier run for this checkpoint and split (unless ``--overwrite``);
    (their paths, those that exist)."""
    with refusing("infer"):
        paths = result_paths(output_dir(args.results_dir, "--results-dir"), args.checkpoint, args.manifest)
        return paths, refuse_existing(paths.values(), args.overwrite)


def decoder_settings(args) -> dict:
    """What the results were decoded with, for their summary: the decoder, and the beam search's
    files and options."""
    if args.decoder != "kenlm":
        return {"decoder": args.decoder}
    beam = {k: v for k, v in dataclasses.asdict(beam_options(args)).items() if math.isfinite(v)}  # JSON has no -inf
    return {"decoder": args.decoder, "lm": str(args.lm), "lexicon": str(args.lexicon), **beam}


def labelled_inputs(args, command: str):
    """``check_inputs`` for a command that scores WER: a manifest without references is refused."""
    inputs = check_inputs(args.manifest, args.labels)  # bad input stops here, before the model loads
    if inputs[1] is None:
        raise DataError(label_path(args.manifest, args.labels), f"label file not found: sew {command} needs references")
    return inputs


def beam_options(args) -> BeamOptions:
    return BeamOptions(args.beam, args.beam_size_token, args.beam_threshold, args.lm_weight, args.word_score,
                       unk_score=args.unk_score, sil_score=args.sil_score)


def load(args, command: str = "infer", data=None, named: bool = False):
    """The model, decoder and normalisation of ``args.checkpoint``, its dictionary from ``data``
    (the folder of ``dict.ltr.txt``: the manifest's, or ``named`` by the user's ``--data``; None:
    the folder it was fine-tuned from); misuse stops with the command's error."""
    with refusing(command):
        model, task, normalize = load_for_inference(args.checkpoint, data, args.device, args.threads, command,
                                                    args.dtype, data_named=named)
    decoder = build_decoder(args.decoder, task.target_dictionary, args.lexicon, args.lm, beam_options(args))
    return model, decoder, normalize


# what an option refused as unread meant in fairseq's infer.py, where users bring it from
FAIRSEQ_MEANING = {"--nbest": "fairseq's --nbest, the hypotheses printed, has no equivalent here"}


def check_decoder_options(args, command: str) -> None:
    """The decoder and exit-policy options checked together, before any file is read: kenlm's files
    given, ``--decode-workers`` only for kenlm, and no option the run would not read
    (``settings.unread``: an LM, lexicon or beam option without ``--decoder kenlm``, ``--threshold``,
    ``--exit-layer`` or ``--nbest`` without an ``--exit-policy`` that reads it; options at their
    default count as not given), each refused by name."""
    if args.decoder == "kenlm" and (args.lm is None or args.lexicon is None):
        raise SystemExit(f"sew {command}: error: --decoder kenlm needs --lm and --lexicon")
    if args.decode_workers > 1 and args.decoder != "kenlm":
        raise SystemExit(f"sew {command}: error: --decode-workers is for --decoder kenlm (greedy decoding is an argmax)")
    given = {f"--{name}": name for name in ("lm", "lexicon") if getattr(args, name) is not None}  # option -> READ_BY's
    given.update({f"--{f.name.replace('_', '-')}": "beam" for f in dataclasses.fields(BeamOptions)
                  if getattr(args, f.name) != f.default})
    if getattr(args, "threshold", None) is not None:  # sew sweep has --thresholds instead
        given["--threshold"] = "threshold"
    if args.exit_layer is not None:
        given["--exit-layer"] = "exit_layer"
    if args.nbest != NBEST:
        given["--nbest"] = "nbest"
    reasons = []
    for option, name in given.items():
        if unread([name], args.decoder, args.exit_policy):
            setting, values = READ_BY[name]
            readers = " or ".join([", ".join(values[:-1]), values[-1]] if len(values) > 1 else values)
            meaning = f" ({FAIRSEQ_MEANING[option]})" if option in FAIRSEQ_MEANING else ""
            reasons.append(f"{option} is for --{setting.replace('_', '-')} {readers}{meaning}")
    if reasons:
        raise SystemExit(f"sew {command}: error: {'; '.join(reasons)} (this run would ignore "
                         f"{'it' if len(reasons) == 1 else 'them'})")


@contextlib.contextmanager
def decoding_workers(args, decoder):
    """``decoder``, or with ``--decode-workers`` N > 1 a ``ParallelDecoder`` of N copies of it."""
    if args.decode_workers == 1:
        yield decoder
        return
    with ParallelDecoder(args.decode_workers, args.decoder, decoder.tgt_dict, args.lexicon, args.lm,
                         beam_options(args)) as parallel:
        yield parallel


def apply_settings(model, decoder, args, command: str) -> None:
    """``--operating-point``, ``--cif-lambda`` and ``--exit-policy`` (at ``--threshold``) on ``model``."""
    operating_point(model, args.operating_point, command)
    cif_lambda(model, args.cif_lambda, command)
    if args.exit_policy:
        exit_policy(model, args, decoder, args.threshold, command)


def _setting(model, option: str, value, fix, require_fixed, command: str) -> None:
    """``fix(model, value)`` (refused as ``OPTION VALUE: why``), or with no value
    ``require_fixed(model)``: a model that samples the setting needs one."""
    if value is None:
        with refusing(command):
            require_fixed(model)
        return
    with refusing(command, f"{option} {value}"):
        fix(model, value)


def operating_point(model, point, command: str = "infer", option: str = "--operating-point") -> None:
    """Fix a St-SEW model at ``point`` (``option``); none for a model that samples its point is refused."""
    _setting(model, option, point, set_operating_point, require_fixed_operating_point, command)


def cif_lambda(model, lam, command: str = "infer", option: str = "--cif-lambda") -> None:
    """Run a CIF model at ``lam`` (``option``); none for a model fine-tuned with a sampled lambda is refused."""
    _setting(model, option, lam, set_cif_lambda, require_fixed_cif_lambda, command)


def exit_policy(model, args, decoder, threshold, command: str = "infer") -> None:
    """Put an early-exit model under ``args.exit_policy`` at ``threshold``."""
    if args.exit_policy != "layer" and threshold is None:
        raise SystemExit(f"sew {command}: error: --exit-policy {args.exit_policy} needs --threshold")
    if args.exit_policy == "layer" and args.exit_layer is None:
        raise SystemExit(f"sew {command}: error: --exit-policy layer needs --exit-layer")
    with refusing(command, f"--exit-policy {args.exit_policy}"):
        set_exit_policy(model, args.exit_policy, threshold, args.exit_layer, args.nbest,
                        decoder if args.decoder == "kenlm" else None)


def batching(args, warm_every_batch: bool = False) -> Batching:
    return Batching(args.batch_size, args.max_tokens, args.device, args.warmup, warm_every_batch)


def main(args) -> int:
    if args.overwrite and not args.results_dir:
        raise SystemExit("sew infer: error: --overwrite replaces the files of --results-dir; give --results-dir")
    check_decoder_options(args, "infer")
    earlier = results_files(args) if args.results_dir else None  # checked before any file is read
    inputs = check_inputs(args.manifest, args.labels)  # bad input stops here, before the model loads
    model, decoder, normalize = load(args, "infer", args.manifest.parent)
    apply_settings(model, decoder, args, "infer")
    with decoding_workers(args, decoder) as decoding:
        utterances, summary = transcribe(model, args.manifest, decoding, args.labels, normalize,
                                         batching(args, args.warmup_every_batch), inputs)
    summary.decoder = decoder_settings(args)
    print(summary.report())
    if earlier is not None:
        paths, found = earlier
        written = write_results(paths, utterances, summary)
        for path in set(found) - set(written):  # an earlier run's references, say, with none this time
            path.unlink()
    return 0
