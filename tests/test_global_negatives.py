"""Global negatives: 2 processes x batch B give the matching loss and the (DDP-averaged)
gradients of 1 process x batch 2B, for the shared-condition InfoNCE and for the per-candidate
("each") loss with rolled in-batch captions. Two gloo processes on tiny random tensors."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from dpt_t2i.model.gather import gather_batch, previous_rows, process_group, rolled_rows
from dpt_t2i.model.losses import MatchingLoss

BATCH, QUERIES, K, ROLLS, WORLD = 3, 2, 2, 4, 2  # ROLLS > BATCH: rows from two processes back


def _data():
    """The global batch: image inputs (2B, M, 6), captions (2B, 5), negatives (2B, K, 5).
    Caption 4 repeats caption 1 (another process's), so soft targets cross processes."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(WORLD * BATCH, QUERIES, 6, generator=gen)
    captions = torch.randn(WORLD * BATCH, 5, generator=gen)
    captions[4] = captions[1]
    return images, captions, torch.randn(WORLD * BATCH, K, 5, generator=gen)


def _model() -> nn.ModuleDict:
    torch.manual_seed(0)
    model = nn.ModuleDict({"image": nn.Linear(6, 8), "text": nn.Linear(5, 8),
                           "matching": MatchingLoss()})
    with torch.no_grad():
        model["matching"].logit_scale.fill_(2.0)  # a scale that leaves the logits soft
    return model


def _losses(model, images, captions, negatives) -> dict[str, torch.Tensor]:
    """Both matching losses of the local rows (the global batch when run on 2 processes)."""
    glob = process_group()[1] > 1
    queries, texts = model["image"](images), model["text"](captions)  # (B, M, D), (B, D)
    negs = model["text"](negatives)  # (B, K, D)
    shared = model["matching"](queries, texts, negs, global_batch=glob)
    # "each": candidates = caption, K negatives, captions of global images b-1 .. b-R
    rolls = min(ROLLS, len(captions) * process_group()[1] - 1)
    rolled = rolled_rows(texts, model["text"](previous_rows(captions, rolls)), rolls)
    cand = torch.cat([texts[:, None], negs, rolled], 1)  # (B, C, D)
    scores = torch.einsum("bmd,bcd->bcm", F.normalize(queries, dim=-1),
                          F.normalize(cand, dim=-1)).amax(-1)
    each = model["matching"].candidates(scores, cand, rolls, global_batch=glob)
    return {"shared": shared, "each": each}


def _rolled_by_objective(rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`DPTObjective._rolled_captions` under "each" with a token-reading text(y): the rolled
    captions' text(y) and tokens of the rows, and the text head's gradient of their sum
    (summed over the processes, as the score gather's factor N and DDP's 1/N leave it)."""
    from dpt_t2i.model.adapter import AdapterConfig
    from dpt_t2i.model.config import DPTConfig
    from dpt_t2i.model.heads import DPTHeads
    from dpt_t2i.training.objective import DPTObjective
    from dpt_t2i.training.settings import TrainSettings

    torch.manual_seed(0)
    adapter = AdapterConfig(feature_dim=8, text_dim=8, d_model=8, n_heads=2, ffn_dim=16,
                            n_match_queries=2, n_ground_queries=2, max_hw=4, match_text="tokens")
    objective = DPTObjective(nn.Identity(), DPTHeads(adapter),
                             DPTConfig(condition="each", adapter=adapter),
                             TrainSettings(batch_negatives=ROLLS))
    objective.global_negatives = True
    gen = torch.Generator().manual_seed(2)
    inputs = {"caption_embeds": torch.randn(WORLD * BATCH, 8, generator=gen),
              "caption_tokens": torch.randn(WORLD * BATCH, 5, 8, generator=gen),
              "caption_mask": torch.rand(WORLD * BATCH, 5, generator=gen) > 0.3}
    inputs = {key: value[rows] for key, value in inputs.items()}
    inputs["caption_mask"][:, 0] = True
    own = objective._match_texts({**inputs, "negative_embeds": inputs["caption_embeds"][:, None],
                                  "negative_tokens": inputs["caption_tokens"][:, None],
                                  "negative_mask": inputs["caption_mask"][:, None]})[0]
    text, tokens = objective._rolled_captions(inputs, own)
    text.sum().backward()
    grad = torch.cat([p.grad.flatten() for p in objective.heads.adapter.text_head.parameters()
                      if p.grad is not None])
    if process_group()[1] > 1:
        dist.all_reduce(grad)
    return text.detach(), tokens, grad


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward(retain_graph=True)
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        if process_group()[1] > 1:  # DDP's average over the processes
            dist.all_reduce(grad)
            grad /= process_group()[1]
        grads[name] = grad
    return grads


def _worker(rank: int, store: str, out: str):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        model = _model()
        losses = _losses(model, *(x[rows] for x in _data()))
        result = {name: (loss.detach(), _grads(model, loss)) for name, loss in losses.items()}
        result["rolled"] = _rolled_by_objective(rows)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_of_batch_b_equal_one_of_batch_2b(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD)
    model = _model()
    expected = {name: (loss.detach(), _grads(model, loss))
                for name, loss in _losses(model, *_data()).items()}
    text, tokens, text_grad = _rolled_by_objective(slice(None))  # the objective's rolling
    assert text.shape == (WORLD * BATCH, ROLLS, 8) and tokens.shape[:2] == (WORLD * BATCH, ROLLS)
    assert text_grad.abs().max() > 1e-3
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, (loss, grads) in expected.items():
            assert torch.allclose(got[name][0], loss, atol=1e-6), (name, rank)
            for param, grad in grads.items():
                assert grad.abs().max() > 1e-4, (name, param)  # every parameter learns
                assert torch.allclose(got[name][1][param], grad, atol=1e-6), (name, rank, param)
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        assert torch.allclose(got["rolled"][0], text[rows], atol=1e-5)
        assert torch.equal(got["rolled"][1], tokens[rows])
        assert torch.allclose(got["rolled"][2], text_grad, atol=1e-5)


def test_without_gathering_the_two_processes_would_differ():
    """The per-process loss of the first half is not the global one: the test above has
    something to catch."""
    model = _model()
    images, captions, negatives = _data()
    half = _losses(model, images[:BATCH], captions[:BATCH], negatives[:BATCH])
    full = _losses(model, images, captions, negatives)
    assert abs(half["shared"].item() - full["shared"].item()) > 0.05
    assert abs(half["each"].item() - full["each"].item()) > 0.01


def test_one_process_is_the_identity():
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_batch(x) is x
    assert torch.equal(rolled_rows(x, previous_rows(x, 2), 2),
                       torch.stack([x.roll(1, 0), x.roll(2, 0)], 1))
    assert rolled_rows(x, previous_rows(x, 0), 0).shape == (4, 0, 3)
