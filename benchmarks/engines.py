"""Engines side by side: eager PyTorch, torch.compile and ONNX Runtime, and the same img2img work
run by StreamDiffusion 0.1.1 (the authors' PyPI release) on the same weights.

    python -m benchmarks.engines                                  # CPU, tiny preset: 256² and 512², cfg self and none
    python -m benchmarks.engines --sizes 256 --engines eager,onnx --no-peer

Two tables, each a median of CPU time over rounds that alternate the contenders (so a change of
load on a shared machine hits them alike), with the ratios taken from the same rounds:
1. every component per engine: the UNet at a stream batch of 2 rows, the tiny VAE's encoder and
   decoder, the text encoder, the causal video transformer (small-video) writing into and
   attending over its rolling KV cache, and the streaming video VAEs' steady chunk (tiny-video's
   tiny VAE, the Wan2.1 VAE) carrying their causal state;
2. one img2img stream (Stream Batch, t_index_list [32, 45]) per engine, and StreamDiffusion on the
   same work: our weights saved with `save_pretrained`, loaded by StreamDiffusion in a venv of its
   own (it pins diffusers 0.24), which this benchmark creates under the user cache the first time.
CPU time, not wall time: both sides run one compute thread, and a busy machine stretches wall
time far more than CPU time. Engines are built (or loaded from the cache) before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, moving_pictures, progress
from models.engines.cache import engine_cache_dir
from models.engines.kinds import EngineKind
from models.loading import load_diffusion_models
from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline
from streaming.frames import VideoFrame

PEER_PACKAGES = ["streamdiffusion==0.1.1", "diffusers==0.24.0", "transformers==4.44.2", "huggingface_hub==0.25.2", "accelerate<1.2"]
PEER_SCRIPT = Path(__file__).with_name("streamdiffusion_peer.py")
T_INDEX_LIST = [32, 45]
PROMPT = "a watercolor landscape"


def alternating(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each contender's measurement over `rounds` rounds, the order rotating each round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(contenders[name]())
    return {name: statistics.median(values) for name, values in samples.items()}


def cpu_ms_per_call(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    def measure() -> float:
        started = time.process_time()
        for _ in range(calls):
            fn()
        return (time.process_time() - started) * 1e3 / calls

    return measure


def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


# ---- components -------------------------------------------------------------------------------------


def component_rows(size: int, engines: list[str], cache: Path, rounds: int) -> list[str]:
    models = {e: load_diffusion_models("tiny", "cpu", engine=e, engine_cache=cache) for e in engines}
    eager = models[engines[0]]
    latent = size // eager.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    latents = torch.randn(2, eager.latent_channels, latent, latent, generator=generator)
    embeds = eager.encode_prompt([PROMPT]).map(lambda t: t.expand(2, -1, -1))
    timesteps = torch.tensor([359, 99])
    calls = {
        "unet (2 rows)": lambda m: m.predict(latents, timesteps, embeds),
        "vae encoder": lambda m: m.encode_images(images),
        "vae decoder": lambda m: m.decode_latents(latents[:1]),
        "text encoder": lambda m: m.encode_prompt([PROMPT]),
    }
    rows = []
    with torch.no_grad():
        for name, call in calls.items():
            progress(f"{size}²: {name}: building or loading each engine, then {rounds} rounds")
            for m in models.values():
                call(m)  # builds the engine, or loads it from the cache
            medians = alternating({e: cpu_ms_per_call(lambda m=m: call(m), 3) for e, m in models.items()}, rounds)
            rows.append(_row([f"{size}²", name], medians, engines))
            print(rows[-1], flush=True)
    return rows


def video_rows(engines: list[str], cache: Path, rounds: int) -> list[str]:
    """The causal transformer of small-video over its rolling KV cache, 256², one row, chunks of
    one latent frame (ONNX has no engine for it: a cache written between layers)."""
    from models.video.eviction import FifoEviction
    from models.video.loading import load_video_models
    from models.video.positions import AbsolutePositions
    from models.video.transformer import CachedRows

    kinds = [e for e in engines if e in ("eager", "compile")]
    models = {e: load_video_models("small-video", "cpu", engine=e, engine_cache=cache) for e in kinds}

    def chunk_caller(m):
        cache_ = m.new_cache(1, 256, 256, 1, 2, FifoEviction(), AbsolutePositions())
        text = m.text_kv(m.prompt_states(PROMPT))
        h, w = m.latent_size(256, 256)
        x = torch.randn(1, m.latent_channels, 1, h, w, generator=torch.Generator().manual_seed(0))
        frame = iter(range(10**9))

        def call():
            plan = cache_.begin_write(range(1), [[next(frame)]])
            return m.transformer.forward_cached(x, torch.full((1, 1), 500.0), text, [CachedRows(cache_, plan, 0)])

        return call

    with torch.no_grad():
        callers = {e: chunk_caller(m) for e, m in models.items()}
        for call in callers.values():
            call()
        medians = alternating({e: cpu_ms_per_call(c, 3) for e, c in callers.items()}, rounds)
    row = _row(["256²", "video transformer (small-video, KV cache)"], medians, engines)
    print(row, flush=True)
    return [row]


def video_vae_rows(engines: list[str], cache: Path, rounds: int) -> list[str]:
    """The streaming video VAEs' steady chunk, one stream: encoding four pictures into one latent
    frame, and decoding one into four, with the causal state carried from call to call; the tiny
    VAE of tiny-video at 256², and the Wan2.1 VAE (wan-causal-1.3b's, seeded random weights: the
    same shapes and FLOPs) at 64²."""
    from diffusers import AutoencoderKLWan

    from models.engines.video_vae import compile_video_vae
    from models.video.loading import load_video_models
    from models.video.presets import get_video_preset
    from models.video.vae import WanStreamingVAE

    kinds = [e for e in engines if e in ("eager", "compile")]
    wan_config = {k: v for k, v in get_video_preset("wan-causal-1.3b").config_json("vae").items() if k != "kind"}

    def wan_vae(kind: str) -> WanStreamingVAE:
        torch.manual_seed(0)
        vae = WanStreamingVAE(AutoencoderKLWan(**wan_config).eval().requires_grad_(False))
        compile_video_vae(vae, f"video_vae={kind}", torch.device("cpu"), torch.float32, cache)
        return vae

    contenders = {
        ("tiny-video", 256): lambda kind: load_video_models("tiny-video", "cpu", engine=f"eager,video_vae={kind}", engine_cache=cache).vae,
        ("Wan2.1 VAE", 64): wan_vae,
    }
    rows = []
    for (name, size), load_vae in contenders.items():
        vaes = {e: load_vae(e) for e in kinds}
        generator = torch.Generator().manual_seed(0)
        first, group = (torch.rand(1, 3, n, size, size, generator=generator) * 2 - 1 for n in (1, 4))
        with torch.no_grad():
            latent = vaes["eager"].encode(first, vaes["eager"].new_state())
            callers = {}
            for e, vae in vaes.items():
                encoded, decoded = vae.new_state(), vae.new_state()
                vae.encode(first, encoded)  # a stream's first chunk; builds the engines
                vae.decode(latent, decoded)
                callers[f"{e} encoder"] = lambda vae=vae, state=encoded: vae.encode(group, state)
                callers[f"{e} decoder"] = lambda vae=vae, state=decoded: vae.decode(latent, state)
            for call in callers.values():
                call()
            medians = alternating({n: cpu_ms_per_call(call, 3) for n, call in callers.items()}, rounds)
        for part in ("encoder", "decoder"):
            what = "4 pictures -> 1 latent" if part == "encoder" else "1 latent -> 4 pictures"
            rows.append(_row([f"{size}²", f"video VAE {part} ({name}, {what})"], {e: medians[f"{e} {part}"] for e in kinds}, engines))
            print(rows[-1], flush=True)
    return rows


def _row(head: list[str], medians: dict[str, float], engines: list[str]) -> str:
    base = medians.get("eager")
    cells = [f"{medians[e]:.1f}" if e in medians else "–" for e in engines]
    ratios = [f"{base / medians[e]:.2f}x" if e in medians and base else "–" for e in engines if e != "eager"]
    return "| " + " | ".join([*head, *cells, *ratios, load()]) + " |"


# ---- the img2img stream, ours and StreamDiffusion's ----------------------------------------------------


class Peer:
    """StreamDiffusion in its own process and venv, answering one JSON line per request."""

    def __init__(self, python: Path, log: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen([str(python), str(PEER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=log.open("w"), text=True, env=env)
        self.log = log

    def ask(self, **request) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"StreamDiffusion's process ended; its log: {self.log}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(30)


def peer_python(venv: Path) -> Path:
    """The Python of StreamDiffusion's venv, created and filled the first time (a few minutes)."""
    python = venv / "bin" / "python"
    check = "import streamdiffusion, diffusers; assert diffusers.__version__ == '0.24.0'"
    if python.exists() and subprocess.run([str(python), "-c", check], capture_output=True).returncode == 0:
        return python
    print(f"# installing StreamDiffusion 0.1.1 into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the same torch as ours, so the comparison is of the code
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES, torch_pin], check=True)
    return python


