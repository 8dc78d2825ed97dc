"""colrag: ask questions about PDF reports, treating every page as an image.

Public API (imported lazily so `import colrag` stays cheap):
    colrag.Retriever   ColQwen2 page/query multi-vectors on onnxruntime
    colrag.Generator   Qwen2-VL answers on onnxruntime
    colrag.maxsim      late-interaction scores
    colrag.open_index  store and search page vectors without a model (colrag.api)
    colrag.Hit         a search result: file, page (1-based), score
    colrag.Asker       the answer pipeline (colrag.ask): retrieve -> page features -> answer with sources
"""

__version__ = "0.1.0"

__all__ = ["Asker", "Generator", "Hit", "Retriever", "__version__", "maxsim", "open_index"]


def __getattr__(name):
    if name == "Retriever":
        from .vlm.retriever import Retriever

        return Retriever
    if name == "Generator":
        from .vlm.generator import Generator

        return Generator
    if name in ("open_index", "Hit"):
        from . import api

        return getattr(api, name)
    if name == "Asker":
        from .ask import Asker

        return Asker
    if name == "maxsim":
        from .scoring import maxsim

        return maxsim
    raise AttributeError(f"module 'colrag' has no attribute {name!r}")
