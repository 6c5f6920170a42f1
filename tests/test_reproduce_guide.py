"""docs/reproduce-sd21.md, walked at toy size: every command of its `bash` blocks runs, in
order, on a tiny SD-2.1-shaped folder and tiny benchmark files.

The commands are read from the guide itself (so the two cannot drift): the variables of its
step 0 point at the toy inputs, and only sizes change (SIZES). Lines are `NAME=value`,
`for X in ...; do` ... `done`, `dpt ...` or `accelerate launch -m dpt_t2i.cli ...` (run as
`dpt ...` in this process); anything else fails the test. The benchmarks' own evaluators (the
guide's `sh` blocks) need their models and a GPU: before `dpt compbench-table` the test writes
result files in their format in their place."""

import json
import re
import shlex
from pathlib import Path

import torch
from data.test_coco import write_coco_captions
from data.test_real import write_images
from data.test_refcoco import write_refcoco
from test_official_adapter import official_adapter_state, official_lora_state

from dpt_t2i.cli import main
from dpt_t2i.data.compbench_results import RESULT_FILES

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "reproduce-sd21.md"
SIZES = {"--steps": "2", "--batch-size": "5", "--batch": "2", "--resolution": "16",
         "--d-model": "32", "--ground-queries": "4"}
CATEGORIES = ("color", "shape", "texture", "spatial", "non_spatial", "complex", "numeracy")
PROMPTS = {c: f"a red circle and a blue square {c.replace('_', ' ')}" for c in CATEGORIES}
GENEVAL = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"}],
           "prompt": "a photo of a red circle"}
WORDS = ("a", "red", "blue", "circle", "and", "square", "photo", "of",
         *{w for c in CATEGORIES for w in c.split("_")})


# ------------------------------------------------------------------------------ the guide


def guide_commands(text: str, inputs: dict[str, str]) -> list[list[str]]:
    """The guide's `bash` commands, variables expanded (step 0's from `inputs`), as argv
    lists after `dpt`."""
    env: dict[str, str] = {}
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        loop = None
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if (m := re.fullmatch(r"for (\w+) in (.+); do", line)):
                loop = (m[1], m[2].split(), [])
            elif line == "done":
                name, values, body = loop
                commands += [_command(body_line, {**env, name: v})
                             for v in values for body_line in body]
                loop = None
            elif loop is not None:
                loop[2].append(line)
            elif (m := re.fullmatch(r"(\w+)=(\S+)(\s+#.*)?", line)):
                env[m[1]] = inputs[m[1]] if m[1] in inputs else _expand(m[2], env)
            else:
                commands.append(_command(line, env))
    return commands


def _expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env[m[1] or m[2]], text)


def _command(line: str, env: dict[str, str]) -> list[str]:
    words = shlex.split(_expand(line, env), comments=True)
    if words[:4] == ["accelerate", "launch", "-m", "dpt_t2i.cli"]:
        words = words[3:]
    assert words[0] in ("dpt", "dpt_t2i.cli"), f"not a dpt command in the guide: {line}"
    args = words[1:]
    for i, word in enumerate(args[:-1]):
        if word in SIZES:
            args[i + 1] = SIZES[word]
    return args


# ------------------------------------------------------------------------- the toy inputs


def sd21_shaped(folder: Path) -> Path:
    """A tiny folder with SD-2.1-base's structure: linear-projection transformers, a head
    count a level, attention upcast, no attention at the lowest level, a GELU CLIP text
    encoder reading 77 tokens, PNDM with steps_offset 1."""
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from dpt_t2i.shapes_model.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    tokenizer.model_max_length = 77
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        cross_attention_dim=32, use_linear_projection=True, upcast_attention=True,
        norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                              prediction_type="epsilon")
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


