"""mistralrs: fast LLM inference with one model graph over MLX and torch.

    >>> import mistralrs
    >>> llm = mistralrs.load("HuggingFaceTB/SmolLM2-135M-Instruct")
    >>> llm.chat([{"role": "user", "content": "Hi"}]).text
"""

from mistralrs.errors import ModelLoadError, TemplateError, UserError

__version__ = "0.1.0"


def load(model_id, **options):
    """Load a model once; see `mistralrs.engine.api.load` for the options."""
    from mistralrs.engine.api import load as _load

    return _load(model_id, **options)


__all__ = ["load", "UserError", "ModelLoadError", "TemplateError", "__version__"]
