"""The sizes vmae builds (inclusive; each side of a pair), for every layer that checks them.

Past them a config (or a preprocessor's resize) is refused before anything is allocated, naming the field
(README, "Limits"). The largest published VideoMAE, ViT-g (VideoMAEv2), is
1408 wide, 40 layers deep, with a 6144 MLP, 16 frames of 224x224 and 1568 tokens.
"""

LIMITS = {
    "image_size": (1, 4096), "patch_size": (1, 4096), "num_channels": (1, 16), "num_frames": (1, 1024),
    "tubelet_size": (1, 1024), "hidden_size": (1, 16384), "num_hidden_layers": (1, 256),
    "num_attention_heads": (1, 1024), "intermediate_size": (1, 65536), "decoder_hidden_size": (1, 16384),
    "decoder_num_hidden_layers": (0, 256), "decoder_num_attention_heads": (1, 1024),
    "decoder_intermediate_size": (1, 65536),
}  # fmt: skip
MAX_TOKENS = 65536  # per clip: (num_frames / tubelet_size) x (height / patch) x (width / patch)
MAX_PARAMETERS = 4_000_000_000
MAX_LABELS = 1 << 20  # num_labels builds LABEL_i names, one per output
