"""VideoMAE: the encoder, the pre-training model and the classifier, with transformers' module and parameter
names; their blocks are in layers.py.

Parameter names are the on-disk names of Hugging Face checkpoints (`...attention.attention.q_bias`, no key
bias), so `state_dict()` is the file layout and loading needs no renaming. Shapes follow transformers:
`pixel_values` is (B, T, C, H, W), frames first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .config import VideoMAEConfig
from .layers import (
    Embeddings,
    Layer,
    SelfAttention,
    Stack,
    classifier_pooling,
    drop_path_rates,
    pool,
    sinusoid_table,
)
from .loading import PretrainedMixin
from .outputs import (  # noqa: F401 - ModelOutput re-exported: vmae_cli.models.modeling named them first
    BaseModelOutput,
    ImageClassifierOutput,
    ModelOutput,
    VideoMAEForPreTrainingOutput,
)
from .targets import (
    ShapeError,
    patchify,
    pretraining_targets,
)

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _require(condition: torch.Tensor, message: Callable[[], str]) -> None:
    """Raise ShapeError unless `condition` (a bool tensor) holds. Under torch.export or torch.compile a Python
    branch on tensor values cannot be traced: there the check becomes an assertion that the program runs."""
    if torch.compiler.is_compiling():
        torch._check(condition.item(), message)
    elif not bool(condition):
        raise ShapeError(message())


# ---- models ----------------------------------------------------------------------------------------------
class VideoMAEPreTrainedModel(PretrainedMixin, nn.Module):
    """Weight init, attention backend and the shared checkpoint methods (`from_pretrained`, `save_pretrained`)."""

    config: VideoMAEConfig

    def init_weights(self) -> None:
        if next(
            self.parameters()
        ).is_meta:  # built to be loaded into (from_pretrained): nothing to initialise
            return
        for module in self.modules():
            self._init_module(module)

    def _init_module(self, module: nn.Module) -> None:
        """New weights as the original VideoMAE draws them: every weight matrix xavier-uniform (the patch
        embedding as the matrix it is, as MAE does), biases 0, the mask token N(0, 0.02) cut at one std.

        transformers draws N(0, initializer_range) instead. At ViT-B's width the two are alike (std 0.02
        against 0.036); at the small presets' (96) xavier's std is 0.1, and with 0.02 the patch content is a
        few percent of the position table it is added to: pre-training from such an init sat on the "predict
        each clip's mean colour" plateau (held-out masked loss above that baseline after 500 steps; below it
        with this init) and from-scratch fine-tuning started from features that hardly saw the pixels.
        """
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, SelfAttention) and module.q_bias is not None:
            nn.init.zeros_(module.q_bias)
            nn.init.zeros_(module.v_bias)
        elif isinstance(module, VideoMAEForPreTraining):
            nn.init.trunc_normal_(module.mask_token, std=0.02, a=-0.02, b=0.02)

    def _init_buffers(self) -> None:
        """Recompute the position tables (after building on the meta device)."""
        for module in self.modules():
            if isinstance(module, Embeddings):
                module.position_embeddings = sinusoid_table(self.config.num_patches, self.config.hidden_size)
            elif isinstance(module, VideoMAEForPreTraining):
                module.position_embeddings = sinusoid_table(
                    self.config.num_patches, self.config.decoder_hidden_size
                )

    def _output_flags(
        self, output_attentions: bool | None, output_hidden_states: bool | None, return_dict: bool | None
    ) -> tuple[bool, bool, bool]:
        """A call's keywords, and the config's fields where a keyword is None (transformers' rule)."""
        cfg = self.config
        return (
            bool(cfg.output_attentions if output_attentions is None else output_attentions),
            bool(cfg.output_hidden_states if output_hidden_states is None else output_hidden_states),
            bool(cfg.return_dict if return_dict is None else return_dict),
        )

    def set_attn_implementation(self, name: str) -> None:
        """'sdpa' (fused `scaled_dot_product_attention`, the default) or 'eager' (explicit softmax)."""
        if name not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
        for module in self.modules():
            if isinstance(module, SelfAttention):
                module.implementation = name

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, (Stack, Decoder)):
                module.gradient_checkpointing = enable

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class VideoMAEModel(VideoMAEPreTrainedModel):
    """The encoder. `last_hidden_state` is (B, N_visible, D); `layernorm` exists only without mean pooling."""

    def __init__(self, config: VideoMAEConfig, drop_path_rate: float = 0.0, *, init: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        rates = drop_path_rates(drop_path_rate, config.num_hidden_layers)
        D = config.hidden_size
        self.encoder = Stack(
            [Layer(D, config.num_attention_heads, config.intermediate_size, config, r) for r in rates]
        )
        self.layernorm = None if config.use_mean_pooling else nn.LayerNorm(D, eps=config.layer_norm_eps)
        if init:  # a head model initialises everything once, itself included
            self.init_weights()

    def check_inputs(
        self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None
    ) -> torch.Tensor | None:
        cfg = self.config
        (h, w), c, t = cfg.image_hw, cfg.num_channels, cfg.num_frames
        if pixel_values.ndim != 5 or tuple(pixel_values.shape[1:]) != (t, c, h, w):
            raise ShapeError(
                f"pixel_values must have shape (batch, {t}, {c}, {h}, {w}) = (batch, frames, channels, height, "
                f"width) for this model, got {tuple(pixel_values.shape)}"
            )
        if bool_masked_pos is None:
            return None
        B, N = pixel_values.shape[0], cfg.num_patches
        if bool_masked_pos.ndim == 1:
            bool_masked_pos = bool_masked_pos.unsqueeze(0)
        if bool_masked_pos.shape[-1] != N or bool_masked_pos.shape[0] not in (1, B):
            raise ShapeError(
                f"bool_masked_pos must have shape ({B}, {N}), got {tuple(bool_masked_pos.shape)}"
            )
        bool_masked_pos = bool_masked_pos.to(device=pixel_values.device, dtype=torch.bool).expand(B, N)
        counts = bool_masked_pos.sum(1)
        if B > 1:
            _require(
                counts.min() == counts.max(),
                lambda: (
                    "bool_masked_pos must mask the same number of tokens in every sample of a batch; got "
                    f"{counts.tolist()} (tube masking gives equal counts)"
                ),
            )
        return bool_masked_pos

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        attentions, hidden, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        bool_masked_pos = self.check_inputs(pixel_values, bool_masked_pos)
        out = self.encode(pixel_values, bool_masked_pos, attentions, hidden)
        return out if return_dict else out.to_tuple()

    def encode(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        tubes: torch.Tensor | None = None,
    ) -> BaseModelOutput:
        """`forward` without the input checks, for callers that made them (pixel_values (B, T, C, H, W)).
        `tubes`: the input already patchified (`patchify`), for a masked input."""
        x = self.embeddings(pixel_values, bool_masked_pos, tubes)  # (B, N_visible, D)
        x, hidden, attentions = self.encoder(x, bool(output_hidden_states), bool(output_attentions))
        if self.layernorm is not None:
            x = self.layernorm(x)
        return BaseModelOutput(x, hidden, attentions)


class Decoder(nn.Module):
    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        D = cfg.decoder_hidden_size
        self.decoder_layers = nn.ModuleList(
            [
                Layer(D, cfg.decoder_num_attention_heads, cfg.decoder_intermediate_size, cfg)
                for _ in range(cfg.decoder_num_hidden_layers)
            ]
        )
        self.norm = nn.LayerNorm(D, eps=1e-5)  # transformers' default eps here, not layer_norm_eps
        self.head = nn.Linear(D, cfg.patch_dim) if cfg.patch_dim > 0 else nn.Identity()
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, return_token_num: int) -> torch.Tensor:
        """x: (B, N, Dd) visible then masked tokens -> (B, return_token_num, patch_dim) for the last tokens."""
        for layer in self.decoder_layers:
            if self.gradient_checkpointing and self.training:
                x, _ = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x, _ = layer(x)
        return self.head(self.norm(x[:, -return_token_num:]))


