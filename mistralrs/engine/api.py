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
from mistralrs.models.registry import build_model, resolve_architecture

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
    progress: bool = False,
) -> LLM:
    """Load a model for generation.

    model_id: a local HF folder, a .gguf file, a built-in alias ("smollm2"), or a hub repo id.
    dtype: auto (the checkpoint's), bf16, f16 or f32. backend: auto, torch or mlx.
    """
    if dtype not in DTYPE_NAMES:
        raise UserError(f"Unknown --dtype `{dtype}`: use auto, bf16, f16 or f32.", param="dtype")
    if prefill_chunk < 1:
        raise UserError("prefill_chunk must be at least 1.", param="prefill_chunk")
    ops = get_ops(backend, cpu=cpu)
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
    if source.is_gguf:
        loaded, gguf_tok = _load_gguf(ops, source, DTYPE_NAMES[dtype], arch, status)
        if tok is None:
            tok = gguf_tok or Tokenizer.from_dir(tok_folder)  # the latter raises a clear error
            template = template_for(tok)
    else:
        loaded = _load_folder(ops, source, config, arch_key, DTYPE_NAMES[dtype], status)
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


class _Status:
    """A one-line status on stderr while weights load (only when asked and stderr is a terminal)."""

    def __init__(self, enabled: bool):
        import sys

        self.enabled = enabled and sys.stderr.isatty()
        self.stream = sys.stderr

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


def _load_folder(ops: Ops, source: ModelSource, config: dict, key: str, dtype: str, status: _Status) -> LoadedModel:
    folder = source.folder
    dtype = _resolve_dtype(dtype, config, ops)
    model = build_model(config, ops, key)
    files = safetensors_files(folder)

    def report(done, total):
        status.update(f"Loading weights: {done}/{total} file(s)")

    load_into(model, read_safetensors(ops, files, dtype), model.sanitize, report, len(files))
    _finalize(ops, model)
    return LoadedModel(model, config, key, dtype)


def _load_gguf(ops: Ops, source: ModelSource, dtype: str, arch: str | None, status: _Status):
    from mistralrs.engine.gguf_file import read_gguf
    from mistralrs.engine.tokenizer import Tokenizer

    gguf = read_gguf(source.gguf_files)
    config = gguf.config
    key = resolve_architecture(config, arch)
    dtype = "float32" if dtype == "auto" else dtype
    model = build_model(config, ops, key)
    names = list(gguf.tensor_names())
    origin = os.path.basename(source.gguf_files[0])

    def batches():
        for name in names:
            yield origin, {name: ops.asarray(gguf.load_tensor(name), dtype)}

    def report(done, total):
        status.update(f"Loading {origin}: {done}/{total} tensors")

    load_into(model, batches(), model.sanitize, report, len(names))
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
