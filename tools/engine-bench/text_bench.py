"""The llama.cpp side of the text engine benchmark (`cargo bench -p horde-text --bench text`),
through llama-cpp-python: the same model files, the same prompt tokens and counts, 2 threads.

    text_bench.py [--dir DIR] [--types q8_0,q4_k_m,f16] [--prompt 128] [--generate 64]
                  [--repeats 3] [--threads 2]

For each type: prompt processing (the prompt's tokens in one batch from an empty cache) and
generation (that many single-token steps after the prompt, each feeding back the greedy token
of the step before), timed after one untimed warm-up; prints one line per measurement with the
tokens/s of the fastest and the median run, as the Rust side prints them. The models come from
text_model.py; run both in the venv of tools/text-fixtures.
"""

import argparse
import statistics
import time
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama


def prompt_tokens(n, n_vocab):
    """BOS, then word pieces spread over the vocabulary (the Rust side's `prompt_tokens`)."""
    first = 259  # after <unk>, <s>, </s> and the 256 byte tokens
    return [1] + [first + (i * 7919) % (n_vocab - first) for i in range(1, n)]


def run_once(llm, prompt, generate):
    """Seconds of the prompt's batch and of `generate` greedy steps after it."""
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prompt_secs = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(generate):
        # The last position's logits (the only ones llama.cpp computes without logits_all).
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(logits))])
    return prompt_secs, time.perf_counter() - started


def report(kind, qtype, tokens, secs):
    rates = sorted(tokens / s for s in secs)
    print(f"llama.cpp {qtype:7} {kind:3} {tokens:4} tokens: best {rates[-1]:8.1f} tok/s, "
          f"median {statistics.median(rates):8.1f} tok/s ({len(secs)} runs)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path.home() / ".cache/horde/text-bench")
    ap.add_argument("--types", default="q8_0,q4_k_m")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--generate", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"llama-cpp-python {llama_cpp.__version__}; {llama_cpp.llama_print_system_info().decode().strip()}")
    for qtype in args.types.split(","):
        llm = Llama(model_path=str(args.dir / f"bench-{qtype}.gguf"), n_ctx=args.prompt + args.generate + 8,
                    n_batch=args.prompt, n_ubatch=args.prompt, n_threads=args.threads,
                    n_threads_batch=args.threads, verbose=False)
        prompt = prompt_tokens(args.prompt, llm.n_vocab())
        run_once(llm, prompt, args.generate)  # warm-up
        runs = [run_once(llm, prompt, args.generate) for _ in range(args.repeats)]
        report("pp", qtype, args.prompt, [p for p, _ in runs])
        report("tg", qtype, args.generate, [g for _, g in runs])
        del llm


if __name__ == "__main__":
    main()