class VideoMAEForPreTraining(VideoMAEPreTrainedModel):
    """Masked autoencoder: encode the visible tokens, decode all, predict the pixels of the masked ones."""

    has_decoder = True

    def __init__(self, config: VideoMAEConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.config = config
        self.videomae = VideoMAEModel(config, drop_path_rate, init=False)
        self.encoder_to_decoder = nn.Linear(config.hidden_size, config.decoder_hidden_size, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_hidden_size))
        table = sinusoid_table(config.num_patches, config.decoder_hidden_size)
        self.register_buffer("position_embeddings", table, persistent=False)
        self.decoder = Decoder(config)
        self.init_weights()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        decoder_mask: torch.Tensor | None = None,
    ):
        """`decoder_mask` (B, N), optional: VideoMAEv2's dual masking. True marks the masked tokens the decoder
        reconstructs (a subset of `bool_masked_pos`, the same count per sample); the others are left out of
        the decoder and the loss. See `masking.decoder_mask`. Without it every masked token is decoded."""
        if bool_masked_pos is None:
            raise ShapeError(
                "VideoMAEForPreTraining needs bool_masked_pos (B, N), True = masked; see vmae_cli.models.masking"
            )
        attentions, hidden, return_dict = self._output_flags(
            output_attentions, output_hidden_states, return_dict
        )
        bool_masked_pos = self.videomae.check_inputs(pixel_values, bool_masked_pos)
        decoded = (
            bool_masked_pos
            if decoder_mask is None
            else self._check_decoder_mask(decoder_mask, bool_masked_pos)
        )
        # patchified once: the encoder embeds the visible tubes, the targets are the masked ones
        tubes = patchify(pixel_values, self.config.tubelet_size, self.config.patch_hw)
        enc = self.videomae.encode(pixel_values, bool_masked_pos, attentions, hidden, tubes=tubes)
        x = self.encoder_to_decoder(enc.last_hidden_state)  # (B, N_visible, Dd)
        B, _, Dd = x.shape
        pos = self.position_embeddings.to(pixel_values.dtype).expand(B, -1, -1)
        pos_visible = pos[~bool_masked_pos].reshape(B, -1, Dd)
        pos_masked = pos[decoded].reshape(B, -1, Dd)
        x = torch.cat([x + pos_visible, self.mask_token + pos_masked], dim=1)  # visible first, then masked
        logits = self.decoder(x, pos_masked.shape[1])  # (B, N_decoded, patch_dim)
        labels = pretraining_targets(pixel_values, decoded, self.config, tubes)
        torch._check(labels.shape[1] == logits.shape[1])  # the same tokens: true, and torch.export must know
        # in fp32, as autocast computes it, against unrounded targets (not targets rounded to a bf16 logits' dtype)
        loss = F.mse_loss(logits.float(), labels.float())
        out = VideoMAEForPreTrainingOutput(loss, logits, enc.hidden_states, enc.attentions)
        return out if return_dict else out.to_tuple()

    @staticmethod
    def _check_decoder_mask(decoder_mask: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        decoder_mask = decoder_mask.to(device=bool_masked_pos.device, dtype=torch.bool)
        if decoder_mask.shape != bool_masked_pos.shape:
            raise ShapeError(
                f"decoder_mask must have the shape of bool_masked_pos {tuple(bool_masked_pos.shape)}, "
                f"got {tuple(decoder_mask.shape)}"
            )
        counts = decoder_mask.sum(1)
        _require(
            ~(decoder_mask & ~bool_masked_pos).any() & (counts.min() == counts.max()) & (counts[0] > 0),
            lambda: (
                "decoder_mask must pick some of the masked tokens (True only where bool_masked_pos is True), "
                "the same number in every sample"
            ),
        )
        return decoder_mask


class VideoMAEForVideoClassification(VideoMAEPreTrainedModel):
    """Encoder + `fc_norm(mean of tokens)` (mean pooling) or `layernorm(tokens)[:, 0]`, then a linear head."""

    has_classifier = True

    def __init__(self, config: VideoMAEConfig, drop_path_rate: float = 0.0, head_dropout: float = 0.0):
        super().__init__()
        self.config = config
        self.videomae = VideoMAEModel(config, drop_path_rate, init=False)
        D, L = config.hidden_size, config.num_labels
        self.fc_norm = (
            nn.LayerNorm(D, eps=1e-5) if config.use_mean_pooling else None
        )  # eps 1e-5, as transformers
        self.head_dropout = nn.Dropout(head_dropout)  # no parameters: absent from checkpoints
        self.classifier = nn.Linear(D, L) if L > 0 else nn.Identity()
        self.pooling = classifier_pooling(config)  # "mean+fc_norm" or "token0": see layers.pool
        self.init_weights()

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pooled vector the classifier sees: (B, D)."""
        enc = self.videomae(
            pixel_values, output_attentions=False, output_hidden_states=False, return_dict=True
        )
        return pool(enc.last_hidden_state, self.pooling, self.fc_norm)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        # the flags as given, None included (the encoder reads it from the config), as transformers does
        enc = self.videomae(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True,
        )  # fmt: skip
        pooled = pool(enc.last_hidden_state, self.pooling, self.fc_norm)
        logits = self.classifier(self.head_dropout(pooled))
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        out = ImageClassifierOutput(loss, logits, enc.hidden_states, enc.attentions)
        _, _, return_dict = self._output_flags(None, None, return_dict)
        return out if return_dict else out.to_tuple()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: VideoMAEConfig) -> torch.Tensor:
    """transformers' rule: regression for one label, cross-entropy for integer labels, else multi-label BCE."""
    problem = cfg.problem_type
    if problem is None:
        if cfg.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def count_parameters(config: VideoMAEConfig, architecture: str = "VideoMAEForVideoClassification") -> int:
    """Parameters of a model, from its config alone (no weights are built)."""
    cls = MODEL_CLASSES[architecture]
    with torch.device("meta"):
        return sum(p.numel() for p in cls(config).parameters())


MODEL_CLASSES = {
    "VideoMAEModel": VideoMAEModel,
    "VideoMAEForPreTraining": VideoMAEForPreTraining,
    "VideoMAEForVideoClassification": VideoMAEForVideoClassification,
}
