"""Training recipes: nested dataclasses <-> TOML files, with `section.key=value` overrides.

A recipe is a dataclass whose fields are dataclasses (one per TOML table) or plain values. Reading checks
every key against the dataclass, so a typo is an error that names it, and override values are parsed as
TOML and coerced to the field's type. `to_toml` writes the resolved recipe back (the run folder's
`config.toml`), so a run can always be repeated from its own folder.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UsageError, option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

R = TypeVar("R")
RECIPES_DIR = Path(__file__).parents[1] / "configs"  # the repository's configs/, shipped in the package


class RecipeError(UsageError):
    """A recipe file or override that does not fit the recipe's fields (exit code 2)."""


# ---- shared sections (pretrain and finetune) ------------------------------------------------------------
@dataclass
class OptimRecipe:
    """Optimizer and schedule. Learning rates are per 256 clips: the global batch's lr is blr x batch / 256 from
    256 clips up, blr x sqrt(batch / 256) below (training.parts.scaled_lr)."""

    batch_size: int = 32  # videos per device per micro-step (each gives data.num_sample clips)
    accum: int = 1  # micro-steps per optimizer step
    epochs: int = 800
    max_steps: int = 0  # > 0: stop after this many optimizer steps; the schedule spans them
    warmup_epochs: float = 40.0
    warmup_steps: int = -1  # >= 0 overrides warmup_epochs
    blr: float = 1.5e-4  # base lr per 256 clips
    lr: float = 0.0  # > 0: the absolute peak lr, instead of blr scaled to the global batch
    min_lr: float = 1e-5  # per 256 clips, like blr (with an absolute lr: min_lr / blr of it)
    warmup_lr: float = 1e-6  # per 256 clips, like blr (with an absolute lr: warmup_lr / blr of it)
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    clip_grad: float = 0.0  # max gradient norm; 0 = no clipping (VideoMAE v1 pre-training does not clip)
    layer_decay: float = 1.0  # < 1: layer-wise lr decay (fine-tuning)


@dataclass
class RunRecipe:
    """Where and how the loop runs; none of it changes what is learned, except the seed and the dtype."""

    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps (torchrun: cuda:LOCAL_RANK)
    dtype: str = "auto"  # auto (bf16 where fast, else fp32), fp32, bf16, fp16
    workers: int = 4  # DataLoader worker processes per device
    save_every: int = 1000  # optimizer steps between checkpoints (and at the end, and on Ctrl-C)
    keep: int = 3  # rolling checkpoints kept
    log_every: int = 10  # optimizer steps between metrics.jsonl lines
    preview_every: int = 1000  # optimizer steps between reconstruction previews; 0 = none
    compile: bool = False  # torch.compile the model
    gradient_checkpointing: bool = False  # trade compute for memory


@dataclass
class DataRecipe:
    """How training clips are cut from the videos: the [data] table of both tasks."""

    frames: int = 0  # 0 = the model's num_frames (16 for the paper's models)
    stride: int = 4  # K400 4, SSv2 2
    input_size: int = 0  # 0 = the model's image_size (224)
    short_side: int = 0  # decode at this shortest edge before the multi-scale crop; 0 = input_size x 320/224
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])  # GroupMultiScaleCrop
    flip: bool = True  # horizontal flip (turn off for left/right-sensitive data such as SSv2)
    # clips (augmentations) per decoded video: VideoMAEv2 repeated sampling; fine-tuning's repeated augmentation
    num_sample: int = 1
    decode_threads: int = 1  # FFmpeg threads per worker
    cache_mb: int = 0  # decoded videos kept in memory, per loader process; 0 = decode every sample anew


# ---- pre-training ----------------------------------------------------------------------------------------
@dataclass
class PretrainMask:
    ratio: float = 0.9  # tube masking ratio (0.75 for small data such as UCF101)
    decoder_ratio: float = 0.0  # VideoMAEv2 dual masking: share of all tokens the decoder skips (v2: 0.5)


@dataclass
class PretrainRecipe:
    """Everything `vmae pretrain` needs besides DATA and the run folder."""

    model: str = "base"  # preset name (mini, tiny, small, base, large, huge), model folder, or config.json
    init: str = ""  # start from these weights (folder or Hub id); empty: random init
    drop_path: float = 0.0
    data: DataRecipe = field(default_factory=DataRecipe)
    mask: PretrainMask = field(default_factory=PretrainMask)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    run: RunRecipe = field(default_factory=RunRecipe)


