"""Issue 6's training speed benchmark, side by side in one run: trained tokens/s of one
full fine-tuning step (forward, loss, backward, clipping, AdamW) of agora
(`agora bench train --json`) against PyTorch (torch_train.py) on the same random GPT-2
6 x 384 (vocabulary 50,257), f32, batch 4 x 256, for SFT and DPO, 1 and 2 threads. Each
measurement runs in a fresh process; agora and PyTorch alternate so that machine load
hits both alike. Optionally (--lora-memory) agora's peak memory of LoRA SFT on the
default model at sequence length 512.

Prints a Markdown table (ratio = agora / PyTorch) and writes it to --out.

    cargo build --release -p agora-cli
    /work/.venv-interop/bin/python scripts/bench/train_compare.py \
        --agora target/release/agora --out scripts/bench/last-train-run.md
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_times() -> list[int]:
    """The machine's total CPU time counters from /proc/stat (user ... steal), or []."""
    try:
        with open("/proc/stat") as stat:
            return [int(value) for value in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


def steal_percent(before: list[int], after: list[int]) -> float | None:
    """Share of CPU time the hypervisor took from this machine between two readings: on a
    shared virtual machine a measurement with much steal is not comparable."""
    if len(before) < 8 or len(after) < 8:
        return None
    deltas = [b - a for a, b in zip(before, after)]
    total = sum(deltas)
    return 100.0 * deltas[7] / total if total > 0 else None


def run_json(command: list[str], threads: int) -> dict:
    env = dict(
        os.environ,
        RAYON_NUM_THREADS=str(threads),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
    )
    print("$", " ".join(command), file=sys.stderr, flush=True)
    before = cpu_times()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    steal = steal_percent(before, cpu_times())
    if finished.returncode != 0:
        sys.stderr.write(finished.stderr)
        raise SystemExit(f"failed ({finished.returncode}): {' '.join(command)}")
    result = json.loads(finished.stdout)
    result["steal_percent"] = steal
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agora", default="target/release/agora")
    parser.add_argument("--python", default=sys.executable, help="Python with torch and transformers")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--methods", default="sft,dpo")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sequence", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lora-memory", action="store_true", help="also LoRA SFT on the default model, seq 512")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rows = []
    for method in args.methods.split(","):
        for threads in [int(t) for t in args.threads.split(",")]:
            common = ["--batch", str(args.batch), "--sequence", str(args.sequence), "--repeats", str(args.repeats)]
            agora = run_json(
                [args.agora, "--json", "bench", "train", "--method", method, "--threads", str(threads), *common],
                threads,
            )
            torch = run_json(
                [args.python, str(HERE / "torch_train.py"), "--method", method, "--threads", str(threads), *common],
                threads,
            )
            rows.append((method, threads, agora, torch))

    lines = [
        f"Training step, random GPT-2 6x384 (vocabulary 50,257), f32, batch {args.batch} x {args.sequence}, "
        f"median of {args.repeats} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.2f})",
        "",
        "| method | threads | agora tok/s | PyTorch tok/s | agora / PyTorch | per CPU-second: agora / PyTorch | agora peak RSS MB | steal % (agora / PyTorch) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, threads, agora, torch in rows:
        ratio = agora["tokens_per_second"] / torch["tokens_per_second"]
        rss = agora.get("peak_rss_megabytes")
        steal = " / ".join("?" if side.get("steal_percent") is None else f"{side['steal_percent']:.0f}" for side in (agora, torch))
        cpu = [side.get("tokens_per_cpu_second") for side in (agora, torch)]
        cpu_ratio = f"{cpu[0] / cpu[1]:.2f}x ({cpu[0]:.0f} / {cpu[1]:.0f})" if all(cpu) else "?"
        lines.append(
            f"| {method} | {threads} | {agora['tokens_per_second']:.1f} | {torch['tokens_per_second']:.1f} | "
            f"{ratio:.2f}x | {cpu_ratio} | {f'{rss:.0f}' if rss else '?'} | {steal} |"
        )
    lines += [
        "",
        "Steal: the share of the machine's CPU time its hypervisor took while each side ran "
        "(/proc/stat); rows with much steal, or very different steal on the two sides, are not comparable. "
        "Per CPU-second: trained tokens per second of CPU time the process used (all threads), which "
        "leaves steal out; with 2 threads it also counts time a thread spends spinning while it waits.",
    ]
    if args.lora_memory:
        lora = run_json(
            [args.agora, "--json", "bench", "train", "--method", "sft", "--model", "default", "--lora-rank", "8",
             "--batch", "1", "--sequence", "512", "--repeats", "1"],
            2,
        )
        lines += [
            "",
            f"LoRA SFT (rank 8, q_proj/v_proj) on the default model dequantized to f32, 1 x 512 tokens, 2 threads: "
            f"{lora['tokens_per_second']:.1f} tok/s, peak RSS {lora['peak_rss_megabytes']:.0f} MB "
            f"({lora['trainable_parameters']} trainable parameters)",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
