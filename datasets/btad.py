"""BTAD, the beanTech Anomaly Detection set (Mishra et al., 2021): 3 industrial products.

Layout of the release (``BTech_Dataset_transformed``)::

    <root>/<01|02|03>/train/ok/*.bmp|png
    <root>/<01|02|03>/test/{ok,ko}/*.bmp|png
    <root>/<01|02|03>/ground_truth/ko/<stem>.png|bmp

Normal images live in ``ok`` (not ``good``) and a mask has its image's stem with no ``_mask``
suffix; its extension does not follow the image's (product 01 pairs ``.bmp`` images with
``.png`` masks, 02 is ``.png`` throughout, 03 ``.bmp`` throughout), so a mask of any supported
extension with the image's stem is taken. The products are industrial parts photographed in a
fixed pose on the line, so we declare all three aligned objects (the BTAD paper gives no
texture/object split; tables report them as objects).
"""
from __future__ import annotations

from adbench.dataset import CategoryInfo
from adbench.registry import register_dataset

from ._mvtec_layout import MVTecStyleAdapter


@register_dataset("btad")
class BTAD(MVTecStyleAdapter):
    """BTAD products 01, 02, 03 (``ok`` / ``ko``, masks named like their image)."""

    KNOWN_CATEGORIES = {c: CategoryInfo(c, "object", True) for c in ("01", "02", "03")}
    NORMAL = "ok"
    MASK_SUFFIXES = ("",)
