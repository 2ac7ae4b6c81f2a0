"""The one public API: load a model once, then generate or chat, blocking or streaming.

The CLI and the HTTP server are thin layers over this module.

    llm = load("HuggingFaceTB/SmolLM2-135M-Instruct")
    for chunk in llm.stream_chat([{"role": "user", "content": "Hi"}]):
        print(chunk.text, end="")
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator

from mistralrs.backends import get_ops
from mistralrs.backends.ops import FLOAT_DTYPES
from mistralrs.engine import heap
from mistralrs.engine.compiling import compile_setting, warm_up
from mistralrs.engine.generate import generate_tokens
from mistralrs.engine.loading import (
    LoadedModel,
    LoadStatus,
    calibrate,
    generation_defaults,
    load_folder,
    load_ggml,
    load_gguf,
    read_json,
    resolve_isq,
)
from mistralrs.engine.output import OutputBuilder, max_new_tokens
from mistralrs.engine.params import Chunk, Completion, SamplingParams
from mistralrs.engine.prompt_logprobs import score_prompt
from mistralrs.engine.sampling import Sampler
from mistralrs.engine.source import resolve_source
from mistralrs.errors import UserError
from mistralrs.models.registry import resolve_architecture

DTYPE_NAMES = {"auto": "auto", "bf16": "bfloat16", "f16": "float16", "f32": "float32"}
DTYPE_NAMES.update({name: name for name in FLOAT_DTYPES})


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
    gqa: int = 1,
    threads: int | None = None,
    max_seq_len: int | None = None,
    prefill_chunk: int = 1024,
    isq: str | int | None = None,
    isq_organization: str = "default",
    from_uqff: str | None = None,
    imatrix: str | None = None,
    calibration_file: str | None = None,
    progress: bool = False,
    compile: bool | None = None,
) -> LLM:
    """Load a model for generation.

    model_id: a local HF folder, a .gguf file, a built-in alias ("smollm2"), or a hub repo id.
    format: auto, plain, gguf or ggml (llama.cpp's pre-GGUF format, with `quantized_file`);
    gqa: for GGML files, attention heads per key/value head (8 for Llama-2-70B).
    dtype: auto (the checkpoint's), bf16, f16 or f32. backend: auto, torch or mlx.
    isq: quantize the projections while loading ("q4k", "q8_0", "afq4", or a level 2-8).
    from_uqff: UQFF file(s) with the quantized layers (`;`-separated; shards are found).
    compile: compile the decoder layers (None: the MISTRALRS_COMPILE variable, else on for
    torch on the CPU when a C++ compiler is present); see engine.compiling.
    imatrix / calibration_file: weight the quantization error by an importance matrix, read
    from llama.cpp's file or computed by running the full-precision model over a text.
    """
    if dtype not in DTYPE_NAMES:
        raise UserError(f"Unknown --dtype `{dtype}`: use auto, bf16, f16 or f32.", param="dtype")
    if prefill_chunk < 1:
        raise UserError("prefill_chunk must be at least 1.", param="prefill_chunk")
    if not isinstance(gqa, int) or gqa < 1:
        raise UserError(f"--gqa must be a whole number of at least 1, not {gqa!r}.", param="gqa")
    ops = get_ops(backend, cpu=cpu)
    ops.compile_steps = compile_setting(compile, ops)
    heap.mmap_threshold(128 * 1024)  # see heap.mmap_threshold
    isq_type = resolve_isq(isq, isq_organization, ops)
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
    if gqa != 1 and not source.is_ggml:
        raise UserError(f"--gqa {gqa} applies to GGML files only (GGUF files and Hugging Face folders "
                        "store their key/value heads); drop --gqa, or load a GGML file with --format ggml.",
                        param="gqa")
    from mistralrs.engine.chat_template import load_chat_template
    from mistralrs.engine.tokenizer import Tokenizer

    # Cheap checks first (config, architecture, tokenizer, template), so bad input fails at
    # once instead of after the weights. A GGUF carries its own tokenizer unless -t or
    # --tok-model-id names another.
    if not source.is_gguf:
        config = read_json(os.path.join(source.folder, "config.json"), required=True)
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
    status = LoadStatus(progress)
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
        raise UserError(f"--isq quantizes a float checkpoint while loading; this {source.file_format.upper()} file "
                        "is already quantized and runs as it is. Drop --isq, or pass the Hugging Face folder.", param="isq")
    if source.is_gguf:
        if source.is_ggml:
            loaded, gguf_tok = load_ggml(ops, source, DTYPE_NAMES[dtype], arch, status, gqa)
        else:
            loaded, gguf_tok = load_gguf(ops, source, DTYPE_NAMES[dtype], arch, status)
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
            importance = calibrate(ops, source, config, arch_key, DTYPE_NAMES[dtype], status, tok,
                                    calibration_file)
        loaded = load_folder(ops, source, config, arch_key, DTYPE_NAMES[dtype], status, isq_type, from_uqff,
                              importance)
    if ops.compile_steps:
        warm_up(loaded.model, ops, status)
        heap.return_freed_memory()  # the warm-up prompts' dequantized weights and activations
    defaults = generation_defaults(source.folder if not source.is_gguf else None)
    status.done()
    return LLM(
        model_id=model_id,
        ops=ops,
        loaded=loaded,
        tokenizer=tok,
        template=template,
        generation_defaults=defaults,
        max_seq_len=max_seq_len,
        prefill_chunk=prefill_chunk,
    )


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

    @functools.cached_property
    def kv_bytes_per_token(self) -> int:
        """One position's keys and values over every layer, at float32 (the CPU cache's dtype; an
        upper bound elsewhere)."""
        from mistralrs.tune.estimate import kv_bytes_per_token

        return kv_bytes_per_token(self.config, "f32")

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


# A finished direct generation hands the memory it freed back to the OS (heap.trim, ~10 ms on
# the 2-core VM) when its KV cache took at least this much; below it, glibc keeps little and the
# call would cost more than it returns (a test suite of short generations ran 18 % slower).
TRIM_AFTER_KV_BYTES = 16 * 1024 * 1024


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
                # The closed generation freed its KV cache and activations: hand them back.
                if self.completion.usage.total_tokens * llm.kv_bytes_per_token >= TRIM_AFTER_KV_BYTES:
                    heap.trim()
