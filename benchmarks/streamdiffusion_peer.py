"""StreamDiffusion's side of `benchmarks/engines.py`, run by the Python of StreamDiffusion's own venv.

It imports nothing of latentcast (that venv holds diffusers 0.24, which StreamDiffusion 0.1.1
pins). It reads one JSON request a line on stdin and answers one JSON line on stdout:

    {"op": "setup", "weights": DIR, "frames": NPY, "width": W, "height": H, "t_index_list": [...],
     "cfg_type": "self", "guidance_scale": 1.2, "delta": 1.0, "prompt": "...", "seed": 0, "threads": 1}
    {"op": "run", "frames": N}      -> {"cpu_s": ..., "wall_s": ...}  (N img2img frames, like ours)
    {"op": "quit"}

DIR holds the weights latentcast saved with `save_pretrained`: unet/, text_encoder/, tokenizer/,
tiny_vae/, scheduler/. Each frame goes in as a picture and comes out as uint8 pixels, as ours do.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch


class _NoCudaEvent:
    """StreamDiffusion times every call with CUDA events; on a CPU build there are none."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args):
        pass

    def elapsed_time(self, other):
        return 0.0


def setup(request: dict):
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file
    from streamdiffusion import StreamDiffusion
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    torch.set_num_threads(request["threads"])
    torch.cuda.Event = _NoCudaEvent
    torch.cuda.synchronize = lambda *args: None
    root = Path(request["weights"])
    tiny_vae = AutoencoderTiny.from_pretrained(root / "tiny_vae")
    # The pipeline's constructor reads the scale factor from a full VAE's config; the tiny VAE
    # replaces it right after, as StreamDiffusion's own examples do.
    stand_in = AutoencoderKL(block_out_channels=[4] * len(tiny_vae.config.decoder_block_out_channels), norm_num_groups=2,
                             latent_channels=tiny_vae.config.latent_channels,
                             down_block_types=["DownEncoderBlock2D"] * len(tiny_vae.config.decoder_block_out_channels),
                             up_block_types=["UpDecoderBlock2D"] * len(tiny_vae.config.decoder_block_out_channels))
    # transformers 5 saves CLIP's text model without its `text_model.` prefix and names its tokenizer
    # class anew; the 4.x of this venv reads both under their old names.
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))
    weights = load_file(root / "text_encoder" / "model.safetensors")
    text_encoder.load_state_dict({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in weights.items()})
    pipe = StableDiffusionPipeline(
        vae=stand_in, text_encoder=text_encoder.eval(), tokenizer=PreTrainedTokenizerFast.from_pretrained(root / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(root / "unet"),
        scheduler=DDPMScheduler.from_pretrained(root / "scheduler"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    stream = StreamDiffusion(pipe, t_index_list=request["t_index_list"], torch_dtype=torch.float32, width=request["width"],
                             height=request["height"], cfg_type=request["cfg_type"])
    stream.vae = tiny_vae
    stream.prepare(request["prompt"], num_inference_steps=50, guidance_scale=request["guidance_scale"], delta=request["delta"],
                   seed=request["seed"])
    frames = [PIL.Image.fromarray(f) for f in np.load(request["frames"])]
    return stream, frames


def run(stream, frames: list, count: int) -> dict:
    cpu, wall = time.process_time(), time.perf_counter()
    for k in range(count):
        out = stream(frames[k % len(frames)])
        ((out.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def main() -> None:
    stream, frames = None, []
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        if request["op"] == "setup":
            stream, frames = setup(request)
            with torch.no_grad():
                run(stream, frames, len(request["t_index_list"]) + 1)  # the pipe fills, lazy initialisation is paid
            answer = {"ok": True, "versions": _versions()}
        else:
            answer = run(stream, frames, request["frames"])
        print(json.dumps(answer), flush=True)


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("streamdiffusion", "diffusers", "transformers", "torch")}


if __name__ == "__main__":
    main()
