"""Engines (models.engines): every engine equals eager on the tiny presets, the stream batch run
through an engine still equals sequential denoising, the disk cache rebuilds what is stale or
corrupt and never uses it, a live stream never waits for a build, and the defaults (engine per
device, compute threads) are what the docs say.

Tolerance: ONNX Runtime and inductor sum in other orders than eager PyTorch, so float32 outputs
of order 1 differ by ~1e-6; the checks allow 1e-4 absolute (a wrong graph is off by ~1).
Engines are built into a test-scoped cache folder. torch.compile's own cache (inductor's, keyed
by the graph and the versions) stays where torch keeps it, so a second run compiles nothing.
"""

import hashlib
import json
import logging
import os
import threading
import time

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_stream_diffusion import assert_images_close, clip, decode, run_stream

from app.settings import Settings
from models.engines import threads as engine_threads
from models.engines.buckets import Bucket, cap_for, caps_up_to, pad_rows
from models.engines.cache import META, file_digest
from models.engines.component import BuildPolicy, build_for_streams, collect_engines
from models.engines.kinds import EngineChoice, EngineKind, EngineSpecError
from models.engines.onnx_runtime import MODEL_FILE
from models.loading import load_diffusion_models
from models.video.eviction import FifoEviction
from models.video.loading import load_video_models
from models.video.positions import AbsolutePositions
from models.video.transformer import CachedRows
from pipelines.registry import ModelOptions, load_pipeline
from pipelines.stream_diffusion.reference import denoise_sequential
from streaming.frames import VideoFrame
from streaming.worker import ComputeWorker

CPU = torch.device("cpu")
ATOL = 1e-4


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module", autouse=True)
def inductor_cache_where_torch_keeps_it():
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
        yield


def models_pair(preset, kind, cache):
    return load_diffusion_models(preset, "cpu"), load_diffusion_models(preset, "cpu", engine=kind, engine_cache=cache)


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def run_every_component(eager, engine, rows, size=64):
    """Each DiffusionModels call on both, compared; `rows` rows (prompts, images, UNet rows)."""
    torch.manual_seed(rows)
    prompts = ["a cat", "a dog", "a boat", "a tree"][:rows]
    embeds, got = eager.encode_prompt(prompts), engine.encode_prompt(prompts)
    close(got.hidden, embeds.hidden)
    if embeds.pooled is not None:
        close(got.pooled, embeds.pooled)
    images = torch.rand(rows, 3, size, size) * 2 - 1
    latents = eager.encode_images(images)
    close(engine.encode_images(images), latents)
    timesteps = torch.tensor([999, 359, 99, 19])[:rows]
    close(engine.predict(latents, timesteps, embeds), eager.predict(latents, timesteps, embeds))
    close(engine.decode_latents(latents), eager.decode_latents(latents))


# ---- equivalence ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "tiny-sdxl", "style"])
def test_onnx_engines_equal_eager_for_any_row_count(preset, engine_cache):
    eager, onnx = models_pair(preset, "onnx", engine_cache)
    for rows in (1, 3):
        run_every_component(eager, onnx, rows)
    for component in (onnx.engines.unet, onnx.engines.vae_encoder, onnx.engines.vae_decoder, *onnx.engines.text_encoders):
        assert component.kind is EngineKind.ONNX
        assert [b.cap for b in component.built] == [None]  # one engine served both row counts


def test_compiled_engines_equal_eager_with_rows_padded_to_their_bucket(engine_cache):
    eager, compiled = models_pair("tiny", "unet=compile,vae=compile,text_encoder=eager", engine_cache)
    torch.manual_seed(0)
    embeds = eager.encode_prompt(["a cat", "a dog"])
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    latents = eager.encode_images(images)
    close(compiled.encode_images(images), latents)  # 3 rows run in the 4-row engine
    close(compiled.decode_latents(latents), eager.decode_latents(latents))
    t = torch.tensor([359, 99])
    close(compiled.predict(latents[:2], t, embeds), eager.predict(latents[:2], t, embeds))
    assert [b.cap for b in compiled.engines.vae_encoder.built] == [4]
    assert [b.cap for b in compiled.engines.unet.built] == [2]