def save_for_peer(models, folder: Path) -> None:
    from diffusers import DDPMScheduler

    models.unet.save_pretrained(folder / "unet")
    models.text_encoders[0].save_pretrained(folder / "text_encoder")
    models.tokenizers[0].save_pretrained(folder / "tokenizer")
    models.vae.save_pretrained(folder / "tiny_vae")
    DDPMScheduler(**models.preset.config_json("scheduler")).save_pretrained(folder / "scheduler")


def stream_rows(sizes: list[int], cfgs: list[str], engines: list[str], cache: Path, rounds: int, frames: int,
                peer: Peer | None, work: Path) -> list[str]:
    pipes = {e: StreamDiffusionPipeline(load_diffusion_models("tiny", "cpu", engine=e, engine_cache=cache)) for e in engines}
    if peer is not None:
        save_for_peer(pipes[engines[0]].models, work / "weights")
    rows = []
    for size in sizes:
        pictures = moving_pictures(size, size, frames)
        np.save(work / "frames.npy", np.stack(pictures))
        for cfg in cfgs:
            progress(f"{size}²: a stream with cfg {cfg} on each engine")
            params = {"width": size, "height": size, "prompt": PROMPT, "t_index_list": T_INDEX_LIST, "cfg_type": cfg,
                      "guidance_scale": 1.2, "delta": 1.0, "seed": 0}
            contenders = {e: _our_stream(pipe, params, pictures) for e, pipe in pipes.items()}
            if peer is not None:
                peer.ask(op="setup", weights=str(work / "weights"), frames=str(work / "frames.npy"), threads=1,
                         **{k: params[k] for k in ("width", "height", "t_index_list", "cfg_type", "guidance_scale", "delta",
                                                   "prompt", "seed")})
                contenders["StreamDiffusion"] = lambda: peer.ask(op="run", frames=frames)["cpu_s"] * 1e3 / frames
            medians = alternating(contenders, rounds)
            best = min((e for e in engines), key=medians.__getitem__)
            cells = [f"{medians[e]:.1f}" for e in engines] + ([f"{medians['StreamDiffusion']:.1f}"] if peer else [])
            ratios = [f"{medians['eager'] / medians[best]:.2f}x ({best})" if "eager" in medians else "–"]
            if peer is not None:
                ratios += [f"{medians['StreamDiffusion'] / medians[best]:.2f}x",
                           f"{medians['StreamDiffusion'] / medians['eager']:.2f}x" if "eager" in medians else "–"]
            rows.append("| " + " | ".join([f"{size}²", cfg, *cells, *ratios, load()]) + " |")
            print(rows[-1], flush=True)
    return rows


