"""The one public API: load a model once, then generate or chat, blocking or streaming.

The CLI and the HTTP server are thin layers over this module.

    llm = load("HuggingFaceTB/SmolLM2-135M-Instruct")
    for chunk in llm.stream_chat([{"role": "user", "content": "Hi"}]):
        print(chunk.text, end="")
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from mistralrs.backends import get_ops
from mistralrs.backends.ops import FLOAT_DTYPES, Ops
from mistralrs.engine.generate import generate_tokens
from mistralrs.engine.output import OutputBuilder, max_new_tokens
from mistralrs.engine.params import Chunk, Completion, SamplingParams
from mistralrs.engine.prompt_logprobs import score_prompt
from mistralrs.engine.sampling import Sampler
from mistralrs.engine.source import ModelSource, resolve_source
from mistralrs.engine.weights import load_into, read_safetensors, safetensors_files
from mistralrs.errors import ModelLoadError, UserError
from mistralrs.models.base import QUANTIZED, Embedding, Linear
from mistralrs.models.registry import build_model, resolve_architecture
from mistralrs.quant import ggml_blocks
from mistralrs.quant.qtensor import GgmlTensor

DTYPE_NAMES = {"auto": "auto", "bf16": "bfloat16", "f16": "float16", "f32": "float32"}
DTYPE_NAMES.update({name: name for name in FLOAT_DTYPES})


@dataclass
class LoadedModel:
    """What load() assembled, before it is wrapped in an LLM."""

    model: object
    config: dict
    arch: str
    dtype: str


def load(
    model_id: str,
    *,
    backend: str = "auto",
    cpu: bool = False,
    dtype: str = "auto",
    tokenizer: str | None = None,
    arch: str | None = None,
    hf_cache: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    chat_template: str | None = None,
    jinja_explicit: str | None = None,
    quantized_file: str | None = None,
    format: str = "auto",
    tok_model_id: str | None = None,
    threads: int | None = None,
    max_seq_len: int | None = None,
    prefill_chunk: int = 1024,
    isq: str | int | None = None,
    isq_organization: str = "default",
    from_uqff: str | None = None,
    imatrix: str | None = None,
    calibration_file: str | None = None,
    progress: bool = False,
) -> LLM:
    """Load a model for generation.

    model_id: a local HF folder, a .gguf file, a built-in alias ("smollm2"), or a hub repo id.
    dtype: auto (the checkpoint's), bf16, f16 or f32. backend: auto, torch or mlx.
    isq: quantize the projections while loading ("q4k", "q8_0", "afq4", or a level 2-8).
    from_uqff: UQFF file(s) with the quantized layers (`;`-separated; shards are found).
    imatrix / calibration_file: weight the quantization error by an importance matrix, read
    from llama.cpp's file or computed by running the full-precision model over a text.
    """
    if dtype not in DTYPE_NAMES:
        raise UserError(f"Unknown --dtype `{dtype}`: use auto, bf16, f16 or f32.", param="dtype")
    if prefill_chunk < 1:
        raise UserError("prefill_chunk must be at least 1.", param="prefill_chunk")
    ops = get_ops(backend, cpu=cpu)
    _mmap_threshold(128 * 1024)  # see _mmap_threshold
    isq_type = _resolve_isq(isq, isq_organization, ops)
    if threads is not None and (threads < 1 or ops.name != "torch"):
        raise UserError(
            "--threads takes a positive number and applies to the torch backend on the CPU; "
            "MLX chooses its own threads." if ops.name != "torch" else "--threads must be at least 1.",
            param="threads",
        )
    if ops.name == "torch" and ops.device == "cpu":
        ops.set_threads(threads)
    source = resolve_source(model_id, quantized_files=quantized_file, fmt=format, hf_cache=hf_cache,
                            token=token, revision=revision)
    from mistralrs.engine.chat_template import load_chat_template
    from mistralrs.engine.tokenizer import Tokenizer

    # Cheap checks first (config, architecture, tokenizer, template), so bad input fails at
    # once instead of after the weights. A GGUF carries its own tokenizer unless -t or
    # --tok-model-id names another.
    if not source.is_gguf:
        config = _read_json(os.path.join(source.folder, "config.json"), required=True)
        arch_key = resolve_architecture(config, arch)
    tok_folder = source.folder
    if tok_model_id:
        tok_folder = resolve_source(tok_model_id, hf_cache=hf_cache, token=token).folder
    def template_for(tok):
        return load_chat_template(tok_folder, tok, chat_template=chat_template, jinja_explicit=jinja_explicit)

    tok = template = None
    if not source.is_gguf or tokenizer or tok_model_id:
        tok = Tokenizer.from_dir(tok_folder, tokenizer_json=tokenizer)
        template = template_for(tok)
    status = _Status(progress)
    if (imatrix or calibration_file) and isq_type is None:
        raise UserError("--imatrix and --calibration-file weight in-situ quantization; add --isq "
                        "(e.g. --isq q4k).", param="imatrix" if imatrix else "calibration_file")
    if imatrix and calibration_file:
        raise UserError("--imatrix and --calibration-file both give the importance matrix; use one.",
                        param="imatrix")
    if from_uqff and (isq_type is not None or source.is_gguf):
        raise UserError("--from-uqff loads layers quantized ahead of time; it cannot be combined with "
                        "--isq or a GGUF file. Pick one way to get a quantized model.", param="from_uqff")
    if source.is_gguf and isq_type is not None:
        raise UserError("--isq quantizes a float checkpoint while loading; this GGUF file is already "
                        "quantized and runs as it is. Drop --isq, or pass the Hugging Face folder.", param="isq")
    if source.is_gguf:
        loaded, gguf_tok = _load_gguf(ops, source, DTYPE_NAMES[dtype], arch, status)
        if tok is None:
            tok = gguf_tok or Tokenizer.from_dir(tok_folder)  # the latter raises a clear error
            template = template_for(tok)
    else:
        importance = None
        if imatrix:
            from mistralrs.models.registry import ARCHITECTURES
            from mistralrs.quant.imatrix import read_imatrix

            importance = read_imatrix(imatrix, ARCHITECTURES[arch_key])
        elif calibration_file:
            importance = _calibrate(ops, source, config, arch_key, DTYPE_NAMES[dtype], status, tok,
                                    calibration_file)
        loaded = _load_folder(ops, source, config, arch_key, DTYPE_NAMES[dtype], status, isq_type, from_uqff,
                              importance)
    generation_defaults = _generation_defaults(source.folder if not source.is_gguf else None)
    status.done()
    return LLM(
        model_id=model_id,
        ops=ops,
        loaded=loaded,
        tokenizer=tok,
        template=template,
        generation_defaults=generation_defaults,
        max_seq_len=max_seq_len,
        prefill_chunk=prefill_chunk,
    )


def _resolve_isq(isq, organization: str, ops: Ops):
    from mistralrs.quant.isq import parse_isq

    if organization not in ("default", "moqe"):
        raise UserError(f"Unknown --isq-organization `{organization}`: use default or moqe.",
                        param="isq_organization")
    if isq is None:
        return None
    isq_type = parse_isq(isq, ops.name)
    if organization == "moqe":
        # None of the architectures here has MoE experts, so "only the experts" is nothing.
        raise UserError("--isq-organization moqe quantizes only the MoE expert layers, and this model "
                        "has none (it is a dense model). Use --isq-organization default.",
                        param="isq_organization")
    return isq_type


class _Status:
    """A one-line status on stderr while weights load (only when asked and stderr is a terminal)."""

    def __init__(self, enabled: bool):
        import sys

        self.progress = enabled
        self.enabled = enabled and sys.stderr.isatty()
        self.stream = sys.stderr

    def note(self, message: str) -> None:
        """A line of the load log that stays (e.g. a quantization fallback)."""
        if self.progress:
            self.update("")
            self.stream.write(message + "\n")
            self.stream.flush()

    def update(self, message: str) -> None:
        if self.enabled:
            self.stream.write("\r\033[2K" + message)
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[2K")
            self.stream.flush()


def _read_json(path: str, required: bool) -> dict:
    if not os.path.exists(path):
        if required:
            raise ModelLoadError(
                f"{path} does not exist: the folder is not a Hugging Face model folder "
                "(it needs config.json next to the weights)."
            )
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); fix or re-download the file.") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


def _resolve_dtype(requested: str, config: dict, ops: Ops) -> str:
    if requested != "auto":
        return requested
    stored = config.get("torch_dtype") or config.get("dtype") or "float32"
    stored = stored if stored in FLOAT_DTYPES else "float32"
    if stored == "float16" and ops.name == "torch" and ops.device == "cpu":
        return "float32"  # fp16 kernels on CPU are slow and fp16 range problems are not worth it
    return stored


def _calibrate(ops: Ops, source: ModelSource, config: dict, key: str, dtype: str, status: _Status, tok,
               calibration_file: str) -> dict:
    """The importance matrix of `calibration_file`'s text under the full-precision model."""
    from mistralrs.engine.calibration import collect_imatrix

    try:
        with open(calibration_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"Cannot read the calibration file {calibration_file}: {exc}. Give a UTF-8 text file.",
                        param="calibration_file") from None
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) < 16:
        raise UserError(f"The calibration file {calibration_file} has {len(ids)} tokens; give at least a few "
                        "paragraphs of text like the model's real input.", param="calibration_file")
    full = _load_folder(ops, source, config, key, dtype, status)
    status.update(f"Calibrating on {len(ids)} tokens of {os.path.basename(calibration_file)}")
    importance = collect_imatrix(full.model, ops, ids)
    del full
    return importance


