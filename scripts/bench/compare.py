"""Issue 3's speed and memory benchmarks, side by side in one run:

- decode and prefill tokens/s of agora (`agora bench decode --json`) against llama.cpp
  (llama-cpp-python) on the SAME GGUF files and the SAME prompt token ids, greedy, 128 new
  tokens with end-of-sequence banned, for each thread count;
- f32 forward tokens/s of a random GPT-2 6 x 384 (batch 4 x 256) of agora
  (`agora bench forward-gpt2 --json`) against PyTorch (torch_gpt2.py);
- agora's peak RSS after loading each GGUF, against the file size.

Prints a Markdown table (ratios are agora / reference) and writes it to --out.

Run it with the bench venv's Python (llama-cpp-python built as README.md says); the
PyTorch part runs under --torch-python (default: /work/.venv-interop/bin/python):

    cargo build --release -p agora-cli
    /work/.venv-bench/bin/python scripts/bench/compare.py \
        --agora target/release/agora --models-dir models --out scripts/bench/last-run.md
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_json(command: list[str], env_extra: dict[str, str]) -> dict:
    env = dict(os.environ, **env_extra)
    print("$", " ".join(command), file=sys.stderr, flush=True)
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.stderr.write(finished.stderr)
        raise SystemExit(f"failed ({finished.returncode}): {' '.join(command)}")
    return json.loads(finished.stdout)


def thread_env(threads: int) -> dict[str, str]:
    # candle's matmul reads RAYON_NUM_THREADS; torch and OpenMP read OMP_NUM_THREADS.
    return {
        "RAYON_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }


def agora_decode(agora: str, model: Path, threads: int, args) -> dict:
    return run_json(
        [
            agora, "--json", "bench", "decode", "--model", str(model),
            "--threads", str(threads), "--prompt-tokens", str(args.prompt_tokens),
            "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
        ],
        thread_env(threads),
    )


def llama_decode(model: Path, threads: int, prompt: list[int], banned: list[int], args) -> dict:
    """Prefill = one llama_decode over the prompt; decode = new_tokens single-token
    evaluations, each followed by an argmax over the last logits with `banned` at -inf
    (the same greedy choice agora makes)."""
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=512,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    vocab = llm.n_vocab()
    banned = sorted(set(banned) | {llm.token_eos()})

    def greedy() -> int:
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,)).copy()
        logits[banned] = -np.inf
        return int(np.argmax(logits))

    prefill_seconds, decode_seconds, generated_first = [], [], []
    for run in range(args.repeats + 1):  # run 0 is an untimed warm-up
        llm.reset()
        started = time.perf_counter()
        llm.eval(prompt)
        next_token = greedy()
        prefill = time.perf_counter() - started
        generated = []
        started = time.perf_counter()
        for _ in range(args.new_tokens):
            generated.append(next_token)
            llm.eval([next_token])
            next_token = greedy()
        decode = time.perf_counter() - started
        if run == 0:
            continue
        prefill_seconds.append(prefill)
        decode_seconds.append(decode)
        if not generated_first:
            generated_first = generated
    del llm
    return {
        "prefill_tokens_per_second": len(prompt) / statistics.median(prefill_seconds),
        "decode_tokens_per_second": args.new_tokens / statistics.median(decode_seconds),
        "prefill_seconds": prefill_seconds,
        "decode_seconds": decode_seconds,
        "generated_token_ids": generated_first,
    }


def common_prefix(left: list[int], right: list[int]) -> int:
    count = 0
    for a, b in zip(left, right):
        if a != b:
            break
        count += 1
    return count


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agora", default="target/release/agora", help="the agora binary (a release build)")
    parser.add_argument("--models-dir", default="models", type=Path)
    parser.add_argument("--quants", default="Q4_1,Q8_0", help="GGUF files SmolLM2-135M-Instruct.<quant>.gguf to measure")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--prompt-tokens", type=int, default=61)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-python", default="/work/.venv-interop/bin/python")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "last-run.md")
    args = parser.parse_args()

    import llama_cpp

    threads_list = [int(t) for t in args.threads.split(",")]
    quants = args.quants.split(",")
    rows = []  # (workload, threads, agora, reference, ratio, note)
    memory = []
    agreement = []
    for threads in threads_list:
        for quant in quants:
            model = args.models_dir / f"SmolLM2-135M-Instruct.{quant}.gguf"
            if not model.is_file():
                raise SystemExit(f"{model} is missing (see scripts/bench/README.md)")
            ours = agora_decode(args.agora, model, threads, args)
            theirs = llama_decode(model, threads, ours["prompt_token_ids"], ours["banned_token_ids"], args)
            for what in ("decode", "prefill"):
                a = ours[f"{what}_tokens_per_second"]
                b = theirs[f"{what}_tokens_per_second"]
                rows.append((f"{what} {quant}", threads, a, b, a / b))
            if threads == threads_list[0]:
                memory.append((quant, ours["file_bytes"], ours["rss_before_load_bytes"],
                               ours["peak_rss_after_load_bytes"], ours["peak_rss_to_file_ratio"],
                               ours["peak_rss_end_bytes"]))
            agreement.append((quant, threads, common_prefix(ours["generated_token_ids"], theirs["generated_token_ids"])))
            print(f"threads {threads} {quant}: agora decode {ours['decode_tokens_per_second']:.1f}, "
                  f"llama.cpp {theirs['decode_tokens_per_second']:.1f} tok/s", file=sys.stderr, flush=True)
        if not args.skip_torch:
            ours = run_json([args.agora, "--json", "bench", "forward-gpt2", "--threads", str(threads),
                             "--repeats", str(args.repeats)], thread_env(threads))
            theirs = run_json([args.torch_python, str(HERE / "torch_gpt2.py"), "--threads", str(threads),
                               "--repeats", str(args.repeats)], thread_env(threads))
            a, b = ours["tokens_per_second"], theirs["tokens_per_second"]
            rows.append(("GPT-2 6x384 f32 forward (4 x 256)", threads, a, b, a / b))
            torch_versions = f"torch {theirs['torch']}, transformers {theirs['transformers']}"

    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs ({cpu_model()}); "
        f"llama-cpp-python {llama_cpp.__version__}"
        + ("" if args.skip_torch else f", {torch_versions}")
        + f"; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, median of {args.repeats} runs.",
        "",
        "| workload | threads | agora tok/s | reference tok/s | agora / reference |",
        "|---|---:|---:|---:|---:|",
    ]
    for workload, threads, a, b, ratio in rows:
        reference = "PyTorch" if workload.startswith("GPT-2") else "llama.cpp"
        lines.append(f"| {workload} ({reference}) | {threads} | {a:.1f} | {b:.1f} | {ratio:.2f}x |")
    lines += ["", "| GGUF | file MB | agora RSS before load MB | agora peak RSS after load MB "
              "| ratio (target < 1.3) | peak RSS at end MB |",
              "|---|---:|---:|---:|---:|---:|"]
    for quant, size, before, peak, ratio, end in memory:
        fmt = lambda v: "n/a" if v is None else f"{v / 1e6:.1f}"
        lines.append(f"| {quant} | {size / 1e6:.1f} | {fmt(before)} | {fmt(peak)} | {ratio:.2f}x | {fmt(end)} |")
    lines += ["", "Greedy continuations, identical leading tokens (agora vs llama.cpp, of "
              f"{args.new_tokens}): " + ", ".join(f"{q} t={t}: {n}" for q, t, n in agreement)]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
