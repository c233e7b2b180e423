"""Data: prompt templates, processors, the binary dataset and its loader. Importing registers them.

``from tencentpretrain.data import BinaryDataset, DataLoader, Batch`` is what training needs;
``build_dataset`` is what ``preprocess.py`` runs.
"""

from tencentpretrain.data import bart, bert, chat, processors, t5, templates  # noqa: F401  (registration)
from tencentpretrain.data.binary import FORMAT_VERSION, BinaryDataset, DatasetError
from tencentpretrain.data.corpus import CorpusError
from tencentpretrain.data.loader import Batch, DataLoader
from tencentpretrain.data.pipeline import build_dataset
from tencentpretrain.data.processors import ProcessorSpec

__all__ = ["FORMAT_VERSION", "Batch", "BinaryDataset", "CorpusError", "DataLoader", "DatasetError",
           "ProcessorSpec", "build_dataset"]