def _load_folder(ops: Ops, source: ModelSource, config: dict, key: str, dtype: str, status: _Status,
                 isq=None, from_uqff: str | None = None, importance: dict | None = None) -> LoadedModel:
    folder = source.folder
    quantized = isq is not None or from_uqff
    if quantized and dtype == "auto" and ops.name == "torch" and ops.device == "cpu":
        # The integer kernels take bfloat16 rows (converted inside each quantized linear); around
        # them, float32 activations skip a dtype conversion per op and decode ~20 % faster.
        dtype = "float32"
    dtype = _resolve_dtype(dtype, config, ops)
    ops.compute_dtype = dtype
    model = build_model(config, ops, key)
    if from_uqff:
        from mistralrs.engine.uqff_loading import open_for_model, uqff_batches

        reader = open_for_model(from_uqff, folder, model)
        status.update(f"Loading {reader.files[0].name}")
        load_into(model, uqff_batches(ops, reader, folder, dtype), model.sanitize)
        notes = {f"{w.label}: {ops.quantized_layout(w)}" for _, owner, attr in model.weight_slots()
                 if isinstance(w := getattr(owner, attr), QUANTIZED) and ops.quantized_layout(w)}
        for note in sorted(notes):
            status.note(f"UQFF {note}")
        _finalize(ops, model)
        return LoadedModel(model, config, key, dtype)
    files = safetensors_files(folder)
    if isq is None:
        def report(done, total):
            status.update(f"Loading weights: {done}/{total} file(s)")

        load_into(model, read_safetensors(ops, files, dtype), model.sanitize, report, len(files))
    else:
        from mistralrs.engine.isq_loading import IsqPlan, quantized_batches

        plan = IsqPlan(model, isq, ops, importance)
        load_into(model, quantized_batches(ops, files, plan, dtype, model.sanitize, status.update),
                  lambda weights: weights)
        for note in plan.notes:
            status.note(f"ISQ {isq.name}: {note}")
    _finalize(ops, model)
    return LoadedModel(model, config, key, dtype)


