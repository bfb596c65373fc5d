"""PyTorch reference for `agora bench train`: one training step (forward, loss, backward,
gradient clipping to norm 1, AdamW at lr 1e-4) of full fine-tuning on a random-initialised
GPT-2 (6 layers, width 384, 6 heads, vocabulary 50,257), f32 on the CPU. No download.

- SFT: `--batch` rows of `--sequence` random tokens, the causal LM loss on every position
  but the first (transformers' `labels=input_ids`).
- DPO: `--batch` pairs; each row is half prompt, half completion (chosen and rejected),
  both in one forward pass; sigmoid loss with beta 0.1 against reference log-probs
  computed once beforehand (not timed), as agora reads them from its cache.

Tokens per step: SFT batch x sequence; DPO 2 x batch x sequence (what agora counts).

Run (train_compare.py runs it next to agora, once per thread count and method):
    HF_HUB_OFFLINE=1 /work/.venv-interop/bin/python scripts/bench/torch_train.py --method sft --threads 1

Prints one JSON object on stdout: wall seconds per step, and the process's CPU seconds
(all threads; free of a shared host's steal) next to them. Versions measured: torch 2.15.0, transformers 5.23.0.
"""

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["sft", "dpo"], default="sft")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sequence", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = transformers.GPT2Config(
        vocab_size=50257, n_embd=384, n_layer=6, n_head=6, n_positions=1024,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = transformers.GPT2LMHeadModel(config).to(torch.float32).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    vocab = config.vocab_size

    if args.method == "sft":
        tokens = torch.randint(0, vocab, (args.batch, args.sequence))
        tokens_per_step = args.batch * args.sequence

        def loss_fn():
            return model(input_ids=tokens, labels=tokens, use_cache=False).loss
    else:
        half = args.sequence // 2
        prompts = torch.randint(0, vocab, (args.batch, half))
        chosen = torch.randint(0, vocab, (args.batch, args.sequence - half))
        rejected = torch.randint(0, vocab, (args.batch, args.sequence - half))
        rows = torch.cat([torch.cat([prompts, chosen], 1), torch.cat([prompts, rejected], 1)], 0)
        tokens_per_step = 2 * args.batch * args.sequence

        def sequence_logps():
            logits = model(input_ids=rows, use_cache=False).logits[:, half - 1 : -1, :]
            targets = rows[:, half:]
            logps = torch.gather(F.log_softmax(logits, -1), 2, targets.unsqueeze(-1)).squeeze(-1)
            return logps.sum(-1)

        with torch.no_grad():
            reference = sequence_logps()

        def loss_fn():
            logps = sequence_logps()
            policy_chosen, policy_rejected = logps[: args.batch], logps[args.batch :]
            reference_chosen, reference_rejected = reference[: args.batch], reference[args.batch :]
            margin = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
            return -F.logsigmoid(0.1 * margin).mean()

    seconds = []
    cpu_seconds = []
    for run in range(args.repeats + 1):
        started = time.perf_counter()
        cpu_started = time.process_time()
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        cpu_elapsed = time.process_time() - cpu_started
        if run > 0:
            seconds.append(elapsed)
            cpu_seconds.append(cpu_elapsed)
    print(
        json.dumps(
            {
                "method": args.method,
                "threads": args.threads,
                "torch_threads": torch.get_num_threads(),
                "batch": args.batch,
                "sequence": args.sequence,
                "parameters": sum(p.numel() for p in model.parameters()),
                "repeats": args.repeats,
                "tokens_per_step": tokens_per_step,
                "seconds": seconds,
                "tokens_per_second": tokens_per_step / statistics.median(seconds),
                "cpu_seconds": cpu_seconds,
                "tokens_per_cpu_second": tokens_per_step / statistics.median(cpu_seconds),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
