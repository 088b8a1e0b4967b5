"""Video encoders from torchvision, without their classification layer.

The thesis uses R(2+1)D-18 (Ch. 4, 5) and R3D-18 (Ch. 2, App. C.2). We never re-implement them:
the encoders here *are* `torchvision.models.video.r2plus1d_18` / `r3d_18` with `fc` replaced by an
identity, so state-dict keys stay torchvision's and any torchvision checkpoint loads with
`strict=True` once its `fc.*` entries are dropped.
"""
from torch import nn
from torchvision.models import video as tv_video

# Normalisation of torchvision's Kinetics-400 video models (their transforms' mean/std).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

BACKBONES = {"r2plus1d_18": tv_video.r2plus1d_18, "r3d_18": tv_video.r3d_18}


def video_encoder(name="r2plus1d_18", in_channels=3):
    """Returns (encoder, feature_dim): the torchvision network with `fc = Identity()`.

    encoder: (B, C, T, H, W) float -> (B, feature_dim) globally pooled features.
    in_channels != 3 replaces the first convolution (depth: 1, optical flow: 2).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    net = BACKBONES[name]()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    if in_channels != 3:
        old = net.stem[0]
        net.stem[0] = nn.Conv3d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                old.padding, bias=False)
    return net, feature_dim


def encoder_state_dict(encoder):
    """The encoder's weights in torchvision key format, without `fc` (which is an Identity)."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def load_encoder_weights(encoder, state_dict, source="checkpoint"):
    """Strict load into an encoder made by `video_encoder`; `fc.*` entries in the file are ignored.

    Raises a RuntimeError that lists missing and unexpected keys instead of silently training
    from random weights (what `strict=False` does).
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not match the {type(encoder).__name__} encoder"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
        raise RuntimeError("\n".join(lines))
    encoder.load_state_dict(state_dict, strict=True)
