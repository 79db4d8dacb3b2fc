"""Which pipelines a server or a render loads, and with which preset."""

import pytest

from pipelines.registry import PipelinePlanError, UnknownPipelineError, pipeline_for_preset, plan_pipelines


def test_without_flags_the_defaults_need_no_download():
    assert plan_pipelines(None, None) == [("stream-diffusion", "style"), ("passthrough", None)]


def test_a_preset_picks_its_pipeline():
    assert pipeline_for_preset("sd-turbo") == "stream-diffusion"
    assert pipeline_for_preset("tiny-video") == "rolling-kv-video"
    assert plan_pipelines(None, "tiny-video") == [("rolling-kv-video", "tiny-video"), ("passthrough", None)]


def test_each_pipeline_gets_its_own_preset():
    plan = plan_pipelines(["rolling-kv-video", "stream-diffusion:sd-turbo", "passthrough"], "tiny-video")
    assert plan == [("rolling-kv-video", "tiny-video"), ("stream-diffusion", "sd-turbo"), ("passthrough", None)]
    # --preset goes where it belongs; the other model pipeline loads its default
    assert plan_pipelines(["stream-diffusion", "rolling-kv-video"], "tiny") == [
        ("stream-diffusion", "tiny"), ("rolling-kv-video", "tiny-video")]


@pytest.mark.parametrize("entries, preset, message", [
    (None, "sd-ultra", "unknown preset 'sd-ultra'; choose one of tiny"),
    (["stream-diffusion:tiny-video"], None, "preset 'tiny-video' is not a stream-diffusion preset"),
    (["passthrough:tiny"], None, "takes no preset"),
    (["passthrough"], "tiny", "preset 'tiny' is for the stream-diffusion pipeline, which is not loaded"),
])
def test_mismatches_are_refused_with_a_reason(entries, preset, message):
    with pytest.raises(PipelinePlanError, match=message):
        plan_pipelines(entries, preset)


def test_unknown_pipelines_name_the_choices():
    with pytest.raises(UnknownPipelineError, match="choose one of passthrough, relay-speech, rolling-kv-video, stream-diffusion"):
        plan_pipelines(["diffusion"], None)
