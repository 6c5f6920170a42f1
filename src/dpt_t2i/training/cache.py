"""A cache of the frozen encoders' outputs for stage 1: VAE latents and text states.

Stage 1 trains the adapter on a frozen U-Net; the VAE and the text encoder give the same
output for a sample every time it comes round, and at 768 px they cost about half the step.
`write_cache` runs them once over samples 0 .. S-1 of a source and stores, per sample, the
scaled posterior mean and the pooled states, token states and masks of the caption, the K
hard negatives and the referring expression (with the boxes), plus the empty prompt once.
`LatentCache` reads them back; `cached_inputs` turns a batch of rows into exactly what
`inputs.prepare_inputs` makes from images. The timesteps and the noise stay per step.

Training sample i reads row i in the first pass (i < S: the same samples a run from images
reads) and row `EpochShuffle(S, seed)(i)` after it, so later passes mix the batches anew.

A cache folder holds `shard-NNNNN.safetensors` (rows in order), `empty.safetensors` and
`manifest.json`, written last: a folder without it is incomplete. Each file is written under
a temporary name and renamed. Storage: at 768 px SD-2.1 (latents 4x96x96, 77x1024 text
states, K=3) a sample takes about 0.9 MB in fp16.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from ..data.loader import DrawSamples, LoaderSettings, SlotLoader
from ..data.sources import EpochShuffle
from ..model.config import DPTConfig
from ..model.latents import encode_latents
from ..model.text import EncodedTexts, encode_texts
from .inputs import BatchTexts, assemble_inputs, encode_batch_texts

FORMAT = "dpt-latent-cache/1"
MANIFEST, EMPTY = "manifest.json", "empty.safetensors"
TEXTS = ("caption", "negative", "ref")
# per-row tensors of a shard; text states and latents in the cache's dtype, the rest exact
ROW_KEYS = ("latents", *(f"{t}_{v}" for t in TEXTS for v in ("pooled", "hidden", "mask")),
            "boxes", "has_ref", "object_boxes", "object_count")
MANIFEST_KEYS = ("format", "model", "encoders", "resolution", "latent_shape", "dtype",
                 "samples", "n_negatives", "text_shape", "data", "shards")
STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def encoder_fingerprint(model: Path) -> str:
    """16 hex digits naming a model folder's VAE, text encoder and tokenizer files: their
    names and sizes, small files whole and 16 spread 4 KiB pieces of large ones (the weights),
    so it costs milliseconds and does not depend on the dtype they are loaded in."""
    digest = hashlib.sha256()
    for part in ("vae", "text_encoder", "tokenizer"):
        for file in sorted(f for f in (Path(model) / part).rglob("*") if f.is_file()):
            size = file.stat().st_size
            digest.update(f"{file.relative_to(model).as_posix()}:{size};".encode())
            with open(file, "rb") as handle:
                if size <= 1 << 20:
                    digest.update(handle.read())
                    continue
                for i in range(16):
                    handle.seek(i * (size - 4096) // 15)
                    digest.update(handle.read(4096))
    return digest.hexdigest()[:16]


def _save_atomic(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp)
    os.replace(tmp, path)


def _rows(latents: Tensor, texts: BatchTexts, batch: dict, dtype: torch.dtype) -> dict:
    """A collated, encoded batch as per-row tensors (`ROW_KEYS`)."""
    n = len(latents)
    k = len(texts.negatives) // n
    rows = {"latents": latents.to(dtype)}
    for name, enc in zip(TEXTS, (texts.captions, texts.negatives, texts.refs)):
        shape = (n, k) if name == "negative" else (n,)
        rows[f"{name}_pooled"] = enc.pooled.to(dtype).reshape(*shape, -1)
        rows[f"{name}_hidden"] = enc.hidden.to(dtype).reshape(*shape, *enc.hidden.shape[1:])
        rows[f"{name}_mask"] = enc.mask.reshape(*shape, -1)
    rows.update(boxes=batch["boxes"].float(), has_ref=batch["has_ref"],
                object_boxes=batch["object_boxes"].float(),
                object_count=batch["object_mask"].sum(1).long())
    return rows


def _pad_cat(parts: list[Tensor]) -> Tensor:
    """Concatenate along dim 0, zero-padding dim 1 (the object slots) to the widest part."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts])


