"""MLP predictor heads with BatchNorm for contrastive pre-training (SEW paper, section 3.4).

SEW replaces wav2vec 2.0's linear ``final_proj`` (context -> 256) and ``project_q``
(quantized target -> 256) with ``Conv1x1 -> BatchNorm -> ReLU -> Conv1x1``. The heads exist
only for pre-training and are removed by ``remove_pretraining_modules()``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Fp32BatchNorm1d(nn.BatchNorm1d):
    """BatchNorm computed in fp32 whatever the input dtype, so fp16 training keeps stable statistics.

    (fairseq's ``Fp32BatchNorm`` wraps the norm in a ``.bn`` child, which would rename the
    parameters away from the original release's ``net.1.weight``.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        running_mean = self.running_mean.float() if self.running_mean is not None else None
        running_var = self.running_var.float() if self.running_var is not None else None
        training = self.training or running_mean is None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(
            x.float(),
            running_mean,
            running_var,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            training,
            self.momentum,
            self.eps,
        )
        if running_mean is not None and running_mean is not self.running_mean:
            self.running_mean.copy_(running_mean)
            self.running_var.copy_(running_var)
        return out.to(x.dtype)


class MLPPredictorHead(nn.Module):
    """``(..., T, C_in) -> (..., T, C_out)`` through a BatchNorm MLP applied to every frame.

    fairseq hands the heads only the masked frames (``x[mask_indices]`` for ``final_proj``, the
    targets at masked positions for ``project_q``), so the BatchNorm statistics are those of the
    masked frames; leading dimensions are flattened into one batch of frames.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 4096):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_dim, hidden_dim, kernel_size=1, bias=False),
            Fp32BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Conv1d(hidden_dim, out_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        frames = x.reshape(1, -1, x.size(-1)).transpose(1, 2)  # (1, C_in, N frames)
        out = self.net(frames).transpose(1, 2)  # (1, N, C_out)
        return out.reshape(*lead, out.size(-1))
