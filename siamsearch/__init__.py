"""siamsearch: a Siamese image encoder, a persistent FAISS index, and search / dedup over it.

Training lives in `siamsearch.training.loop.train`; indexing in `siamsearch.index.indexing`; querying in `siamsearch.index.search`;
duplicates in `siamsearch.duplicates.dedup`; evaluation in `siamsearch.evaluate`.
"""

__version__ = "0.1.0"

from .core.checkpoint import load_checkpoint, load_encoder, save_model  # noqa: E402
from .commands import dedup_index, default_margin  # noqa: E402
from .core.config import AugmentConfig, EncoderConfig, Preprocess, Runtime, TrainConfig  # noqa: E402
from .duplicates.dedup import find_duplicates  # noqa: E402
from .core.embed import EmbedResult, embed_paths  # noqa: E402
from .core.images import BadImageError, Failure, find_images, load_image  # noqa: E402
from .index.indexing import index_folder  # noqa: E402
from .core.model import Encoder, build_encoder  # noqa: E402
from .index.search import Searcher  # noqa: E402
from .index.store import Store  # noqa: E402

__all__ = [
    "AugmentConfig", "BadImageError", "EmbedResult", "Encoder", "EncoderConfig", "Failure", "dedup_index",
    "Preprocess", "Runtime", "Searcher", "Store", "TrainConfig", "__version__", "build_encoder", "default_margin",
    "embed_paths", "find_duplicates", "find_images", "index_folder", "load_checkpoint", "load_encoder",
    "load_image", "save_model",
]
