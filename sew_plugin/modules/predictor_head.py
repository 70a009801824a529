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
        stats_dtype = self.running_mean.dtype
        mean, var = self.running_mean.float(), self.running_var.float()  # copies only if not fp32
        if self.training:
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(
            x.float(), mean, var, self.weight.float(), self.bias.float(),
            self.training, self.momentum, self.eps,
        )
        if self.training and stats_dtype != torch.float32:  # write the fp32 update back
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
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