@torch.no_grad()
def write_cache(out: Path, bundle, source, samples: int, resolution: int,
                dtype: str = "fp32", batch: int = 16, shard_rows: int = 256,
                loader: LoaderSettings | None = None, show_progress: bool = False) -> dict:
    """Encode samples 0 .. samples-1 of `source` into the cache folder `out`.

    Args:
        out: a new or empty folder.
        bundle: the model (`io.bundle.load_bundle`); its VAE and text encoder run on their
            device in their dtype (load it in fp16/bf16 for half-precision encoders).
        source: a sample source with `identity()` (`ShapesSource`, `RealDPTData`); its images
            must be `resolution` pixels square.
        samples: S, rows of the cache.
        dtype: "fp32", "fp16" or "bf16": what latents and text states are stored in.
        batch: samples per encoder call; shard_rows: rows per shard file.
        loader: DataLoader workers that decode the coming batches.

    Returns:
        The manifest.
    """
    out = Path(out)
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
    if samples < 1 or batch < 1 or shard_rows < 1:
        raise ValueError(f"samples, batch and shard rows must be >= 1, got {samples}, {batch}, "
                         f"{shard_rows}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder; give a new one")
    out.mkdir(parents=True, exist_ok=True)
    store = STORE_DTYPES[dtype]
    slots = range(-(-samples // batch))
    draws = SlotLoader(DrawSamples(source, batch), slots, loader)
    empty = encode_texts(bundle.text_encoder, bundle.tokenizer, [""])
    _save_atomic({"pooled": empty.pooled.to(store), "hidden": empty.hidden.to(store),
                  "mask": empty.mask}, out / EMPTY)
    pending: list[dict] = []
    shards: list[dict] = []
    bar = _progress(len(slots), show_progress)
    for slot in slots:
        drawn = draws.next(slot)["batch"]
        keep = min(batch, samples - slot * batch)
        latents = encode_latents(bundle.vae, drawn["pixels"][:keep])
        if not torch.isfinite(latents).all():
            raise ValueError(f"the VAE gave non-finite latents in {bundle.vae.dtype} for "
                             f"samples {slot * batch} ..; use --dtype bf16 or fp32")
        drawn = {key: value[:keep] for key, value in drawn.items()}
        texts = encode_batch_texts(bundle.text_encoder, bundle.tokenizer, drawn)
        pending.append(_rows(latents, texts, drawn, store))
        while sum(len(p["latents"]) for p in pending) >= shard_rows or (
                slot == slots[-1] and pending):
            pending = _flush(out, pending, shard_rows, shards)
        bar.update(1)
    draws.close()
    bar.close()
    manifest = {"format": FORMAT, "model": str(bundle.path),
                "encoders": encoder_fingerprint(bundle.path),
                "resolution": resolution, "latent_shape": list(latents.shape[1:]),
                "dtype": dtype, "samples": samples,
                "n_negatives": len(texts.negatives) // len(latents),
                "text_shape": list(texts.captions.hidden.shape[1:]),
                "data": source.identity(), "skipped_images": draws.skipped, "shards": shards}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def _flush(out: Path, pending: list[dict], shard_rows: int, shards: list[dict]) -> list[dict]:
    """Write the first `shard_rows` pending rows (or all) as the next shard; the rest."""
    rows = {key: (_pad_cat if key == "object_boxes" else torch.cat)([p[key] for p in pending])
            for key in ROW_KEYS}
    count = min(shard_rows, len(rows["latents"]))
    name = f"shard-{len(shards):05d}.safetensors"
    _save_atomic({key: value[:count] for key, value in rows.items()}, out / name)
    shards.append({"file": name, "rows": count})
    rest = {key: value[count:] for key, value in rows.items()}
    return [rest] if len(rest["latents"]) else []


def _progress(total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="cache", unit="batch", disable=not show, dynamic_ncols=True)


class LatentCache:
    """A cache folder opened for training: rows by sample index, checked against the run.

    Args:
        folder: written by `write_cache`.
        seed: the run's seed; it orders the passes after the first (module docstring).

    Raises:
        ValueError: one line naming the missing file or key, for a folder that is not a
            complete cache.
    """

    skipped = 0  # a cache meets no unreadable image (the loop's summary reads it)

    def __init__(self, folder: Path, seed: int = 0):
        self.folder, self.seed = Path(folder), seed
        self.manifest = read_manifest(self.folder)
        self.starts: list[int] = []  # first row of each shard
        total = 0
        for shard in self.manifest["shards"]:
            self.starts.append(total)
            total += _check_shard(self.folder, shard, self.manifest)
        if total != self.manifest["samples"]:
            raise ValueError(f"cache {self.folder}: its shards hold {total} rows, the manifest "
                             f"says {self.manifest['samples']}; the cache is incomplete")
        self.order = EpochShuffle(total, seed)
        self.empty = _load(self.folder / EMPTY, ("pooled", "hidden", "mask"))
        self._open: dict[int, object] = {}  # shard -> safe_open handle, per process

    def __len__(self) -> int:
        return self.manifest["samples"]

    def __getstate__(self) -> dict:  # DataLoader workers open their own handles
        return {**self.__dict__, "_open": {}}

    def identity(self) -> dict:
        """The source's identity the cache was made of, with the cache's own facts."""
        m = self.manifest
        return {"kind": "cache", "folder": str(self.folder), "samples": m["samples"],
                "dtype": m["dtype"], "data": m["data"]}

    def check(self, bundle, resolution: int, n_negatives: int | None = None) -> None:
        """Refuse a run this cache was not made for: another model's encoders, another image
        resolution, or another number of hard negatives (ValueError naming both)."""
        m = self.manifest
        mine = encoder_fingerprint(bundle.path)
        if mine != m["encoders"]:
            raise ValueError(f"cache {self.folder} was made with the encoders of {m['model']} "
                             f"({m['encoders']}); {bundle.path} has others ({mine})")
        if resolution != m["resolution"]:
            raise ValueError(f"cache {self.folder} holds {m['resolution']} px images; this run "
                             f"feeds {resolution} px")
        if n_negatives is not None and n_negatives != m["n_negatives"]:
            raise ValueError(f"cache {self.folder} holds {m['n_negatives']} hard negatives a "
                             f"sample; this run asks for {n_negatives}")

    def row_of(self, index: int) -> int:
        """The row training sample `index` reads: itself in the first pass, then shuffled."""
        return index if index < len(self) else self.order(index)

    def rows(self, rows: list[int]) -> dict[str, Tensor]:
        """`ROW_KEYS` tensors of these rows, stacked in their order (object slots padded)."""
        picked: dict[str, list[Tensor]] = {key: [] for key in ROW_KEYS}
        for row in rows:
            shard = bisect.bisect_right(self.starts, row) - 1
            handle, at = self._handle(shard), row - self.starts[shard]
            for key in ROW_KEYS:
                picked[key].append(handle.get_slice(key)[at:at + 1])
        return {key: (_pad_cat if key == "object_boxes" else torch.cat)(values)
                for key, values in picked.items()}

    def _handle(self, shard: int):
        if shard not in self._open:
            from safetensors import safe_open

            path = self.folder / self.manifest["shards"][shard]["file"]
            self._open[shard] = safe_open(str(path), framework="pt")
        return self._open[shard]


class CacheDraw:
    """draw(slot) for `loader.SlotLoader`: the cache rows of samples slot*B .. slot*B+B-1."""

    def __init__(self, cache: LatentCache, batch: int):
        self.cache, self.batch = cache, batch

    def __call__(self, slot: int) -> dict:
        first = slot * self.batch
        rows = [self.cache.row_of(i) for i in range(first, first + self.batch)]
        return {"slot": slot, "rows": self.cache.rows(rows), "skipped": 0}


def cached_inputs(rows: dict[str, Tensor], empty: dict[str, Tensor], config: DPTConfig,
                  need_caption_states: bool,
                  device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """`prepare_inputs`' latents and dict (see there) from cache rows, in float32 on `device`.

    Args:
        rows: `LatentCache.rows` of a batch; empty: `LatentCache.empty`.
    """
    def texts(name: str, flat: bool = False) -> EncodedTexts:
        pooled, hidden, mask = (rows[f"{name}_{v}"] for v in ("pooled", "hidden", "mask"))
        if flat:  # (B, K, ...) -> (B*K, ...), image-major
            pooled, hidden, mask = pooled.flatten(0, 1), hidden.flatten(0, 1), mask.flatten(0, 1)
        return EncodedTexts(*_to(device, pooled, hidden, mask))

    encoded = BatchTexts(texts("caption"), texts("negative", flat=True), texts("ref"),
                         EncodedTexts(*_to(device, empty["pooled"], empty["hidden"],
                                           empty["mask"])))
    count = rows["object_count"]
    width = max(1, int(count.max()))
    slots = torch.arange(width)
    object_mask = slots[None, :] < count[:, None]
    # collate pads the object slots to the batch's largest scene (at least 1) with zeros
    batch = {"boxes": rows["boxes"], "has_ref": rows["has_ref"],
             "object_boxes": rows["object_boxes"][:, :width], "object_mask": object_mask}
    latents = rows["latents"].to(device, torch.float32, non_blocking=True)
    return latents, assemble_inputs(encoded, batch, config, need_caption_states, device)


def _to(device: torch.device, *tensors: Tensor) -> list[Tensor]:
    """Floating tensors to float32 on `device`; masks keep their dtype."""
    return [t.to(device, torch.float32 if t.is_floating_point() else t.dtype, non_blocking=True)
            for t in tensors]


def read_manifest(folder: Path) -> dict:
    """A cache folder's manifest, checked for its keys and format (ValueError naming them)."""
    folder = Path(folder)
    file = folder / MANIFEST
    if not folder.is_dir():
        raise ValueError(f"cache {folder} is not a folder; make one with dpt cache")
    if not file.is_file():
        raise ValueError(f"cache {folder}: {MANIFEST} is missing (dpt cache writes it last, "
                         "so the cache is incomplete or not a cache)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cache {file} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"cache {file} holds a JSON {type(manifest).__name__}; expected an "
                         "object")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"cache {file} lacks the key(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise ValueError(f"cache {file} has format {manifest['format']!r}; expected {FORMAT!r}")
    return manifest


def _check_shard(folder: Path, shard: dict, manifest: dict) -> int:
    """Rows of one shard file, after checking it holds every key with that many rows."""
    from safetensors import SafetensorError, safe_open

    path = folder / shard["file"]
    if not path.is_file():
        raise ValueError(f"cache {folder}: {shard['file']} is missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            missing = [key for key in ROW_KEYS if key not in keys]
            if missing:
                raise ValueError(f"cache {path} lacks the key(s) {', '.join(missing)}")
            sizes = {handle.get_slice(key).get_shape()[0] for key in ROW_KEYS}
    except SafetensorError as err:
        raise ValueError(f"cache {path} is not a readable safetensors file ({err})") from None
    if sizes != {shard["rows"]}:
        raise ValueError(f"cache {path}: its tensors hold {sorted(sizes)} rows; the manifest "
                         f"says {shard['rows']}")
    return shard["rows"]


def _load(path: Path, keys: tuple[str, ...]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"cache {path.parent}: {path.name} is missing")
    try:
        tensors = load_file(path)
    except SafetensorError as err:
        raise ValueError(f"cache {path} is not a readable safetensors file ({err})") from None
    missing = [key for key in keys if key not in tensors]
    if missing:
        raise ValueError(f"cache {path} lacks the key(s) {', '.join(missing)}")
    return tensors