def official_checkpoint(model: Path, path: Path) -> Path:
    """A `pytorch_model.bin` in the authors' release layout for `model`: small rank-4
    attention-processor LoRA on every attention layer, and their adapter on up1 (32 wide)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    state = official_lora_state(unet, rank=4, scale=0.05)
    torch.save({**state, **official_adapter_state(0, feature_dim=32, clip_dim=32)}, path)
    return path


def tiny_clip(folder: Path) -> Path:
    """A random transformers CLIP folder (model and processor) for CLIPScore."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dpt_t2i.shapes_model.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16)).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def toy_inputs(root: Path) -> dict[str, str]:
    """Step 0's variables: the tiny model, checkpoint and benchmark files under `root`."""
    model = sd21_shaped(root / "sd-2-1-base")
    dataset = root / "T2I-CompBench" / "examples" / "dataset"
    dataset.mkdir(parents=True)
    for category, prompt in PROMPTS.items():
        (dataset / f"{category}_val.txt").write_text(prompt + "\n")
    (root / "evaluation_metadata.jsonl").write_text(json.dumps(GENEVAL) + "\n")
    (root / "CC-500.txt").write_text("a red circle and a blue square\n")
    (root / "coco" / "annotations").mkdir(parents=True)
    write_coco_captions(root / "coco" / "annotations")
    write_images(root / "coco" / "train2014")
    (root / "refcoco").mkdir()
    write_refcoco(root / "refcoco")
    return {"SD21": str(model),
            "CKPT": str(official_checkpoint(model, root / "pytorch_model.bin")),
            "COMPBENCH": str(dataset), "GENEVAL": str(root / "evaluation_metadata.jsonl"),
            "CC500": str(root / "CC-500.txt"), "CLIP": str(tiny_clip(root / "clip")),
            "COCO": str(root / "coco"), "REFCOCO": str(root / "refcoco"),
            "DEVICE": "cpu", "DTYPE": "fp32"}


def stand_in_for_the_evaluators(runs: list[str]) -> None:
    """What T2I-CompBench's evaluators would write under each category folder: one answer
    of 0.5 an image in their vqa_result.json format."""
    for run in runs:
        for category, files in RESULT_FILES.items():
            folder = Path(run) / category
            n = len(list((folder / "samples").iterdir()))
            (folder / files[0]).parent.mkdir(parents=True, exist_ok=True)
            (folder / files[0]).write_text(json.dumps(
                [{"question_id": k, "answer": 0.5} for k in range(n)]))


# ------------------------------------------------------------------------------- the walk


def test_every_guide_command_runs_at_toy_size(tmp_path, monkeypatch, capsys):
    inputs = toy_inputs(tmp_path / "in")
    text = GUIDE.read_text()
    step0 = re.findall(r"```bash\n(.*?)```", text, re.S)[0]
    assert {line.split("=")[0] for line in step0.splitlines() if line} == set(inputs)
    commands = guide_commands(text, inputs)
    assert [c[0] for c in commands] == ["import-official", *["generate"] * 24, "evaluate",
                                        "compbench-table", "probe", "tune", "generate"]
    monkeypatch.chdir(tmp_path)
    outputs = {}
    for args in commands:
        if args[0] == "compbench-table":
            stand_in_for_the_evaluators(args[1:])
        capsys.readouterr()
        assert main(args) == 0, f"dpt {shlex.join(args)}\n{capsys.readouterr().err}"
        outputs[args[0]] = capsys.readouterr().out
    assert outputs["compbench-table"].splitlines()[-3:] == [
        f"| {m} | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |" for m in ("base", "dpt", "dpt-sc")]
    assert "cc500-dpt-sc" in outputs["evaluate"] and "CLIP" in outputs["evaluate"]
    for method in ("base", "dpt", "dpt-sc"):
        for category in RESULT_FILES:
            samples = tmp_path / "compbench" / method / category / "samples"
            assert sorted(p.name for p in samples.iterdir()) == \
                [f"{PROMPTS[category]}_{k:06}.png" for k in range(10)]
        geneval = tmp_path / "geneval" / method / "00000"
        assert json.loads((geneval / "metadata.jsonl").read_text()) == GENEVAL
        assert len(list((geneval / "samples").iterdir())) == 4
    # the imported LoRA changes the images, and self-correction changes them again
    first = {m: (tmp_path / "runs" / m / "color" / "00000.png").read_bytes()
             for m in ("base", "dpt", "dpt-sc")}
    assert len(set(first.values())) == 3
    assert (tmp_path / "runs" / "tune" / "final" / "dpt_config.json").is_file()
    assert len(list((tmp_path / "compbench" / "tuned" / "color" / "samples").iterdir())) == 10
