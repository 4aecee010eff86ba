"""TokenLayout: token order matches the real models' patchify; position classes are right."""

import pytest
import torch

import stas
from stas.layout import TokenLayout, latent_frame_of, latent_frames_for, pixel_frames_of


def test_pixel_latent_frame_mapping():
    assert latent_frames_for(81) == 21 and latent_frames_for(29) == 8 and latent_frames_for(1) == 1
    assert list(pixel_frames_of(0)) == [0]
    assert list(pixel_frames_of(1)) == [1, 2, 3, 4]
    assert list(pixel_frames_of(2)) == [5, 6, 7, 8]
    assert [latent_frame_of(i) for i in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    for bad in (10, 80, 30):
        with pytest.raises(ValueError, match="1 \\+ 4k"):
            latent_frames_for(bad)
    with pytest.raises(ValueError, match="positive"):
        latent_frames_for(0)


def test_wan21_full_size_numbers():
    lay = TokenLayout.from_video(81, 480, 832)
    assert (lay.frames, lay.height, lay.width) == (21, 30, 52)
    assert lay.num_tokens == 32760 and lay.tokens_per_frame == 1560


def test_position_masks_example():
    # 3 token-frames of 2 rows x 3 cols: 18 tokens, 6 per frame
    lay = TokenLayout(3, 4, 6, (1, 2, 2))
    m = lay.position_masks(boundary_width=1)
    assert m["first_frame"].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert m["boundary"].nonzero().flatten().tolist() == [6, 11, 12, 17]
    assert m["interior"].nonzero().flatten().tolist() == [7, 8, 9, 10, 13, 14, 15, 16]
    rows = lay.position_masks(boundary_width=1, unit="rows")
    assert rows["boundary"].nonzero().flatten().tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    assert rows["interior"].sum() == 0
    total = sum(v.long() for v in m.values())
    assert torch.equal(total, torch.ones(18, dtype=torch.long))  # a partition
    assert lay.position_mask("all").all()
    assert lay.position_mask(("first_frame", "boundary")).sum() == 10
    with pytest.raises(ValueError):
        lay.position_masks(boundary_width=4)
    vals = torch.arange(18.0)
    means = lay.class_means(vals)
    assert means["first_frame"] == 2.5 and means["boundary"] == (6 + 11 + 12 + 17) / 4
    assert lay.index(2, 1, 2) == 17 and tuple(lay.coords()[17].tolist()) == (2, 1, 2)


def _coord_encoding_input(b, c, f, h, w):
    """Latent whose channels 0, 1, 2 hold the latent frame, row and column index."""
    x = torch.zeros(b, c, f, h, w)
    x[:, 0] = torch.arange(f, dtype=torch.float)[:, None, None]
    x[:, 1] = torch.arange(h, dtype=torch.float)[None, :, None]
    x[:, 2] = torch.arange(w, dtype=torch.float)[None, None, :]
    return x


def _capture_block0_input(transformer, blocks):
    seen = {}

    def pre(module, args, kwargs):
        seen["h"] = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]).detach().clone()

    return seen, blocks[0].register_forward_pre_hook(pre, with_kwargs=True)


def test_layout_matches_wan_patchify():
    from stas.load import tiny_random_pipeline

    wan = tiny_random_pipeline("wan", text_encoder=False)
    t = wan.transformer
    f, h, w = 3, 4, 6
    with torch.no_grad():
        conv = t.patch_embedding
        conv.weight.zero_(), conv.bias.zero_()
        for c in range(3):  # output channel c copies input channel c at the patch's top-left element
            conv.weight[c, c, 0, 0, 0] = 1.0
    seen, handle = _capture_block0_input(t, t.blocks)
    x = _coord_encoding_input(1, 16, f, h, w)
    with torch.no_grad():
        t(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=torch.zeros(1, 4, 32))
    handle.remove()
    lay = stas.get_adapter(wan).layout((), {"hidden_states": x})
    got = seen["h"][0, :, :3]  # (L, 3): frame, 2*row, 2*col of the patch's top-left latent cell
    coords = lay.coords().float()
    expect = torch.stack([coords[:, 0], 2 * coords[:, 1], 2 * coords[:, 2]], 1)
    assert got.shape[0] == lay.num_tokens == 3 * 2 * 3
    assert torch.equal(got, expect)


def test_layout_matches_cogvideox_patchify():
    from stas.load import tiny_random_pipeline

    pipe = tiny_random_pipeline("cogvideox", text_encoder=False)
    t = pipe.transformer
    f, h, w = 3, 4, 6
    with torch.no_grad():
        conv = t.patch_embed.proj
        conv.weight.zero_(), conv.bias.zero_()
        for c in range(3):
            conv.weight[c, c, 0, 0] = 1.0
    seen, handle = _capture_block0_input(t, t.transformer_blocks)
    x = _coord_encoding_input(1, 4, f, h, w).permute(0, 2, 1, 3, 4)  # CogVideoX takes (B, F, C, H, W)
    with torch.no_grad():
        t(hidden_states=x, encoder_hidden_states=torch.zeros(1, 16, 32), timestep=torch.tensor([500]),
          image_rotary_emb=None)
    handle.remove()
    lay = stas.get_adapter(pipe).layout((), {"hidden_states": x})
    coords = lay.coords().float()
    expect = torch.stack([coords[:, 0], 2 * coords[:, 1], 2 * coords[:, 2]], 1)
    got = seen["h"][0, :, :3]  # the block's video tokens (text tokens are separate)
    # CogVideoX adds a positional embedding after the projection: compare against a zero-input run
    x0 = torch.zeros_like(x)
    seen0, handle = _capture_block0_input(t, t.transformer_blocks)
    with torch.no_grad():
        t(hidden_states=x0, encoder_hidden_states=torch.zeros(1, 16, 32), timestep=torch.tensor([500]),
          image_rotary_emb=None)
    handle.remove()
    assert torch.allclose(got - seen0["h"][0, :, :3], expect, atol=1e-5)
