"""The command line: --help everywhere, the subcommands on the tiny model, and one-line errors
with exit status 2 that write nothing."""

import pytest

from tl_langneurons.cli import build_parser, main

SUBCOMMANDS = ["info", "find", "steer", "evaluate", "report", "demo"]


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0
    assert f"usage: tl-langneurons {sub}" in capsys.readouterr().out


def test_info_tiny(tiny_dirs, capsys):
    assert main(["info", "--model", str(tiny_dirs["llama"])]) == 0
    out = capsys.readouterr().out
    assert "layers: 3" in out
    assert "site mlp_post: 144 neurons (48 per layer)" in out
    assert "site paper:" in out


def test_find_steer_evaluate_report(tiny_dirs, tmp_path, capsys):
    model = str(tiny_dirs["llama"])
    out = tmp_path / "run"
    assert main(["find", "--model", model, "--n-per-lang", "8", "--k", "5", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Shared neurons" in text and "first / last quarter" in text
    for name in ("neurons.json", "neurons.safetensors", "layers.png", "overlap.md", "distributions.png", "timings.json"):
        assert (out / name).exists(), name
    # another run into the same folder is refused
    assert main(["find", "--model", model, "--n-per-lang", "8", "--k", "5", "--pooling", "max", "--out", str(out),
                 "--quiet"]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert main(["steer", "--neurons", str(out), "--lang", "ja", "--samples", "2", "--max-new-tokens", "5",
                 "The weather"]) == 0
    text = capsys.readouterr().out
    assert text.count("without:") == 2 and text.count("with:") == 2
    assert main(["evaluate", "--neurons", str(out), "--samples", "2", "--max-new-tokens", "4",
                 "--ablation-ks", "1,5", "--languages", "de,ja", "--quiet"]) == 0
    assert "| mean |" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "report.html").exists()


@pytest.mark.parametrize("args,msg", [
    (["--languages", "en,jp"], "unknown language code 'jp'"),
    (["--k", "0"], "k must be positive"),
    (["--k", "100000"], "larger than the number of neurons"),
    (["--sites", "mlp_out"], "unknown site 'mlp_out'"),
    (["--corpus", "/nonexistent/folder"], "does not exist"),
])
def test_find_errors_are_one_line(tiny_dirs, tmp_path, capsys, args, msg):
    out = tmp_path / "never"
    code = main(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "4", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert msg in err[-1] and err[-1].startswith("tl-langneurons: error:")
    assert "Traceback" not in "\n".join(err)
    assert not (out / "neurons.json").exists()


def test_steer_errors(tmp_path, capsys):
    assert main(["steer", "--neurons", str(tmp_path), "--lang", "de"]) == 2
    assert "holds no neurons" in capsys.readouterr().err


def test_parser_lists_every_subcommand():
    text = build_parser().format_help()
    for sub in SUBCOMMANDS:
        assert sub in text
