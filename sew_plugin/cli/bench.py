"""``sew bench``: forward time, real-time factor, MACs, peak memory and parameters, side by side.

All rows run in one process, in interleaved order that rotates every repeat, so drift of the
machine (frequency, other load) hits every row alike. Times are medians over ``--repeat`` runs
after warm-up, with the spread (min-max) beside them; every row gets its speed-up over a named
baseline row measured in the same run: the median over the rotations of the baseline's time over
the row's in the same rotation (with their spread), which pairs times at most one rotation apart
where the ratio of the two medians could pair two phases of a drifting machine.

Rows are named models at full size with random weights (``sew bench --list``):
``w2v2_base``/``w2v2_large`` (fairseq's own wav2vec 2.0), this plugin's configs in
``configs/pretraining`` (``sew_tiny`` ... ``sew_d_base_plus``), and ``hf:NAME``, the same model and
weights in HuggingFace ``transformers`` (the independent peer; SEW and SEW-D), St-SEW at an
operating point, ``st_sew_base@S_f,S_k,S_q`` (e.g. ``st_sew_base@2,2,1``), and early exit after
layer K, ``NAME:exitK`` (K from 1 to the model's layer count; e.g. ``sew_d_mid:exit12``: the forward of an
utterance that exits there),
a CIF model at lambda L, ``NAME@L`` (e.g. ``w2v2_base_cif@1.1``) or at the lambda that gives a mean
frame period of P ms, ``NAME@Pms`` (e.g. ``w2v2_base_cif@90ms``, found on 10 s of noise), and input downsampling by f before
the model, ``NAME:down{f}{method}`` (e.g. ``w2v2_base:down2resample``; methods conv, avgpool, resample).
``--dtype`` converts every row's weights once (``sew_plugin.inference.precision``: bf16, fp16, or
int8 linear layers and extractor convolutions); a row's own ``:DTYPE`` overrides it
(``sew_d_mid:bf16``, ``sew_d_mid:int8``: formats side by side in one run), and ``:autocast-bf16`` / ``:autocast-fp16`` keep a row in fp32
under autocast instead, which casts every weight at every call (``hf:sew_d_mid:autocast-bf16``).
``--peak`` times 2048^3 matrix products at each row's format as slots of the same rotation (the
machine's GEMM rate at that moment: see ``GemmReference``) and gives each row's achieved FLOP/s
as a share of the rate of its format: the median rate (column ``GEMM rate``), and the median over the
rotations of the row's rate over the GEMM rate in the same rotation (``of GEMM rate``).
``NAME:onnx`` is the row ``NAME`` (a model, or St-SEW at an operating point, e.g.
``st_sew_base@2,2,1:onnx``) exported to ONNX (``sew_plugin.interop.onnx``, into a temporary file) and run
by onnxruntime on the CPU with as many threads as torch, fp32 only, timed like the PyTorch rows; its
MACs are counted on the PyTorch model (the same computation), its peak memory is not measured (nan).

Besides the whole forward's MACs, ``context GMACs`` counts the context network (the transformer with
its squeeze/upsample, and the CIF module: what Chen et al. report), and ``frame ms`` is the period of
the frames the transformer runs on (measured on the input for CIF).

Examples::

    sew bench --models sew_d_mid hf:sew_d_mid w2v2_base --seconds 10 30 --batch-size 1 8
    sew bench --models sew_d_tiny sew_tiny w2v2_base --device cuda --dtype fp16
    sew bench --models sew_d_mid sew_d_mid:bf16 sew_d_mid:int8 hf:sew_d_mid hf:sew_d_mid:autocast-bf16 --peak
    sew bench --models st_sew_base@1,1,1 st_sew_base@2,1,1 st_sew_base@2,2,1 st_sew_base@2,2,2 w2v2_base
    sew bench --models w2v2_base_cif@0 w2v2_base_cif@1.1 w2v2_base_cif@90ms w2v2_base:down2resample w2v2_base

``--out DIR`` writes ``bench.md``, ``bench.csv`` and ``bench.png`` (forward time against MACs; with
``--wer MODEL=summary-CKPT-SPLIT.json ...`` from ``sew infer --results-dir``, WER against forward time).
"""

import json
from pathlib import Path
from typing import Dict, List

import torch

from ..inference.bench import available_models, plot, row_format, run, to_markdown
from ..inference.precision import DTYPES
from ..inference.reports import write_tables
from .options import add_overwrite_argument, at_least, check_outputs, device


