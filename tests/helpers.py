"""Helpers for tiny test models (as SAELens does): a small BPE tokenizer trained on the bundled
corpus, and random-init Llama / XGLM / BLOOM models with that tokenizer saved to a folder."""

from __future__ import annotations

from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def train_tokenizer(folder: Path, vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tl_langneurons import MultilingualCorpus

    texts = [t for ts in MultilingualCorpus.bundled().texts.values() for t in ts]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def tiny_config(arch: str, vocab: int):
    from transformers import BloomConfig, LlamaConfig, XGLMConfig

    common = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=256, **common)
    if arch == "xglm":
        return XGLMConfig(d_model=32, ffn_dim=48, num_layers=3, attention_heads=4, max_position_embeddings=256,
                          decoder_start_token_id=2, **common)
    if arch == "bloom":
        return BloomConfig(hidden_size=32, n_layer=3, n_head=4, **common)
    raise ValueError(arch)


def make_tiny(arch: str, tokenizer_dir: Path, root: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = tiny_config(arch, len(tok))
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so activations differ visibly
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    d = root / arch
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _typechecker():
    """beartype with the PEP 484 numeric tower (an int is accepted where a float is annotated)."""
    from beartype import BeartypeConf, beartype

    return beartype(conf=BeartypeConf(is_pep484_tower=True))


typechecker = _typechecker()
