"""Golden values for agora-model's training parity tests (tests/train_parity.rs).

Uses the tiny random models of crates/agora-model/test_data/models/{gpt2,llama} (written
by make_model_goldens.py) and writes:

    crates/agora-model/test_data/train/<model>.safetensors
        sft.input_ids / sft.attention_mask / sft.labels   [3, L] int64: three right-padded
                      rows of unequal length; labels are -100 on prompt and padding. Row 2
                      is a two-turn chat: its targets come in two separate spans.
        sft.loss      []  transformers' `model(input_ids, attention_mask, labels).loss`
        sft.grad.<name>   the gradient of that loss for EVERY parameter (HF names)
        dpo.input_ids / dpo.attention_mask / dpo.completion_mask   [4, L] int64: two
                      preference pairs, rows [chosen 0, chosen 1, rejected 0, rejected 1]
                      (TRL's concatenated order); completion_mask marks completion tokens
        dpo.policy_logps_sum / dpo.policy_logps_mean   [4] the model's completion
                      log-probabilities (sum, and sum / completion length)
        dpo.reference_{chosen,rejected}_{sum,mean}   [2] fixed reference numbers
        dpo.<variant>.beta / .label_smoothing   [] float64
        dpo.<variant>.loss     []
        dpo.<variant>.metrics  [6] float64: rewards/chosen, rewards/rejected,
                      rewards/margins, rewards/accuracies, logps/chosen, logps/rejected
        dpo.<variant>.grad.<name>   gradients of four parameters (embedding, one
                      attention and one MLP weight, final norm)
      variants: sigmoid, sigmoid_smoothed (label_smoothing 0.1), ipo, hinge, robust (0.1)

    crates/agora-model/test_data/train/adamw.safetensors
        two steps of torch.optim.AdamW (lr 1e-3, weight decay 0.01, single-tensor path) on
        given gradients: <name>.before, .grad1, .grad2, .after1, .after2, and the state
        after step 2 (.exp_avg, .exp_avg_sq); `big` is long enough for agora's parallel
        path.

The DPO losses are TRL's: TRL 1.16.0, `DPOTrainer._compute_loss` in
trl/trainer/dpo_trainer.py (sigmoid, hinge, ipo, robust) cannot be called on its own (it
runs the model and needs a trainer), so its formulas are restated below, line for line.
TRL 1.16's sigmoid loss ignores label_smoothing; the smoothed sigmoid (conservative DPO)
is the one of TRL 0.x's `DPOTrainer.dpo_loss`:
    -logsigmoid(beta * logits) * (1 - ls) - logsigmoid(-beta * logits) * ls
IPO divides the log-ratios by the completion lengths, which is the same as feeding
per-token mean log-probabilities (what agora's caller does; the reference means stored
here are what that caller would pass). Metrics are computed as TRL logs them.

Run from the repository root (CPU; torch 2.15, transformers 5.23, trl 1.16.0):
    HF_HUB_OFFLINE=1 /work/.venv-interop/bin/python scripts/goldens/make_train_goldens.py
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2] / "crates/agora-model/test_data"
OUT = ROOT / "train"

# (tokens, indices of target tokens): prompt + completion rows of unequal length, and a
# two-turn chat whose assistant tokens are 3-4 and 8-10.
SFT_ROWS = [
    ([5, 17, 99, 3, 42, 42, 7, 120, 64], [4, 5, 6, 7, 8]),
    ([9, 8, 7, 6, 5], [2, 3, 4]),
    ([1, 88, 31, 60, 2, 11, 23, 45, 100, 50, 3], [3, 4, 8, 9, 10]),
]

# (prompt, chosen, rejected)
DPO_PAIRS = [
    ([5, 17, 99, 3], [42, 42, 7, 120], [11, 12]),
    ([9, 8, 7], [6, 5, 4, 3, 2], [77, 78, 79]),
]
# Policy minus reference log-probabilities the stored reference numbers produce, so that
# one pair is ranked right and one wrong (rewards/accuracies 0.5).
# Large enough that the rewards (differences of log-probabilities around -20) are not
# lost in f32 rounding, small enough that no loss saturates.
LOGRATIO_SUM = {"chosen": [4.0, 3.0], "rejected": [-2.0, 5.0]}
LOGRATIO_MEAN = {"chosen": [1.5, 1.0], "rejected": [-0.5, 1.25]}

VARIANTS = {
    # name: (TRL loss_type, beta, label_smoothing)
    "sigmoid": ("sigmoid", 0.1, 0.0),
    "sigmoid_smoothed": ("sigmoid", 0.1, 0.1),
    "ipo": ("ipo", 0.1, 0.0),
    "hinge": ("hinge", 0.1, 0.0),
    "robust": ("robust", 0.1, 0.1),
}

WATCHED = {
    "gpt2": [
        "transformer.wte.weight",
        "transformer.h.0.attn.c_proj.weight",
        "transformer.h.1.mlp.c_fc.weight",
        "transformer.ln_f.weight",
    ],
    "llama": [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ],
}


def right_pad(rows, value):
    length = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (length - len(row)) for row in rows], dtype=torch.long)


def load(name):
    model = AutoModelForCausalLM.from_pretrained(
        ROOT / "models" / name, attn_implementation="eager", dtype=torch.float32
    )
    # eval(): no dropout (agora's models have none); gradients are still recorded.
    return model.eval()


def sft(model, out):
    input_ids = right_pad([tokens for tokens, _ in SFT_ROWS], 0)
    attention_mask = right_pad([[1] * len(tokens) for tokens, _ in SFT_ROWS], 0)
    labels = torch.full_like(input_ids, -100)
    for row, (tokens, targets) in enumerate(SFT_ROWS):
        assert 0 not in targets
        for index in targets:
            labels[row, index] = tokens[index]
    model.zero_grad(set_to_none=True)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()

    # The same loss by hand: the one-token shift, mean over target tokens.
    logprobs = output.logits[:, :-1].log_softmax(-1)
    shifted = labels[:, 1:]
    picked = logprobs.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    manual = -(picked * (shifted != -100)).sum() / (shifted != -100).sum()
    assert torch.allclose(manual, output.loss, rtol=1e-6), (manual, output.loss)

    out["sft.input_ids"] = input_ids
    out["sft.attention_mask"] = attention_mask
    out["sft.labels"] = labels
    out["sft.loss"] = output.loss.detach().reshape(())
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        out[f"sft.grad.{name}"] = parameter.grad.detach().clone()
    print(f"  sft loss {output.loss.item():.6f}, {len(list(model.parameters()))} gradients")


def dpo_batch():
    rows, completion = [], []
    for side in (1, 2):  # chosen rows first, then rejected: TRL's order
        for pair in DPO_PAIRS:
            prompt, completion_tokens = pair[0], pair[side]
            rows.append(prompt + completion_tokens)
            completion.append([0] * len(prompt) + [1] * len(completion_tokens))
    input_ids = right_pad(rows, 0)
    attention_mask = right_pad([[1] * len(row) for row in rows], 0)
    completion_mask = right_pad(completion, 0)
    return input_ids, attention_mask, completion_mask


def policy_logps(model, input_ids, attention_mask, completion_mask):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    per_token = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = completion_mask[:, 1:].float()
    sums = (per_token * mask).sum(dim=1)
    means = sums / mask.sum(dim=1)
    return sums, means


def trl_dpo_loss(loss_type, beta, label_smoothing, chosen_logps, rejected_logps, ref_chosen, ref_rejected):
    """TRL 1.16.0 `DPOTrainer._compute_loss` (reverse_kl, one loss type), restated; for
    "ipo" the inputs are per-token means (TRL divides the log-ratios by the lengths)."""
    chosen_logratios = chosen_logps - ref_chosen
    rejected_logratios = rejected_logps - ref_rejected
    delta_score = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        # TRL 0.x `dpo_loss` (cDPO); equals TRL 1.16's sigmoid when label_smoothing == 0.
        per_sequence_loss = (
            -F.logsigmoid(beta * delta_score) * (1 - label_smoothing)
            - F.logsigmoid(-beta * delta_score) * label_smoothing
        )
    elif loss_type == "hinge":
        per_sequence_loss = torch.relu(1 - beta * delta_score)
    elif loss_type == "ipo":
        per_sequence_loss = (delta_score - 1 / (2 * beta)) ** 2
    elif loss_type == "robust":
        clean_loss_term = -(1 - label_smoothing) * F.logsigmoid(beta * delta_score)
        flipped_loss_term = -label_smoothing * F.logsigmoid(-beta * delta_score)
        per_sequence_loss = (clean_loss_term - flipped_loss_term) / (1 - 2 * label_smoothing)
    else:
        raise ValueError(loss_type)
    loss = per_sequence_loss.mean()

    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    metrics = [
        chosen_rewards.mean().item(),
        rejected_rewards.mean().item(),
        (chosen_rewards - rejected_rewards).mean().item(),
        (chosen_rewards > rejected_rewards).float().mean().item(),
        chosen_logps.detach().mean().item(),
        rejected_logps.detach().mean().item(),
    ]
    return loss, torch.tensor(metrics, dtype=torch.float64)


def dpo(name, model, out):
    input_ids, attention_mask, completion_mask = dpo_batch()
    pairs = len(DPO_PAIRS)
    with torch.no_grad():
        sums, means = policy_logps(model, input_ids, attention_mask, completion_mask)
    reference = {}
    for kind, values, offsets in (("sum", sums, LOGRATIO_SUM), ("mean", means, LOGRATIO_MEAN)):
        for index, side in enumerate(("chosen", "rejected")):
            policy = values[index * pairs : (index + 1) * pairs]
            reference[(side, kind)] = (policy - torch.tensor(offsets[side])).float()
            out[f"dpo.reference_{side}_{kind}"] = reference[(side, kind)]
    out["dpo.input_ids"] = input_ids
    out["dpo.attention_mask"] = attention_mask
    out["dpo.completion_mask"] = completion_mask
    out["dpo.policy_logps_sum"] = sums
    out["dpo.policy_logps_mean"] = means

    parameters = dict(model.named_parameters())
    for variant, (loss_type, beta, label_smoothing) in VARIANTS.items():
        model.zero_grad(set_to_none=True)
        sums, means = policy_logps(model, input_ids, attention_mask, completion_mask)
        kind = "mean" if loss_type == "ipo" else "sum"
        logps = means if kind == "mean" else sums
        loss, metrics = trl_dpo_loss(
            loss_type,
            beta,
            label_smoothing,
            logps[:pairs],
            logps[pairs:],
            reference[("chosen", kind)],
            reference[("rejected", kind)],
        )
        loss.backward()
        out[f"dpo.{variant}.beta"] = torch.tensor(beta, dtype=torch.float64)
        out[f"dpo.{variant}.label_smoothing"] = torch.tensor(label_smoothing, dtype=torch.float64)
        out[f"dpo.{variant}.loss"] = loss.detach().reshape(())
        out[f"dpo.{variant}.metrics"] = metrics
        for watched in WATCHED[name]:
            gradient = parameters[watched].grad
            assert gradient is not None and gradient.abs().sum() > 0, (variant, watched)
            out[f"dpo.{variant}.grad.{watched}"] = gradient.detach().clone()
        print(f"  dpo {variant}: loss {loss.item():.6f}, metrics {[round(m, 5) for m in metrics.tolist()]}")


def adamw():
    generator = torch.Generator().manual_seed(7)
    shapes = {"w": (4, 5), "b": (7,), "big": (20000,)}
    params = {name: torch.nn.Parameter(torch.randn(shape, generator=generator)) for name, shape in shapes.items()}
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.01, foreach=False)
    out = {"lr": torch.tensor(1e-3, dtype=torch.float64), "weight_decay": torch.tensor(0.01, dtype=torch.float64)}
    for name, parameter in params.items():
        out[f"{name}.before"] = parameter.detach().clone()
    for step in (1, 2):
        for name, parameter in params.items():
            # Mixed magnitudes, so that epsilon and the bias corrections matter.
            scale = torch.logspace(-6, 1, parameter.numel()).reshape(parameter.shape)
            parameter.grad = torch.randn(parameter.shape, generator=generator) * scale
            out[f"{name}.grad{step}"] = parameter.grad.clone()
        optimizer.step()
        for name, parameter in params.items():
            out[f"{name}.after{step}"] = parameter.detach().clone()
    for name, parameter in params.items():
        state = optimizer.state[parameter]
        assert int(state["step"]) == 2
        out[f"{name}.exp_avg"] = state["exp_avg"].clone()
        out[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].clone()
    save_file({key: value.contiguous() for key, value in out.items()}, OUT / "adamw.safetensors")


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ("gpt2", "llama"):
        print(name)
        model = load(name)
        out = {}
        sft(model, out)
        dpo(name, model, out)
        save_file({key: value.contiguous() for key, value in out.items()}, OUT / f"{name}.safetensors")
    adamw()
    sizes = sum(f.stat().st_size for f in OUT.glob("*.safetensors"))
    print(f"wrote {OUT} ({sizes / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