# ---- fine-tuning ---------------------------------------------------------------------------------------
@dataclass
class FinetuneAugment:
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(alpha, alpha) mixing of whole clips; 0 = off (the paper: 0.8)
    cutmix: float = 0.0  # Beta(alpha, alpha) box pasted across all frames; 0 = off (the paper: 1.0)
    mix_prob: float = 1.0  # share of batches mixed
    switch_prob: float = 0.5  # with both on: chance of cutmix instead of mixup


@dataclass
class FinetuneRecipe:
    """Everything `vmae finetune` needs besides DATA and the run folder."""

    model: str = "base"  # INIT: pre-training checkpoint, classifier, or preset name (from scratch)
    drop_path: float = 0.1
    head_dropout: float = 0.0
    val_every: int = 1  # epochs between validations; the last epoch is always validated
    data: DataRecipe = field(default_factory=DataRecipe)
    augment: FinetuneAugment = field(default_factory=FinetuneAugment)
    optim: OptimRecipe = field(default_factory=lambda: OptimRecipe(
        epochs=75, warmup_epochs=5.0, blr=5e-4, min_lr=1e-6, warmup_lr=1e-6, betas=[0.9, 0.999],
        layer_decay=0.75))  # fmt: skip
    run: RunRecipe = field(default_factory=lambda: RunRecipe(preview_every=0))


# ---- reading -----------------------------------------------------------------------------------------------
def recipe_path(name_or_path: str, kind: str) -> Path:
    """A recipe name (`tiny`, `base`...) in configs/<kind>/, or a path to a TOML file."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise RecipeError(
                f"{option('config')} {name_or_path}: no such file", param="config", value=name_or_path
            )
        return path
    candidate = RECIPES_DIR / kind / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in (RECIPES_DIR / kind).glob("*.toml"))
    raise RecipeError(
        f"{option('config')} {name_or_path}: no such file, and not a recipe name"
        + (f" (choose one of: {', '.join(names)}, or give a .toml path)" if names else " (give a .toml path)")
    )


def load_recipe(cls: type[R], path: str | Path | None = None, overrides: list[str] = ()) -> R:
    """Defaults of `cls`, then the TOML file at `path`, then each `section.key=value` override in order."""
    recipe = cls()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"{path}: cannot read ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise RecipeError(f"{path}: not valid TOML ({e})") from None
        _merge(recipe, data, where=str(path))
    for item in overrides:
        set_value(recipe, *_split_override(item))
    return recipe


def _split_override(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"{option('set')} {item!r}: expected key=value, e.g. {option('set')} optim.epochs=100",
                          param="set", value=item)  # fmt: skip
    return key.strip(), value.strip()


def _merge(obj: Any, data: dict, where: str, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise RecipeError(f"{where}: unknown key {name!r}; known: {', '.join(_keys(obj, prefix))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: {name!r} is a table ([{name}]), got {value!r}")
            _merge(current, value, where, prefix=f"{name}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], name, where))


def _keys(obj: Any, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out.extend(
            _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [f"{prefix}{f.name}"]
        )
    return out


def set_value(recipe: Any, key: str, text: str) -> None:
    """Set `section.key` from its command-line text: TOML syntax (1e-3, true, [1, 2]), or a bare string."""
    *parents, last = key.split(".")
    obj = recipe
    for part in parents:
        obj = getattr(obj, part, None) if dataclasses.is_dataclass(obj) else None
        if not dataclasses.is_dataclass(obj):
            break
    hints = typing.get_type_hints(type(obj)) if dataclasses.is_dataclass(obj) else {}
    if last not in hints or dataclasses.is_dataclass(getattr(obj, last)):
        raise RecipeError(f"{option('set')} {key}: unknown key; known keys: {', '.join(_keys(recipe))}",
                          param="set", value=key, allowed=tuple(_keys(recipe)))  # fmt: skip
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word: a string (`model=small`)
    setattr(obj, last, _coerce(value, hints[last], key, option("set")))


def _coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    """Check (and gently convert: int -> float, str -> number) a value against a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, name, where)
            except RecipeError as e:
                errors.append(e.args[0])
        raise RecipeError(errors[0])
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, list):
            return [_coerce(v, item, name, where) for v in value]
    elif hint is Any:
        return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    kind = getattr(hint, "__name__", str(hint))
    raise RecipeError(f"{where}: {name} must be {kind}, got {value!r}")