def read_wer(specs: List[str]) -> Dict[str, float]:
    """``--wer MODEL=SUMMARY`` pairs (``sew infer --results-dir`` output) -> {model: WER}."""
    wer = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"sew bench: error: --wer {spec!r}: expected MODEL=path/to/summary-CKPT-SPLIT.json")
        try:
            value = json.loads(Path(path).read_text())["wer"]
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"sew bench: error: --wer {spec!r}: no WER read from {path} ({err})") from None
        if value is None:
            raise SystemExit(f"sew bench: error: --wer {spec!r}: {path} has no WER (no references)")
        wer[name] = value
    return wer


def add_arguments(p) -> None:
    p.add_argument("--models", nargs="+", default=["sew_d_mid", "hf:sew_d_mid", "w2v2_base"],
                   help="rows to measure: names from --list, and the NAME@, :exitK, :down and :onnx forms above")
    p.add_argument("--seconds", nargs="+", type=at_least(0.025, float), default=[10.0],
                   help="audio length(s) of the random input; at least 0.025 (400 samples: one 20 ms frame)")
    p.add_argument("--batch-size", nargs="+", type=at_least(1), default=[1, 8], help="batch size(s) of the input")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                   help="format of the rows that name none (NAME:bf16 ... name one): weights converted to it once "
                   "(int8: the transformer's linear layers and the extractor's convolutions after the first)")
    p.add_argument("--peak", action="store_true",
                   help="time 2048^3 products at each row's format in the rows' rotation (the machine's GEMM "
                   "rate) and print each row's achieved FLOP/s as a share of it")
    p.add_argument("--repeat", type=at_least(1), default=5,
                   help="timed forwards per row and setting (the median is reported)")
    p.add_argument("--warmup", type=at_least(0), default=1,
                   help="untimed forwards per row and setting before the timed ones")
    p.add_argument("--threads", type=at_least(0), default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--baseline", default="w2v2_base", help="row the speed-ups are over (added if not in --models)")
    p.add_argument("--out", type=Path, help="write bench.md, bench.csv and bench.png here")
    add_overwrite_argument(p, "the tables and plot in --out")
    p.add_argument("--wer", nargs="+", default=[], metavar="MODEL=SUMMARY",
                   help="WER of a row from `sew infer --results-dir` (its summary-CKPT-SPLIT.json): bench.png plots WER vs time")
    p.add_argument("--list", action="store_true", help="list the model names and exit")


def main(args) -> int:
    import warnings

    if args.list:
        print("\n".join(available_models()))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.out:
        check_outputs("bench", args.out, ["bench.md", "bench.csv", "bench.png"], args.overwrite)
    wer = read_wer(args.wer)
    unknown = sorted(set(wer) - set(args.models) - {args.baseline})
    if unknown:  # checked before the (long) measurement
        raise SystemExit(f"sew bench: error: --wer names models that are not benchmarked: {', '.join(unknown)}")
    try:
        rows = run(args.models, args.seconds, args.batch_size, args.device, args.dtype, args.repeat,
                   args.warmup, args.baseline, peak=args.peak)
    except ValueError as err:  # a row name that does not describe a model
        raise SystemExit(f"sew bench: error: {err}") from None
    table = to_markdown(rows, args.baseline)
    named = any(row_format(name, args.dtype)[0] != name for name in args.models)  # rows with their own format
    machine = (f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}, {args.dtype}"
               f"{' (rows without a format suffix)' if named else ''}")
    if any(name.startswith("sew_d") for name in (*args.models, args.baseline)):
        from ..modules import onednn, position_bias

        machine += f"; SEW-D's position bias: {position_bias.status()}"
        machine += ("; SEW-D's linear weights: packed once in oneDNN's layout (bf16 rows; fp32 rows: its transformer's)"
                    if onednn.available() else "; SEW-D's linear weights: PyTorch's products (oneDNN has no bf16 here)")
    if "int8" in (args.dtype, *(row_format(name, args.dtype)[1] for name in args.models)):
        from ..modules import int8_linear

        machine += f"; int8 quantization: {int8_linear.status()}"
    if args.peak:
        machine += ("; GEMM rate: the median of 2048^3 products in the row's format, timed in the rows' rotation; "
                    "of GEMM rate: the median over the rotations of the row's FLOP/s over it")
    print(f"\n{machine}\n\n{table}")
    if args.out:
        write_tables(args.out, "bench", machine, table, rows)
        plot(rows, args.out / "bench.png", wer)
    return 0