def _load_gguf(ops: Ops, source: ModelSource, dtype: str, arch: str | None, status: _Status):
    from mistralrs.engine.gguf_file import read_gguf
    from mistralrs.engine.tokenizer import Tokenizer

    gguf = read_gguf(source.gguf_files)
    config = gguf.config
    key = resolve_architecture(config, arch)
    dtype = "float32" if dtype == "auto" else dtype
    ops.compute_dtype = dtype
    model = build_model(config, ops, key)
    names = list(gguf.tensor_names())
    origin = os.path.basename(source.gguf_files[0])
    # Projections and the embedding table stay in their GGML blocks and run through the
    # quantized kernels (a tied head shares the table); norms are dequantized.
    quantizable = {name for name, owner, attr in model.weight_slots()
                   if isinstance(owner, (Linear, Embedding)) and attr == "weight"}

    def tensor(name):
        if name in quantizable and gguf.ggml_type(name) in ggml_blocks.KINDS:
            raw = gguf.load_raw(name)
            if raw.ggml_type in ggml_blocks.KINDS:
                return GgmlTensor(raw.ggml_type, tuple(raw.shape), raw.data)
        return ops.asarray(gguf.load_tensor(name), dtype)

    def batches():
        for name in names:
            yield origin, {name: tensor(name)}

    def report(done, total):
        status.update(f"Loading {origin}: {done}/{total} tensors")

    load_into(model, batches(), model.sanitize, report, len(names))
    notes = {ops.quantized_layout(w) and f"{w.kind}: {ops.quantized_layout(w)}"
             for _, owner, attr in model.weight_slots() if isinstance(w := getattr(owner, attr), GgmlTensor)}
    for note in sorted(n for n in notes if n):
        status.note(f"{origin}: {note}")
    _finalize(ops, model)
    tok = None  # without one in the file, load() asks for -t / --tok-model-id
    if gguf.has_tokenizer:
        tok = Tokenizer(gguf.tokenizer, gguf.tokenizer_config, gguf.generation_config, origin=source.gguf_files[0])
    return LoadedModel(model, config, key, dtype), tok


