"""The devices inference runs on, checked where a user names one (the CLI's ``--device``, the
Python API's ``device=``), so that a CPU-only torch asked for CUDA says so instead of failing deep
inside PyTorch."""

import torch


def check_device(text) -> torch.device:
    """``text`` (cpu, cuda, cuda:N, or a ``torch.device``) as a device this torch can use;
    ``ValueError`` saying why not."""
    try:
        parsed = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"must be cpu, cuda or cuda:N, got {text!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{text}: this torch ({torch.__version__}) sees no CUDA device; on a GPU machine install "
                         "a CUDA build of torch (README: Install)")
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return parsed
