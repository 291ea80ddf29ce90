"""The independent relevance judge on tiny models: a model judge's score against a slow loop over the judge's
logits, and ``sweep --lcb --judge`` / ``lcb --judge`` through the command line (a column of the judge's, its
identity recorded, a second sweep on the same answers scoring nothing, bad judges refused before loading)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("jieba", reason="LCB's metric tokenizes Chinese with jieba: pip install 'tl-langneurons[lcb]'")

from tl_langneurons.evaluate.judge import ModelJudge, gains  # noqa: E402
from tl_langneurons.model.driver import Runner  # noqa: E402

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def _slow_score(model, request: str, answer: str, max_tokens: int) -> float:
    """Minus the mean NLL of the answer's text (the judge's tokens) after the request as the judge's chat template
    writes it, BOS in front, from the whole sequence's logits, one position at a time."""
    tok, runner = model.tokenizer, Runner(model)
    if tok.chat_template:
        prompt = tok.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                         tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    else:
        prompt = tok(request + "\n\n", add_special_tokens=False)["input_ids"]
    start = [runner.bos_id] + list(prompt)
    tokens = tok(answer, add_special_tokens=False)["input_ids"][:max_tokens]
    with torch.no_grad():
        logp = runner.hf(torch.tensor([start + tokens])).logits.float().log_softmax(-1)[0]
    n = len(start)
    return float(torch.stack([logp[n - 1 + i, t] for i, t in enumerate(tokens)]).mean())


@pytest.mark.parametrize("template", [None, TEMPLATE])
def test_model_judge_equals_a_slow_loop_over_its_logits(tiny_llama, template):
    tok = tiny_llama.tokenizer
    had = getattr(tok, "chat_template", None)
    requests = ["Reply in German. Explain photosynthesis.", "Write a haiku about the sea. Answer in Japanese."]
    answers = ["Die Photosynthese ist ein Vorgang in Pflanzen.", "海の歌、静かな波"]
    try:
        tok.chat_template = template
        judge = ModelJudge(tiny_llama, max_tokens=8)
        got = judge.score(requests + requests, answers + answers[::-1])
        want = [_slow_score(tiny_llama, r, a, 8) for r, a in zip(requests + requests, answers + answers[::-1])]
        assert got == pytest.approx(want, abs=1e-4)
        g = gains(judge, answers, requests, requests[::-1])
        assert g == pytest.approx([want[0] - want[3], want[1] - want[2]], abs=1e-4)
        assert judge.score(["x"], [""])[0] != judge.score(["x"], [""])[0]  # no token: nan
    finally:
        tok.chat_template = had


def test_model_judge_reads_a_long_request_by_its_head_and_tail(tiny_llama):
    tok = tiny_llama.tokenizer
    judge = ModelJudge(tiny_llama, max_tokens=8, max_request_tokens=8)
    long = "Reply in German. " + "Explain how plants turn light into sugar. " * 5
    ids = tok(long, add_special_tokens=False)["input_ids"]
    cut = tok.decode(ids[:4]) + " … " + tok.decode(ids[-4:])
    assert judge.request_text(long) == cut and judge.request_text("Hi") == "Hi"
    assert judge.score([long], ["Die Pflanzen"]) == pytest.approx([_slow_score(tiny_llama, cut, "Die Pflanzen", 8)],
                                                                 abs=1e-4)


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_sweep_lcb_judge_from_the_command_line(tiny_dirs, tmp_path, capsys):
    from tl_langneurons.cli import main

    n = tmp_path / "n"
    assert main(["find", "--model", str(tiny_dirs["llama"]), "--corpus", "bundled", "--n-per-lang", "12", "--k", "20",
                 "--out", str(n), "--device", "cpu", "--quiet"]) == 0
    common = ["sweep", "--neurons", str(n), "--lcb", "--languages", "de", "--val-prompts", "3", "--test-prompts", "6",
              "--max-new-tokens", "4", "--quiet", "--method", "add", "--k-fractions", "5%", "--alphas", "1",
              "--layer-sets", "all"]
    judge = str(tiny_dirs["bloom"])  # another tiny model on the same tokenizer
    capsys.readouterr()
    for bad, says in ((["--judge", "nonsense"], "unknown judge 'nonsense'"),
                      (["--judge", str(tiny_dirs["llama"])], "steered model"),
                      (["--judge", "encoder:labse"], "no encoder 'labse'")):
        assert main([*common, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0]
    assert main(["sweep", "--neurons", str(n), "--judge", "lexical", "--quiet"]) == 2  # a judge of LCB answers only
    assert not list(n.glob("lcb*"))  # refused before anything ran

    assert main([*common, "--judge", judge]) == 0
    res = json.loads((n / "lcb-add" / "sweep.json").read_text())
    rows = [r for r in res["test"] if r["lang"] == "de"]
    assert all(isinstance(r["relevance_judge"], float) and 0 <= r["on_topic_judge"] <= 1 for r in rows)
    ident = res["meta"]["judge"]
    assert ident["kind"] == "model" and ident["fingerprint"] and ident["scored"] > 0
    assert "relevance (judge) (mean)" in (n / "lcb-add" / "sweep.md").read_text()
    files = list((n / "samples" / "judge").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["identity"]["fingerprint"] == ident["fingerprint"]

    # the same answers again (another method's sweep shares none, system prompt and the paper's clamp; --overwrite
    # of this one shares all): the judge scores nothing
    assert main([*common, "--judge", judge, "--overwrite", "--out", str(n / "lcb-add")]) == 0
    again = json.loads((n / "lcb-add" / "sweep.json").read_text())
    assert again["meta"]["judge"]["scored"] == 0 and again["meta"]["judge"]["cached"] == ident["scored"] + ident["cached"]
    assert [r["relevance_judge"] for r in again["test"]] == [r["relevance_judge"] for r in res["test"]]

    assert main(["lcb", str(n), "--judge", judge]) == 0
    assert "relevance (judge) (mean)" in (n / "lcb" / "lcb.md").read_text()
    assert main(["lcb", str(n), "--judge", "lexical", "--overwrite"]) == 2  # judged by another: one line
    assert "rerun it with sweep --lcb" in capsys.readouterr().err
