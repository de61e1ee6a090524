"""Tiny random-weight ControlNets of the transformer families (``demo_model`` has the SD 1.x one).

``demo-flux1-controlnet``: a ``FluxControlNetModel`` for ``demo-flux1`` (one double and one single block,
the transformer's width, its guidance embedding). ``build_sd3_controlnet`` and ``build_qwenimage_controlnet``
make ControlNets for a tiny SD 3.5 and Qwen-Image transformer; tests build them for ``demo-sd3`` and
``demo-qwenimage`` (the bundle does not carry them).

diffusers starts a ControlNet's output projections and its control-image embedder at zero, so a fresh
one changes nothing; here they are random and non-zero so the control image visibly steers the demo's
pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_FLUX1_CONTROLNET = "demo-flux1-controlnet"


def build_flux1_controlnet(transformer: Any, seed: int, num_mode: int | None = None) -> Any:
    """A FLUX.1 ControlNet shaped after ``transformer`` (its widths; random weights); ``num_mode``: a union
    ControlNet with that many control modes."""
    import torch
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    config = transformer.config
    net: Any = FluxControlNetModel(
        patch_size=config.patch_size, in_channels=config.in_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim, pooled_projection_dim=config.pooled_projection_dim,
        guidance_embeds=config.guidance_embeds, axes_dims_rope=list(config.axes_dims_rope), num_mode=num_mode,
    )
    _randomize(net.controlnet_blocks, net.controlnet_single_blocks, net.controlnet_x_embedder)
    return net.eval()


def build_sd3_controlnet(transformer: Any, seed: int) -> Any:
    """An SD 3.5 ControlNet shaped after ``transformer`` (one block, no extra conditioning channels)."""
    import torch
    from diffusers import SD3ControlNetModel

    torch.manual_seed(seed)
    net: Any = SD3ControlNetModel.from_transformer(transformer, num_layers=1, num_extra_conditioning_channels=0)
    _randomize(net.controlnet_blocks, net.pos_embed_input)
    return net.eval()


def build_qwenimage_controlnet(transformer: Any, seed: int) -> Any:
    """A Qwen-Image ControlNet shaped after ``transformer`` (one block)."""
    import torch
    from diffusers import QwenImageControlNetModel

    torch.manual_seed(seed)
    config = transformer.config
    net: Any = QwenImageControlNetModel.from_transformer(
        transformer, num_layers=1, attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
    )
    _randomize(net.controlnet_blocks, net.controlnet_x_embedder)
    return net.eval()


def _randomize(*modules: Any) -> None:
    import torch

    with torch.no_grad():
        for module in modules:
            for parameter in module.parameters():
                torch.nn.init.normal_(parameter, std=0.2)


def write_demo_controlnets(controlnet_dir: Path, flux1_seed: int, seed: int) -> None:
    """The bundle's transformer-family ControlNets; ``flux1_seed``: the seed ``demo-flux1`` was built with."""
    from sdworker.engine.demo_flow import build_demo_flux1_components

    transformer = build_demo_flux1_components(flux1_seed)["transformer"]
    build_flux1_controlnet(transformer, seed).save_pretrained(controlnet_dir / DEMO_FLUX1_CONTROLNET,
                                                              safe_serialization=True)


def build_sdxl_union_controlnet(unet: Any, seed: int, num_control_type: int = 4) -> Any:
    """An SDXL union ControlNet (xinsir's kind, ``ControlNetUnionModel``) shaped after ``unet``: its
    control-type transformer as wide as the UNet's first block; random, non-zero output layers."""
    import torch
    from diffusers import ControlNetUnionModel

    torch.manual_seed(seed)
    shaped = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16),
                                            load_weights_from_unet=False)
    width = int(unet.config.block_out_channels[0])
    # from_unet's config marks what it left at the defaults (``_use_default_values``); from_config would then
    # drop our values for those keys
    config = {key: value for key, value in shaped.config.items() if key != "_use_default_values"}
    config |= {"num_trans_channel": width, "num_proj_channel": width, "num_trans_head": 2,
              "num_control_type": num_control_type}
    net: Any = ControlNetUnionModel.from_config(config)
    _randomize(net.controlnet_down_blocks, net.controlnet_mid_block, net.spatial_ch_projs)
    return net.eval()


def build_zimage_controlnet(transformer: Any, seed: int, reads_mask: bool = False) -> Any:
    """A Z-Image ControlNet shaped after ``transformer`` (one control layer; random, non-zero outputs).
    ``reads_mask``: the 2.0 kind, whose control input also carries the mask and the masked image (what
    diffusers' inpaint ControlNet pipeline needs)."""
    import torch
    from diffusers import ZImageControlNetModel

    torch.manual_seed(seed)
    config = transformer.config
    channels = int(config.in_channels)
    net: Any = ZImageControlNetModel(
        control_layers_places=[0], control_in_dim=2 * channels + 1 if reads_mask else channels, dim=config.dim,
        n_refiner_layers=config.n_refiner_layers, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads,
        all_patch_size=tuple(config.all_patch_size), all_f_patch_size=tuple(config.all_f_patch_size),
    )
    _randomize(net)
    return net.eval()
