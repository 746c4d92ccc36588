"""RunContext: what a run holds across its cells (models, labelers, revisions and label keys
computed once) and the digests that key cached labels."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from audit.spec import Cell, Suite, SuiteError
from audit.store import RunStore


@dataclass
class RunContext:
    suite: Suite
    store: RunStore
    device: str = "cpu"
    adapters: dict = field(default_factory=dict)
    labelers: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    fid_refs: dict = field(default_factory=dict)
    progress: object | None = None
    log: object = print
    measure_only: bool = False  # re-measure cells whose images exist; generate nothing
    revisions: dict = field(default_factory=dict)
    label_keys: dict = field(default_factory=dict)
    fid_checked: bool = False

    def adapter(self, cell: Cell):
        from audit.models.loading import load_model

        if cell.model.name not in self.adapters:
            self.adapters[cell.model.name] = load_model(cell.model, device=self.device)
        return self.adapters[cell.model.name]

    def labeler(self, name: str):
        from audit.labelers.validation import attach_validation
        from audit.registry import LABELERS, make_labeler, resolve, suite_params

        if name not in self.labelers:
            takes = suite_params(resolve(LABELERS, name, "labeler"))
            options = {"device": self.device} if takes is not None and "device" in takes else {}  # run's device
            options.update(self.suite.labeler_options.get(name, {}))
            try:
                labeler = make_labeler(name, **options)
            except TypeError as e:
                raise SuiteError(f"labeler_options.{name}: {e}") from None
            # a stored `diffaudit labeler validate` of this labeler and options gives it confusion()
            self.labelers[name] = attach_validation(labeler, name, self.suite.labeler_options.get(name, {}))
        return self.labelers[name]

    def revision(self, cell: Cell) -> str | None:
        """The revision of the cell's model weights (hashed, not loaded, where it can be)."""
        from audit.models.loading import model_revision

        name = cell.model.name
        if name not in self.revisions:
            if name in self.adapters or cell.model.source.startswith("custom:"):
                self.revisions[name] = self.adapter(cell).revision
            else:
                self.revisions[name] = model_revision(cell.model)
        return self.revisions[name]

    def label_key(self, name: str) -> str:
        """A digest of everything a labeler's labels depend on: its name, its suite options, what it
        says it is (source and versions, classes, prompts), the content of its weight files, and
        the image checks label_cell applies. Cached labels are reused only under the same key."""
        if name not in self.label_keys:
            labeler = self.labeler(name)
            # a labeler's validation says how good its labels are, not what they are: not in the key
            described = {k: v for k, v in labeler.describe().items() if k != "validation"}
            self.label_keys[name] = digest({"labeler": name, "options": self.suite.labeler_options.get(name, {}),
                                            "describe": described,
                                            "weights": labeler_weights(labeler),
                                            "checks": IMAGE_CHECKS})
        return self.label_keys[name]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def labeler_weights(labeler) -> str | None:
    """The content hash of a labeler's weights, where it names them (a zoo labeler's directory, a
    CLIP's model_path); None for labelers whose describe() carries their package version only."""
    from audit.sources import directory_digest

    for attribute in ("directory", "model_path", "weights_path"):
        value = getattr(labeler, attribute, None)
        if isinstance(value, str | Path) and str(value) and Path(value).expanduser().exists():
            return directory_digest(Path(value).expanduser())
    return None


IMAGE_CHECKS = ("non-finite pixels", "blank image")  # images label_cell marks invalid whatever the labeler says
