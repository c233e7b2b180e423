"""The key/value caches the model attends through (below the model: ``layers/attention.py`` takes one), each
implementing ``protocol.Cache`` (``attend``, ``advance``, ``length``).

``kv_cache.py``: ``KVCache``, a batch of rows filled together (a prompt batch, then its decoding steps);
``slots.py``: ``SlotCache``, the rows of the continuous batcher, joining and leaving between steps; ``ragged.py``:
``RaggedPass``, one pass over several requests' tokens laid end to end, each attending to its own cache.
"""

from tencentpretrain.cache.kv_cache import KVCache
from tencentpretrain.cache.protocol import Cache
from tencentpretrain.cache.ragged import RaggedPass, chunk_mask
from tencentpretrain.cache.slots import SlotCache

__all__ = ["Cache", "KVCache", "RaggedPass", "SlotCache", "chunk_mask"]
