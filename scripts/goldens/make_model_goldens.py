"""Golden outputs for agora-model's architecture parity tests.

Builds tiny random-initialised models with Hugging Face transformers (no download: each
model is made from a config and saved with `save_pretrained`), runs them on fixed token
ids and writes what agora-model must reproduce:

    crates/agora-model/test_data/models/<name>/config.json, model.safetensors
    crates/agora-model/test_data/models/<name>/golden.safetensors

golden.safetensors holds (all int64 or float32):
    input_ids        [1, S]       a fixed prompt
    logits           [1, S, V]    full-sequence logits
    greedy           [1, S + 8]   prompt + 8 tokens of `generate(do_sample=False)`
    right_ids/right_mask/right_logits   [2, S]/[2, S]/[2, S, V]: a right-padded batch
    left_ids/left_mask/left_logits      the same rows left-padded; position ids are
                     cumsum(mask) - 1 (what generate() passes), so real tokens keep the
                     positions they would have without padding

Run from the repository root (CPU is fine; versions used: torch 2.15, transformers 5.23):
    HF_HUB_OFFLINE=1 /work/.venv-interop/bin/python scripts/goldens/make_model_goldens.py
"""

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OUT = Path(__file__).resolve().parents[2] / "crates/agora-model/test_data/models"
VOCAB = 128
NEW_TOKENS = 8


def llama_config(**extra):
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(extra)
    return settings


MODELS = {
    # Llama 2 style: untied head, grouped-query attention.
    "llama": (LlamaForCausalLM, LlamaConfig(**llama_config())),
    # Llama 3.x style: tied embeddings, a large rope base and llama3 rope scaling whose
    # original context (32) is shorter than the prompts, so every frequency band is used.
    "llama3_rope": (
        LlamaForCausalLM,
        LlamaConfig(
            **llama_config(
                tie_word_embeddings=True,
                rope_theta=500000.0,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            )
        ),
    ),
    # Qwen2: q/k/v biases, tied embeddings.
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
        ),
    ),
    # GPT-2 (DialoGPT / PersonaGPT shape): Conv1D weights, learned positions, tied head.
    "gpt2": (
        GPT2LMHeadModel,
        GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        ),
    ),
}


def randomise(model):
    """Bigger-than-default random weights, norms around 1 and non-zero biases, so a
    weight loaded into the wrong place or a missing bias changes the logits visibly."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "norm" in name or ".ln_" in name:
                parameter.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                parameter.copy_(0.15 * noise)


def make(name, model_class, config):
    torch.manual_seed(0)
    config._attn_implementation = "eager"
    model = model_class(config).eval()
    randomise(model)
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)

    prompt = torch.tensor([[5, 17, 99, 3, 42, 42, 7, 120, 64, 1, 88, 31]], dtype=torch.long)
    length = prompt.shape[1]
    with torch.no_grad():
        logits = model(prompt).logits
        generation = GenerationConfig(
            max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        greedy = model.generate(prompt, generation_config=generation)
        assert greedy.shape[1] == length + NEW_TOKENS, greedy.shape

        # Row 0 is the prompt, row 1 a shorter sequence padded to the same length.
        short = [9, 8, 7, 6, 5, 4, 3]
        pad = 0
        right_ids = torch.tensor([prompt[0].tolist(), short + [pad] * (length - len(short))])
        right_mask = (torch.arange(length) < torch.tensor([[length], [len(short)]])).long()
        right_logits = model(right_ids, attention_mask=right_mask).logits

        left_ids = torch.tensor([prompt[0].tolist(), [pad] * (length - len(short)) + short])
        left_mask = right_mask.flip(-1)
        positions = (left_mask.cumsum(-1) - 1).clamp(min=0)
        left_logits = model(left_ids, attention_mask=left_mask, position_ids=positions).logits

    save_file(
        {
            "input_ids": prompt.contiguous(),
            "logits": logits.float().contiguous(),
            "greedy": greedy.contiguous(),
            "right_ids": right_ids.contiguous(),
            "right_mask": right_mask.contiguous(),
            "right_logits": right_logits.float().contiguous(),
            "left_ids": left_ids.contiguous(),
            "left_mask": left_mask.contiguous(),
            "left_logits": left_logits.float().contiguous(),
        },
        folder / "golden.safetensors",
    )
    # generation_config.json is not needed by agora and only adds noise to the diff.
    (folder / "generation_config.json").unlink(missing_ok=True)
    print(name, "greedy:", greedy[0, length:].tolist())


def main():
    for name, (model_class, config) in MODELS.items():
        make(name, model_class, config)
    sizes = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({sizes / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