def test_stream_batch_through_onnx_engines_equals_sequential_and_eager(engine_cache):
    options = {"preset": "tiny", "engine_cache": engine_cache}
    onnx, eager = (load_pipeline("stream-diffusion", ModelOptions(**options, engine=e)) for e in ("onnx", "eager"))
    params = {"width": 64, "height": 64, "prompt": "a cat", "negative_prompt": "blurry", "cfg_type": "full", "guidance_scale": 1.8,
              "t_index_list": [10, 30, 45]}
    frames = clip(6)
    state = onnx.new_state(params)
    outputs = run_stream(onnx, state, frames)
    plain = run_stream(eager, eager.new_state(params), frames)
    assert onnx.models.engines.unet.built, "the UNet ran eager: the test would prove nothing"
    for k in range(2, 6):
        assert_images_close(outputs[k].image, decode(onnx, denoise_sequential(onnx, state, frames[k])))
        assert_images_close(outputs[k].image, plain[k].image)


def run_chunks(models, rows, chunks=6, size=64):
    """`chunks` chunks of 2 latent frames through forward_cached, the cache rolling (1 sink, 2 in
    the window); returns the flows and the cache."""
    cache = models.new_cache(rows, size, size, 1, 2, FifoEviction(), AbsolutePositions())
    text = models.text_kv(models.prompt_states("a cat")).expand(rows)
    h, w = models.latent_size(size, size)
    generator = torch.Generator().manual_seed(0)
    flows = []
    for k in range(chunks):
        plan = cache.begin_write(range(rows), [[2 * k, 2 * k + 1]] * rows)
        x = torch.randn(rows, models.latent_channels, 2, h, w, generator=generator)
        with torch.no_grad():
            flows.append(models.transformer.forward_cached(x, torch.full((rows, 2), 500.0 - 50 * k), text, [CachedRows(cache, plan, 0)]))
    return flows, cache


def test_compiled_video_transformer_equals_eager_over_the_kv_cache(engine_cache):
    eager = load_video_models("tiny-video", "cpu")
    compiled = load_video_models("tiny-video", "cpu", engine="compile", engine_cache=engine_cache)
    expected, expected_cache = run_chunks(eager, rows=1)
    flows, cache = run_chunks(compiled, rows=1)
    for a, b in zip(flows, expected):
        close(a, b)
    close(cache.k, expected_cache.k)  # the keys and values the compiled graph handed to the cache
    close(cache.v, expected_cache.v)
    assert [t.frame for t in cache.tables] == [t.frame for t in expected_cache.tables]


def video_pipeline_against_eager(engine: str, engine_cache, steps: int, steady_chunks: int) -> tuple[list, int]:
    """tiny-video's pipeline with `engine` beside an eager one on the same pictures: every picture
    equal within one level. Returns the engines built and how many pictures came out."""
    options = {"preset": "tiny-video", "engine_cache": engine_cache}
    with collect_engines() as engines:
        compiled = load_pipeline("rolling-kv-video", ModelOptions(**options, engine=engine))
    eager = load_pipeline("rolling-kv-video", ModelOptions(**options, engine="eager"))
    params = {"prompt": "oil painting", "steps": steps, "width": 64, "height": 64}
    count = 5 + steady_chunks * 4  # the first chunk's pictures, then four per latent frame
    pictures = [(torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(k)) * 255).byte().numpy() for k in range(count)]
    states = compiled.new_state(params), eager.new_state(params)
    produced = 0
    for k, picture in enumerate(pictures):
        ours, theirs = (p.step([(s, VideoFrame(picture, k))])[0].frames for p, s in zip((compiled, eager), states))
        assert [f.frame_id for f in ours] == [f.frame_id for f in theirs]
        for a, b in zip(ours, theirs):
            assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
        produced += len(ours)
    return engines, produced


