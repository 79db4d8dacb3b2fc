"""The streaming video VAEs behind torch.compile (models/engines/video_vae.py): the compiled encoder
and decoder steps equal eager chunk after chunk, for the tiny VAE and a small random Wan VAE, with
two streams interleaved on their own causal states; dynamo builds two graphs per component and
picture size (a stream's first step and every later one), never one per chunk; the rolling-KV
pipeline with the compiled VAE equals eager picture for picture; and the spec's choices.

Tolerance: inductor sums in other orders than eager, so float32 outputs of order 1 differ by
~1e-6; the checks allow 1e-4 absolute (a lost or shared causal state is off by ~0.1-1: the last
test shows the tiny VAE's is). Compiling costs seconds per graph on the CPU: few shapes, tiny sizes.
"""

import pytest
import torch
from test_engines import video_pipeline_against_eager
from torch._dynamo.utils import counters

from models.engines.component import collect_engines
from models.engines.kinds import EngineChoice, EngineKind, EngineSpecError
from models.engines.video_vae import compile_video_vae
from models.video.loading import load_video_models
from models.video.vae import WanStreamingVAE

CPU = torch.device("cpu")
ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def inductor_cache_where_torch_keeps_it():
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torch._dynamo.reset()  # the graph counts below start from nothing compiled (other tests compile the same VAE code)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
        yield


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def clips(streams, chunks, size, seed=0):
    """Per stream, its chunks of pictures in [-1, 1]: 1 + 4 pictures first, then 4 each."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.rand(1, 3, 5 if k == 0 else 4, size, size, generator=generator) * 2 - 1 for k in range(chunks)]
            for _ in range(streams)]


def interleaved(vae, clips_):
    """Encode then decode every stream's chunks, the streams taking turns chunk by chunk, each on its
    own states; per stream, the latents and pictures of every chunk."""
    states = [(vae.new_state(), vae.new_state()) for _ in clips_]
    out = [[] for _ in clips_]
    for k in range(len(clips_[0])):
        for s, clip in enumerate(clips_):
            latents = vae.encode(clip[k], states[s][0])
            out[s].append((latents, vae.decode(latents, states[s][1])))
    return out


def assert_streams_equal(got, expected):
    for stream_got, stream_expected in zip(got, expected):
        for (latents, pictures), (latents_e, pictures_e) in zip(stream_got, stream_expected):
            close(latents, latents_e)
            close(pictures, pictures_e)


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiled_tiny_video_vae_equals_eager_over_interleaved_streams(tmp_path):
    eager = load_video_models("tiny-video", "cpu")
    before = graphs_compiled()
    with collect_engines() as engines:
        compiled = load_video_models("tiny-video", "cpu", engine="video_vae=compile", engine_cache=tmp_path)
    data = clips(streams=2, chunks=4, size=64)
    assert_streams_equal(interleaved(compiled.vae, data), interleaved(eager.vae, data))
    # First and steady step per component, however many chunks: 2 graphs each, 2 buckets each.
    assert graphs_compiled() - before == 4
    assert [(e.component, e.kind, len(e.built)) for e in engines] == \
        [("video_vae_encoder", EngineKind.COMPILE, 2), ("video_vae_decoder", EngineKind.COMPILE, 2)]


def test_a_first_chunk_builds_the_steady_graph_too(tmp_path):
    """Serving compiles only during warm-up, which may end after a stream's first chunk: that chunk
    leaves both graphs of each step built."""
    with collect_engines() as engines:
        vae = load_video_models("tiny-video", "cpu", engine="video_vae=compile", engine_cache=tmp_path).vae
    (first,) = clips(streams=1, chunks=1, size=32, seed=1)
    vae.decode(vae.encode(first[0][:, :, :1], vae.new_state()), vae.new_state())  # one picture in, one latent out
    assert [len(e.built) for e in engines] == [2, 2]


def test_compiled_wan_vae_equals_eager_over_interleaved_streams(tmp_path):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(4)
    wan = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 1.0, 0.5]).eval()
    eager, compiled = WanStreamingVAE(wan), WanStreamingVAE(wan)
    before = graphs_compiled()
    engines = compile_video_vae(compiled, "video_vae=compile", CPU, torch.float32, tmp_path)
    data = clips(streams=2, chunks=3, size=32, seed=2)
    assert_streams_equal(interleaved(compiled, data), interleaved(eager, data))
    assert graphs_compiled() - before == 4
    assert [e.component for e in engines] == ["video_vae_encoder", "video_vae_decoder"]
    assert all(len(e.built) == 2 for e in engines)


def test_rolling_kv_pipeline_with_the_compiled_vae_equals_eager(tmp_path):
    engines, produced = video_pipeline_against_eager("video_vae=compile", tmp_path, steps=2, steady_chunks=3)
    assert produced >= 9  # the first chunk's pictures and at least one steady chunk's
    assert [(e.component, len(e.built)) for e in engines] == [("video_vae_encoder", 2), ("video_vae_decoder", 2)]


def test_a_shared_or_lost_causal_state_would_be_seen():
    """What the tolerance above rules out: the tiny VAE's steady chunk from a fresh state, or from
    another stream's state, is far from the right one."""
    vae = load_video_models("tiny-video", "cpu").vae
    a, b = clips(streams=2, chunks=2, size=32, seed=3)
    state = vae.new_state()
    vae.encode(a[0], state)
    right = vae.encode(a[1], state)
    other = vae.new_state()
    vae.encode(b[0], other)
    for wrong in (vae.encode(a[1], other), vae.encode(torch.cat([a[0][:, :, :1], a[1]], dim=2), vae.new_state())[:, :, 1:]):
        assert (wrong - right).abs().max() > 100 * ATOL


def test_video_vae_engine_choices():
    auto = EngineChoice.parse("auto")
    assert auto.kind_for("video_vae_encoder", CPU) is EngineKind.EAGER and auto.kind_for("video_vae_decoder", CPU) is EngineKind.EAGER
    cuda = torch.device("cuda")
    assert auto.kind_for("video_vae_encoder", cuda) is EngineKind.COMPILE and auto.kind_for("video_vae_decoder", cuda) is EngineKind.COMPILE
    both = EngineChoice.parse("eager,video_vae=compile")
    assert [both.kind_for(c, CPU) for c in ("video_vae_encoder", "video_vae_decoder", "video_transformer")] == \
        [EngineKind.COMPILE, EngineKind.COMPILE, EngineKind.EAGER]
    assert EngineChoice.parse("onnx").kind_for("video_vae_decoder", CPU) is EngineKind.EAGER  # no ONNX engine: eager
    for spec in ("video_vae=onnx", "video_vae_decoder=tensorrt"):
        with pytest.raises(EngineSpecError, match="cannot run on .*causal state is one cache tensor per causal convolution"):
            EngineChoice.parse(spec)
