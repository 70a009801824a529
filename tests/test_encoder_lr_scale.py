"""``model.encoder_lr_scale``: the pre-trained encoder learns at a share of the head's rate, through
fairseq's own ``composite`` optimizer; an optimizer that would ignore the share is refused."""

import pytest
from fairseq.optim import build_optimizer
from omegaconf import OmegaConf

from helpers import LETTERS, ctc_model, finetuning_task
from sew_plugin.tasks.audio import check_lr_scales

PEAK, STEPS = 5e-4, 100


def composite():
    """fairseq's ``composite`` optimizer config as a demo config writes it, interpolations resolved."""
    return OmegaConf.create({
        "_name": "composite", "dynamic_groups": True,
        "groups": {"default": {
            "optimizer": {"_name": "adam", "lr": [PEAK], "adam_betas": "(0.9,0.98)", "adam_eps": 1e-8, "tpu": False},
            "lr_scheduler": {"_name": "tri_stage", "lr": [PEAK], "phase_ratio": [0.1, 0.4, 0.5],
                             "final_lr_scale": 0.05, "max_update": STEPS},
        }},
    })


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def adam(model):
    """fairseq's plain adam over the model's trainable parameters: one rate for all of them."""
    return build_optimizer(OmegaConf.create({"_name": "adam", "lr": [PEAK], "tpu": False}), trainable(model))


def rates(model, optimizer) -> dict:
    """Learning rate of each parameter, by id, as the optimizer's groups hold it."""
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


def test_encoder_learns_at_its_share_of_the_heads_rate_through_the_schedule():
    model = ctc_model("sew_d", sew_ctc=True, encoder_lr_scale=0.1)
    optimizer = build_optimizer(composite(), trainable(model))
    encoder = list(model.w2v_encoder.w2v_model.parameters())
    head = list(model.w2v_encoder.proj.parameters())
    for update in (0, 10, 50, 90):
        optimizer.lr_scheduler.step_update(update)
        lr = rates(model, optimizer)
        assert {lr[id(p)] for p in head} == {optimizer.get_lr()}
        encoder_rates = {lr[id(p)] for p in encoder}
        assert len(encoder_rates) == 1 and encoder_rates.pop() == pytest.approx(0.1 * optimizer.get_lr())
    assert optimizer.get_lr() == pytest.approx(PEAK * 0.05 ** (40 / 50))  # tri_stage's decay at 90 of 100


def test_without_a_scale_every_parameter_learns_at_one_rate():
    model = ctc_model("sew_d", sew_ctc=True)
    assert not any(hasattr(p, "optim_overrides") for p in model.parameters())
    check_lr_scales(model, adam(model))


def test_an_optimizer_that_would_ignore_the_scale_is_refused_by_key():
    """(``composite`` with static groups refuses the mixed marks itself, when it is built.)"""
    model = ctc_model("sew_d", sew_ctc=True, encoder_lr_scale=0.1)
    with pytest.raises(ValueError, match=r"model\.encoder_lr_scale .*optimizer\._name=composite with "
                                         r"optimizer\.dynamic_groups=true"):
        check_lr_scales(model, adam(model))


def test_the_fine_tuning_task_checks_before_its_first_update(tmp_path):
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in LETTERS))
    model = ctc_model("sew_d", sew_ctc=True, encoder_lr_scale=0.1)
    task = finetuning_task(tmp_path)
    with pytest.raises(ValueError, match=r"model\.encoder_lr_scale"):
        task.train_step(sample=None, model=model, criterion=None, optimizer=adam(model), update_num=0)
