"""PyTorch reference for `agora bench forward-gpt2`: f32 forward tokens/s of a
random-initialised GPT-2 (6 layers, width 384, 6 heads, vocabulary 50,257) on a batch of
4 x 256 tokens, on the CPU. No download: the model is built from a config.

Run (compare.py does it once per thread count, in a fresh process):
    HF_HUB_OFFLINE=1 /work/.venv-interop/bin/python scripts/bench/torch_gpt2.py --threads 1

Prints one JSON object on stdout. Versions measured: torch 2.15.0, transformers 5.23.0
(see requirements.txt).
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sequence", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = transformers.GPT2Config(
        vocab_size=50257, n_embd=384, n_layer=6, n_head=6, n_positions=1024
    )
    model = transformers.GPT2LMHeadModel(config).eval().to(torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.sequence))
    seconds = []
    # Inference mode, like agora's plain (not trainable) weights; logits for every
    # position, like agora's forward. One untimed warm-up run first.
    with torch.inference_mode():
        for run in range(args.repeats + 1):
            started = time.perf_counter()
            logits = model(input_ids=tokens, use_cache=False).logits
            float(logits[0, 0, 0])
            elapsed = time.perf_counter() - started
            if run > 0:
                seconds.append(elapsed)
    print(
        json.dumps(
            {
                "threads": args.threads,
                "torch_threads": torch.get_num_threads(),
                "batch": args.batch,
                "sequence": args.sequence,
                "parameters": parameters,
                "repeats": args.repeats,
                "tokens_per_second": args.batch * args.sequence / statistics.median(seconds),
                "seconds": seconds,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
