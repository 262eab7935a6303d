"""CLI conventions: --version, documented flags with their defaults, one-line parser errors
(exit 2), flags derived from the settings objects, and a bad --model refused at once."""
import argparse
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fire_reg
from fire_reg.cli import main
from fire_reg.cli.commands import _parser
from fire_reg.geometry import transforms
from fire_reg.register.registrar import RegistrarConfig

CONSOLE_SCRIPT = Path(sys.executable).parent / "fire-reg"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def parsers(parser, name="fire-reg"):
    """(name, parser) of the parser and every subcommand parser, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from parsers(sub, f"{name} {command}")


def test_every_flag_has_help_and_shows_its_default():
    seen = 0
    for name, parser in parsers(_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
            default = action.default
            if default is None or default is False or default is argparse.SUPPRESS:
                continue
            assert f"default: {default}" in text, f"{name}: {action.option_strings}"
            seen += 1
    assert seen >= 12  # register/evaluate registrar flags, evaluate, prepare, data, demo


def test_registrar_flags_come_from_the_config():
    """Names, defaults and choices of the registrar flags are RegistrarConfig's fields; the
    parsed flags build that config back."""
    register = dict(parsers(_parser()))["fire-reg register"]
    flags = {a.dest: a for a in register._actions if a.option_strings}
    defaults = RegistrarConfig()
    for name in ("iterations", "refine", "refine_width", "transform"):
        assert flags[name].option_strings == ["--" + name.replace("_", "-")]
        assert flags[name].default == getattr(defaults, name)
    assert set(flags["transform"].choices) == {*transforms.model_names(), "none"}
    from fire_reg.cli.commands import _registrar_flags

    args = _parser().parse_args(["register", "a", "b", "--out", "o", "--iterations", "3",
                                 "--transform", "affine", "--refine-width", "256"])
    assert _registrar_flags().config(args) == RegistrarConfig(iterations=3, transform="affine",
                                                              refine_width=256)


def test_a_transform_model_registered_later_is_offered():
    class Toy(transforms.Affine):
        model, parameters = "toy-affine", 7

    transforms.register_model(Toy)
    try:
        register = dict(parsers(_parser()))["fire-reg register"]
        choices = next(a.choices for a in register._actions if a.dest == "transform")
        assert "toy-affine" in choices
        assert RegistrarConfig(transform="toy-affine").transform == "toy-affine"
    finally:
        transforms.unregister_model("toy-affine")
    with pytest.raises(ValueError, match="transform must be one of"):
        RegistrarConfig(transform="toy-affine")


def test_a_refused_setting_names_its_flag_and_leaves_nothing(tmp_path, capsys):
    for flags, expected in ((["--iterations", "0"], "--iterations: must be at least 1, got 0"),
                            (["--refine-width", "10"], "--refine-width: must be at least 64")):
        code, _, err = run(capsys, "register", "a.jpg", "b.jpg", "--out", tmp_path / "o", *flags)
        assert code == 2 and err.strip().startswith(f"fire-reg: error: {expected}"), err
        assert not (tmp_path / "o").exists()
    code, _, err = run(capsys, "prepare", "--fire", tmp_path, "--out", tmp_path / "p",
                       "--per-pair", "0")
    assert code == 2 and err.strip() == "fire-reg: error: --per-pair: must be at least 1, got 0"


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"fire-reg {fire_reg.__version__}"
    from importlib.metadata import version

    assert version("fire-reg") == fire_reg.__version__  # the package metadata agrees


@pytest.mark.parametrize("argv,expected", [
    (["register", "a.jpg", "b.jpg"], "fire-reg register: error: the following arguments are "
                                     "required: --out"),
    (["register", "a.jpg", "b.jpg", "--out", "o", "--iterations", "two"],
     "fire-reg register: error: argument --iterations: invalid int value: 'two'"),
    (["register", "a.jpg", "b.jpg", "--out", "o", "--transform", "spline"],
     "fire-reg register: error: argument --transform: invalid choice: 'spline'"),
    (["regster"], "fire-reg: error: argument COMMAND: invalid choice: 'regster'"),
    ([], "fire-reg: error: the following arguments are required: COMMAND"),
])
def test_parser_errors_are_one_line_with_status_2(argv, expected, tmp_path):
    """Through the installed console script: exactly one line on stderr, exit status 2."""
    done = subprocess.run([str(CONSOLE_SCRIPT), *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(expected), done.stderr
    assert done.stdout == "" and not (tmp_path / "o").exists()


def foreign_models(tmp_path):
    """{path: what the error must say} for files that are not fire-reg models."""
    not_zip = tmp_path / "text.keras"
    not_zip.write_text("nope")
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("model.weights.h5", b"")
    other = tmp_path / "other.keras"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "Sequential",
                                                    "config": {"name": "other"}}))
    folder = tmp_path / "folder.keras"
    folder.mkdir()
    return {tmp_path / "missing.keras": "model file not found",
            not_zip: "not a readable Keras model", no_config: "without config.json",
            other: "not a fire-reg model (model 'other'", folder: "is a folder"}


def test_a_bad_model_is_named_before_anything_else(tmp_path, capsys):
    for path, problem in foreign_models(tmp_path).items():
        for argv in (["register", "missing_a.jpg", "missing_b.jpg"],
                     ["evaluate", "--fire", tmp_path / "no_set"]):
            code, _, err = run(capsys, *argv, "--model", path, "--out", tmp_path / "out")
            assert code == 2 and err.startswith(f"fire-reg: error: {path}: "), err
            assert problem in err and len(err.strip().splitlines()) == 1
            assert not (tmp_path / "out").exists()


def test_a_bad_model_is_refused_without_importing_keras(tmp_path):
    """In a fresh interpreter: refused before any framework is imported (so in the time
    Python takes to start, not the seconds of a Keras start-up; timed in the README)."""
    bad = tmp_path / "bad.keras"
    bad.write_text("nope")
    script = ("import sys\n"
              "from fire_reg.cli import main\n"
              f"code = main(['register', 'a.jpg', 'b.jpg', '--model', {str(bad)!r}, '--out', "
              f"{str(tmp_path / 'out')!r}])\n"
              "heavy = {'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)\n"
              "import json; print(json.dumps([code, sorted(heavy)]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    code, heavy = json.loads(done.stdout)
    assert code == 2 and heavy == [], done.stdout
    assert "bad.keras: not a readable Keras model" in done.stderr
