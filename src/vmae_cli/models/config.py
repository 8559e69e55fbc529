"""`VideoMAEConfig`: a dataclass that reads and writes Hugging Face `config.json` for VideoMAE.

Field names and defaults are those of `transformers.VideoMAEConfig`, so a folder written here loads in
transformers (4.x and 5.x) and the reverse. Fields this class does not know are kept in `extra` and written
back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FieldError
from ..hub import CONFIG_NAME, resolve
from ..limits import LIMITS, MAX_LABELS, MAX_PARAMETERS, MAX_TOKENS

log = logging.getLogger(__name__)

MODEL_TYPE = "videomae"
PRESETS_DIR = (
    Path(__file__).parents[1] / "configs" / "models"
)  # the repository's configs/, shipped in the package

# transformers' activations (ACT2FN) that have no parameters; model.ACTIVATIONS implements each as it does.
HIDDEN_ACTS = (
    "gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_python_tanh",
    "gelu_accurate", "hardswish", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2",
    "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh",
)  # fmt: skip

# Written to config.json only when set to something else than their default, as transformers does.
_SAVED_IF_SET = ("output_attentions", "output_hidden_states", "return_dict")
# Keys that describe a file rather than the model; dropped on read, rewritten on save.
_VOLATILE = {"transformers_version", "_name_or_path", "model_type", "qv_bias", "qkv_bias"}


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ConfigError(f"expected an int or a pair, got {value!r}")
    return (int(value[0]), int(value[1]))


@dataclass
class VideoMAEConfig:
    """The architecture of a VideoMAE model (encoder, optional decoder, optional classifier)."""

    image_size: int | tuple[int, int] = 224  # int or (height, width)
    patch_size: int | tuple[int, int] = 16  # int or (height, width)
    num_channels: int = 3
    num_frames: int = 16
    tubelet_size: int = 2  # frames per token along time
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact (erf) GELU, as transformers' "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12  # transformers' default; the original code used 1e-6
    qkv_bias: bool = True  # query and value biases; the key never has one. transformers 5.x calls it qv_bias
    use_mean_pooling: bool = (
        True  # False: the classifier reads layernorm(tokens)[:, 0] (there is no CLS token)
    )
    decoder_num_attention_heads: int = 6
    decoder_hidden_size: int = 384
    decoder_num_hidden_layers: int = 4
    decoder_intermediate_size: int = 1536
    norm_pix_loss: bool = True  # pre-training target: each patch normalised per channel
    # transformers' default two labels; None: no labels (a pre-training or feature model, as config.json
    # files without id2label read). num_labels=N (below) makes LABEL_0..LABEL_N-1.
    id2label: dict[int, str] | None = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    problem_type: str | None = None  # single_label_classification | multi_label_classification | regression
    architectures: list[str] | None = None
    dtype: str | None = None  # saved as both "dtype" (5.x) and "torch_dtype" (4.x)
    # what the models return when a call does not say (transformers' PretrainedConfig fields; saved if set)
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, written back as they came
    # a constructor argument only: the `num_labels` property below reads and sets it through id2label
    num_labels: InitVar[int | None] = None

    def __post_init__(self, num_labels: int | None = None) -> None:
        if num_labels is not None:  # as transformers: a count that disagrees with id2label wins
            self._set_num_labels(num_labels)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        if isinstance(self.patch_size, list):
            self.patch_size = tuple(self.patch_size)
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.validate()

    # ---- derived sizes ---------------------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return _pair(self.image_size)

    @property
    def patch_hw(self) -> tuple[int, int]:
        return _pair(self.patch_size)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Tokens along (time, height, width)."""
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        return (self.num_frames // self.tubelet_size, h // ph, w // pw)

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid
        return t * h * w

    def _get_num_labels(self) -> int:
        return len(self.id2label) if self.id2label else 0

    def _set_num_labels(self, n: int) -> None:
        """transformers' setter: LABEL_0..LABEL_n-1, unless id2label already has n labels (kept)."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_LABELS:
            raise _invalid(
                "num_labels", n, f"0..{MAX_LABELS}", f"num_labels {n!r} is not a count in 0..{MAX_LABELS}"
            )
        if self.id2label is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in (self.id2label or {}).items()}

    @property
    def patch_dim(self) -> int:
        """Values per token that the pre-training decoder predicts (tubelet x patch x channels)."""
        ph, pw = self.patch_hw
        return self.num_channels * self.tubelet_size * ph * pw

    def validate(self) -> None:
        """Refuse sizes that cannot make a model or that pass `LIMITS`, naming the field, before anything
        is built: an absurd config.json costs nothing."""
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not all(low <= side <= high for side in (value if isinstance(value, tuple) else (value,))):
                shown = list(value) if isinstance(value, tuple) else value
                raise _invalid(
                    name, shown, f"{low}..{high}", f"{name} {shown} is outside vmae's limits {low}..{high}"
                )
        (h, w), (ph, pw) = self.image_hw, self.patch_hw
        if h % ph or w % pw:
            problem = f"image_size {h}x{w} is not a multiple of patch_size {ph}x{pw}"
            raise _invalid("image_size", [h, w], f"multiples of patch_size {ph}x{pw}", problem)
        if self.num_frames % self.tubelet_size:
            problem = f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}"
            raise _invalid("num_frames", self.num_frames, f"a multiple of {self.tubelet_size}", problem)
        for part in ("", "decoder_"):
            width, heads = getattr(self, f"{part}hidden_size"), getattr(self, f"{part}num_attention_heads")
            if width % heads:
                problem = f"{part}hidden_size {width} is not divisible by {part}num_attention_heads {heads}"
                raise _invalid(f"{part}num_attention_heads", heads, f"a divisor of {width}", problem)
        if self.hidden_act not in HIDDEN_ACTS:
            allowed = ", ".join(HIDDEN_ACTS)
            problem = f"hidden_act {self.hidden_act!r} is not supported (one of: {allowed})"
            raise _invalid("hidden_act", self.hidden_act, allowed, problem)
        if self.num_patches > MAX_TOKENS:  # position tables and attention grow with the tokens
            t, gh, gw = self.grid
            problem = (f"num_frames {self.num_frames}, image_size {h}x{w}, patch_size {ph}x{pw} and tubelet_size "
                       f"{self.tubelet_size} make {t}x{gh}x{gw} = {self.num_patches} tokens per clip, over the "
                       f"limit of {MAX_TOKENS}")  # fmt: skip
            raise _invalid("image_size", [h, w], f"at most {MAX_TOKENS} tokens per clip", problem)
        if self.approx_parameters > MAX_PARAMETERS:
            problem = (f"{self.num_hidden_layers} layers of width {self.hidden_size} (and the decoder's) make "
                       f"about {self.approx_parameters:.2g} parameters, over the limit of {MAX_PARAMETERS:.0e}")  # fmt: skip
            raise _invalid("num_hidden_layers", self.num_hidden_layers, f"at most {MAX_PARAMETERS:.0e} parameters",
                           problem)  # fmt: skip

    @property
    def approx_parameters(self) -> int:
        """The weight count of encoder, decoder and classifier without the small terms (biases, norms)."""
        enc = self.num_hidden_layers * (
            4 * self.hidden_size**2 + 2 * self.hidden_size * self.intermediate_size
        )
        dd = self.decoder_hidden_size
        dec = self.decoder_num_hidden_layers * (4 * dd**2 + 2 * dd * self.decoder_intermediate_size)
        heads = self.patch_dim * (self.hidden_size + dd) + self.hidden_size * (dd + self.num_labels)
        return enc + dec + heads

    # ---- dict / JSON ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoMAEConfig:
        data = dict(data)
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"config.json describes a {model_type!r} model, not a VideoMAE model")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "dtype"}
        kwargs: dict[str, Any] = {}
        # 5.x writes qv_bias, everything on the Hub writes qkv_bias: accept both.
        if "qv_bias" in data:
            kwargs["qkv_bias"] = bool(data["qv_bias"])
        elif "qkv_bias" in data:
            kwargs["qkv_bias"] = bool(data["qkv_bias"])
        kwargs["dtype"] = data.get("dtype", data.get("torch_dtype"))
        extra = {}
        for key, value in data.items():
            if key in known and key != "qkv_bias":
                kwargs[key] = value
            elif key not in _VOLATILE and key not in ("dtype", "torch_dtype", "label2id", "num_labels"):
                extra[key] = value
        kwargs["id2label"] = _labels_as_transformers_reads_them(data)
        for f in dataclasses.fields(cls):  # name the field: a wrong type fails obscurely further on
            if f.name not in kwargs or (kwargs[f.name] is None and "None" in f.type):
                continue
            value = kwargs[f.name]
            whole = f.type in ("int", "int | tuple[int, int]")
            if whole and not _whole_or_pair(value, pair=f.type != "int"):
                raise ConfigError(f"invalid VideoMAE config: {f.name} must be a whole number, got {value!r}")
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"invalid VideoMAE config: {f.name} must be a number, got {value!r}")
        try:
            return cls(**kwargs, extra=extra)
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong type, e.g. a string
            raise ConfigError(f"invalid VideoMAE config: {e}") from None  # where an int belongs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "dtype", "id2label", "problem_type", "architectures"):
                continue
            if f.name in _SAVED_IF_SET and getattr(self, f.name) == f.default:
                continue  # transformers writes these only when they differ from the default
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        # Both spellings: 4.x reads qkv_bias, 5.x maps it and also reads qv_bias.
        out["qv_bias"] = self.qkv_bias
        if self.id2label is not None:
            out["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
            out["label2id"] = {v: k for k, v in sorted(self.id2label.items())}
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        if self.architectures is not None:
            out["architectures"] = list(self.architectures)
        if self.dtype is not None:
            out["dtype"] = out["torch_dtype"] = self.dtype
        out["model_type"] = MODEL_TYPE
        out.update(self.extra)
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        from ..jsonfile import dumps  # strict JSON: a NaN or infinity is refused, naming the field

        return dumps(self.to_dict(), name=CONFIG_NAME, indent=2, sort_keys=True, ensure_ascii=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | Path) -> VideoMAEConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); re-create the model folder") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(data)
        except FieldError as e:
            raise e.at(path) from None
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def save_pretrained(self, folder: str | Path) -> Path:
        from ..files import atomic_write_text

        path = Path(folder) / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, ref: str | Path, revision: str | None = None) -> VideoMAEConfig:
        """Read `config.json` from a folder, a Hub id, or a preset name (`tiny`, `base`, ...)."""
        if isinstance(ref, str) and ref in preset_names():
            return cls.from_preset(ref)
        return cls.from_json_file(resolve(ref, revision=revision, weights=False).config_path)

    @classmethod
    def from_preset(cls, name: str) -> VideoMAEConfig:
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
        return cls.from_json_file(path)

    def replace(self, **changes: Any) -> VideoMAEConfig:
        """A copy with `changes` (fields, or num_labels=N). Not `dataclasses.replace` alone: it would pass the
        current num_labels along, which then overrides a new id2label."""
        return dataclasses.replace(self, **{"num_labels": None, **changes})


# `num_labels` reads and sets the labels as transformers' attribute does. Bound after @dataclass, which has
# made `num_labels` an argument of __init__ and of replace() (an InitVar) from the annotation above.
VideoMAEConfig.num_labels = property(VideoMAEConfig._get_num_labels, VideoMAEConfig._set_num_labels)


def _labels_as_transformers_reads_them(data: dict[str, Any]) -> dict | None:
    """The id2label transformers builds from a config.json: a `num_labels` that disagrees with id2label wins
    (labels LABEL_i), and a classifier's file without id2label has transformers' default two labels, which
    `save_pretrained` leaves out of the file. Otherwise None: no labels (a pre-training or feature model)."""
    id2label, num_labels = data.get("id2label"), data.get("num_labels")
    if num_labels is not None and (id2label is None or len(id2label) != num_labels):
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 0:
            raise ConfigError(f"invalid VideoMAE config: num_labels must be a count, got {num_labels!r}")
        if num_labels > MAX_LABELS:
            problem = f"num_labels {num_labels} is outside vmae's limits 0..{MAX_LABELS}"
            raise _invalid("num_labels", num_labels, f"0..{MAX_LABELS}", problem)
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    if id2label is None and "VideoMAEForVideoClassification" in (data.get("architectures") or ()):
        return {0: "LABEL_0", 1: "LABEL_1"}
    return id2label


def warn_about_label_gaps(config: VideoMAEConfig, path: Path) -> None:
    """transformers loads an id2label whose keys are not 0..n-1 as it stands (n outputs, numbered 0..n-1), so
    vmae does too; but an output without a name would show as LABEL_i, and a name past n-1 is never shown."""
    n = config.num_labels
    unnamed = sorted(set(range(n)) - set(config.id2label or {}))
    if unnamed:
        beyond = sorted(set(config.id2label) - set(range(n)))
        log.warning(
            "%s: id2label names no label for output(s) %s of the model's %d (numbered 0..%d), shown as %s%s",
            path, _few(unnamed), n, n - 1, _few([f"LABEL_{i}" for i in unnamed]),
            f"; its label(s) for {_few(beyond)} belong to no output" if beyond else "",
        )  # fmt: skip


def _few(items: list, n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _invalid(field: str, value: Any, allowed: str, problem: str) -> FieldError:
    return FieldError(f"invalid VideoMAE config: {problem}", field=field, value=value, allowed=allowed)


def _whole_or_pair(value: Any, pair: bool) -> bool:
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if pair and isinstance(value, (list, tuple)):
        return len(value) == 2 and all(whole(v) for v in value)
    return whole(value)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
