"""Train the embedded style model (preset `style`) from scratch on a CPU, and write its weights.

    nice -n 19 python -m models.training.train --out models/weights/style

Phases: make the data set (scikit-image photos and procedural scenes, each with its target in
every style), fit the PatchAutoencoder, encode every image once, then train the UNet and the
text encoder together for the few-step img2img regime, and save everything in fp16 in diffusers
layout with `training.json` (command, commit, seed, timings). Sample grids of held-out images
go to `<work-dir>/samples/` as training goes. The command in docs/style-model.md reproduces
the shipped weights.

The denoiser's objective: for a training pair (input latent z, styled latent y) and a style
prompt, noise a source latent to timestep t, x_t = √ᾱ·src + √(1-ᾱ)·n, and make the UNet's
output (an x0 prediction, scheduler `prediction_type="sample"`) match y. Mostly src = z at the
low timesteps img2img uses, so one step restyles the input; sometimes src = y, so a second step
(which sees a noised styled image) keeps the style, and at high timesteps that is plain
denoising of styled images, which txt2img needs. A pixel loss through the frozen decoder keeps
thin lines and block edges sharp.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models.loading import alphas_cumprod
from models.patch_autoencoder import PatchAutoencoder
from models.presets import get_preset
from models.training import prompts
from models.training.autoencoder import pca_initialise, to_tensor, train_autoencoder
from models.training.dataset import held_out_images, make_dataset
from models.training.styles import STYLE_NAMES
from pipelines.stream_diffusion.blending import blend
from pipelines.stream_diffusion.params import NUM_T_INDICES
from pipelines.stream_diffusion.sampler import lcm_timestep

PRESET = "style"
PHOTO = STYLE_NAMES.index("photo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("models/weights/style"), help="where the weights go")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/style-train"), help="data cache, checkpoints, sample grids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=2000, help="training inputs (each with every style)")
    p.add_argument("--size", type=int, default=128, help="side of the stored training images in pixels")
    p.add_argument("--crop", type=int, default=64, help="side of the random crop each step trains on (a multiple of 8)")
    p.add_argument("--workers", type=int, default=2, help="processes making the data set")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--ae-steps", type=int, default=200)
    p.add_argument("--ae-lr", type=float, default=2e-3)
    p.add_argument("--steps", type=int, default=3000, help="denoiser training steps")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop the denoiser early after this long; the learning rate is constant after warm-up, so "
                   "the result equals a run with --steps set to the steps done (which training.json records)")
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--img2img-t-index", type=int, nargs=2, default=[34, 47],
                   help="t_index range (inclusive) the img2img samples are drawn from (t = 999 - 20*i)")
    p.add_argument("--img2img-share", type=float, default=0.75, help="share of samples in the img2img range; the rest use any t")
    p.add_argument("--styled-source-share", type=float, default=0.35, help="share of samples noised from the styled target")
    p.add_argument("--blend-share", type=float, default=0.1, help="share of samples with two blended style prompts")
    p.add_argument("--pixel-loss", type=float, default=1.0, help="weight of the L1 loss through the decoder")
    p.add_argument("--pixel-rows", type=int, default=4, help="batch rows that get the pixel loss")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--sample-every", type=int, default=250, help="steps between sample grids and checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from <work-dir>/checkpoint.pt (written every --sample-every steps) to --steps; "
                   "data order, noise and optimiser state carry on as in one uninterrupted run")
    return p.parse_args(argv)


# Settings that do not change what training computes: a checkpoint may be resumed with others.
RUN_ONLY_SETTINGS = {"out", "work_dir", "steps", "max_minutes", "threads", "workers", "sample_every", "resume"}


def training_settings(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in RUN_ONLY_SETTINGS}


def build_models(seed: int):
    """The preset's architecture (models/configs/style) with fresh weights, and its tokenizer."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    preset = get_preset(PRESET)
    torch.manual_seed(seed)
    tokenizer = prompts.build_word_tokenizer()
    encoder_config = CLIPTextConfig(**preset.config_json("text_encoder"))
    if encoder_config.vocab_size != len(tokenizer):
        raise SystemExit(f"text_encoder.json has vocab_size {encoder_config.vocab_size}, the tokenizer {len(tokenizer)}")
    unet = UNet2DConditionModel.from_config(preset.config_json("unet"))
    return unet, CLIPTextModel(encoder_config), tokenizer, PatchAutoencoder.from_config(preset.config_json("vae"))


