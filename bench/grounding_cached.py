"""How fast does the DPT grounding head learn? Minutes-long REC runs on cached U-Net features.

Stage 1 keeps the U-Net frozen, so the features of block up1 can be computed once and the
adapter's grounding part trained on them alone, about 5 steps/s on 2 CPU cores instead of
about 1 step/s for a full `dpt probe`. This is where the grounding recipe was chosen
(docs/dpt-shapes.md); it is not the training command (`dpt probe` is).

    python bench/grounding_cached.py [--cache runs/grounding-cache.pt] [--n-train 16384]
        [--steps 1200] [--lr 1e-3] [--prob-weight 5] [--prob-loss bce|ce]
        [--position-init sine|random] [--objects all|referred] [--set decoder_layers=2 ...]
        [--ground-condition expression|empty]

Training scenes: Shapes train stream seed 0, noised at t in [0, 300), features under the
referring expression (`--ground-condition expression`, the default) or the empty prompt.
Test: the first 512 scenes of the OOD stream seed 1 that carry an expression, at t in
[0, 100]. Printed per quarter of the run: the losses, the oracle accuracy (the best of all
query boxes has IoU >= 0.5), the model's choice (`rec_choice`), the probability alone, and
the choice per expression type. The cache is built once per `--cache` path: delete it (or
name another) to change `--n-train` or `--ground-condition`.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dpt_t2i.data.shapes.dpt_samples import collate, make_dpt_sample
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.model.adapter import AdapterConfig
from dpt_t2i.model.boxes import box_cxcywh_to_xyxy, box_iou
from dpt_t2i.model.config import DPTConfig
from dpt_t2i.model.heads import DPTHeads, rec_choice, unet_features
from dpt_t2i.model.latents import Noiser, encode_latents
from dpt_t2i.model.losses import DEFAULT_GROUNDING_WEIGHTS, GroundingCriterion, GroundingMatcher
from dpt_t2i.model.text import encode_texts

MAX_OBJECTS = 4  # a Shapes scene holds at most 4 objects


@torch.no_grad()
def build(bundle, seed: int, split: str, n: int, t_max: int, condition: str) -> dict:
    """Features, timesteps, expression tokens and boxes of the first n scenes with a refexp.

    `condition` is what the U-Net sees: "expression" or "empty" (the empty prompt).
    """
    noiser = Noiser(bundle.scheduler_config)
    gen = torch.Generator().manual_seed(seed)
    parts = collections.defaultdict(list)
    index, count = 0, 0
    while count < n:
        samples = [make_dpt_sample(seed, i, split, 0) for i in range(index, index + 256)]
        samples = [s for s in samples if s.box is not None][:n - count]
        index, count = index + 256, count + len(samples)
        batch = collate(samples)
        latents = encode_latents(bundle.vae, batch["pixels"])
        t = torch.randint(0, t_max, (len(samples),), generator=gen)
        noisy = noiser(latents, t, gen)  # noise drawn after t, from the same generator
        encoded = encode_texts(bundle.text_encoder, bundle.tokenizer, batch["refexps"] + [""])
        refs, empty = encoded[:-1], encoded.hidden[-1:].expand(len(samples), -1, -1)
        states = refs.hidden if condition == "expression" else empty
        parts["features"].append(unet_features(bundle.unet, DPTConfig(), noisy, t, states))
        parts["t"].append(t)
        parts["tokens"].append(refs.hidden)
        parts["mask"].append(refs.mask)
        parts["pooled"].append(refs.pooled)
        parts["boxes"].append(batch["boxes"])
        width = batch["object_boxes"].shape[1]
        objects = torch.zeros(len(samples), MAX_OBJECTS, 4)
        objects[:, :width] = batch["object_boxes"]
        real = torch.zeros(len(samples), MAX_OBJECTS, dtype=torch.bool)
        real[:, :width] = batch["object_mask"]
        parts["object_boxes"].append(objects)
        parts["object_mask"].append(real)
        parts["texts"].append(batch["refexps"])
    data = {k: torch.cat(v) for k, v in parts.items() if k != "texts"}
    data["texts"] = [t for chunk in parts["texts"] for t in chunk]
    return data


def kind(text: str) -> str:
    """The expression type, as docs/dpt-shapes.md reports them."""
    if re.search(r"(above|below|left of|right of) the", text):
        return "relation"
    if "second" in text or "third" in text:
        return "ordinal"
    if "larger" in text or "smaller" in text:
        return "size"
    if re.search(r"on the (left|right)|at the (top|bottom)", text):
        return "position"
    return "colour" if "shape" in text else "attribute"


@torch.no_grad()
def evaluate(heads: DPTHeads, test: dict) -> tuple[float, float, float, dict]:
    heads.eval()
    out = heads.ground(test["features"], test["t"], test["tokens"], test["mask"])
    heads.train()
    target = box_cxcywh_to_xyxy(test["boxes"])
    ious = torch.stack([torch.diagonal(box_iou(box_cxcywh_to_xyxy(out["ground_boxes"][:, q]),
                                               target)[0])
                        for q in range(out["ground_boxes"].shape[1])], 1)  # (N, Q)
    rows = torch.arange(len(ious))
    chosen = ious[rows, rec_choice(out, test["pooled"])] >= 0.5
    by_p = ious[rows, out["ground_logits"].argmax(1)] >= 0.5
    per = collections.defaultdict(list)
    for text, hit in zip(test["texts"], chosen.tolist()):
        per[kind(text)].append(hit)
    per_type = {k: round(sum(v) / len(v), 2) for k, v in sorted(per.items())}
    return (float((ious.max(1).values >= 0.5).float().mean()), float(chosen.float().mean()),
            float(by_p.float().mean()), per_type)


def parse_sets(pairs: list[str]) -> dict:
    """`--set name=value` overrides of AdapterConfig fields, typed like the defaults."""
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        default = getattr(AdapterConfig, name, None)
        if default is None:
            raise SystemExit(f"--set {pair}: AdapterConfig has no field {name!r}")
        out[name] = value == "1" if isinstance(default, bool) else type(default)(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/grounding-cache.pt"))
    parser.add_argument("--n-train", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prob-weight", type=float,
                        default=DEFAULT_GROUNDING_WEIGHTS["loss_prob"])
    parser.add_argument("--prob-loss", choices=("bce", "ce"), default="bce",
                        help="bce: eq. 7 as `GroundingCriterion`; ce: softmax over the queries")
    parser.add_argument("--position-init", choices=("sine", "random"), default="sine",
                        help="random: N(0, 0.02) position tables instead of the sine start")
    parser.add_argument("--objects", choices=("all", "referred"), default="all",
                        help="supervise every object's box, or the referred one's only")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--ground-condition", choices=("expression", "empty"),
                        default="expression", help="what the U-Net sees (when building the cache)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache.is_file():
        data = torch.load(args.cache)
    else:
        bundle = load_bundle(default_model_path())
        start = time.time()
        data = {"train": build(bundle, 0, "train", args.n_train, 300, args.ground_condition),
                "test": build(bundle, 1, "ood", 512, 101, args.ground_condition),
                "ground_condition": args.ground_condition}
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, args.cache)
        print(f"cached {args.n_train} training scenes in {time.time() - start:.0f} s")
    train, test = data["train"], data["test"]
    print(f"cache {args.cache}: features under the {data['ground_condition']} prompt")

    torch.manual_seed(0)
    heads = DPTHeads(AdapterConfig(**parse_sets(args.set)))
    if args.position_init == "random":
        with torch.no_grad():
            heads.adapter.row_embed.normal_(0, 0.02)
            heads.adapter.col_embed.normal_(0, 0.02)
    criterion = GroundingCriterion(GroundingMatcher())
    if args.prob_loss == "ce":
        criterion.loss_prob = lambda out, targets, idx: F.cross_entropy(out["ground_logits"], idx)
    weights = {**DEFAULT_GROUNDING_WEIGHTS, "loss_prob": args.prob_weight}
    optimizer = torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:  # 100 warm-up steps, then cosine
            group["lr"] = (args.lr * min(1.0, (step + 1) / 100)
                           * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        idx = torch.randint(0, len(train["t"]), (args.batch,), generator=gen)
        out = heads.ground(train["features"][idx], train["t"][idx], train["tokens"][idx],
                           train["mask"][idx])
        targets = {"boxes": train["boxes"][idx], "text_embeds": train["pooled"][idx]}
        if args.objects == "all":
            targets |= {"object_boxes": train["object_boxes"][idx],
                        "object_mask": train["object_mask"][idx]}
        losses, _ = criterion(out, targets)
        loss = sum(weights[k] * v for k, v in losses.items())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % max(1, args.steps // 4) == 0:
            oracle, choice, by_p, per_type = evaluate(heads, test)
            print(f"step {step + 1}: " + " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                  + f" | OOD oracle {oracle:.3f} choice {choice:.3f} p-only {by_p:.3f}"
                  + f" | {time.time() - start:.0f} s", flush=True)
            print(f"  choice per type: {per_type}", flush=True)


if __name__ == "__main__":
    main()
