"""diffaudit command line."""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from typer.core import TyperGroup

from audit.cli_common import fail

# click's exceptions module, wherever this typer takes click from (recent typers vendor it)
CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]


class OneLineUsageErrors(TyperGroup):
    """Usage mistakes (an unknown option, "--n abc", a missing argument) as one line on stderr
    and exit code 2, like every other user error, instead of click's usage block."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # an Exit's code comes back
        except getattr(CLICK_ERRORS, "NoArgsIsHelpError", ()) as error:  # the command alone: its help
            typer.echo(error.format_message())
            code = error.exit_code
        except CLICK_ERRORS.ClickException as error:
            hint = f" (see `{error.ctx.command_path} --help`)" if getattr(error, "ctx", None) else ""
            typer.echo(f"error: {' '.join(error.format_message().split())}{hint}", err=True)
            code = 2 if isinstance(error, CLICK_ERRORS.UsageError) else error.exit_code
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(help="Fairness audits and debiasing benchmarks for diffusion models.", cls=OneLineUsageErrors,
                  no_args_is_help=True, pretty_exceptions_enable=False)


def _print_version(value: bool) -> None:
    if value:
        from audit import __version__

        typer.echo(f"diffaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print the installed version and exit.")) -> None:
    """Fairness audits and debiasing benchmarks for diffusion models."""


def check_writable(path: Path, what: str, kind: str = "directory") -> None:
    """Fail now, before any model loads, unless `path` can be written as a `kind` ("directory"
    or "file"): it is one already or can be created, in a directory this process may write.
    Nothing is created."""
    if "\0" in str(path):
        fail(f"{what} {str(path)!r}: a path cannot contain a NUL character")
    if path.is_dir() if kind == "file" else (path.exists() and not path.is_dir()):
        other = "directory" if kind == "file" else "file"
        fail(f"{what} {path} is a {other}, not a {kind}: give a {kind} path")
    target = path.absolute()
    existing = next(p for p in [target, *target.parents] if os.path.lexists(p))
    if kind == "file" and existing == target:
        existing = target.parent
    if not existing.is_dir():
        fail(f"{what} {path}: {existing} is a file, so {path} cannot be created under it; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{what} {path}: {existing} is not writable by this user; give a {kind} you can write "
             "(or change its permissions)")


# errno values that mean the machine, not the program, refused a write: one line, exit 2.
FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextmanager
def environment_errors(out: Path | None):
    """Turn a full disk or a refused write anywhere inside the block into one line naming the
    path (the file being written, else OUT). Files already written stay whole (atomic writes), so
    the same command resumes once there is space."""
    import sqlite3

    def where(error: OSError) -> str:
        return str(error.filename or out or "the output directory")

    try:
        yield
    except OSError as error:
        if error.errno in FULL:
            fail(f"no space left on the disk holding {where(error)} (writing it failed; files already written are "
                 "intact): free space or give another -o, then run the same command again to resume")
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fail(f"cannot write {where(error)}: {error.strerror}; give a location you can write")
        raise
    except sqlite3.OperationalError as error:
        if "disk is full" not in str(error):
            raise
        fail(f"no space left on the disk holding {out / 'index.sqlite' if out else 'the index'} (files already "
             "written are intact): free space or give another -o, then run the same command again to resume")


def _user_errors() -> tuple[type[Exception], ...]:
    from audit.files import UnsafePathError
    from audit.models.loading import ModelNotAvailable
    from audit.spec import SuiteError

    return (SuiteError, ModelNotAvailable, UnsafePathError)


@app.command("run")
def run(
    suite_file: Path = typer.Argument(..., help="Suite YAML file."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output directory (default runs/<suite name>)."),
    n: int | None = typer.Option(None, "--n", help="Override samples per cell."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    executor: str = typer.Option("local", help="local or ray."),
    address: str | None = typer.Option(None, help="Ray cluster address (with --executor ray)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cell plan summary (per model and method) and "
                                 "the estimated cost, calibration and probe training included, only."),
    verbose: bool = typer.Option(False, "--verbose", help="With --dry-run: print one row per cell."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    measure_only: bool = typer.Option(False, "--measure-only", help="Re-measure cells whose images exist "
                                      "(new metrics, unfinished runs); generate nothing."),
):
    """Run a suite: generate, label, measure every cell; write results.csv and the report."""
    from rich.console import Console

    from audit.spec import load_suite

    if device not in ("cpu", "cuda"):
        fail(f"--device must be cpu or cuda, got {device!r}")
    if executor not in ("local", "ray"):
        fail(f"--executor must be local or ray, got {executor!r}")
    if threads is not None and threads < 1:
        fail(f"--threads must be a positive number of CPU threads, got {threads}")
    console = Console(stderr=False)
    try:
        suite = load_suite(suite_file, samples=n)
        out = out or Path("runs") / suite.name
        check_writable(out, "-o/--out")
        if dry_run:
            from audit.plan_view import print_plan

            not_ready = print_plan(suite, console, verbose=verbose, out=out)
            if not_ready:  # the plan is printed; a script that checks the dry run sees it cannot run
                fail(f"not ready to run: the weights of {', '.join(not_ready)} are missing or refused "
                     "(see the model lines above for what to download)")
            return
        import torch

        if threads:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            fail("--device cuda but no CUDA device is visible to torch; use --device cpu")
        if executor == "local" and not measure_only:
            from audit.models.loading import preflight

            for model in suite.models:  # every model's weights, before the first one loads
                preflight(model)
        from audit.run.suite import run_suite

        with environment_errors(out):
            frame = run_suite(suite, out, device=device, executor=executor, address=address, console=console,
                              suite_path=str(suite_file), measure_only=measure_only)
    except _user_errors() as e:
        fail(str(e))
    from audit.plan_view import print_summary

    print_summary(frame, console)
    from audit.report import ReportError, write_report

    try:
        with environment_errors(out):
            path = write_report(out)
    except ReportError as e:
        fail(f"the run finished but its report could not be written: {e}")
    console.print(f"report: {path}")
    console.print(f"results: {Path(out) / 'results.csv'}")


@app.command("report")
def report(
    out: Path = typer.Argument(..., help="Run directory (the output of `diffaudit run`)."),
    tolerance: float | None = typer.Option(None, "--tolerance", help="TOST margin per class (default: the suite's)."),
    pdf: bool = typer.Option(False, "--pdf", help="Also print the report to OUT/report.pdf (playwright + Chromium)."),
):
    """Render OUT/report/index.html: summary, verdicts, per-cell pages, galleries, trade-off, cost, methodology."""
    from audit.files import UnsafePathError
    from audit.report import ReportError

    if out.is_dir():
        check_writable(out, "OUT")
    try:
        from audit.report.html import write_report

        with environment_errors(out):
            path = write_report(out, tolerance=tolerance)
            if pdf:
                from audit.report.pdf import write_pdf

                typer.echo(f"pdf: {write_pdf(path, out / 'report.pdf')}")
    except (ReportError, UnsafePathError) as e:
        fail(str(e))
    typer.echo(f"report: {path}")


@app.command("upgrade")
def upgrade(out: Path = typer.Argument(..., help="A run directory written by an earlier diffaudit.")):
    """Upgrade a run directory's stored records to this diffaudit's results schema (records that do
    not validate are named and left as they were: re-measure those with `run --measure-only`)."""
    from audit.results import SCHEMA_VERSION, upgrade_run

    if not (out / "cells").is_dir():
        fail(f"{out}: no cells/ directory: give the output directory of `diffaudit run`")
    check_writable(out, "OUT")
    upgraded, problems = upgrade_run(out)
    for line in problems:
        typer.echo(f"not upgraded: {line}", err=True)
    typer.echo(f"{upgraded} record(s) upgraded to results schema {SCHEMA_VERSION}")
    if problems:
        raise typer.Exit(1)


@app.command("fid")
def fid(
    a: Path = typer.Argument(..., help="Reference image folder (png/jpg/jpeg/webp)."),
    b: Path = typer.Argument(..., help="Image folder compared with A."),
    extractor: str = typer.Option(..., "--extractor", help="A registered FID extractor: inception (with --weights), "
                                  "mobilenet_v2, or a plug-in's."),
    weights: Path | None = typer.Option(None, "--weights", help="Weights file (the inception extractor)."),
    kid: bool = typer.Option(False, "--kid", help="Also print KID (mean and std over subsets)."),
):
    """FID[EXTRACTOR] (and with --kid, KID) between two image folders, images read at native size."""
    from audit.metrics import fid as F
    from audit.registry import FID_EXTRACTORS

    if extractor not in FID_EXTRACTORS:
        fail(f"unknown extractor {extractor!r}; available: {', '.join(sorted(FID_EXTRACTORS))}")
    weighted = F.weighted_extractors()
    if weights is not None and extractor not in weighted:
        fail(f"--weights applies to the {', '.join(weighted)} extractor, not {extractor!r}")
    if extractor in weighted and (weights is None or not weights.is_file()):
        fail(f"--extractor {extractor} needs --weights FILE" + (f" ({weights}: no such file)" if weights else ""))
    dim = F.feature_dim(extractor)
    sets = []
    for folder in (a, b):
        if not folder.is_dir():
            fail(f"{folder}: no such folder")
        files = F.reference_files(str(folder), sys.maxsize)
        if not files:
            fail(f"{folder}: no {'/'.join(s[1:] for s in F.IMAGE_SUFFIXES)} images")
        if len(files) <= dim:
            fail(f"{folder} holds {len(files)} images, too few for FID[{extractor}]: it needs more than {dim}, "
                 f"its feature dimension (else the covariance is singular)")
        try:
            sets.append(F.read_images(files))
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            fail(f"{folder}: unreadable image: {' '.join(str(e).split())}")
    try:
        value = F.fid_between(*sets, extractor=extractor, weights=str(weights) if weights else None)
        kid_value = F.kid_between(*sets, extractor=extractor, weights=str(weights) if weights else None) \
            if kid else None
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        fail(" ".join(str(e).split()))
    n_a, n_b = len(sets[0]), len(sets[1])
    typer.echo(f"FID[{extractor}] {value:.4f}  n_A={n_a} n_B={n_b}")
    if kid_value is not None:
        typer.echo(f"KID[{extractor}] {kid_value[0]:.6f} ± {kid_value[1]:.6f}  n_A={n_a} n_B={n_b} "
                   f"subset_size={F.kid_subset_size(n_a, n_b)}")


@app.command("leaderboard")
def leaderboard(
    outs: list[Path] = typer.Argument(..., help="Run directories (any number of runs and suites)."),
    dest: Path = typer.Option(Path("leaderboard.html"), "-o", "--output", help="The HTML page to write."),
):
    """One sortable page comparing runs: per attribute setting, every model and method."""
    from audit.files import UnsafePathError
    from audit.report import ReportError

    check_writable(dest, "-o/--output", kind="file")
    try:
        from audit.report.leaderboard import write_leaderboard

        with environment_errors(dest.parent):
            path = write_leaderboard(outs, dest)
    except (ReportError, UnsafePathError) as e:
        fail(str(e))
    typer.echo(f"leaderboard: {path}")


probe_app = typer.Typer(help="h-space attribute probes.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")


@probe_app.command("train")
def probe_train(
    model: str = typer.Option(..., help="A diffusers directory, hf:ORG/REPO, or PREFIX:NAME of a plug-in's source."),
    labeler: str | None = typer.Option(None, help="Labeler giving the pseudo-labels (default: the probe labeler "
                                       "the model's source suggests)."),
    attribute: list[str] = typer.Option(..., help="Attribute(s) to probe (repeat the option)."),
    n: int = typer.Option(1000, help="Samples to draw and label."),
    steps: int = typer.Option(50, help="Sampling steps (one head per step)."),
    batch_size: int = typer.Option(64),
    prompt: str = typer.Option("a photo of a person", help="Prompt (text models)."),
    guidance_scale: float = typer.Option(1.0, help="Classifier-free guidance (text models)."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Directory (default: the probes the model's source "
                                    "ships, for sources that ship probes)."),
    head: str = typer.Option("class-mean", help="Head type: class-mean (guides along class-mean "
                             "directions of h) or logistic (most accurate, can be fooled)."),
    device: str = typer.Option("cpu"),
):
    """Sample, record h at every step, pseudo-label the images, fit per-step heads, save."""
    from rich.console import Console
    from rich.progress import Progress

    from audit.models.loading import load_model
    from audit.probes.train import train_probes
    from audit.registry import make_labeler, model_source
    from audit.spec import ModelSpec

    console = Console()
    owner = model_source(model)
    if labeler is None:
        labeler = (owner[0].suite_defaults(owner[1]) if owner else {}).get("probe_labeler")
        if labeler is None:
            fail("--labeler is required: the model's source suggests no probe labeler")
    try:
        adapter = load_model(ModelSpec(name="probe-model", source=model, steps=steps), device=device)
        judge = make_labeler(labeler)
    except (_user_errors() + (KeyError, ValueError)) as e:
        fail(str(e).strip("'\""))
    if head not in ("class-mean", "logistic"):
        fail(f"--head must be class-mean or logistic, got {head!r}")
    shipped = out is None
    if out is None:
        out = owner[0].shipped_probes(owner[1], labeler) if owner else None
        if out is None:
            fail("--out is required: the model's source ships no probes")
    prompts = [prompt] * n if adapter.conditional else None
    with Progress(console=console) as progress:
        task = progress.add_task("sampling", total=n)
        try:
            probes = train_probes(adapter, judge, attribute, n=n, steps=steps, batch_size=batch_size,
                                  prompts=prompts, guidance_scale=guidance_scale, head=head,
                                  progress=lambda k: progress.advance(task, k))
        except ValueError as e:
            fail(str(e))
    for name, probe in probes.items():
        probe.save(out / name, half=shipped)  # shipped probes are float16, to keep installs small
        accuracy = probe.meta["val_accuracy"]
        shown = " ".join(f"{a:.2f}" for a in accuracy)
        console.print(f"{name}: validation accuracy per step (t={probe.timesteps[0]}..{probe.timesteps[-1]}): {shown}")
        console.print(f"saved {out / name}")


labeler_app = typer.Typer(help="Attribute labelers.", no_args_is_help=True)
app.add_typer(labeler_app, name="labeler")


@labeler_app.command("validate")
def labeler_validate(
    labeler: str = typer.Argument(..., help="A registered labeler (e.g. skin_tone)."),
    data: Path = typer.Option(..., "--data", help="An imagefolder: images plus metadata.jsonl with file_name "
                              "and the true attribute values."),
    option: list[str] = typer.Option([], "--option", help="KEY=VALUE for the labeler's constructor (the "
                                     "suite's labeler_options; VALUE is read as YAML). Repeatable."),
):
    """Measure a labeler against ground truth: confusion, accuracy per group, invalid rates.
    Stored under $DIFFAUDIT_CACHE/labelers/, where runs with the same labeler and options find it
    for their error-aware estimates."""
    import yaml

    from audit.labelers.validation import ValidationInputError, format_table, read_metadata, store, validate
    from audit.registry import make_labeler

    options = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--option must be KEY=VALUE, got {item!r}")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            fail(f"--option {key}: cannot read {value!r}")
    try:
        read_metadata(data)  # bad data fails before a labeler's weights load
        judge = make_labeler(labeler, **options)
    except ValidationInputError as e:
        fail(str(e))
    except (_user_errors() + (KeyError, ValueError, TypeError, ImportError)) as e:
        fail(f"labeler {labeler}: {str(e).strip(chr(39) + chr(34))}")
    try:
        result = validate(labeler, options, data, labeler=judge)
    except ValidationInputError as e:
        fail(str(e))
    typer.echo(format_table(result))
    typer.echo(f"saved {store(result)}")


def _mount_plugin_commands() -> None:
    """The command groups plug-ins register (`diffaudit zoo ...` from the bundled zoo)."""
    from audit.registry import COMMANDS, resolve

    for name in sorted(COMMANDS):
        app.add_typer(resolve(COMMANDS, name, "command"), name=name)


_mount_plugin_commands()


def main() -> None:
    from audit.malloc import keep_freed_memory

    keep_freed_memory()
    app()


if __name__ == "__main__":
    main()

