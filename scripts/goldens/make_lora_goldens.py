"""Golden outputs for agora-model's LoRA tests (crates/agora-model/tests/lora.rs).

Wraps the tiny models of crates/agora-model/test_data/models/{gpt2,llama} with PEFT LoRA
(rank 4, alpha 8; gpt2: c_attn + c_fc, llama: q_proj, v_proj, down_proj), sets every
lora_A and lora_B to seeded random NON-zero values (PEFT starts B at zero, which would make
the adapter invisible in the logits), saves the adapter with PEFT's own `save_pretrained`
and the logits agora must reproduce:

    crates/agora-model/test_data/lora/<model>/adapter_config.json
    crates/agora-model/test_data/lora/<model>/adapter_model.safetensors
    crates/agora-model/test_data/lora/<model>/golden.safetensors
        input_ids      [1, S] int64    fixed ids
        peft_logits    [1, S, V] f32   the PEFT model (adapter on, eval mode: no dropout)
        base_logits    [1, S, V] f32   the same model with the adapter disabled
        merged_logits  [1, S, V] f32   after `merge_and_unload()`

Run from the repository root (CPU; versions used: torch 2.15, transformers 5.23, peft 0.21.2):
    HF_HUB_OFFLINE=1 /work/.venv-interop/bin/python scripts/goldens/make_lora_goldens.py
"""

import os
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2] / "crates/agora-model/test_data"
INPUT_IDS = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 120, 1, 64]])
TARGETS = {"gpt2": ["c_attn", "c_fc"], "llama": ["q_proj", "v_proj", "down_proj"]}


def make(name: str, targets: list[str], seed: int) -> None:
    model = AutoModelForCausalLM.from_pretrained(ROOT / "models" / name, dtype=torch.float32)
    model.eval()
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.05,
        target_modules=targets,
        task_type="CAUSAL_LM",
        # Conv1D stores [in, out]; PEFT warns and sets it anyway for GPT-2.
        fan_in_fan_out=(name == "gpt2"),
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in peft_model.named_parameters():
            if "lora_A" in parameter_name or "lora_B" in parameter_name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    peft_model.eval()
    out = ROOT / "lora" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # A path relative to the crate, not this machine's checkout.
    peft_model.peft_config["default"].base_model_name_or_path = f"test_data/models/{name}"
    peft_model.save_pretrained(out)
    # README.md is PEFT's model card template: not needed by the tests.
    (out / "README.md").unlink(missing_ok=True)
    with torch.no_grad():
        peft_logits = peft_model(INPUT_IDS).logits
        with peft_model.disable_adapter():
            base_logits = peft_model(INPUT_IDS).logits
        merged = peft_model.merge_and_unload()
        merged_logits = merged(INPUT_IDS).logits
    save_file(
        {
            "input_ids": INPUT_IDS.contiguous(),
            "peft_logits": peft_logits.contiguous(),
            "base_logits": base_logits.contiguous(),
            "merged_logits": merged_logits.contiguous(),
        },
        out / "golden.safetensors",
    )
    print(name, "adapter on/off max difference", (peft_logits - base_logits).abs().max().item())


if __name__ == "__main__":
    for index, (name, targets) in enumerate(TARGETS.items()):
        make(name, targets, seed=1000 + index)
