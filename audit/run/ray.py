"""Run cells as Ray tasks on an existing cluster (or a local Ray instance).

Every task writes into the same store, so OUT must be on a filesystem all workers share.
Probes are trained first, one task per model, so that no two cell tasks race to train the
same probe; then every cell is a task (requesting a GPU when the device is cuda). The driver
holds OUT's lock (audit.store.RunStore.lock) for the whole run; each task writes only its own
cell's directory, resuming it by seed as a local run does.
"""

from __future__ import annotations

from pathlib import Path


def _context(suite_data: dict, out: str, device: str, threads: int):
    import torch

    from audit.malloc import keep_freed_memory
    from audit.run.context import RunContext
    from audit.spec import Suite
    from audit.store import RunStore

    keep_freed_memory()
    torch.set_num_threads(threads)
    return RunContext(suite=Suite.model_validate(suite_data), store=RunStore(out), device=device,
                      log=lambda *a: None)


def _train_probes(suite_data: dict, out: str, device: str, threads: int, cells_data: list[dict]) -> int:
    from audit.run.probes import get_probes
    from audit.spec import Cell

    ctx = _context(suite_data, out, device, threads)
    for data in cells_data:
        get_probes(ctx, Cell.model_validate(data))
    return len(cells_data)


def _run_cell(suite_data: dict, out: str, device: str, threads: int, cell_data: dict):
    from audit.run.cell import run_cell
    from audit.spec import Cell

    return run_cell(_context(suite_data, out, device, threads), Cell.model_validate(cell_data))


def run_cells_on_ray(suite, out: Path, cells: list, device: str = "cpu", address: str | None = None,
                     console=None) -> list[dict]:
    try:
        import ray
    except ImportError:
        from audit.spec import SuiteError

        raise SuiteError("--executor ray needs Ray: pip install 'diffaudit[ray]'") from None
    import torch

    from audit.run.cell import check_fid_references, retire_stale_cells

    # Before any task: refuse FID references that cannot back an FID, and move aside cells made
    # from other weights (here, not in the tasks, where twin cells would race to move each other).
    driver = _context(suite.model_dump(), str(Path(out).resolve()), device, torch.get_num_threads())
    check_fid_references(driver)
    retire_stale_cells(driver, [c for c in cells if not c.skip_reason])
    del driver
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}} if address else None)
    try:
        threads = torch.get_num_threads()
        gpus = 1 if device == "cuda" else 0
        suite_data, out_str = suite.model_dump(), str(Path(out).resolve())
        train = ray.remote(num_cpus=1, num_gpus=gpus)(_train_probes)
        run = ray.remote(num_cpus=1, num_gpus=gpus)(_run_cell)
        by_model: dict[str, dict[str, dict]] = {}
        for cell in cells:
            if not cell.skip_reason and cell.method_class.needs_probe:
                key = f"{cell.setting.key}|{cell.prompt}"
                by_model.setdefault(cell.model.name, {}).setdefault(key, cell.model_dump())
        ray.get([train.remote(suite_data, out_str, device, threads, list(group.values()))
                 for group in by_model.values()])
        futures = [run.remote(suite_data, out_str, device, threads, cell.model_dump()) for cell in cells]
        results = []
        for i, future in enumerate(futures):
            results.append(ray.get(future))
            if console is not None:
                console.print(f"[ray] cell {i + 1}/{len(cells)} {cells[i].cell_id}: {results[-1].status}")
        return results
    finally:
        if started_here:
            ray.shutdown()
