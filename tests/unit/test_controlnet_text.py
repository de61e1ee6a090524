"""A ControlNet unit as the PNG's ``parameters`` text records it (sd-webui-controlnet's ``ControlNet N``
value): a union ControlNet's mode is written, another unit's text is as before."""

from __future__ import annotations

from sdworker.domain.parameters import controlnet_text
from sdworker.domain.request import ControlUnit, InputImage


def test_a_union_units_mode_is_recorded_and_a_plain_unit_has_none() -> None:
    image = InputImage(b"", "controlnet.0.image")
    plain = ControlUnit("demo-flux1-controlnet", image, 0.7, 0.0, 0.5)
    assert controlnet_text(plain) == ("Module: none, Model: demo-flux1-controlnet, Weight: 0.7, Guidance Start: 0, "
                                      "Guidance End: 0.5")
    union = ControlUnit("flux-union", image, 1.0, 0.0, 1.0, mode=2)
    assert controlnet_text(union).endswith("Guidance End: 1, Union Mode: 2")
