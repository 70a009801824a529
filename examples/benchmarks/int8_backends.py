"""Which int8 to use on the CPU: onnxruntime's dynamic quantization of the exported graph vs this
plugin's ``Int8Linear`` (``--dtype int8``), against fp32 in PyTorch and in onnxruntime, side by side
in one process (interleaved, median of 5): SEW-D-mid with random weights, 10 s, batch 1.

    python examples/benchmarks/int8_backends.py

Also prints each int8 output's largest difference from fp32's (the encoder features).
"""

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main():
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sew_plugin.inference.bench import build, prepare
    from sew_plugin.interop import onnx as export

    warnings.simplefilter("ignore")
    model, _ = build("sew_d_mid")
    folder = Path(tempfile.mkdtemp(prefix="int8_backends_"))
    path = export.export_graph(export.Graph(export.prepare_encoder(model)).eval(), folder / "fp32.onnx")
    quantize_dynamic(str(path), str(folder / "int8.onnx"), weight_type=QuantType.QInt8)
    threads = torch.get_num_threads()
    fp32_session, int8_session = export.session(path, threads), export.session(folder / "int8.onnx", threads)
    x = torch.randn(1, 160000)
    feed = {"source": x.numpy(), "padding_mask": np.zeros(tuple(x.shape), bool)}
    names = export.OUTPUT_NAMES[:1]
    torch_fp32, torch_int8 = prepare("sew_d_mid", "fp32", "cpu"), prepare("sew_d_mid:int8", "fp32", "cpu")
    rows = {"torch fp32": lambda: torch_fp32.forward(x), "torch int8 (Int8Linear)": lambda: torch_int8.forward(x),
            "onnxruntime fp32": lambda: torch.from_numpy(fp32_session.run(names, feed)[0]),
            "onnxruntime int8 (quantize_dynamic)": lambda: torch.from_numpy(int8_session.run(names, feed)[0])}
    times = {name: [] for name in rows}
    with torch.no_grad():
        outputs = {name: forward() for name, forward in rows.items()}  # warm-up
        for _ in range(5):
            for name, forward in rows.items():
                start = time.perf_counter()
                forward()
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["torch fp32"])
    print(f"torch {torch.__version__}, {threads} threads; SEW-D-mid, 10 s, batch 1")
    for name, spent in times.items():
        diff = (outputs[name] - outputs["torch fp32"]).abs().max()
        print(f"{name}: {1000 * statistics.median(spent):.0f} ms, x{base / statistics.median(spent):.2f} vs torch fp32; "
              f"max |output - fp32's| {float(diff):.3f}")


if __name__ == "__main__":
    main()
