"""Creative controls through the real server: WebSocket `start`/`update`, the REST image upload,
the control-image preview, and the schema that lists what the server loaded.

The server runs the tiny preset with a random ControlNet, LoRA and IP-Adapter loaded the way
`latentcast serve --controlnet edges=random --lora ink=random --ip-adapter random` loads them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from streaming.client import StreamClient, StreamClientError

from conftest import make_settings, serve_in_thread
from media import moving_picture

SIZE = 64
PARAMS = {"width": SIZE, "height": SIZE, "t_index_list": [35], "seed": 7, "cfg_type": "none"}
CANNY = {"model": "edges", "preprocessor": "canny", "scale": 1.0}


def png(colour: tuple[int, int, int]) -> bytes:
    picture = np.zeros((32, 32, 3), np.uint8)
    picture[::4] = colour
    out = io.BytesIO()
    Image.fromarray(picture).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def base_url():
    settings = make_settings(preset="tiny", device="cpu", pipelines=["stream-diffusion", "passthrough"], warmup=False,
                             controlnet=["edges=random"], lora=["ink=random"], ip_adapter="random")
    with serve_in_thread(settings) as url:
        yield url


async def one_frame(client: StreamClient, frame_id: int) -> np.ndarray:
    await client.send_frame(moving_picture(frame_id, SIZE, SIZE), frame_id=frame_id, pts=frame_id / 30, format="rgb24")
    return (await client.receive_frame(60)).image


async def test_every_control_through_the_websocket_with_the_control_image_over_rest(base_url):
    image = "data:image/png;base64," + base64.b64encode(png((255, 0, 0))).decode()
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        started = await client.start("stream-diffusion", {**PARAMS, "controlnets": [CANNY], "loras": {"ink": 0.8},
                                                          "image_prompt": image}, slo={"target_fps": 2}, output_format="rgb24")
        params = started["params"]
        assert params["image_prompt"] == "sha256:" + hashlib.sha256(png((255, 0, 0))).hexdigest()
        assert params["controlnets"] == [{**CANNY, "low_threshold": 100, "high_threshold": 200}] and params["loras"] == {"ink": 0.8}
        first = await one_frame(client, 0)
        assert first.shape == (SIZE, SIZE, 3)
        reply = await http.get(f"/v1/sessions/{client.session_id}/pictures/control-0")
        assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
        edges = np.array(Image.open(io.BytesIO(reply.content)).convert("L"))
        assert edges.shape == (SIZE, SIZE) and edges.max() > 200 and np.median(edges) < 30  # white edges on black
        missing = await http.get(f"/v1/sessions/{client.session_id}/pictures/control-1")
        assert missing.status_code == 404 and "it has: control-0" in missing.json()["error"]["message"]

        ack = await client.update({"controlnets": [{**CANNY, "scale": 0.4}], "loras": {"ink": 0.2}, "image_prompt_weight": 1.0})
        assert ack["update_class"] == "hot" and sorted(ack["applied"]) == ["controlnets", "image_prompt_weight", "loras"]
        with pytest.raises(StreamClientError) as err:
            await client.update({"controlnets": [{"model": "depth"}]})
        assert err.value.code == "bad_params" and err.value.field == "controlnets" and "loaded: edges" in err.value.message
        assert (await one_frame(client, 1)).shape == (SIZE, SIZE, 3)  # the stream goes on after the refusal


async def test_image_prompt_upload_over_rest(base_url):
    async with await StreamClient.connect(base_url) as client, httpx.AsyncClient(base_url=base_url) as http:
        await client.start("stream-diffusion", PARAMS, slo={"target_fps": 2}, output_format="rgb24")
        url = f"/v1/sessions/{client.session_id}/images/image_prompt"
        reply = await http.put(url, content=png((0, 0, 255)), headers={"content-type": "image/png"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["applied"] == ["image_prompt"]
        assert body["params"]["image_prompt"] == "sha256:" + hashlib.sha256(png((0, 0, 255))).hexdigest()
        assert (await http.get(f"/v1/sessions/{client.session_id}")).json()["params"]["image_prompt"] == body["params"]["image_prompt"]
        assert (await one_frame(client, 0)).shape == (SIZE, SIZE, 3)

        wrong_type = await http.put(url, content=png((0, 0, 255)), headers={"content-type": "text/plain"})
        assert wrong_type.status_code == 415 and wrong_type.json()["error"]["code"] == "unsupported_media_type"
        garbage = await http.put(url, content=b"not a picture", headers={"content-type": "image/png"})
        assert garbage.status_code == 400 and "not a picture that decodes" in garbage.json()["error"]["message"]
        not_image = await http.put(f"/v1/sessions/{client.session_id}/images/prompt", content=png((0, 0, 255)),
                                   headers={"content-type": "image/png"})
        assert not_image.status_code == 400 and "its image parameters: image_prompt" in not_image.json()["error"]["message"]
        unknown = await http.patch(f"/v1/sessions/{client.session_id}", json={"params": {"loras": {"oil": 1.0}}})
        assert unknown.status_code == 400 and "choose one of ink" in unknown.json()["error"]["message"]
        await asyncio.sleep(0)


async def test_the_schema_lists_what_the_server_loaded(base_url):
    async with httpx.AsyncClient(base_url=base_url) as http:
        pipelines = (await http.get("/v1/pipelines")).json()["pipelines"]
    schema = next(p for p in pipelines if p["name"] == "stream-diffusion")["params_schema"]["properties"]
    assert schema["controlnets"]["choices"] == ["edges"] and schema["loras"]["choices"] == ["ink"]
    assert schema["image_prompt"]["available"] is True and schema["image_prompt"]["image"] is True