def test_an_export_while_another_thread_compiles_and_runs_models_disturbs_neither(tmp_path):
    """Tracing is process-wide state in torch: an ONNX export traced in the server's process while
    another thread compiles (another pipeline's engines warming up) and steps a stream broke one or
    the other (here, before the export moved to a child process: `KeyError('custom')` in the
    compiling thread within seconds). The export runs in a child process instead."""
    # Both built before the other thread starts: dynamo saves and restores the global RNG while it
    # traces, and the tiny preset's weights are seeded from it. The engine is built on first call.
    eager = load_diffusion_models("tiny", "cpu")
    onnx = load_diffusion_models("tiny", "cpu", engine="unet=onnx", engine_cache=tmp_path)
    embeds = eager.encode_prompt(["a cat", "a dog"])
    timesteps = torch.tensor([359, 99])
    expected = eager.encode_prompt(["a cat"]).hidden
    stop, failures, calls = threading.Event(), [], [0]
    inputs = torch.Generator().manual_seed(0)

    def other_pipeline():
        while not stop.is_set():
            calls[0] += 1
            try:
                compiled = torch.compile(lambda x, k=calls[0]: torch.sin(x) * k + x.cos(), backend="aot_eager")
                compiled(torch.randn(3, calls[0] % 5 + 1, generator=inputs))
                close(eager.encode_prompt(["a cat"]).hidden, expected)
            except Exception as err:  # noqa: BLE001 - recorded: the assertion below names it
                failures.append(repr(err))

    runner = threading.Thread(target=other_pipeline)
    runner.start()
    try:
        close(onnx.predict(LATENTS, timesteps, embeds), eager.predict(LATENTS, timesteps, embeds))
    finally:
        stop.set()
        runner.join()
    assert onnx.engines.unet.built and calls[0] > 1
    assert not failures, failures[:3]


def test_video_stream_batch_through_the_compiled_transformer_equals_eager(engine_cache):
    engines, _ = video_pipeline_against_eager("compile", engine_cache, steps=3, steady_chunks=4)
    (engine,) = [e for e in engines if e.component == "video_transformer"]  # `compile` compiles the video VAE too
    assert 4 in [b.cap for b in engine.built]  # 3 stream-batch rows ran padded to 4, the padded row touching no cache


# ---- the disk cache -------------------------------------------------------------------------------


def decoder_engine(cache_dir, policy=BuildPolicy.NOW):
    models = load_diffusion_models("tiny", "cpu", engine="vae_decoder=onnx", engine_cache=cache_dir)
    models.engines.vae_decoder.build_policy = policy
    return models, models.engines.vae_decoder


def entry_of(engine):
    (bucket,) = engine.built
    return next(p.parent for p in engine.cache.root.rglob(META) if json.loads(p.read_text())["key"]["bucket"] == bucket.describe())


LATENTS = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("damage", ["other-model", "truncated", "stale", "unreadable-meta", "consistent-garbage"])
def test_a_stale_or_corrupt_entry_is_built_again_and_never_used(tmp_path, damage, caplog):
    models, engine = decoder_engine(tmp_path)
    expected = models.decode_latents(LATENTS)
    entry = entry_of(engine)
    model, meta = entry / MODEL_FILE, json.loads((entry / META).read_text())
    if damage == "other-model":  # a valid ONNX file of another component: it would open and run, wrongly
        other = load_diffusion_models("tiny", "cpu", engine="vae_encoder=onnx", engine_cache=tmp_path)
        other.encode_images(torch.zeros(1, 3, 64, 64))
        model.write_bytes(entry_of(other.engines.vae_encoder).joinpath(MODEL_FILE).read_bytes())
    elif damage == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "stale":
        meta["key"]["versions"] = [["onnxruntime", "0.0"], *meta["key"]["versions"]]
        (entry / META).write_text(json.dumps(meta))
    elif damage == "unreadable-meta":
        (entry / META).write_text("{not json")
    else:  # garbage whose hash is recorded: only opening it shows it is no model
        model.write_bytes(b"garbage")
        meta["files"][MODEL_FILE] = hashlib.sha256(b"garbage").hexdigest()
        (entry / META).write_text(json.dumps(meta))
    damaged = (model.read_bytes(), (entry / META).read_text())

    caplog.set_level(logging.INFO, "models.engines")
    again, engine = decoder_engine(tmp_path)
    close(again.decode_latents(LATENTS), expected)
    assert any("building it again" in r.message for r in caplog.records)
    assert "built in" in caplog.text and "loaded from the cache" not in caplog.text
    assert (model.read_bytes(), (entry / META).read_text()) != damaged  # a new entry, not the damaged one
    assert json.loads((entry / META).read_text())["files"][MODEL_FILE] == file_digest(model)


