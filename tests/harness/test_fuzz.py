"""Fuzzing the suite loader and the CLI: whatever the suite file or the arguments, the outcome is
a loaded suite (exit 0) or one line naming the problem (SuiteError; exit code 2), never a
traceback. Values are drawn from the suite schema itself (the pydantic models' fields, each
method's and labeler's constructor parameters, the registries' names), so a field added later
is fuzzed too. Nothing loads a model: the CLI runs are dry runs, reports and leaderboards."""

from __future__ import annotations

import json
import os
import types
import typing
from functools import cache
from io import StringIO

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from rich.console import Console
from typer.testing import CliRunner

from audit.cli import app
from audit.registry import LABELERS, METHODS, resolve, suite_params
from audit.run.suite import RESULT_COLUMNS
from audit.spec import Suite, SuiteError, load_suite, plan
from audit.zoo.recipes import RECIPES
from audit.zoo.synthfaces import ATTRIBUTES

# A fixed, quick set of examples by default (the same in every run: a failure is never luck);
# DIFFAUDIT_FUZZ_EXAMPLES=2000 fuzzes that many fresh random examples per test.
DEEP = int(os.environ.get("DIFFAUDIT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 50, deadline=None, derandomize=not DEEP, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Words the schema gives meaning to, so random values often reach the checks past the first one.
WORDS = sorted({*METHODS, *LABELERS, *ATTRIBUTES, *(c for cs in ATTRIBUTES.values() for c in cs),
                *(f"zoo:{name}" for name in RECIPES), "uniform", "auto", "chi2", "kl", "h", "x", "assign",
                "../x", "/tmp", "", "no", "yes", "off", "float16", "DDIMScheduler", "synthfaces:biased"})
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(WORDS))
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(WORDS)), inner, max_size=4),
                     max_leaves=12)

VALID = {
    "name": "fuzz",
    "models": [{"name": "ddpm", "source": "zoo:synthfaces-ddpm", "steps": 5},
               {"name": "t2i", "source": "zoo:synthfaces-t2i", "steps": 5}],
    "methods": [{"name": "none"}, {"name": "prompt"},
                {"name": "distribution_guidance", "params": {"scale": 2.0}},
                {"name": "sample_guidance", "params": {"scale": "auto"}},
                {"name": "universal_guidance", "params": {"scale": 1.0}}],
    "settings": [{"attributes": ["skin_tone"], "target": "uniform"},
                 {"attributes": ["skin_tone", "eyeglasses"], "target": [0.4, 0.1, 0.4, 0.1]}],
    "samples": 8, "batch_size": 4,
    "labelers": ["synthfaces-eval"],
    "labeler_options": {"synthfaces-eval": {"batch_size": 16}},
}


def values_of(annotation) -> st.SearchStrategy:
    """Values of a field's type, mixed with arbitrary YAML: what a user might write there, and
    what they should not."""
    return st.one_of(typed_values(annotation), TREES)


