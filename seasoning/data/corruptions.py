"""Fashion-MNIST's shifted test sets, made offline from its test images."""

from __future__ import annotations

from collections.abc import Mapping

from seasoning.data.source import DatasetEntry

# Registry entries of this module (merged into `data.DATASETS`).
ENTRIES: Mapping[str, DatasetEntry] = {}
