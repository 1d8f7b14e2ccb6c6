"""Writes the benchmark model of the text engine: a random "small" llama (about 125 M
parameters, grouped-query attention, a 32000-token SentencePiece vocabulary), as F16 with the
`gguf` package, then quantised by llama.cpp's own quantiser (`llama_model_quantize`, as
`llama-quantize` runs it) to Q8_0 and Q4_K_M. Speed does not depend on the weight values, so
random weights measure what a real model of this shape would.

    text_model.py [OUT_DIR]     (default ~/.cache/horde/text-bench)

Writes `bench-f16.gguf`, `bench-q8_0.gguf`, `bench-q4_k_m.gguf`. Runs in the venv of
tools/text-fixtures (`gguf`, `llama-cpp-python`; its requirements.txt).
"""

import ctypes
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

SEED = 20261205
HIDDEN = 768  # rows of 256, as llama.cpp's K-quants need
HEADS = 12
KV_HEADS = 4  # grouped-query attention, as Llama 3 and Mistral
FFN = 2048
LAYERS = 12
VOCAB = 32000
CONTEXT = 2048
EPS = 1e-5
ROPE_BASE = 10000.0


def vocab():
    """<unk>, <s>, </s>, the 256 byte tokens, then distinct word pieces up to VOCAB."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces = [f"▁w{i}" for i in range(VOCAB - len(tokens))]
    scores = [0.0] * len(tokens) + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return tokens + pieces, scores, types


def tensors(rng):
    """Every tensor random: matrices ~ N(0, 1/fan_in) in F16, norm weights in [0.5, 1.5]."""
    head_dim = HIDDEN // HEADS

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float16)

    def norm():
        return rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32)

    yield "token_embd.weight", mat(VOCAB, HIDDEN)
    yield "output_norm.weight", norm()
    yield "output.weight", mat(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"blk.{i}"
        yield f"{p}.attn_norm.weight", norm()
        yield f"{p}.attn_q.weight", mat(HIDDEN, HIDDEN)
        yield f"{p}.attn_k.weight", mat(KV_HEADS * head_dim, HIDDEN)
        yield f"{p}.attn_v.weight", mat(KV_HEADS * head_dim, HIDDEN)
        yield f"{p}.attn_output.weight", mat(HIDDEN, HIDDEN)
        yield f"{p}.ffn_norm.weight", norm()
        yield f"{p}.ffn_gate.weight", mat(FFN, HIDDEN)
        yield f"{p}.ffn_up.weight", mat(FFN, HIDDEN)
        yield f"{p}.ffn_down.weight", mat(HIDDEN, FFN)


def write_f16(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("horde text bench")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(ROPE_BASE)
    w.add_layer_norm_rms_eps(EPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for name, data in tensors(np.random.default_rng(SEED)):
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize(src, dst, ftype):
    """llama.cpp's own quantiser (`llama_model_quantize`), as `llama-quantize` runs it."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {dst} failed")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/horde/text-bench")
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / "bench-f16.gguf"
    write_f16(f16)
    for name, ftype in [("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("q4_k_m", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)]:
        quantize(f16, out / f"bench-{name}.gguf", ftype)
    for p in sorted(out.glob("bench-*.gguf")):
        print(f"{p}: {p.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