def typed_values(annotation) -> st.SearchStrategy:
    """Values of a type annotation (Literal, unions, Annotated, lists, dicts, scalars)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is typing.Annotated:
        return typed_values(args[0])
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*map(typed_values, args))
    if origin in (list, tuple):
        return st.lists(typed_values(args[0]) if args else TREES, max_size=3)
    if origin is dict:
        return st.dictionaries(typed_values(args[0]), typed_values(args[1]), max_size=3)
    if annotation in (bool, int, float, str, type(None)):
        return st.from_type(annotation)
    return TREES  # Any, a nested model (fuzzed field by field), a class


def nested_model(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly, in a list or in a union), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(nested_model, typing.get_args(annotation))), None)


@cache
def field_values() -> list[tuple[tuple, st.SearchStrategy]]:
    """(path, values to put there) for every path of field_paths, built once."""
    return [(path, values_of(annotation)) for path, annotation in field_paths()]


@cache
def field_paths() -> list[tuple[tuple, object]]:
    """(path in VALID, annotation) for every field of Suite and the models nested in it (at the
    indices VALID has), plus every method's params and every labeler's options, from their
    constructors."""
    paths = []

    def walk(model: type[BaseModel], node: dict, prefix: tuple) -> None:
        for name, field in model.model_fields.items():
            paths.append(((*prefix, name), field.annotation))
            inner = nested_model(field.annotation)
            value = node.get(name)
            if inner is None or value is None:
                continue
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                walk(inner, item, (*prefix, name, i) if isinstance(value, list) else (*prefix, name))

    walk(Suite, VALID, ())
    for i, method in enumerate(VALID["methods"]):
        for key, (annotation, _) in (suite_params(resolve(METHODS, method["name"], "method")) or {}).items():
            paths.append((("methods", i, "params", key), annotation))
    for labeler in LABELERS:
        for key, (annotation, _) in (suite_params(resolve(LABELERS, labeler, "labeler")) or {}).items():
            paths.append((("labeler_options", labeler, key), annotation))
    return paths


@st.composite
def mutated_suites(draw) -> dict:
    """VALID with one to three fields set to values drawn for them (a labeler option also adds
    its labeler to `labelers`, or the suite would only be refused for an unused option)."""
    data = yaml.safe_load(yaml.safe_dump(VALID))
    for path, values in draw(st.lists(st.sampled_from(field_values()), min_size=1, max_size=3)):
        node = data
        for key in path[:-1]:
            if isinstance(node, dict):
                node = node.setdefault(key, {})
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node = node[key]
            else:
                break
        else:
            if isinstance(node, dict):
                node[path[-1]] = draw(values)
        labelers = data.get("labelers")
        option = path[:1] == ("labeler_options",) and len(path) > 2
        if option and isinstance(labelers, list) and path[1] not in labelers:
            labelers.append(path[1])
    return data


def loads_or_says_why_in_one_line(path) -> None:
    try:
        suite = load_suite(path)
    except SuiteError as error:
        message = str(error)
        assert message.startswith(str(path)) and "\n" not in message, message
        return
    cells = plan(suite)  # what a dry run does with a loaded suite
    from audit.plan_view import print_plan

    print_plan(suite, Console(file=StringIO(), width=200))
    assert cells


def dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True)


def test_the_unmutated_suite_is_valid(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(dump(VALID))
    assert len(plan(load_suite(path))) == 2 * 5 * 2
    assert len(field_paths()) > 60  # every field of every nested model, params and options included


@FUZZ
@given(data=mutated_suites())
def test_any_value_in_any_field_loads_or_fails_in_one_line(tmp_path, data):
    path = tmp_path / "suite.yaml"
    path.write_text(dump(data))
    loads_or_says_why_in_one_line(path)


@FUZZ
@given(tree=st.one_of(TREES, st.dictionaries(st.sampled_from(sorted(Suite.model_fields)), TREES, max_size=8)))
def test_any_yaml_tree_loads_or_fails_in_one_line(tmp_path, tree):
    path = tmp_path / "suite.yaml"
    path.write_text(dump(tree))
    loads_or_says_why_in_one_line(path)


@FUZZ
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                         st.sampled_from(WORDS).map(lambda w: f"name: {w}\n{w}: [{{\n".encode())))
def test_any_bytes_load_or_fail_in_one_line(tmp_path, content):
    path = tmp_path / "suite.yaml"
    path.write_bytes(content)
    loads_or_says_why_in_one_line(path)


# -- the CLI ----------------------------------------------------------------------------------

@cache
def command_options(name: str) -> list[str]:
    """The options of a CLI command, read from the command itself."""
    import typer.main

    command = typer.main.get_command(app).commands[name]
    return [opt for param in command.params for opt in getattr(param, "opts", []) if opt.startswith("-")]


def odd_paths(tmp) -> st.SearchStrategy:
    (tmp / "a-file").write_text("x")
    (tmp / "a-dir").mkdir(exist_ok=True)
    (tmp / "suite.yaml").write_text(dump(VALID))
    return st.sampled_from([str(tmp / p) for p in ("a-file", "a-dir", "suite.yaml", "missing", "a-file/under",
                                                    "a-dir/new/deeper", "out.html", "a-dir/x.html")]
                           + ["", "-", ".", "..", "/", "\x00", "a\nb"])


def odd_arguments(tmp, command: str) -> st.SearchStrategy:
    option = st.sampled_from(command_options(command))
    value = st.one_of(odd_paths(tmp), st.integers(-5, 5).map(str), st.floats().map(str), st.text(max_size=6))
    flags = st.lists(st.tuples(option, value).map(list), max_size=3).map(lambda pairs: sum(pairs, []))
    extra = st.lists(st.one_of(value, option), max_size=2)
    return st.tuples(st.lists(odd_paths(tmp), min_size=0, max_size=2), flags, extra).map(lambda t: t[0] + t[1] + t[2])


def exits_cleanly(result) -> None:
    """Success, or exit code 2 with one line on stderr; never an exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output


@pytest.mark.parametrize("command", ["run", "report", "leaderboard"])
def test_odd_cli_arguments_exit_cleanly(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # the default outputs (runs/NAME, leaderboard.html) land here

    @FUZZ
    @given(args=odd_arguments(tmp_path, command))
    def check(args):
        if command == "run":  # never a real run: that loads models
            args = [a for a in args if a != "--measure-only"] + ["--dry-run"]
        exits_cleanly(CliRunner().invoke(app, [command, *args], terminal_width=200))

    check()


@FUZZ
@given(results=st.one_of(TREES, st.lists(st.dictionaries(st.sampled_from(RESULT_COLUMNS), SCALARS), max_size=4)),
       suite=st.one_of(TREES, st.dictionaries(st.sampled_from(sorted(Suite.model_fields)), st.one_of(SCALARS, TREES),
                                              min_size=1)))
def test_a_damaged_run_directory_is_reported_in_one_line(tmp_path, results, suite):
    """report and leaderboard read what a run wrote; a file damaged or edited by hand is a
    one-line error (or, where the report can make sense of it, a report)."""
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "suite.json").write_text(json.dumps(suite))
    exits_cleanly(CliRunner().invoke(app, ["report", str(tmp_path)]))
    exits_cleanly(CliRunner().invoke(app, ["leaderboard", str(tmp_path), "-o", str(tmp_path / "board.html")]))