def test_a_second_load_takes_the_engine_from_the_cache(tmp_path, caplog):
    decoder_engine(tmp_path)[0].decode_latents(LATENTS)
    caplog.set_level(logging.INFO, "models.engines")
    decoder_engine(tmp_path)[0].decode_latents(LATENTS)
    assert "loaded from the cache" in caplog.text and "built in" not in caplog.text


# ---- builds never stall a live stream --------------------------------------------------------------


def test_serving_runs_eager_while_the_engine_builds_in_the_background(tmp_path, monkeypatch):
    from models.engines import component

    release, exported = threading.Event(), []
    export = component.export_onnx

    def slow_export(*args, **kwargs):
        assert release.wait(30)
        exported.append(True)
        export(*args, **kwargs)

    monkeypatch.setattr(component, "export_onnx", slow_export)
    models, engine = decoder_engine(tmp_path, BuildPolicy.BACKGROUND)
    expected = load_diffusion_models("tiny", "cpu").decode_latents(LATENTS)
    started = time.monotonic()
    close(models.decode_latents(LATENTS), expected)  # answered while the build waits
    assert time.monotonic() - started < 10 and not engine.built
    release.set()
    deadline = time.monotonic() + 60
    while not engine.built and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.built and exported == [True]
    monkeypatch.setattr(engine, "module", None)  # from now on eager is not even possible
    close(models.decode_latents(LATENTS), expected)


def test_a_failed_build_leaves_that_shape_eager_and_is_not_retried(tmp_path, monkeypatch, caplog):
    from models.engines import component

    attempts = []

    def failing_export(*args, **kwargs):
        attempts.append(1)
        raise RuntimeError("the exporter does not know this operator")

    monkeypatch.setattr(component, "export_onnx", failing_export)
    models, engine = decoder_engine(tmp_path)
    expected = load_diffusion_models("tiny", "cpu").decode_latents(LATENTS)
    for _ in range(2):
        close(models.decode_latents(LATENTS), expected)
    assert attempts == [1] and not engine.built
    assert "could not be built" in caplog.text


def test_static_row_engines_need_a_cap_for_every_batch_of_streams():
    models = load_diffusion_models("tiny", "cpu", engine="compile")
    for engine in (models.engines.unet, *models.engines.text_encoders):
        engine.build_policy = BuildPolicy.BACKGROUND  # nothing is compiled: calls run eager and are noted
    embeds = models.encode_prompt(["a cat"])
    for rows in (2, 3):
        models.predict(torch.zeros(rows, 4, 8, 8), torch.full((rows,), 99), embeds.map(lambda t, r=rows: t.expand(r, -1, -1)))
    assert [b.cap for b in models.engines.unet.needed_buckets(max_streams=4)] == [2, 4, 8, 16]  # up to 4 streams x 3 rows
    assert [b.cap for b in models.engines.text_encoders[0].needed_buckets(max_streams=4)] == [1]  # prompts do not batch


def test_warm_up_builds_the_engines_then_a_missing_one_never_stalls(engine_cache, caplog):
    caplog.set_level(logging.INFO, "models.engines")
    options = ModelOptions(preset="tiny", engine="onnx", engine_cache=engine_cache)
    loaded = {}
    worker = ComputeWorker(lambda: loaded.setdefault("p", {"stream-diffusion": load_pipeline("stream-diffusion", options)}), max_batch=2)
    worker.start()
    try:
        assert worker.finished_loading.wait(120) and worker.failed is None
        engines = loaded["p"]["stream-diffusion"].models.engines
        for engine in (engines.unet, engines.vae_encoder, engines.vae_decoder):
            assert engine.built and engine.build_policy is BuildPolicy.BACKGROUND
    finally:
        worker.stop()


