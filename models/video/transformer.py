"""The Wan2.1 diffusion transformer run causally, frame block by frame block, over a KV cache.

The weights and module layout are diffusers' `WanTransformer3DModel` (so a diffusers folder
loads with `from_pretrained`, and the original Wan key names convert with diffusers' own
converter). What diffusers lacks, written here:
- a timestep per latent frame, driving each frame's 6-way adaLN modulation and the output head
  (the causal models denoise the frames of a chunk, and the slots of a stream batch, at
  different noise levels);
- RoPE at given temporal positions (the cache's position policy decides them);
- self-attention that writes the new frames' keys and values into a rolling KV cache and
  attends over the cache (`forward_cached`), or a full-sequence pass under an explicit mask, the
  way the causal models are trained (`forward_masked`: the reference the cache must equal);
- cross-attention keys and values computed once per prompt (`text_kv`) and reused every chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from models.video.kv_cache import RollingKVCache, WritePlan
from models.video.rope import Rope3D, apply_rotary


@dataclass
class TextKV:
    """Cross-attention keys and values of one or more prompts, per layer: (rows, heads, text_len, head_dim)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    def __len__(self) -> int:
        return self.k[0].shape[0]

    def expand(self, rows: int) -> TextKV:
        """The same prompt for `rows` rows, without copying."""
        return TextKV([k.expand(rows, *k.shape[1:]) for k in self.k], [v.expand(rows, *v.shape[1:]) for v in self.v])

    @staticmethod
    def cat(parts: Sequence[TextKV]) -> TextKV:
        if len(parts) == 1:
            return parts[0]
        return TextKV([torch.cat(ks) for ks in zip(*(p.k for p in parts))], [torch.cat(vs) for vs in zip(*(p.v for p in parts))])


@dataclass
class CachedRows:
    """Rows of a batch that attend over rows of one cache: batch rows [start, start+len(plan.rows)).
    `text` is the prompt K/V of those rows' stream (one row), for a forward split across processes."""

    cache: RollingKVCache
    plan: WritePlan
    start: int
    text: TextKV | None = None


@dataclass
class FrameConditioning:
    """What every layer of one forward needs besides the hidden states: per-frame adaLN
    modulation, the time embedding for the head, and the rotary angles of the tokens."""

    temb: torch.Tensor        # (R, F, dim)
    modulation: torch.Tensor  # (R, F, 6, dim)
    cos: torch.Tensor         # (R, 1, F*hw, D/2)
    sin: torch.Tensor
    frames: int
    height: int               # latent size, before patching
    width: int


