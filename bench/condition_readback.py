"""Can a DPT matching score be won by reading the text back out of the U-Net's condition?

For a DPT folder trained with `--condition caption` or `each` (the U-Net sees the scored text), image-
to-text accuracy on Shapes ITM items (1 caption vs 3 hard negatives) under three protocols:

- fair:   each candidate text is scored on features made under that same text;
- leaked: all four candidates are scored on features made under the true caption;
- misled: all four are scored on features made under the first hard negative;
- blind:  as fair, but on the image of another item: a score that reads the image is at
          chance (0.25) here; one that has learned which texts look like captions (a prior
          over the texts that per-candidate conditioning lets the features carry) is not.

If the score reads the condition, "leaked" is near 1 and "misled" near 0 whatever the image
shows; a score that reads the image gives similar figures under all three. For a DPT folder
trained with `--condition empty` the three protocols coincide by construction.

    python bench/condition_readback.py --dpt runs/probe-caption/final [--n 200]
"""

from __future__ import annotations

import argparse

import torch

from dpt_t2i.eval.discriminative import DiscriminativeScorer, shapes_itm_item
from dpt_t2i.io.bundle import default_model_path, load_bundle
from dpt_t2i.io.dpt_folder import load_dpt
from dpt_t2i.model.losses import matching_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dpt", required=True)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--split", default="ood")
    parser.add_argument("--timestep", type=int, default=100)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    heads, config = load_dpt(args.dpt, bundle.unet)
    scorer = DiscriminativeScorer(bundle, heads, config, args.timestep, seed=1)
    items = [shapes_itm_item(1, i, args.split) for i in range(args.n)]
    latents = scorer.encode([it.images[0] for it in items])  # (N, C, h, w)
    score, t = scorer.score, args.timestep
    right = {"fair": 0, "leaked": 0, "misled": 0, "blind": 0}
    with torch.no_grad():
        for k, item in enumerate(items):
            texts = score.texts(item.texts)  # text(y) (4, D), states (4, L, D)
            lat = latents[k:k + 1].expand(4, -1, -1, -1)
            fair = torch.diagonal(matching_scores(score.match_embeds(lat, t, texts.states),
                                                  texts.embeds))
            leaked = matching_scores(score.match_embeds(lat[:1], t, texts.states[:1]),
                                     texts.embeds)[0]
            misled = matching_scores(score.match_embeds(lat[:1], t, texts.states[1:2]),
                                     texts.embeds)[0]
            other = latents[(k + 1) % len(items)][None].expand(4, -1, -1, -1)
            blind = torch.diagonal(matching_scores(score.match_embeds(other, t, texts.states),
                                                   texts.embeds))
            for name, s in (("fair", fair), ("leaked", leaked), ("misled", misled),
                            ("blind", blind)):
                right[name] += int(s[0] > s[1:].max())
    print(f"condition={config.condition} block={config.block} t={args.timestep} "
          f"split={args.split} n={args.n}")
    for name, count in right.items():
        print(f"  image-to-text accuracy, {name:<7} {count / args.n:.3f}")


if __name__ == "__main__":
    main()
