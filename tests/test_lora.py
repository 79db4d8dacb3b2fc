"""LoRA hot-swap for stream-diffusion: per-stream LoRA sets in one batch, with no leak.

The central check is isolation: two streams with different LoRA sets batched together each
equal their own sequential reference, and a stream without LoRA in that batch equals the base
model. The per-row application is checked against diffusers' own (PEFT) application of the same
file, fusing against per-row weights, loading on request, and the ONNX engine of the base UNet
never seeing a LoRA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from models.control.registry import ControlSpec
from models.loading import load_diffusion_models
from pipelines.base import ParamError
from pipelines.stream_diffusion.pipeline import StreamDiffusionPipeline
from pipelines.stream_diffusion.reference import denoise_sequential
from streaming.frames import VideoFrame

from control_streams import assert_close, clip, decode, differs, run_together

SIZE = {"width": 64, "height": 64}
STEPS = {"t_index_list": [10, 30, 45]}


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    """A LoRA saved the way diffusers saves one (PEFT keys, alpha in the metadata), convolutions included."""
    models = load_diffusion_models("tiny")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"], init_lora_weights=False)
    models.unet.add_adapter(config)
    folder = tmp_path_factory.mktemp("lora") / "sketchy"
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=get_peft_model_state_dict(models.unet),
                                              unet_lora_adapter_metadata=config.to_dict())
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def pipe(lora_file):
    spec = ControlSpec(loras={"sketchy": str(lora_file), "noisy": "random"}, lora_dir=lora_file.parent)
    return StreamDiffusionPipeline(load_diffusion_models("tiny", controls=spec))


def test_streams_with_different_loras_in_one_batch_each_equal_their_own_reference(pipe):
    params = {**SIZE, **STEPS, "prompt": "a cat", "cfg_type": "self", "guidance_scale": 1.5}
    sets = [{"sketchy": 0.8}, {"noisy": 1.0, "sketchy": -0.5}, {}]
    states = [pipe.new_state({**params, "loras": loras}) for loras in sets]
    frames = clip(6)
    together = run_together(pipe, states, frames)
    for state, outputs in zip(states, together):
        assert sorted(outputs) == list(range(6))
        for k in range(2, 6):
            assert_close(outputs[k], decode(pipe, denoise_sequential(pipe, state, frames[k])))
    # the LoRAs change the picture (so the equalities above could fail), and the stream without any is the base model
    assert differs(together[0][4], together[2][4])
    assert differs(together[0][4], together[1][4])
    alone = run_together(pipe, [pipe.new_state({**params})], frames)[0]
    for k in range(6):
        assert_close(together[2][k], alone[k])


def test_per_row_lora_equals_diffusers_applying_the_same_file(pipe, lora_file):
    """Same file, same weight: our per-row deltas against diffusers loading it into a second copy
    of the UNet as a PEFT adapter (with its saved alpha) at that weight."""
    reference = load_diffusion_models("tiny")
    state_dict, _, metadata = StableDiffusionPipeline.lora_state_dict(str(lora_file), return_lora_metadata=True)
    reference.unet.load_lora_adapter(state_dict, prefix="unet", adapter_name="sketchy", metadata=metadata)
    reference.unet.set_adapters(["sketchy"], [0.7])
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([799, 299])
    embeds = pipe.models.encode_prompt(["a cat", "a cat"])
    from models.control.conditioned_unet import RowControl, predict_with_controls

    ours = predict_with_controls(pipe.models, latents, timesteps, embeds, [RowControl(loras=(("sketchy", 0.7),))] * 2)
    theirs = reference.predict(latents, timesteps, embeds)
    base = pipe.models.predict(latents, timesteps, embeds)
    assert (ours - base).abs().max() > 1e-2  # the LoRA does something
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_a_fused_lora_equals_the_same_lora_applied_per_row(pipe, lora_file):
    fused = StreamDiffusionPipeline(load_diffusion_models("tiny", controls=ControlSpec(loras={"sketchy": str(lora_file)},
                                                                                        fuse={"sketchy": 0.6})))
    params = {**SIZE, **STEPS, "prompt": "a cat", "cfg_type": "none"}
    frames = clip(4)
    per_row = run_together(pipe, [pipe.new_state({**params, "loras": {"sketchy": 0.6}})], frames)[0]
    merged = run_together(fused, [fused.new_state(params)], frames)[0]
    for k in range(4):
        assert_close(per_row[k], merged[k])
    with pytest.raises(ParamError, match="no LoRA 'sketchy'"):  # fused: no longer a per-stream choice
        fused.new_state({**params, "loras": {"sketchy": 0.6}})


def test_lora_weights_change_hot_and_unknown_names_are_refused_with_the_choices(pipe):
    state = pipe.new_state({**SIZE, **STEPS, "prompt": "a cat", "loras": {"noisy": 0.5}})
    for k, image in enumerate(clip(2)):
        pipe.step([(state, VideoFrame(image, k))])
    result = pipe.update(state, {"loras": {"noisy": 1.2, "sketchy": 0.3}})
    assert not result.reset and result.applied == ["loras"] and pipe.in_flight(state) == 2
    with pytest.raises(ParamError, match=r"no LoRA 'missing'; choose one of sketchy, noisy") as err:
        pipe.update(state, {"loras": {"missing": 1.0}})
    assert err.value.field == "loras" and state.params.loras == {"noisy": 1.2, "sketchy": 0.3}
    with pytest.raises(ParamError, match="weight of 'noisy' must be in -2..2"):
        pipe.update(state, {"loras": {"noisy": 3.0}})
    with pytest.raises(ParamError, match="no LoRA '../sketchy'"):  # a name is never a path
        pipe.update(state, {"loras": {"../sketchy": 1.0}})


def test_a_lora_of_the_lora_dir_loads_on_request(lora_file, tmp_path):
    (tmp_path / "extra.safetensors").write_bytes(lora_file.read_bytes())
    pipe = StreamDiffusionPipeline(load_diffusion_models("tiny", controls=ControlSpec(lora_dir=tmp_path)))
    assert pipe.params_model.model_json_schema()["properties"]["loras"]["choices"] == ["extra"]
    assert pipe.models.controls.loras == {}
    state = pipe.new_state({**SIZE, **STEPS, "loras": {"extra": 1.0}})
    assert list(pipe.models.controls.loras) == ["extra"] and state.params.loras == {"extra": 1.0}


def test_the_onnx_engine_of_the_base_unet_never_carries_a_lora(lora_file, tmp_path):
    """A LoRA stream beside a plain one: the plain stream runs the base model's ONNX engine (built
    after the LoRA was loaded and used) and equals the eager base model."""
    spec = ControlSpec(loras={"sketchy": str(lora_file)})
    onnx = StreamDiffusionPipeline(load_diffusion_models("tiny", engine="unet=onnx", engine_cache=tmp_path, controls=spec))
    eager = StreamDiffusionPipeline(load_diffusion_models("tiny"))
    params = {**SIZE, "t_index_list": [20, 40], "prompt": "a cat", "cfg_type": "none"}
    frames = clip(3)
    onnx.step([(onnx.new_state({**params, "loras": {"sketchy": 1.0}}), VideoFrame(frames[0], 0))])  # the LoRA runs first
    assert not onnx.models.engines.unet.built
    with_lora, plain = run_together(onnx, [onnx.new_state({**params, "loras": {"sketchy": 1.0}}), onnx.new_state(params)], frames)
    expected = run_together(eager, [eager.new_state(params)], frames)[0]
    assert onnx.models.engines.unet.built, "the plain rows ran on an ONNX engine"
    for k in range(3):
        assert_close(plain[k], expected[k])
    assert differs(with_lora[2], plain[2])


def test_the_compiled_unet_beside_controlled_rows_compiles_once(tmp_path):
    """torch.compile (the UNet's engine on CUDA) serves the plain rows while LoRA and image-prompt
    hooks come and go on the same modules for the controlled rows: no recompile at each step, and
    the plain stream still equals the eager base model."""
    from torch._dynamo.utils import counters

    spec = ControlSpec(loras={"ink": "random"}, ip_adapter="random")
    compiled = StreamDiffusionPipeline(load_diffusion_models("tiny", engine="unet=compile", engine_cache=tmp_path, controls=spec))
    eager = StreamDiffusionPipeline(load_diffusion_models("tiny"))
    params = {**SIZE, "t_index_list": [20, 40], "prompt": "a cat", "cfg_type": "none"}
    states = [compiled.new_state(params), compiled.new_state({**params, "loras": {"ink": 0.8}, "image_prompt": "input"})]
    frames = clip(7)
    for k in range(2):  # the first steps compile
        compiled.step([(s, VideoFrame(frames[k], k)) for s in states])
    graphs = counters["stats"]["unique_graphs"]
    outputs: dict[int, np.ndarray] = {}
    for k in range(2, 7):
        outputs.update({f.frame_id: f.image for f in compiled.step([(s, VideoFrame(frames[k], k)) for s in states])[0].frames})
    assert counters["stats"]["unique_graphs"] == graphs
    expected = run_together(eager, [eager.new_state(params)], frames)[0]
    for k in range(2, 6):
        assert_close(outputs[k], expected[k])
