"""Versioned layouts of imambig's stores, and their validator.

Each layout module names its schema string, the arrays (dtype and dimensions), the
required group attributes, and semantic checks. Writers in ``imambig`` create stores
from these definitions; ``imambig validate URL`` checks a store against them. A store
records its layout in the group attribute ``schema``; a new layout version gets a new
module and never changes an old one.
"""

from storage_schemas.layout import ArraySpec, Layout
from storage_schemas.registry import LAYOUTS, layout_for

__all__ = ["LAYOUTS", "ArraySpec", "Layout", "layout_for"]
