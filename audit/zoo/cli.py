"""`diffaudit zoo ...`: train, list, check the bundled SynthFaces zoo and ship its calibrations
(mounted on the CLI by the zoo's plug-in registration)."""

from __future__ import annotations

from pathlib import Path

import typer

from audit.cli_common import check_device, fail

app = typer.Typer(help="The bundled SynthFaces zoo.", no_args_is_help=True)


@app.command("train")
def zoo_train(
    name: str,
    max_steps: int | None = typer.Option(None, help="Stop after this many steps (resumable)."),
    workdir: Path = typer.Option(Path(".zoo-work"), help="Where checkpoints go."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    export_every: int = typer.Option(1000, help="Export the EMA weights into the zoo every this many steps."),
    export_dir: Path | None = typer.Option(
        None, help="Export here instead of into the zoo (which stays consistent with its probes and "
                   "calibrations until you copy the export in); warm-starts from the zoo's weights."),
    device: str = typer.Option("cpu", help="cpu or cuda (diffusion models; the same batches on either)."),
):
    """Train (or resume training) a zoo model with its recipe; exports into the zoo."""
    import torch

    from audit.zoo import zoo_path
    from audit.zoo.recipes import RECIPES, ClipRecipe, DiffusionRecipe

    torch.set_num_threads(threads)
    if name not in RECIPES:
        fail(f"unknown zoo model {name!r}; allowed: {', '.join(RECIPES)}")
    check_device(device)
    recipe = RECIPES[name]
    if device != "cpu" and not isinstance(recipe, DiffusionRecipe):
        fail(f"--device {device}: only the diffusion recipes train off the CPU; {name} trains on cpu")
    if isinstance(recipe, DiffusionRecipe):
        from audit.zoo.train_diffusion import TrainingStateError, train

        try:
            train(recipe, workdir / name, export_dir or zoo_path(name), max_steps=max_steps,
                  export_every=export_every, log=lambda s: print(s, flush=True),
                  warm_start_dir=zoo_path(name), device=device)
        except TrainingStateError as error:  # a stale checkpoint or export, an untrained text encoder
            fail(str(error))
    elif isinstance(recipe, ClipRecipe):
        from audit.zoo.train_clip import train

        train(recipe, workdir / name, zoo_path(name), max_steps=max_steps, export_every=export_every,
              log=lambda s: print(s, flush=True))
    else:
        from audit.zoo.train_classifier import train

        train(recipe, workdir / name, zoo_path(name), max_steps=max_steps,
              log=lambda s: print(s, flush=True))


@app.command("list")
def zoo_list():
    """List the zoo's models, what they are and whether their weights are present."""
    import json

    from rich.console import Console
    from rich.table import Table

    from audit.zoo import WIP_DIR, zoo_path
    from audit.zoo.recipes import RECIPES

    table = Table(title="SynthFaces zoo")
    for column in ("name", "kind", "trained", "size", "description"):
        table.add_column(column)
    for name, recipe in RECIPES.items():
        path = zoo_path(name)
        files = [f for f in path.rglob("*") if f.is_file()] if path.exists() else []
        size = sum(f.stat().st_size for f in files)
        info_file = path / "training.json"
        steps = json.loads(info_file.read_text()).get("steps") if info_file.exists() else None
        trained = "yes" if files else "no"
        if steps is not None:
            trained += f" ({steps}/{recipe.steps} steps)"
        wip_file = WIP_DIR / name / "training.json"
        if wip_file.exists():
            trained += f"; in training: {json.loads(wip_file.read_text())['steps']} steps in audit/zoo/wip/{name}"
        kind = "diffusion" if hasattr(recipe, "unet") else recipe.kind
        table.add_row(name, kind, trained, f"{size / 1e6:.1f} MB", recipe.description)
    Console().print(table)


@app.command("ship-calibrations")
def zoo_ship_calibrations(run_dir: Path = typer.Argument(..., help="A run directory with calibration/ records.")):
    """Ship a run's `scale: auto` calibrations of zoo models with the zoo, so suites on the
    zoo (the quickstart) start calibrated. Only records of the zoo's current weights are kept."""
    from audit.run.calibration import ship_calibrations
    from audit.zoo import is_trained, zoo_path
    from audit.zoo.recipes import RECIPES
    from audit.zoo.source import zoo_revision

    if not (run_dir / "calibration").is_dir():
        fail(f"{run_dir} has no calibration/ directory: run a suite with `scale: auto` first")
    revisions = {f"zoo:{name}": zoo_revision(zoo_path(name)) for name, recipe in RECIPES.items()
                 if hasattr(recipe, "unet") and is_trained(name)}
    written = ship_calibrations(run_dir, revisions)
    for path in written:
        typer.echo(f"shipped {path}")
    typer.echo(f"{len(written)} calibration record(s) shipped")


@app.command("check")
def zoo_check(
    json_file: Path | None = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    n: int = typer.Option(1000, help="Samples per model."),
    steps: int = typer.Option(50, help="DDIM steps."),
    heldout: int = typer.Option(10_000, help="Held-out ground-truth images for the labelers."),
    n_prompt: int = typer.Option(200, help="Samples per attribute prompt (synthfaces-t2i) and for the CLIP "
                                           "score margin (clip)."),
    only: list[str] = typer.Option([], help="Check only these (labelers, synthfaces-ddpm, synthfaces-t2i, clip)."),
    threads: int = typer.Option(2, help="torch CPU threads."),
    t2i_guidance_scale: float = typer.Option(
        1.0, min=1.0, help="Classifier-free guidance scale of the synthfaces-t2i samples; 1 samples the "
                           "conditional distribution training fitted, which is what its bars ask about."),
    candidate: Path | None = typer.Option(
        None, help="Check this export (e.g. from `zoo train --export-dir`) in place of the committed weights "
                   "of the one diffusion model named by --only."),
    first_seed: int = typer.Option(
        0, min=0, help="First sample seed of the diffusion models. The bars are measured from 0; another "
                       "start shows how much a figure owes to its particular seeds."),
    ddpm_eta: float | None = typer.Option(
        None, min=0.0, max=1.0, help="DDIM eta of the synthfaces-ddpm samples (unset: the zoo's, 1, the sampler "
                                     "suites use unless their model sets eta; 0: deterministic DDIM)."),
):
    """Measure every zoo model against its bars and print the table."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from audit.files import atomic_write_json
    from audit.zoo.check import rows_to_json, run_check

    torch.set_num_threads(threads)
    checks = ("labelers", "synthfaces-ddpm", "synthfaces-t2i", "clip")
    unknown = sorted(set(only) - set(checks))
    if unknown:
        fail(f"--only {unknown[0]!r} is not a check; allowed: {', '.join(checks)}")
    models = tuple(only) or checks
    candidates = {}
    if candidate is not None:
        diffusion = [m for m in models if m in ("synthfaces-ddpm", "synthfaces-t2i")]
        if len(diffusion) != 1:
            fail("--candidate needs --only naming exactly one diffusion model (synthfaces-ddpm or synthfaces-t2i)")
        if not (candidate / "training.json").exists():
            fail(f"--candidate {candidate}: no training.json there; point it at a `zoo train --export-dir` folder")
        candidates[diffusion[0]] = candidate
    console = Console(width=200)
    measured = []

    def show(row) -> None:  # each figure as it comes; the JSON holds every figure measured so far
        measured.append(row)
        mark = {True: "pass", False: "FAIL", None: "-"}[row.passed]
        console.print(f"{row.model}: {row.check} = {row.value_text()} ({row.bar}: {mark})", markup=False,
                      highlight=False)
        if json_file is not None:
            atomic_write_json(json_file, rows_to_json(measured))

    rows = run_check(n=n, steps=steps, n_heldout=heldout, n_prompt=n_prompt, models=models, candidates=candidates,
                     on_row=show, t2i_guidance_scale=t2i_guidance_scale, first_seed=first_seed, ddpm_eta=ddpm_eta)
    table = Table(title="diffaudit zoo check")
    for column in ("model", "check", "value", "bar", "pass", "detail"):
        table.add_column(column)
    for r in rows:
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[r.passed]
        table.add_row(r.model, r.check, r.value_text(), r.bar, mark, r.detail)
    console.print(table)
    if any(r.passed is False for r in rows):
        raise typer.Exit(1)
