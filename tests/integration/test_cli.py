"""The command line: --help everywhere, the subcommands on the tiny model, and one-line errors
with exit status 2 that write nothing."""

import argparse
import ast
import builtins
import dataclasses
import io
import os
import pathlib
import sys
from pathlib import Path

import pytest

from tl_langneurons import cli
from tl_langneurons.analyses.attribution import AttributionConfig
from tl_langneurons.analyses.cross_steering import CrossSteerConfig
from tl_langneurons.analyses.deactivation import DeactivationConfig
from tl_langneurons.cli import build_parser, main
from tl_langneurons.config import cli_fields, from_args
from tl_langneurons.detect.corpus import CorpusConfig
from tl_langneurons.detect.neurons import FindConfig
from tl_langneurons.evaluate.control import EvaluateConfig
from tl_langneurons.evaluate.sweep import SweepConfig
from tl_langneurons.model.load import ModelConfig
from tl_langneurons.steer.pairs import SteerPairsConfig
from tl_langneurons.steer.methods import SteeringConfig
from tl_langneurons.study import DemoConfig

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


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
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
    assert "holds a run with other settings" in capsys.readouterr().err
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


@pytest.mark.parametrize("argv,short,meant", [
    (["sweep", "--neurons", "N", "--method", "diffmean", "--layer", "1"], "--layer", "--layer-sets"),
    (["steer", "--neurons", "N", "--lang", "de", "--out", "X"], "--out", "--outlier-factor"),
    (["--deb", "report", "D"], "--deb", "--debug"),
])
def test_abbreviated_options_are_refused(argv, short, meant, capsys, monkeypatch):
    """An option is never read as a longer one it begins (``--layer`` as ``--layer-sets``, which diffmean
    ignores): argparse refuses it (exit 2) before any folder is read or model loads."""
    assert any(meant in sp._option_string_actions for sp in [build_parser(), *_subparsers()[1].values()])
    monkeypatch.setattr(cli, "Study", lambda *a, **k: pytest.fail("a model or a neurons folder was read"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {short}" in capsys.readouterr().err


# Each subcommand's config dataclasses; "-model" marks ModelConfig without --model (commands that
# read a neurons folder take the model from it unless --model is given).
CONFIGS = {
    "info": (ModelConfig,), "find": (ModelConfig, CorpusConfig, FindConfig),
    "steer": ("-model", SteerPairsConfig, SteeringConfig), "evaluate": ("-model", EvaluateConfig, SteeringConfig),
    "sweep": ("-model", SweepConfig),
    "deactivate": ("-model", DeactivationConfig), "attribution": ("-model", AttributionConfig),
    "tokens": ("-model",), "cross-steer": ("-model", CrossSteerConfig, SteeringConfig), "report": (), "demo": (DemoConfig,),
    "compare": (), "lcb": (),
}
FLAGS = {"quiet", "debug", "overwrite", "hooks"}  # plain switches, off by default
REQUIRED = {  # the smallest command line of each subcommand: {dest: value}
    "info": {}, "find": {"out": "O"}, "steer": {"neurons": "N", "lang": "de"}, "evaluate": {"neurons": "N"},
    "sweep": {"neurons": "N"}, "deactivate": {"neurons": "N", "heldout": "H"}, "attribution": {"neurons": "N"},
    "tokens": {"neurons": "N", "text": "some text"}, "cross-steer": {"neurons": "N", "heldout": "H"},
    "report": {"dir": "D"}, "demo": {}, "compare": {"dirs": ["A", "B"], "out": "O"},
    "lcb": {"dir": "D"},
}
POSITIONAL = {"text", "dir", "dirs"}
POSITIONAL_FIELDS = {"prompt"}


def _argv(sub: str) -> list[str]:
    argv = [sub]
    for dest, value in REQUIRED[sub].items():
        values = value if isinstance(value, list) else [value]  # several positionals (compare's folders)
        argv += values if dest in POSITIONAL else ["--" + dest.replace("_", "-"), *values]
    return argv


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def _config_fields(sub: str) -> dict[str, dataclasses.Field]:
    """The config fields that options of ``sub`` set: {name: field}."""
    out = {}
    for cfg in CONFIGS[sub]:
        fields = [f for f in dataclasses.fields(ModelConfig) if f.name != "model"] if cfg == "-model" else \
            cli_fields(cfg)
        for f in fields:
            assert f.name not in out, (sub, f.name)  # two configs of one command never share an option name
            out[f.name] = f
    for cfg in CONFIGS[sub]:  # fields set by positional arguments (steer's prompt)
        for f in ([] if cfg == "-model" else dataclasses.fields(cfg)):
            if f.name in POSITIONAL_FIELDS:
                out.setdefault(f.name, f)
    return out


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def test_every_subcommand_has_its_configs():
    _, subs = _subparsers()
    assert set(subs) == set(CONFIGS)


@pytest.mark.parametrize("sub", sorted(CONFIGS))
def test_option_defaults_are_the_config_defaults(sub):
    parser, subs = _subparsers()
    fields = _config_fields(sub)
    actions = {a.dest: a for a in subs[sub]._actions if a.dest != "help"}
    # every exposed config field is an option of the command ...
    for cfg in CONFIGS[sub]:
        for f in cli_fields(ModelConfig if cfg == "-model" else cfg):
            if not (cfg == "-model" and f.name == "model"):
                assert f.name in actions, f"{sub}: {f.name} of {getattr(cfg, '__name__', cfg)} is not an option"
    for dest, a in actions.items():
        if dest in fields:  # ... whose default is the config's default
            want = _default(fields[dest])
            if want is dataclasses.MISSING:
                assert a.required, (sub, dest)
            else:
                assert not a.required and a.default == want and type(a.default) is type(want), (sub, dest, a.default, want)
        elif a.required:
            continue
        elif a.default is False:  # a switch
            assert dest in FLAGS and a.const is True and a.nargs == 0, (sub, dest)
        else:  # an option of the command's own: nothing unless given
            assert a.default is None, (sub, dest, a.default)
    top = {a.dest: a.default for a in parser._actions if a.dest not in ("help", "command")}
    assert top == {"debug": False}


@pytest.mark.parametrize("sub", sorted(CONFIGS))
def test_bare_command_line_gives_default_configs(sub):
    args = build_parser().parse_args(_argv(sub))
    fields = _config_fields(sub)
    for name, value in vars(args).items():
        if name in ("func", "command"):
            continue
        if name in REQUIRED[sub]:
            assert value == REQUIRED[sub][name], (sub, name)
        elif name in fields:
            assert value == _default(fields[name]), (sub, name, value)
        else:
            assert value in (None, False), (sub, name, value)
    for cfg in CONFIGS[sub]:
        if cfg == "-model":  # the model of the neurons folder unless --model is given
            assert args.model is None and args.backend == ModelConfig().backend
        else:
            extra = {f.name: REQUIRED[sub][f.name] for f in dataclasses.fields(cfg) if _default(f) is dataclasses.MISSING}
            assert from_args(cfg, args) == cfg(**extra), (sub, cfg.__name__)


def test_full_evaluate_command_line_gives_those_values():
    args = build_parser().parse_args([
        "evaluate", "--neurons", "N", "--model", "M", "--backend", "hf", "--languages", "de, ja", "--samples", "7",
        "--max-new-tokens", "9", "--temperature", "0.5", "--prompt", "Es war", "--value", "2.5", "--scale", "1.5",
        "--positions", "last", "--ablation-ks", "10,0.5%,3", "--ablation-samples", "4", "--batch-size", "8",
        "--out", "O", "--corpus", "C", "--quiet"])
    cfg = from_args(EvaluateConfig, args)
    assert cfg == EvaluateConfig(languages=["de", "ja"], samples=7, max_new_tokens=9, temperature=0.5, prompt="Es war",
                                 ablation_ks=[10, "0.5%", 3], ablation_samples=4, batch_size=8,
                                 steering=SteeringConfig(value=2.5, scale=1.5, positions="last"))
    assert type(cfg.steering.value) is float and [type(k) for k in cfg.ablation_ks] == [int, str, int]
    assert from_args(ModelConfig, args) == ModelConfig(model="M", backend="hf")
    assert (args.neurons, args.out, args.corpus, args.quiet) == ("N", "O", "C", True)
    other = from_args(EvaluateConfig, build_parser().parse_args(
        ["evaluate", "--neurons", "N", "--value", "zero", "--ablation-ks", "none"]))
    assert other.steering.value == "zero" and other.ablation_ks == []
    assert from_args(EvaluateConfig, build_parser().parse_args(
        ["evaluate", "--neurons", "N", "--value", "-1"])).steering.value == -1.0
    sparse = from_args(EvaluateConfig, build_parser().parse_args(
        ["evaluate", "--neurons", "N", "--method", "sparse", "--layer", "9", "--n-dims", "32", "--coef", "0.4",
         "--no-restore-norm", "--source", "en", "--positions", "generated"]))
    assert sparse.steering == SteeringConfig(method="sparse", layer=9, n_dims=32, coef=0.4, restore_norm=False,
                                             source="en", positions="generated")


def test_full_sweep_command_line_gives_those_values():
    args = build_parser().parse_args([
        "sweep", "--neurons", "N", "--languages", "fr", "--k-fractions", "0.5%,1%", "--scales", "0.5,3",
        "--positions", "last", "--layer-sets", "first,ends", "--val-samples", "5", "--test-samples", "6",
        "--max-new-tokens", "7", "--batch-size", "3"])
    cfg = from_args(SweepConfig, args)
    assert cfg == SweepConfig(languages=["fr"], k_fractions=["0.5%", "1%"], scales=[0.5, 3.0], positions=["last"],
                              layer_sets=["first", "ends"], val_samples=5, test_samples=6, max_new_tokens=7, batch_size=3)
    assert [type(x) for x in cfg.scales] == [float, float]


def test_full_find_command_line_gives_those_values():
    args = build_parser().parse_args([
        "find", "--model", "M", "--corpus", "hf:flores", "--n-per-lang", "9", "--seed", "4", "--languages", "en,ja",
        "--sites", "mlp_pre", "--pooling", "max", "--no-bos", "--k", "0.5%", "--batch-size", "2", "--max-length", "64",
        "--refuse-long", "--out", "O", "--overwrite"])
    assert from_args(CorpusConfig, args) == CorpusConfig(corpus="hf:flores", n_per_lang=9, seed=4, languages=["en", "ja"])
    assert from_args(FindConfig, args) == FindConfig(sites="mlp_pre", pooling="max", include_bos=False, k="0.5%",
                                                     batch_size=2, max_length=64, truncate=False)
    assert from_args(FindConfig, build_parser().parse_args(["find", "--out", "O", "--k", "25"])).k == 25
    with pytest.raises(SystemExit):
        build_parser().parse_args(["find", "--out", "O", "--pooling", "sum"])


_WRITE_MODULES_SKIPPED = {"tl_langneurons.provenance"}  # the atomic-write helper: the caller is who writes


def _writer() -> str | None:
    """The innermost tl_langneurons module (other than the write helper) on the stack."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_globals.get("__name__", "")
        if name.startswith("tl_langneurons") and name not in _WRITE_MODULES_SKIPPED:
            return name
        f = f.f_back
    return None


@pytest.mark.slow  # end to end: the full suite and CI run it, -m fast leaves it out
def test_cli_module_writes_no_files(tiny_dirs, tmp_path, monkeypatch, capsys):
    """cli.py parses and prints; every file is written by the package (the Python API)."""
    writes: list[tuple[str | None, str]] = []
    real_open, real_os_open, real_path_open = builtins.open, os.open, pathlib.Path.open
    real_replace, real_mkdir = os.replace, os.mkdir

    def is_write(mode):
        return any(c in str(mode) for c in "wax+")

    def rec_open(file, mode="r", *a, **k):
        if is_write(mode):
            writes.append((_writer(), str(file)))
        return real_open(file, mode, *a, **k)

    def rec_path_open(self, mode="r", *a, **k):
        if is_write(mode):
            writes.append((_writer(), str(self)))
        return real_path_open(self, mode, *a, **k)

    def rec_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            writes.append((_writer(), str(path)))
        return real_os_open(path, flags, *a, **k)

    def rec_replace(src, dst, *a, **k):
        writes.append((_writer(), str(dst)))
        return real_replace(src, dst, *a, **k)

    def rec_mkdir(path, *a, **k):
        writes.append((_writer(), str(path)))
        return real_mkdir(path, *a, **k)

    for obj, name, fn in ((builtins, "open", rec_open), (io, "open", rec_open), (pathlib.Path, "open", rec_path_open),
                          (os, "open", rec_os_open), (os, "replace", rec_replace), (os, "mkdir", rec_mkdir)):
        monkeypatch.setattr(obj, name, fn)
    out = tmp_path / "run"
    code = main(["find", "--model", str(tiny_dirs["llama"]), "--n-per-lang", "6", "--k", "3", "--out", str(out), "--quiet"])
    monkeypatch.undo()
    assert code == 0 and (out / "neurons.json").exists()
    by = {}
    for module, path in writes:
        by.setdefault(module, []).append(path)
    # the recorder sees the package's writes (so it would see the command line's) ...
    assert any(p.endswith("neurons.json") for p in by.get("tl_langneurons.detect.neurons_io", [])), sorted(by)
    # ... and none comes from cli.py
    assert "tl_langneurons.cli" not in by, by.get("tl_langneurons.cli")


def test_cli_source_has_no_file_writes():
    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            bad += [n for n in names if "provenance" in n or n.startswith("atomic_write") or n in ("shutil", "tempfile")]
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
        if name == "open":
            modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
            if any(not (isinstance(m, ast.Constant) and not any(c in m.value for c in "wax+")) for m in modes):
                bad.append(f"open(..., mode) at line {node.lineno}")
        if name in ("write_text", "write_bytes", "write", "mkdir", "makedirs", "replace", "rename", "unlink", "rmtree",
                    "savefig", "dump", "touch") or name.startswith("atomic_write"):
            bad.append(f"{name} at line {node.lineno}")
    assert bad == []


def test_every_parser_refuses_abbreviations():
    """Every ArgumentParser and subcommand parser of the package, the benchmarks and the examples is made
    with ``allow_abbrev=False`` (a subcommand made by ``add_parser`` does not inherit it from its parent)."""
    root = Path(cli.__file__).resolve().parents[1]
    files = [*(root / "tl_langneurons").rglob("*.py"), *(root / "benchmarks").glob("*.py"), *(root / "examples").glob("*.py")]
    made, bad = 0, []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            fn = getattr(node, "func", None)
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if isinstance(node, ast.Call) and name in ("ArgumentParser", "add_parser"):
                made += 1
                if not any(k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant) and k.value.value is False
                           for k in node.keywords):
                    bad.append(f"{path.relative_to(root)}:{node.lineno}")
    assert made >= 15 and bad == []


@pytest.mark.parametrize("sub,new,old,value,field", [
    ("find", "--selector", "--method", "lape", "method"),
    ("steer", "--intervention", "--method", "add", "method"),
    ("sweep", "--intervention", "--method", "diffmean", "method"),
    ("evaluate", "--intervention", "--method", "sparse", "method"),
    ("cross-steer", "--intervention", "--method", "add", "method"),
])
def test_selector_and_intervention_are_named_so_and_the_earlier_flag_still_works(sub, new, old, value, field):
    base = {"find": ["--out", "O"], "steer": ["--neurons", "N", "--lang", "de"], "sweep": ["--neurons", "N"],
            "evaluate": ["--neurons", "N"], "cross-steer": ["--neurons", "N", "--heldout", "H"]}[sub]
    parser = build_parser()
    assert getattr(parser.parse_args([sub, *base, new, value]), field) == value
    assert getattr(parser.parse_args([sub, *base, old, value]), field) == value
    assert new in parser._subparsers._group_actions[0].choices[sub].format_help()
