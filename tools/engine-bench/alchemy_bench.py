"""The transformers side of the alchemy benchmark (`cargo bench -p horde-alchemy --bench
alchemy`): the same checkpoints (alchemy_model.py), the same 512² image, the same work.

    alchemy_bench.py --part caption|interrogate [--dir DIR] [--repeats 3] [--threads 2]

One part per process, so that the peak RSS printed at the end (`VmHWM`) is the part's own.

* caption: BLIP's `generate` as the horde's `caption` form runs it, with transformers'
  `BlipForConditionalGeneration` at 512² (`interpolate_pos_encoding=True`, the processor at
  512²: the horde runs its 384² BLIP at `blip_image_eval_size=512`): prompt "a picture of ",
  sampling with top-k 50, top-p 0.9, repetition penalty 1.1, `min_length` 20 and `max_length`
  50 counted with the prompt, a fixed seed. `BlipImageProcessorPil` (PIL's bicubic) is inside
  the timing, as the Rust side's preprocessing is.
* interrogate: CLIP's image embedding (`CLIPImageProcessorPil`, vision tower, projection,
  normalised) and the ranking of horde-clipfree's `Interrogator.rank` (softmax of 100 × cosine
  over each of the seven lists, top 5, the result dicts); the term embeddings computed once
  before, timed separately, batched as the Rust side batches them (OpenAI's tokenizer, terms
  sorted by length, 64 a batch, each padded to its longest: the causal text tower read at the
  end token gives the same embeddings as horde-clipfree's padding to 77, for less work).

Times: the fastest and the median of `--repeats` runs after one untimed warm-up. Run in the venv
of tools/alchemy-fixtures (torch 2.15.0, transformers 5.24.0, open_clip's tokenizer).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    CLIPImageProcessorPil,
    CLIPModel,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "alchemy-fixtures"))
import common  # noqa: E402  (the term lists and OpenAI's tokenizer, as the fixtures read them)

SEED = 2890
SIDE = 512
PROMPT = "a picture of "
TEXT_BATCH = 64
TOP_COUNT = 5


def status_mb(field: str) -> float:
    """A memory figure of /proc/self/status in MB: VmHWM (the peak so far) or VmRSS (now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def report_load(what: str, secs: float) -> None:
    """The resident memory after loading and the loading's peak; then the peak is reset to the
    current RSS (/proc/self/clear_refs), so that the one printed at the end is the forms' own."""
    report_load.peak = status_mb("VmHWM:")
    print(f"torch   load {what}: {secs:.2f} s, RSS {status_mb('VmRSS:'):.0f} MB after it "
          f"(peak {report_load.peak:.0f} MB)")
    Path("/proc/self/clear_refs").write_text("5")


def bench_image() -> Image.Image:
    """The Rust side's `bench_image`: a deterministic 512² picture."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.int64)
    rgb = np.stack([(x * 7 + y * 3) % 256, (x * y) % 256, (x + 2 * y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def timed(repeats, run):
    run()  # warm-up
    secs = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        secs.append(time.perf_counter() - started)
    return secs


def report(what, secs):
    print(f"torch   {what:28} fastest {min(secs):8.3f} s, median {statistics.median(secs):8.3f} s "
          f"({len(secs)} runs)", flush=True)


def caption(folder: Path, repeats: int) -> None:
    started = time.perf_counter()
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    tokenizer = BertTokenizer.from_pretrained(folder)
    processor = BlipImageProcessorPil(size={"height": SIDE, "width": SIDE})
    report_load("BLIP large", time.perf_counter() - started)
    image = bench_image()
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids

    def run():
        torch.manual_seed(SEED)
        pixels = processor(image, return_tensors="pt").pixel_values
        ids = model.generate(
            pixel_values=pixels, input_ids=prompt, interpolate_pos_encoding=True, do_sample=True,
            num_beams=1, top_k=50, top_p=0.9, repetition_penalty=1.1, min_length=20, max_length=50,
        )
        run.ids = ids[0].tolist()
        tokenizer.decode(ids[0], skip_special_tokens=True)[len(PROMPT):]

    secs = timed(repeats, run)
    print(f"torch   caption of {len(run.ids)} ids (max_length 50, the prompt's included)")
    report("caption, 512²", secs)


def term_embeds(model, lists):
    """Each list's normalised text embeddings (the Rust side's `list_embeds`)."""
    tokenizer = common.load_open_clip_tokenizer()
    out = {}
    for name, terms in lists.items():
        tokens = [common.tokenize(tokenizer, t) for t in terms]
        order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))
        rows = torch.empty((len(tokens), model.config.projection_dim))
        for start in range(0, len(order), TEXT_BATCH):
            batch = order[start : start + TEXT_BATCH]
            ids = common.padded([tokens[i] for i in batch], max(len(tokens[i]) for i in batch))
            pooled = model.text_model(input_ids=ids).pooler_output
            rows[batch] = model.text_projection(pooled)
        out[name] = rows / rows.norm(dim=-1, keepdim=True)
    return out


def interrogate(folder: Path, repeats: int) -> None:
    started = time.perf_counter()
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessorPil()  # openai/clip-vit-large-patch14's preprocessing
    report_load("CLIP ViT-L/14", time.perf_counter() - started)
    lists = common.term_lists()
    started = time.perf_counter()
    texts = term_embeds(model, lists)
    count = sum(len(t) for t in lists.values())
    print(f"torch   {'term embeddings':28} {time.perf_counter() - started:8.3f} s "
          f"(once per model; {count} terms)", flush=True)
    image = bench_image()

    def run():
        pixels = processor(image, return_tensors="pt").pixel_values
        embeds = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        result = {}
        for name, terms in lists.items():
            probs = (100.0 * embeds @ texts[name].T).softmax(dim=-1)
            top_probs, top_labels = probs.topk(min(TOP_COUNT, len(terms)), dim=-1)
            result[name] = [{"text": terms[int(label)], "confidence": float(p) * 100}
                            for p, label in zip(top_probs[0], top_labels[0])]
        return {"interrogation": result}

    report("interrogation, 512²", timed(repeats, run))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["caption", "interrogate"], default="caption")
    ap.add_argument("--dir", type=Path, default=Path.home() / ".cache/horde/alchemy-bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.get_num_threads()} threads")
    with torch.inference_mode():
        if args.part == "caption":
            caption(args.dir / "blip-large", args.repeats)
        else:
            interrogate(args.dir / "clip-vit-large-patch14", args.repeats)
    since_load = status_mb("VmHWM:")
    print(f"torch   peak RSS {max(report_load.peak, since_load):.0f} MB (after loading: {since_load:.0f} MB)")


if __name__ == "__main__":
    main()