def _our_stream(pipe: StreamDiffusionPipeline, params: dict, pictures: list[np.ndarray]) -> Callable[[], float]:
    """ms of CPU per frame of one img2img stream, picture in to picture out (pipe already full)."""
    state = pipe.new_state(params)
    count = iter(range(10**9))

    def step():
        k = next(count)
        return pipe.step([(state, VideoFrame(pictures[k % len(pictures)], k))])

    with torch.no_grad():
        for _ in range(len(T_INDEX_LIST) + 1):
            step()  # fills the pipe, and builds the engines of this size
    return cpu_ms_per_call(step, len(pictures))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512", help="square sides in pixels, comma-separated")
    parser.add_argument("--cfg", default="self,none", help="cfg types of the stream table, comma-separated")
    parser.add_argument("--engines", default="eager,onnx,compile", help="engines to compare (eager first: ratios are against it)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=8, help="frames per stream measurement")
    parser.add_argument("--threads", type=int, default=1, help="compute threads on both sides")
    parser.add_argument("--no-peer", action="store_true", help="leave StreamDiffusion out")
    parser.add_argument("--peer-venv", type=Path, default=engine_cache_dir().parent / "peers" / "streamdiffusion-0.1.1")
    parser.add_argument("--engine-cache", type=Path, default=engine_cache_dir())
    parser.add_argument("--no-components", action="store_true", help="only the stream table")
    parser.add_argument("--video-vae-only", action="store_true", help="only the video VAE rows of the component table")
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    if engines[0] != EngineKind.EAGER.value:
        parser.error("--engines must start with eager: the ratios are against it")
    sizes, cfgs = [int(s) for s in args.sizes.split(",")], args.cfg.split(",")
    torch.set_num_threads(args.threads)

    print(f"# engines benchmark: preset tiny, fp32, {machine()}; load average {load()} at start\n", flush=True)
    if not args.no_components:
        others = [e for e in engines if e != "eager"]
        print("| size | component | " + " | ".join(f"{e} ms" for e in engines) + " | " +
              " | ".join(f"{e} vs eager" for e in others) + " | load |")
        print("|" + "---|" * (3 + len(engines) + len(others)))
        if not args.video_vae_only:
            for size in sizes:
                component_rows(size, engines, args.engine_cache, args.rounds)
            video_rows(engines, args.engine_cache, args.rounds)
        video_vae_rows(engines, args.engine_cache, args.rounds)
        print()
        if args.video_vae_only:
            print(f"# load average {load()} at the end", flush=True)
            return

    with tempfile.TemporaryDirectory(prefix="latentcast-engines-") as work:
        peer = None
        if not args.no_peer:
            peer = Peer(peer_python(args.peer_venv), Path(work) / "streamdiffusion.log")
        head = ["size", "cfg", *(f"{e} ms/frame" for e in engines)] + (["StreamDiffusion ms/frame"] if peer else [])
        head += ["best vs eager"] + (["StreamDiffusion / best", "StreamDiffusion / eager"] if peer else []) + ["load"]
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
        try:
            stream_rows(sizes, cfgs, engines, args.engine_cache, args.rounds, args.frames, peer, Path(work))
        finally:
            if peer is not None:
                peer.close()
    print(f"\n# load average {load()} at the end", flush=True)


if __name__ == "__main__":
    main()
