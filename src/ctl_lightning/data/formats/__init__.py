"""Readers for the CTL (Complete the Look) and STL (Shop the Look) annotation files."""

from ctl_lightning.data.formats.common import ParseResult
from ctl_lightning.data.formats.ctl import (
    CtlItem,
    FitbQuestion,
    read_ctl_fitb,
    read_ctl_raw,
    read_ctl_triplets,
)
from ctl_lightning.data.formats.stl import (
    StlProduct,
    read_stl_categories,
    read_stl_products,
)

__all__ = [
    "CtlItem",
    "FitbQuestion",
    "ParseResult",
    "StlProduct",
    "read_ctl_fitb",
    "read_ctl_raw",
    "read_ctl_triplets",
    "read_stl_categories",
    "read_stl_products",
]
