"""MIAD, the Maintenance Inspection Anomaly Detection set (Bao et al., 2023): 7 scenarios.

The MIAD release follows MVTec AD's layout per scenario,
``<root>/<scenario>/{train/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}``,
with the defect types of the MIAD appendix (Table A.1: e.g. ``weld_beading`` / ``weld_pit``
for metal welding). The appendix does not state the mask naming; we follow MVTec's
``<stem>_mask.png`` and also accept a mask named exactly like its image (``<stem>.png``), the
other common convention, so either copy indexes; a mask that fits neither is an orphan.

Kind and alignment, from the appendix's description of the scenarios (outdoor maintenance
photos with uncontrolled viewpoints, backgrounds and surfaces): photovoltaic_module and
metal_welding are surfaces (textures); the others are objects seen from varying viewpoints,
so none is aligned.
"""
from __future__ import annotations

from adbench.dataset import CategoryInfo
from adbench.registry import register_dataset

from ._mvtec_layout import MVTecStyleAdapter

SCENARIOS = {
    "electrical_insulator": "object",
    "metal_welding": "texture",
    "photovoltaic_module": "texture",
    "wind_turbine": "object",
    "catenary_dropper": "object",
    "nut_and_bolt": "object",
    "witness_mark": "object",
}


@register_dataset("miad")
class MIAD(MVTecStyleAdapter):
    """MIAD scenarios in MVTec layout; masks ``<stem>_mask.png`` (or ``<stem>.png``)."""

    KNOWN_CATEGORIES = {name: CategoryInfo(name, kind, False) for name, kind in SCENARIOS.items()}
    NORMAL = "good"
    MASK_SUFFIXES = ("_mask", "")