# The self-attention of one layer: (layer, q, k, v) -> attention output, all (rows, heads, tokens, head_dim).
SelfAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CausalWanTransformer(WanTransformer3DModel):
    @cached_property
    def rope3d(self) -> Rope3D:
        return Rope3D(self.config.attention_head_dim)

    @property
    def heads(self) -> int:
        return self.config.num_attention_heads

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        _, ph, pw = self.config.patch_size
        return (latent_height // ph) * (latent_width // pw)

    # ---- conditioning -------------------------------------------------------------------------

    @torch.no_grad()
    def text_kv(self, text_states: torch.Tensor) -> TextKV:
        """Cross-attention K/V of every layer for text encoder states (B, text_len, text_dim)."""
        context = self.condition_embedder.text_embedder(text_states.to(self.dtype))
        ks, vs = [], []
        for block in self.blocks:
            attn = block.attn2
            ks.append(self._heads(attn.norm_k(attn.to_k(context))))
            vs.append(self._heads(attn.to_v(context)))
        return TextKV(ks, vs)

    def _frame_embeddings(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame time embedding (R, F, dim) and adaLN modulation (R, F, 6, dim), float32."""
        ce = self.condition_embedder
        rows, frames = timesteps.shape
        proj = ce.timesteps_proj(timesteps.flatten().float())
        temb = ce.time_embedder(proj.to(ce.time_embedder.linear_1.weight.dtype)).float()
        modulation = ce.time_proj(ce.act_fn(temb.to(ce.time_proj.weight.dtype))).float()
        return temb.view(rows, frames, -1), modulation.view(rows, frames, 6, -1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(R, tokens, dim) -> (R, heads, tokens, head_dim)."""
        return x.unflatten(2, (self.heads, -1)).transpose(1, 2)

    # ---- forwards -----------------------------------------------------------------------------

    def forward_cached(self, latents: torch.Tensor, timesteps: torch.Tensor, text: TextKV, groups: Sequence[CachedRows]) -> torch.Tensor:
        """Flow prediction for a block of new frames per row, attending over each row's cache.

        latents (R, C, F, h, w), timesteps (R, F). `groups` cover the R rows in order; each says
        which cache rows those batch rows write to and read from (their plan holds the frames'
        positions). Rows of different caches share every matmul except the attention itself.
        """
        positions = torch.cat([g.plan.positions for g in groups])

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outs = []
            for g in groups:
                rows = slice(g.start, g.start + len(g.plan.rows))
                outs.append(g.cache.attend(layer, g.plan, q[rows], k[rows], v[rows]))
            return torch.cat(outs) if len(outs) > 1 else outs[0]

        return self.forward_attending(latents, timesteps, text, positions, attend)

    def forward_masked(
        self, latents: torch.Tensor, timesteps: torch.Tensor, text: TextKV, positions: torch.Tensor, frame_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The whole sequence in one pass: token of frame i may attend to frame j where
        frame_mask[i, j] (F, F) is True (None: everything). positions (R, F) as in the cache."""
        tokens = self.tokens_per_frame(*latents.shape[-2:])
        mask = None if frame_mask is None else frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1).to(latents.device)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

        return self.forward_attending(latents, timesteps, text, positions, attend)

    def forward_attending(self, latents: torch.Tensor, timesteps: torch.Tensor, text: TextKV, positions: torch.Tensor,
                          attend: SelfAttention) -> torch.Tensor:
        """A forward whose self-attention is `attend(layer, q, k, v)` (q and k rotated at
        `positions`): the cache and the masked pass above, and references that keep a cache of
        another layout (tests/test_video_upstream.py keeps upstream's)."""
        cond = self.conditioning(timesteps, positions, latents.shape[-3:], latents.device)
        x = self.run_blocks(self.embed(latents), cond, text, attend, range(len(self.blocks)))
        return self.head(x, cond)

    # The three parts of a forward, so that a forward split across processes runs the same code:
    # the first stage embeds, each stage runs its layers, the last applies the head.

    def conditioning(self, timesteps: torch.Tensor, positions: torch.Tensor, latent_shape, device) -> FrameConditioning:
        """latent_shape: (frames, height, width) of the latents."""
        frames, height, width = latent_shape
        pt, ph, pw = self.config.patch_size
        if pt != 1:
            raise ValueError("the causal path needs a temporal patch size of 1 (one latent frame per block step)")
        temb, modulation = self._frame_embeddings(timesteps.to(device))
        cos, sin = self.rope3d.cos_sin(positions, height // ph, width // pw, device)  # (R, F, hw, D/2)
        return FrameConditioning(temb, modulation, cos.flatten(1, 2)[:, None], sin.flatten(1, 2)[:, None], frames, height, width)

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(latents.to(self.dtype)).flatten(2).transpose(1, 2).contiguous()

    def run_blocks(self, x: torch.Tensor, cond: FrameConditioning, text: TextKV, attend: SelfAttention, layers: range) -> torch.Tensor:
        """Layers `layers` (global indices; `attend` and `text` are indexed by them)."""
        for layer in layers:
            x = self._block(self.blocks[layer], layer, x, cond.modulation, text.k[layer], text.v[layer], cond.cos, cond.sin,
                            attend, cond.frames)
        return x

    def head(self, x: torch.Tensor, cond: FrameConditioning) -> torch.Tensor:
        rows, frames = x.shape[0], cond.frames
        pt, ph, pw = self.config.patch_size
        shift, scale = (self.scale_shift_table[None].float() + cond.temb[:, :, None]).unbind(2)
        x = _modulate(self.norm_out(x.float()), scale, shift, frames).type_as(x)
        x = self.proj_out(x)
        x = x.reshape(rows, frames, cond.height // ph, cond.width // pw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _block(self, block, layer, x, modulation, text_k, text_v, cos, sin, attend: SelfAttention, frames: int) -> torch.Tensor:
        shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table[None].float() + modulation).unbind(2)

        # Self-attention over this layer's cache (or the masked sequence).
        attn = block.attn1
        h = _modulate(block.norm1(x.float()), scale, shift, frames).type_as(x)
        q = apply_rotary(self._heads(attn.norm_q(attn.to_q(h))), cos, sin)
        k = apply_rotary(self._heads(attn.norm_k(attn.to_k(h))), cos, sin)
        out = attend(layer, q, k, self._heads(attn.to_v(h))).transpose(1, 2).flatten(2)
        x = (x.float() + _gated(attn.to_out[0](out.type_as(x)), gate, frames)).type_as(x)

        # Cross-attention to the prompt (keys and values cached per prompt).
        attn = block.attn2
        h = block.norm2(x.float()).type_as(x)
        q = self._heads(attn.norm_q(attn.to_q(h)))
        out = F.scaled_dot_product_attention(q, text_k, text_v).transpose(1, 2).flatten(2)
        x = x + attn.to_out[0](out.type_as(x))

        # Feed-forward.
        h = _modulate(block.norm3(x.float()), c_scale, c_shift, frames).type_as(x)
        return (x.float() + _gated(block.ffn(h), c_gate, frames)).type_as(x)


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, frames: int) -> torch.Tensor:
    """adaLN with one (scale, shift) per frame: x (R, F*N, D), scale/shift (R, F, D)."""
    x = x.unflatten(1, (frames, -1))
    return (x * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def _gated(x: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    return (x.float().unflatten(1, (frames, -1)) * gate[:, :, None]).flatten(1, 2)