# ---- writing ------------------------------------------------------------------------------------------------
def to_toml(recipe: Any, header: str = "") -> str:
    """The recipe as TOML: top-level values first, then one table per section (enough of TOML for recipes)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    tables = []
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif value is not None:
            lines.append(f"{f.name} = {toml_value(value)}")
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [f"{k.name} = {toml_value(getattr(table, k.name))}" for k in dataclasses.fields(table)
                  if getattr(table, k.name) is not None]  # fmt: skip
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value)
            if math.isfinite(value)
            else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


# The recipe that fits a model, when none is named: the first row whose size the encoder does not exceed
# (about 12 x depth x width^2 parameters), and whose recipe exists for the command. By size, not by name, so a
# preset and a model folder of the same architecture train alike: tiny (2 layers x 64, 0.1 M) takes the smoke
# test recipe, mini-sized models (0.4 M) the small-data one, ViT-S (21 M) its pre-training recipe, and ViT-B
# (85 M) and up, or a ViT-S fine-tune, the paper's base recipe.
SIZE_RECIPES = ((2e5, "tiny"), (5e6, "small-data"), (4e7, "small"), (math.inf, "base"))


def encoder_size(config) -> int:
    """Roughly the encoder's weights: 12 x width^2 per transformer block (attention 4, MLP 8)."""
    return 12 * config.num_hidden_layers * config.hidden_size**2


def recipe_for_model(model: str, kind: str) -> str:
    """The name of the recipe in configs/<kind>/ that fits `model` (a preset, a folder, a config.json or a Hub
    id) by its size: see SIZE_RECIPES. A model whose config cannot be read here gets "base", and the run's own
    loading of it then says what is wrong."""
    from ..errors import VmaeError
    from ..models.config import VideoMAEConfig

    try:
        size = encoder_size(VideoMAEConfig.from_pretrained(model))
    except (VmaeError, OSError):
        return "base"
    for limit, name in SIZE_RECIPES:
        if size <= limit and (RECIPES_DIR / kind / f"{name}.toml").is_file():
            return name
    return "base"


# What a resumed run may change: where and how the loop runs, never what it learns (see RunRecipe).
RESUMABLE_CHANGES = ("run.device", "run.workers", "run.save_every", "run.keep", "run.log_every",
                     "run.preview_every", "run.compile", "run.gradient_checkpointing", "data.decode_threads",
                     "data.cache_mb")  # fmt: skip


def get_value(recipe: Any, key: str) -> Any:
    """The value of `section.key` in a recipe."""
    for part in key.split("."):
        recipe = getattr(recipe, part)
    return recipe


def resolve_run_recipe(
    cls, kind: str, out: Path, config: str | None, sets: list[str], flags: dict, resume: bool
):
    """The recipe of a training run: defaults < recipe file < `sets` (KEY=VALUE overrides) < `flags`.

    kind: "pretrain" or "finetune" (the folder of configs/ to look in). Without a `config` recipe, the one that fits the
    model's size (`recipe_for_model`); without a model either, "base".

    Resuming a run that has RUN/config.toml continues that recipe, and the same command that started the run
    continues it: what the command says (the whole `config` recipe, each of `sets` and `flags`) must equal the
    stored value, except RESUMABLE_CHANGES, which it may change. Anything else is refused, naming the
    difference, so that a resumed run never learns differently from the run it continues.
    """
    from ..errors import UsageError
    from .run_folder import RunFolder

    run = RunFolder(out)
    if not resume and run.has_run():
        raise UsageError(f"{out} already holds a run; add {option('resume')} to continue it, or choose another "
                         f"{option('out')}", param="out", value=str(out))  # fmt: skip
    resumed = resume and run.config.is_file()
    if resumed and config is None:
        path = run.config
    else:
        name = config
        if name is None:
            model = flags.get("model") or flags.get("init")
            name = recipe_for_model(model, kind) if model else "base"
        path = recipe_path(name, kind)
    recipe = load_recipe(cls, path, sets)
    for key, value in flags.items():
        try:
            set_value(recipe, key, toml_value(value))
        except RecipeError as e:
            raise UsageError(e.args[0], param=key, value=value) from None
    if not resumed:
        return recipe
    stored = load_recipe(cls, run.config)
    said = set(_keys(recipe)) if config is not None else {_split_override(s)[0] for s in sets} | set(flags)
    changed = [
        k for k in sorted(said - set(RESUMABLE_CHANGES)) if get_value(recipe, k) != get_value(stored, k)
    ]
    if changed:
        diff = ", ".join(
            f"{k} = {get_value(stored, k)!r} (this command: {get_value(recipe, k)!r})" for k in changed
        )
        raise UsageError(
            f"{option('resume')} continues {run.config}, which has {diff}; a resumed run cannot change what it "
            f"learns: drop or fix the flag, or choose another {option('out')}"
        )
    for key in said & set(RESUMABLE_CHANGES):
        set_value(stored, key, toml_value(get_value(recipe, key)))
    return stored
