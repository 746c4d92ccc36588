"""The zoo's small CNNs (labelers and the FID feature extractor), saved as safetensors + JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from audit.zoo.synthfaces import ATTRIBUTES


class SynthFacesCNN(nn.Module):
    """Conv stages (two conv-BN-SiLU layers, then 2x downsampling) -> global pooling ->
    a `feature_dim` embedding -> one linear head per attribute (+ optional regression head)."""

    def __init__(self, channels=(32, 64, 128), kernel_size=3, feature_dim=128,
                 attributes: dict[str, list[str]] | None = None, n_regression: int = 0):
        super().__init__()
        self.config = {"channels": list(channels), "kernel_size": kernel_size,
                       "feature_dim": feature_dim, "n_regression": n_regression,
                       "attributes": {k: list(v) for k, v in (attributes or ATTRIBUTES).items()}}
        layers, c_in = [], 3
        for c in channels:
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, kernel_size, padding=kernel_size // 2, bias=False),
                           nn.BatchNorm2d(c), nn.SiLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(c_in, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(classes))
                                    for name, classes in self.config["attributes"].items()})
        self.regression = nn.Linear(feature_dim, n_regression) if n_regression else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, 32, 32] in [-1, 1] -> [N, feature_dim]."""
        h = self.body(x)
        return self.embed(h.mean(dim=(2, 3), keepdim=True))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute (and 'regression' when the model has that head)."""
        f = self.features(x)
        out = {name: head(f) for name, head in self.heads.items()}
        if self.regression is not None:
            out["regression"] = self.regression(f)
        return out

    def save(self, directory: Path, extra: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps({**self.config, **(extra or {})}, indent=2))

    @classmethod
    def load(cls, directory: Path) -> SynthFacesCNN:
        directory = Path(directory)
        config_file, weights_file = directory / "config.json", directory / "model.safetensors"
        for f in (config_file, weights_file):
            if not f.exists():
                raise FileNotFoundError(f"{f} is missing: train it with `diffaudit zoo train "
                                        f"{directory.name}` or point to a trained model directory")
        config = json.loads(config_file.read_text())
        model = cls(channels=config["channels"], kernel_size=config["kernel_size"],
                    feature_dim=config["feature_dim"], attributes=config["attributes"],
                    n_regression=config.get("n_regression", 0))
        model.load_state_dict(load_file(weights_file))
        return model.eval()