class Denoiser(torch.nn.Module):
    """UNet and text encoder trained as one module (one optimiser, one EMA copy)."""

    def __init__(self, unet, text_encoder, tokenizer):
        super().__init__()
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer

    def embed(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids).last_hidden_state

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]


@torch.no_grad()
def encode_all(ae: PatchAutoencoder, data: np.ndarray, batch: int = 64) -> torch.Tensor:
    flat = data.reshape(-1, *data.shape[2:])
    latents = [ae.encode(to_tensor(flat[i : i + batch])).latents.half() for i in tqdm(range(0, len(flat), batch), desc="encode", unit="batch")]
    latents = torch.cat(latents)
    return latents.reshape(*data.shape[:2], *latents.shape[1:])


def timestep_table(num_train_timesteps: int) -> list[int]:
    return [lcm_timestep(i, num_train_timesteps) for i in range(NUM_T_INDICES)]


def make_batch(rng: np.random.Generator, args, latents: torch.Tensor, data: np.ndarray, model: Denoiser, sqrt_abar: torch.Tensor):
    """Noised sources, timesteps, prompt embeddings, and latent and pixel targets for one step,
    on a random crop whose corner sits on the 8-pixel grid (pixel-art blocks stay aligned)."""
    b, num_styles = args.batch, latents.shape[1]
    patch = args.size // latents.shape[-1]
    side = args.crop // patch
    top, left = (int(rng.integers(0, (latents.shape[-1] - side) // 2 + 1)) * 2 for _ in range(2))
    latents = latents[..., top : top + side, left : left + side]
    data = data[:, :, top * patch : (top + side) * patch, left * patch : (left + side) * patch]
    rows = rng.integers(len(latents), size=b)
    style_probs = np.full(num_styles, 1.0)
    style_probs[PHOTO] = 0.4  # keeping the input is the easy task: seen, not dwelt on
    styles = rng.choice(num_styles, size=b, p=style_probs / style_probs.sum())
    texts = [prompts.random_prompt(rng, STYLE_NAMES[s]) for s in styles]
    embeds = model.embed(texts)
    targets = latents[rows, styles].float()
    pixel_targets = data[rows[: args.pixel_rows], styles[: args.pixel_rows]].astype(np.float32)
    for k in range(b):
        if rng.random() >= args.blend_share:
            continue
        other = int(rng.choice([s for s in range(num_styles) if s not in (PHOTO, styles[k])]))
        w = float(rng.uniform(0.25, 0.75))
        other_embed = model.embed([prompts.random_prompt(rng, STYLE_NAMES[other])])[0]
        embeds = embeds.clone()
        embeds[k] = blend([embeds[k], other_embed], [1 - w, w], "slerp")
        targets[k] = (1 - w) * targets[k] + w * latents[rows[k], other].float()
        if k < args.pixel_rows:
            pixel_targets[k] = (1 - w) * pixel_targets[k] + w * data[rows[k], other]
    sources = latents[rows, PHOTO].float()
    styled_source = torch.from_numpy(rng.random(b) < args.styled_source_share)
    sources[styled_source] = targets[styled_source]
    lo, hi = args.img2img_t_index
    index = np.where(rng.random(b) < args.img2img_share, rng.integers(lo, hi + 1, size=b), rng.integers(0, NUM_T_INDICES, size=b))
    t = torch.tensor([timestep_table(len(sqrt_abar))[i] for i in index])
    alpha = sqrt_abar[t].view(-1, 1, 1, 1)
    noise = torch.from_numpy(rng.standard_normal(sources.shape, dtype=np.float32))
    x_t = alpha * sources + (1 - alpha**2).sqrt() * noise
    return x_t, t, embeds, targets, to_tensor(pixel_targets.round().astype(np.uint8))


@torch.no_grad()
def sample_grid(model: Denoiser, ae: PatchAutoencoder, sqrt_abar: torch.Tensor, images: list[np.ndarray], t_index: int, path: Path) -> None:
    """Held-out inputs (rows) restyled in one step at `t_index` (columns: input, each style)."""
    t = timestep_table(len(sqrt_abar))[t_index]
    alpha = sqrt_abar[t]
    noise = torch.randn((1, ae.config.latent_channels, *(s // ae.config.patch_size for s in images[0].shape[:2])),
                        generator=torch.Generator().manual_seed(0))
    embeds = model.embed(STYLE_NAMES)
    rows = []
    for image in images:
        z = ae.encode(to_tensor((image * 255).round().astype(np.uint8))[None]).latents
        x_t = (alpha * z + (1 - alpha**2).sqrt() * noise).expand(len(STYLE_NAMES), -1, -1, -1)
        out = ae.decode(model(x_t, torch.full((len(STYLE_NAMES),), t), embeds)).sample.clamp(-1, 1)
        row = ((out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        rows.append(np.concatenate([(image * 255).round().astype(np.uint8), *row], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def lr_at(step: int, args) -> float:
    """Linear warm-up, then constant: the EMA weights do the averaging a decay would."""
    warmup = 200
    return args.lr * min(1.0, (step + 1) / warmup)


def train_denoiser(model: Denoiser, ema: Denoiser, ae: PatchAutoencoder, latents, data, sqrt_abar, args) -> tuple[list[dict], float]:
    """Train to --steps (or --max-minutes); the log, and the seconds spent over every resumed part."""
    rng = np.random.default_rng(args.seed + 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    held_out = held_out_images(args.size)
    ae.requires_grad_(False)
    log, window, first, spent = [], [], 0, 0.0
    checkpoint_path = args.work_dir / "checkpoint.pt"
    if args.resume and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        if checkpoint["settings"] != training_settings(args):
            raise SystemExit(f"{checkpoint_path} was trained with other settings: {checkpoint['settings']}")
        model.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        rng.bit_generator.state = checkpoint["rng"]
        log, first, spent = checkpoint["log"], checkpoint["step"], checkpoint["seconds"]
    started = time.monotonic()
    deadline = started + 60 * args.max_minutes if args.max_minutes else math.inf
    for step in (bar := tqdm(range(first, args.steps), desc="denoiser", unit="step", initial=first, total=args.steps)):
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, args)
        x_t, t, embeds, targets, pixel_targets = make_batch(rng, args, latents, data, model, sqrt_abar)
        pred = model(x_t, t, embeds)
        latent_loss = F.mse_loss(pred, targets)
        loss = latent_loss
        if args.pixel_loss > 0:
            pixels = ae.decode(pred[: args.pixel_rows]).sample
            loss = loss + args.pixel_loss * F.l1_loss(pixels, pixel_targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))  # warm-up: forget the random start quickly
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - decay)
        window.append((loss.item(), latent_loss.item()))
        bar.set_postfix(loss=f"{np.mean([w[0] for w in window[-50:]]):.4f}", latent=f"{np.mean([w[1] for w in window[-50:]]):.4f}")
        last = step + 1 == args.steps or time.monotonic() > deadline
        if (step + 1) % args.sample_every == 0 or last:
            loss_mean, latent_mean = np.mean(window, axis=0)
            log.append({"step": step + 1, "loss": round(float(loss_mean), 5), "latent_mse": round(float(latent_mean), 5)})
            window = []
            ema.eval()
            for t_index in (40, 45):
                sample_grid(ema, ae, sqrt_abar, held_out, t_index, args.work_dir / "samples" / f"step{step + 1:06d}-t{t_index}.png")
            torch.save({"settings": training_settings(args), "step": step + 1, "model": model.state_dict(),
                        "ema": ema.state_dict(), "optimiser": optimiser.state_dict(), "rng": rng.bit_generator.state,
                        "log": log, "seconds": spent + time.monotonic() - started}, checkpoint_path)
        if last:
            break
    return log, spent + time.monotonic() - started


def save_weights(out: Path, ema: Denoiser, ae: PatchAutoencoder, record: dict) -> None:
    from diffusers import DDPMScheduler

    out.mkdir(parents=True, exist_ok=True)
    ema.unet.half().save_pretrained(out / "unet")
    ema.text_encoder.half().save_pretrained(out / "text_encoder")
    ema.tokenizer.save_pretrained(out / "tokenizer")
    ae.half().save_pretrained(out / "tiny_vae")
    DDPMScheduler.from_config(get_preset(PRESET).config_json("scheduler")).save_pretrained(out / "scheduler")
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+local-changes" if git("status", "--porcelain", "--", "models") else "")


def fit_autoencoder(ae: PatchAutoencoder, data: np.ndarray, args) -> tuple[PatchAutoencoder, dict]:
    """PCA initialisation and a short training run, cached in the work folder (a rerun that only
    changes denoiser settings starts from the same autoencoder)."""
    cache = args.work_dir / f"autoencoder-seed{args.seed}-n{args.samples}-s{args.size}-steps{args.ae_steps}"
    if (cache / "record.json").exists():
        return PatchAutoencoder.from_pretrained(cache), json.loads((cache / "record.json").read_text())
    explained = pca_initialise(ae, to_tensor(data[: min(len(data), 500)].reshape(-1, *data.shape[2:])), seed=args.seed)
    psnr = train_autoencoder(ae, data, args.ae_steps, 16, args.ae_lr, args.seed)
    record = {"pca_variance_explained": round(explained, 4), "autoencoder_psnr_db_last_100": round(float(np.mean(psnr[-100:])), 2)}
    ae.save_pretrained(cache)
    (cache / "record.json").write_text(json.dumps(record))
    return ae, record


def _reproducing(argv: list[str], steps: int) -> list[str]:
    """The arguments that give the same weights with no time limit: --steps set to the steps done."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--steps", "--max-minutes"):
            skip = True
            continue
        if a != "--resume" and not a.startswith(("--steps=", "--max-minutes=")):
            out.append(a)
    return out + ["--steps", str(steps)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    commit = git_commit()  # the code that trains, not whatever is checked out when it ends
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.monotonic()

    def lap(name: str) -> None:
        nonlocal started
        timings[name] = round(time.monotonic() - started, 1)
        started = time.monotonic()

    data = make_dataset(args.seed, args.samples, args.size, args.workers, args.work_dir)
    lap("data_s")
    unet, text_encoder, tokenizer, ae = build_models(args.seed)
    ae, ae_record = fit_autoencoder(ae, data, args)
    lap("autoencoder_s")
    latents = encode_all(ae, data)
    lap("encode_s")
    model = Denoiser(unet, text_encoder, tokenizer)
    ema = copy.deepcopy(model).requires_grad_(False)
    sqrt_abar = alphas_cumprod(get_preset(PRESET).config_json("scheduler")).float().sqrt()
    log, timings["denoiser_s"] = train_denoiser(model, ema, ae, latents, data, sqrt_abar, args)
    timings["denoiser_s"] = round(timings["denoiser_s"], 1)
    steps_done = log[-1]["step"]
    command = list(argv if argv is not None else sys.argv[1:])
    record = {
        "command": "nice -n 19 python -m models.training.train " + shlex.join(_reproducing(command, steps_done)),
        "steps": steps_done,
        "commit": commit,
        "seed": args.seed,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": f"{args.samples} crops of {args.size}px: scikit-image sample photos (held out: chelsea, coffee) "
        "and procedural scenes, each with its target in every style (models/training/styles.py)",
        **ae_record,
        "denoiser_log": log,
        "wall_time_s": timings,
        "torch_threads": args.threads,
    }
    save_weights(args.out, ema, ae, record)
    print(json.dumps({"wall_time_s": timings, "out": str(args.out)}))


if __name__ == "__main__":
    main()