def _finalize(ops: Ops, model) -> None:
    """Fuse and re-lay weights, then compute them now rather than at the first token.

    MLX loads lazily, and a lazy array belongs to the thread that made it: evaluating
    here lets server threads use the model, and puts load time where users expect it.
    """
    model.finalize()
    ops.eval(*(getattr(owner, attr) for _, owner, attr in model.weight_slots()))
    _return_freed_memory()


def _glibc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return libc if libc is not None and hasattr(libc, "mallopt") else None  # glibc only


def _mmap_threshold(size: int) -> None:
    """Set glibc's size from which allocations are mmapped (and so returned to the OS when freed).

    While loading, 128 KiB: glibc otherwise raises the threshold each time a large block is
    freed, after which the float copies that quantization makes and drops stay resident in its
    arenas (±40 % of resident memory between identical loads). After loading, 32 MiB (glibc's
    own ceiling): per-token activations then reuse the heap, where a fresh mmap per tensor
    halved prefill speed.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, size)  # M_MMAP_THRESHOLD


def _return_freed_memory() -> None:
    """Give the heap that loading freed back to the OS (glibc keeps it otherwise).

    Quantizing and packing make many short-lived arrays on worker threads; glibc's
    per-thread arenas would keep ~40 % of the model's size resident after they are freed.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
    _mmap_threshold(32 * 1024 * 1024)


def _generation_defaults(folder: str | None) -> dict:
    if folder is None:
        return {}
    return _read_json(os.path.join(folder, "generation_config.json"), required=False)


