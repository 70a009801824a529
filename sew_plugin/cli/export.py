"""``sew export-hf`` and ``sew export-onnx``: the commands of ``sew_plugin.interop.export_hf`` and
``sew_plugin.interop.onnx`` (whose docstrings are their ``--help``)."""

import warnings
from pathlib import Path

from ..interop import export_hf as hf_export
from ..interop import load_with_data, onnx
from .infer import operating_point
from .options import add_overwrite_argument, at_least, check_outputs


def add_data_argument(p) -> None:
    """``--data``, of both exporters (see ``sew_plugin.interop.load_with_data``)."""
    p.add_argument("--data", type=Path,
                   help="folder with the target dictionary (dict.ltr.txt), if not where the checkpoint was trained")


def add_hf_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fairseq checkpoint: sew / sew_d pre-trained, or sew_ctc fine-tuned")
    p.add_argument("out_dir", type=Path, help="directory to write the transformers model to")
    p.add_argument("--force", action="store_true",
                   help="write into an existing non-empty OUT_DIR (replacing only transformers' model files)")
    add_data_argument(p)


def export_hf(args) -> int:
    print(hf_export.export_hf(args.checkpoint, args.out_dir, force=args.force, data=args.data))
    return 0


def add_onnx_arguments(p) -> None:
    p.add_argument("checkpoint", type=Path, help="fine-tuned CTC checkpoint (sew_ctc or wav2vec_ctc)")
    p.add_argument("out", type=Path, help="the .onnx file to write")
    p.add_argument("--operating-point", help="St-SEW: fixed 'S_f,S_k,S_q' to export, e.g. 2,2,1")
    add_data_argument(p)
    p.add_argument("--opset", type=int, default=onnx.OPSET, help="ONNX opset")
    p.add_argument("--tolerance", type=at_least(0.0, float), default=onnx.TOLERANCE,
                   help="largest |PyTorch - onnxruntime| logit accepted in the check after export")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    add_overwrite_argument(p, "OUT")


def export_onnx(args) -> int:
    command = "export-onnx"
    check_outputs(command, args.out.parent, [args.out.name], args.overwrite, "the folder of OUT")
    warnings.filterwarnings("ignore", category=FutureWarning)
    model, cfg, task = load_with_data(args.checkpoint, args.data)
    if args.operating_point:
        operating_point(model, args.operating_point, command)
    try:
        onnx.check_exportable(model)
    except onnx.ExportError as err:
        raise SystemExit(f"sew {command}: error: {args.checkpoint}: {err}") from None
    # written beside OUT first and renamed once checked, so a graph that fails the check is not left there
    staged = args.out.with_name(f".{args.out.name}.unchecked")
    onnx.export(model, staged, args.opset, metadata=onnx.metadata_of(model, task, cfg, args.operating_point))
    try:
        if not args.no_check:
            diffs = onnx.check_against_pytorch(model, staged)
            report = ", ".join(f"{len(s)} x {'/'.join(f'{x:g}' for x in s)} s: {d:.2e}" for s, d in diffs.items())
            print(f"onnxruntime vs PyTorch, max abs logit difference over valid frames: {report}")
            if max(diffs.values()) > args.tolerance:
                raise SystemExit(f"sew {command}: error: the difference exceeds --tolerance {args.tolerance:g}; "
                                 f"{args.out} was not written")
        staged.replace(args.out)
    finally:
        staged.unlink(missing_ok=True)
    print(f"wrote {args.out} (opset {args.opset}; inputs source, padding_mask; outputs logits, lengths)")
    return 0
