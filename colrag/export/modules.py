"""Export-friendly torch forwards for the Qwen2-VL vision tower and text model.

They reuse the checkpoint's own submodules (so every weight is the checkpoint's) but
replace the control flow that does not export: the vision tower takes its rotary
position ids as an input (computed on the host from the image grid, see
colrag.vlm.preprocess.vision_rot_pos_ids) and attends over one image; the text model takes
3-D M-RoPE position ids and a 2-D padding mask as inputs and builds the causal mask
with tensor ops only. Nothing here depends on the image grid, so one graph serves
every page size. Parity with transformers is tested, not assumed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class VisionTower(nn.Module):
    """pixel_values (N, 1176), rot_pos_ids (N, 2) → image_embeds (N/4, hidden).

    fused_attention: export attention as onnxruntime's com.microsoft.MultiHeadAttention
    (one kernel that never materialises the (heads, N, N) scores in fp32, which is
    0.8 GB per layer for a 3,500-patch page) instead of MatMul-Softmax-MatMul: on a
    3,072-patch page the int8 vision tower took 21.4 s instead of 27.7 s (attention
    8.2 s instead of 12.6 s). Eager torch runs scaled_dot_product_attention either way.
    """

    def __init__(self, visual: nn.Module, fused_attention: bool = True):
        super().__init__()
        # transformers modules: typed Any, since nn.Module.__getattr__ types every attribute as Tensor | Module.
        self.visual: Any = visual
        self.fused_attention = fused_attention
        cfg: Any = visual.config
        self.embed_dim: int = cfg.embed_dim
        self.num_heads: int = cfg.num_heads
        self.head_dim: int = cfg.embed_dim // cfg.num_heads
        self.inv_freq: torch.Tensor
        rotary: Any = visual.rotary_pos_emb
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)

    def forward(self, pixel_values: torch.Tensor, rot_pos_ids: torch.Tensor) -> torch.Tensor:
        n = pixel_values.shape[0]
        # The patch Conv3d has kernel == stride, i.e. a matmul over the flattened patch.
        w = self.visual.patch_embed.proj.weight  # (embed_dim, 3, 2, 14, 14)
        x = pixel_values @ w.reshape(w.shape[0], -1).T  # (N, embed_dim)

        freqs = rot_pos_ids.unsqueeze(-1).float() * self.inv_freq  # (N, 2, head_dim/4)
        freqs = freqs.flatten(1)  # (N, head_dim/2): h frequencies then w frequencies
        emb = torch.cat((freqs, freqs), dim=-1)  # (N, head_dim)
        cos, sin = emb.cos().unsqueeze(0), emb.sin().unsqueeze(0)  # (1, N, head_dim)

        for blk in self.visual.blocks:
            h = blk.norm1(x)
            qkv = blk.attn.qkv(h).reshape(n, 3, self.num_heads, self.head_dim).permute(1, 2, 0, 3)  # (3, heads, N, hd)
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            x = x + blk.attn.proj(self._attention(q, k, v, n))
            x = x + blk.mlp(blk.norm2(x))
        return self.visual.merger(x)  # (N/4, hidden)

    def _attention(self, q, k, v, n):
        """Full attention over one image: q, k, v (heads, N, hd) → (N, embed_dim)."""
        if self.fused_attention and torch.onnx.is_in_onnx_export():
            packed = [t.transpose(0, 1).reshape(1, n, self.embed_dim) for t in (q, k, v)]  # (1, N, embed_dim)
            out = torch.onnx.ops.symbolic(
                "com.microsoft::MultiHeadAttention",
                packed,
                attrs={"num_heads": self.num_heads},
                dtype=q.dtype,
                shape=packed[0].shape,
                version=1,
            )
            return out[0]
        attn = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0))  # (1, heads, N, hd)
        return attn[0].transpose(0, 1).reshape(n, self.embed_dim)  # (N, embed_dim)


def mrope_cos_sin(position_ids: torch.Tensor, inv_freq: torch.Tensor, mrope_section: list[int]):
    """3-D M-RoPE: position_ids (3, B, S) → cos, sin (B, S, head_dim)."""
    freqs = position_ids.unsqueeze(-1).float() * inv_freq  # (3, B, S, head_dim/2)
    chunks = freqs.split(list(mrope_section), dim=-1)
    freqs = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)  # (B, S, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, S, head_dim)
    return emb.cos(), emb.sin()


class TextModel(nn.Module):
    """The Qwen2-VL language model (final norm included), optionally with a KV cache.

    forward(inputs_embeds (B,S,H), position_ids (3,B,S), attention_mask (B,P+S), *past)
      past = k_0, v_0, k_1, v_1, ... each (B, kv_heads, P, head_dim)
      → hidden (B,S,H) [, present k/v (B, kv_heads, P+S, head_dim) ...]
    """

    def __init__(self, language_model: nn.Module, with_cache: bool = False):
        super().__init__()
        cfg: Any = language_model.config
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported by colrag's export")
        self.lm: Any = language_model
        self.with_cache = with_cache
        self.num_heads: int = cfg.num_attention_heads
        self.num_kv_heads: int = cfg.num_key_value_heads
        self.head_dim: int = cfg.hidden_size // cfg.num_attention_heads
        rope: Any = language_model.rotary_emb
        self.mrope_section: list[int] = list(rope.mrope_section)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", rope.inv_freq.detach().clone().float(), persistent=False)

    def _mask(self, attention_mask: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
        total = attention_mask.shape[1]
        q_pos = torch.arange(q_len, device=attention_mask.device) + (total - q_len)  # absolute query positions
        k_pos = torch.arange(total, device=attention_mask.device)
        causal = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)  # (S, T)
        allowed = causal.unsqueeze(0) & attention_mask.bool().unsqueeze(1)  # (B, S, T)
        zero = torch.zeros((), dtype=dtype)
        neg = torch.full((), torch.finfo(dtype).min, dtype=dtype)
        return torch.where(allowed, zero, neg).unsqueeze(1)  # (B, 1, S, T)

    def _grouped_attention(self, q, k, v, mask, groups: int):
        """softmax(q kᵀ / √d + mask) v with `groups` query heads per k/v head, without copying k/v.

        q (B, heads, S, hd); k, v (B, kv, T, hd); mask (B, 1, S, T). Query head h uses k/v head
        h // groups (transformers' repeat_kv). Folding each group's query heads into the row
        axis, (B, kv, groups·S, hd), lets every k/v head serve its group in one MatMul; the
        repeat_interleave this replaces copied the whole cache 6× per layer and token
        (Qwen2-VL-2B: 12 query heads, 2 k/v heads), which dominated decode at long prompts.
        """
        b, heads, s, hd = q.shape
        kv = k.shape[1]
        q = q.reshape(b, kv, groups * s, hd)  # row g·S + s of k/v head j is query head j·groups + g
        scores = torch.matmul(q, k.transpose(-1, -2)) * (hd**-0.5)  # (B, kv, groups·S, T)
        scores = scores + mask.repeat(1, 1, groups, 1)  # the mask's S rows, once per group
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, kv, groups·S, hd)
        return out.reshape(b, heads, s, hd)

    def forward(self, inputs_embeds, position_ids, attention_mask, *past):
        b, s, _ = inputs_embeds.shape
        cos, sin = mrope_cos_sin(position_ids, self.inv_freq, self.mrope_section)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, S, hd)
        mask = self._mask(attention_mask, s, inputs_embeds.dtype)
        groups = self.num_heads // self.num_kv_heads
        x = inputs_embeds
        presents = []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, S, hd)
            k = attn.k_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, kv, S, hd)
            v = attn.v_proj(h).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if self.with_cache:
                k = torch.cat((past[2 * i], k), dim=2)  # (B, kv, P+S, hd)
                v = torch.cat((past[2 * i + 1], v), dim=2)
                presents += [k, v]
            out = self._grouped_attention(q, k, v, mask, groups)  # (B, heads, S, hd)
            out = out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.lm.norm(x)
        if self.with_cache:
            return (x, *presents)
        return x


class RetrieverHead(nn.Module):
    """ColQwen2 late-interaction head over the text model.

    (inputs_embeds, position_ids, attention_mask) → embeddings (B, S, dim), each token
    L2-normalised and multiplied by the mask, exactly as ColQwen2ForRetrieval does.
    """

    def __init__(self, language_model: nn.Module, proj: nn.Linear):
        super().__init__()
        self.text = TextModel(language_model, with_cache=False)
        self.proj = proj

    def forward(self, inputs_embeds, position_ids, attention_mask):
        hidden = self.text(inputs_embeds, position_ids, attention_mask)  # (B, S, H)
        emb = self.proj(hidden)  # (B, S, dim)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return emb * attention_mask.unsqueeze(-1).to(emb.dtype)