def test_collect_engines_sees_the_engines_a_load_creates(engine_cache):
    with collect_engines() as engines:
        models = load_diffusion_models("tiny", "cpu", engine="eager,vae=onnx", engine_cache=engine_cache)
    assert engines == [models.engines.vae_encoder, models.engines.vae_decoder]  # eager components have nothing to build
    models.decode_latents(LATENTS)
    assert build_for_streams(engines, 4) == 1  # the decoder's one engine serves any rows; the encoder was never called


# ---- buckets, choices, threads ---------------------------------------------------------------------


def test_caps_and_padding():
    assert [cap_for(r) for r in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 4, 8, 16]
    assert caps_up_to(1, 8) == [1, 2, 4, 8] and caps_up_to(3, 3) == [4] and caps_up_to(2, 9) == [2, 4, 8, 16]
    x, t = torch.arange(6.0).view(3, 2), torch.tensor([5, 6, 7])
    px, pt = pad_rows((x, t), 4)
    assert px.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]] and pt.tolist() == [5, 6, 7, 7]
    assert Bucket(((( 4, 8, 8), "float32"), ((), "int64")), None).describe() == "any rows of 4x8x8 float32, scalar int64"


def test_engine_specs_and_defaults():
    auto = EngineChoice.parse("auto")
    assert auto.kind_for("unet", CPU) is EngineKind.ONNX and auto.kind_for("vae_decoder", CPU) is EngineKind.ONNX
    assert auto.kind_for("text_encoder", CPU) is EngineKind.EAGER and auto.kind_for("video_transformer", CPU) is EngineKind.EAGER
    assert auto.kind_for("unet", torch.device("mps")) is EngineKind.EAGER
    mixed = EngineChoice.parse(" onnx, unet=compile ,vae=eager")
    assert [mixed.kind_for(c, CPU) for c in ("unet", "vae_encoder", "vae_decoder", "text_encoder")] == \
        [EngineKind.COMPILE, EngineKind.EAGER, EngineKind.EAGER, EngineKind.ONNX]
    assert EngineChoice.parse("onnx").kind_for("video_transformer", CPU) is EngineKind.EAGER  # no ONNX engine for it: eager
    assert str(EngineChoice.parse(str(mixed))) == str(mixed)
    for spec, words in [("fast", "unknown engine"), ("unet=fast", "unknown engine"), ("gpu=onnx", "unknown model component"),
                        ("video_transformer=onnx", "cannot run on onnx")]:
        with pytest.raises(EngineSpecError, match=words):
            EngineChoice.parse(spec)
    with pytest.raises(EngineSpecError, match="does not run on cpu"):
        EngineChoice.parse("tensorrt").kind_for("unet", CPU)


def test_settings_take_the_engine_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("LATENTCAST_ENGINE", "unet=compile")
    assert Settings(_env_file=None).model_options(None).engine == "auto,unet=compile"
    assert Settings(_env_file=None, engine="eager").model_options(None).engine == "eager"
    with pytest.raises(ValidationError, match="unknown engine"):
        Settings(_env_file=None, engine="unet=fast")


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_default_threads_leave_a_core_for_io_and_codecs(monkeypatch, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(engine_threads, "usable_cores", lambda: cores)
    assert engine_threads.default_compute_threads()[0] == expected


def test_threads_from_the_flag_then_omp_then_the_machine_and_logged(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "models.engines")
    before = torch.get_num_threads()
    monkeypatch.setattr(engine_threads, "_applied", None)
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert engine_threads.apply_compute_threads(None) == 3 == torch.get_num_threads()
        assert engine_threads.apply_compute_threads(2) == 2 == torch.get_num_threads()
        assert "compute threads: 3 (from OMP_NUM_THREADS" in caplog.text and "compute threads: 2 (from --threads" in caplog.text
    finally:
        torch.set_num_threads(before)
    # The cores this process may use (its affinity mask): at least one, never more than the machine has.
    assert 1 <= engine_threads.usable_cores() <= (os.cpu_count() or 1)