class LLM:
    """A loaded model with its tokenizer and chat template.

    Thread-safe: direct generations run one at a time; engine.scheduler batches many.
    """

    def __init__(self, *, model_id, ops, loaded: LoadedModel, tokenizer, template, generation_defaults,
                 max_seq_len=None, prefill_chunk=1024):
        self.model_id = model_id
        self.ops = ops
        self.model = loaded.model
        self.config = loaded.config
        self.arch = loaded.arch
        self.dtype = loaded.dtype
        self.tokenizer = tokenizer
        self.template = template
        self.generation_defaults = generation_defaults
        self.prefill_chunk = prefill_chunk
        model_context = int(self.config.get("max_position_embeddings") or 0) or None
        self.context_length = max_seq_len or model_context or 4096
        self._lock = threading.Lock()
        eos = set(tokenizer.eos_token_ids)
        eos.update(_as_list(generation_defaults.get("eos_token_id")))
        self.eos_token_ids = eos

    @property
    def backend(self) -> str:
        return self.ops.name

    @property
    def vocab_size(self) -> int:
        return self.model.spec.vocab_size

    # ---- prompts -----------------------------------------------------------
    def encode(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise UserError(f"Prompt token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1}).",
                            param="prompt")
        return ids

    def render_chat(self, messages: list[dict], *, tools=None, add_generation_prompt=True,
                    enable_thinking: bool | None = None, **template_kwargs) -> str:
        if self.template is None:
            raise UserError(
                f"{self.model_id} has no chat template, so it cannot chat; pass one with "
                "-c/--chat-template (a .jinja file or a .json with a chat_template key), "
                "or use plain completion."
            )
        if enable_thinking is not None:
            template_kwargs["enable_thinking"] = enable_thinking
        return self.template.render(
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            bos_token=self.tokenizer.bos_token or "",
            eos_token=self.tokenizer.eos_token or "",
            **template_kwargs,
        )

    def encode_chat(self, messages: list[dict], **kwargs) -> list[int]:
        # The template writes the special tokens itself (HF apply_chat_template does the same).
        return self.tokenizer.encode(self.render_chat(messages, **kwargs), add_special_tokens=False)

    # ---- generation --------------------------------------------------------
    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> CompletionStream:
        return CompletionStream(self, self.encode(prompt), params or SamplingParams())

    def generate(self, prompt: str | list[int], params: SamplingParams | None = None) -> Completion:
        return self.stream(prompt, params).collect()

    def stream_chat(self, messages: list[dict], params: SamplingParams | None = None, *, tools=None,
                    enable_thinking: bool | None = None, **template_kwargs) -> CompletionStream:
        from mistralrs.engine.chat_template import prompt_opens_thinking

        prompt = self.render_chat(messages, tools=tools, enable_thinking=enable_thinking, **template_kwargs)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        stream = CompletionStream(self, ids, params or SamplingParams())
        # A template may open <think> itself; the answer then starts inside the reasoning.
        stream.opens_thinking = prompt_opens_thinking(prompt)
        return stream

    def chat(self, messages: list[dict], params: SamplingParams | None = None, **kwargs) -> Completion:
        return self.stream_chat(messages, params, **kwargs).collect()


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class CompletionStream:
    """Iterate for Chunks; afterwards `.completion` holds the text, usage and timing.

    Closing the stream early (or breaking out of the loop and dropping it) cancels
    the generation and frees its cache.
    """

    def __init__(self, llm: LLM, prompt_ids: list[int], params: SamplingParams):
        self.max_tokens = max_new_tokens(llm, prompt_ids, params)
        self.llm = llm
        self.prompt_ids = prompt_ids
        self.params = params
        self.completion: Completion | None = None
        self.opens_thinking = False  # set by stream_chat: the prompt ends inside <think>
        self._iter = self._run()

    def __iter__(self) -> Iterator[Chunk]:
        return self._iter

    def __next__(self) -> Chunk:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    def collect(self) -> Completion:
        for _ in self._iter:
            pass
        return self.completion

    def _run(self) -> Iterator[Chunk]:
        llm, params = self.llm, self.params
        sampler = Sampler(llm.ops, params, llm.generation_defaults, llm.vocab_size)
        out = OutputBuilder(llm, self.prompt_ids, params, self.max_tokens, sampler)
        with llm._lock:
            if params.prompt_logprobs:
                out.prompt_logprobs = score_prompt(llm, self.prompt_ids, params.top_logprobs)
            steps = generate_tokens(llm.model, llm.ops, self.prompt_ids, sampler,
                                    prefill_chunk=llm.prefill_chunk, keep_logits=out.want_logprobs)
            try:
                for step in steps:
                    chunk = out.add(step.token_id, step.logits)
                    self.completion = out.completion
                    yield chunk
                    if chunk.finish_reason:
                        return
            finally:
                steps.close()
                out.cancel()
                self.completion = out.completion
