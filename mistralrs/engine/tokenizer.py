"""The model's tokenizer: a `tokenizers.Tokenizer` plus what the model folder says about it.

A Hugging Face folder splits tokenizer facts over several files: the vocabulary
and pipeline in `tokenizer.json`, the special tokens and the chat template in
`tokenizer_config.json` (or `chat_template.jinja`, as transformers 5 writes it),
and the end-of-sequence ids in `generation_config.json`. `Tokenizer` gathers
them in one object. The GGUF loader builds the same object from an in-memory
`tokenizers.Tokenizer` and the metadata in the GGUF file.

Decoding matches transformers 5 for the decoder-only models we serve: plain
`tokenizers` decoding, no `clean_up_tokenization_spaces` (transformers 5
ignores that flag for BPE tokenizers, and mistral.rs never applies it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import tokenizers

from mistralrs.errors import ModelLoadError

# A UTF-8 character is at most 4 bytes, and byte-level or byte-fallback
# tokenizers spend at most one token per byte. A decode that still ends in
# U+FFFD after this many held-back tokens is genuinely invalid text, so the
# stream decoder stops waiting for it (which also keeps its window bounded).
_MAX_PENDING_TOKENS = 16

_NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def token_content(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: str, what: str) -> dict | None:
    """The JSON object in `path`, None when the file is absent; ModelLoadError when it is unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"Cannot read the {what} {path}: {exc}. The file is damaged or not JSON; "
            "download the model again, or fix or delete the file."
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"The {what} {path} holds a JSON {type(data).__name__}, not an object. "
            "Download the model again, or fix or delete the file."
        )
    return data


def select_chat_template(value: object) -> str | None:
    """tokenizer_config's chat_template: a string, or a list of {name, template} (take "default")."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {
            entry["name"]: entry["template"]
            for entry in value
            if isinstance(entry, dict) and isinstance(entry.get("template"), str)
        }
        if "default" in named:
            return named["default"]
        return next(iter(named.values()), None)
    return None


class Tokenizer:
    """Encode, decode and stream-decode text for one model."""

    def __init__(
        self,
        tok: tokenizers.Tokenizer,
        tokenizer_config: dict | None = None,
        generation_config: dict | None = None,
        origin: str = "<in memory>",
        *,
        chat_template: str | None = None,
        chat_template_origin: str | None = None,
    ):
        # Some tokenizer.json files ship with truncation (e.g. 512) or padding
        # switched on; transformers switches both off for a plain encode, so do we.
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.tokenizer_config = dict(tokenizer_config or {})
        self.generation_config = dict(generation_config or {})
        self.origin = origin
        self.chat_template = (
            chat_template
            if chat_template is not None
            else select_chat_template(self.tokenizer_config.get("chat_template"))
        )
        self.chat_template_origin = chat_template_origin or (
            f"the chat_template of {origin}" if self.chat_template is not None else None
        )
        self._special_ids = frozenset(
            token_id for token_id, added in tok.get_added_tokens_decoder().items() if added.special
        )

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, model_dir: str, tokenizer_json: str | None = None) -> Tokenizer:
        """Load the tokenizer of a model folder; `tokenizer_json` overrides its tokenizer.json (-t/--tokenizer)."""
        path = tokenizer_json or os.path.join(model_dir, "tokenizer.json")
        if not os.path.isfile(path):
            if tokenizer_json:
                raise ModelLoadError(
                    f"The tokenizer file {tokenizer_json} given with -t/--tokenizer does not exist. "
                    "Pass the path of an existing tokenizer.json."
                )
            raise ModelLoadError(
                f"No tokenizer.json in {model_dir}. mistralrs needs a Hugging Face fast tokenizer "
                "(tokenizer.json); pass one with -t/--tokenizer PATH, or convert a slow tokenizer "
                "with transformers (AutoTokenizer.from_pretrained(...).save_pretrained(...))."
            )
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as exc:  # the Rust side raises plain Exception for every kind of bad file
            raise ModelLoadError(
                f"Cannot load the tokenizer {path}: {exc}. The file is damaged or not a Hugging Face "
                "tokenizer.json; download it again, or pass a good one with -t/--tokenizer PATH."
            ) from exc

        # Older repos keep the special tokens in special_tokens_map.json; tokenizer_config wins.
        special_tokens_map = _read_json(
            os.path.join(model_dir, "special_tokens_map.json"), "special tokens map"
        )
        tokenizer_config = _read_json(os.path.join(model_dir, "tokenizer_config.json"), "tokenizer config")
        config = {**(special_tokens_map or {}), **(tokenizer_config or {})}
        generation_config = _read_json(os.path.join(model_dir, "generation_config.json"), "generation config")

        template, template_origin = cls._find_chat_template(model_dir, config)
        return cls(
            tok,
            config,
            generation_config,
            origin=path,
            chat_template=template,
            chat_template_origin=template_origin,
        )

    @staticmethod
    def _find_chat_template(model_dir: str, config: dict) -> tuple[str | None, str | None]:
        # transformers' order: a standalone chat_template.jinja beats the config entry;
        # chat_template.json is the legacy processor file of vision models.
        jinja_path = os.path.join(model_dir, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            try:
                with open(jinja_path, encoding="utf-8") as f:
                    return f.read(), jinja_path
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelLoadError(
                    f"Cannot read the chat template {jinja_path}: {exc}. Fix or delete the file, "
                    "or pass a template with --chat-template."
                ) from exc
        template = select_chat_template(config.get("chat_template"))
        if template is not None:
            return template, f"the chat_template of {os.path.join(model_dir, 'tokenizer_config.json')}"
        legacy_path = os.path.join(model_dir, "chat_template.json")
        legacy = _read_json(legacy_path, "chat template")
        if legacy is not None:
            template = select_chat_template(legacy.get("chat_template"))
            if template is not None:
                return template, legacy_path
        return None, None

    # ---- encode / decode -------------------------------------------------------------------------

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token decoded on its own (what logprobs report)."""
        return self._tok.decode([token_id], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # ---- special tokens --------------------------------------------------------------------------

    def _named_token(self, name: str) -> str | None:
        return token_content(self.tokenizer_config.get(name))

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, as transformers passes them to chat templates."""
        named = {name: self._named_token(name) for name in _NAMED_SPECIAL_TOKENS}
        return {name: value for name, value in named.items() if value is not None}

    @property
    def bos_token(self) -> str | None:
        token = self._named_token("bos_token")
        if token is None and self.bos_token_id is not None:
            token = self.id_to_token(self.bos_token_id)
        return token

    @property
    def eos_token(self) -> str | None:
        token = self._named_token("eos_token")
        if token is None and self.eos_token_ids:
            token = self.id_to_token(self.eos_token_ids[0])
        return token

    @property
    def bos_token_id(self) -> int | None:
        token = self._named_token("bos_token")
        if token is not None and (token_id := self.token_to_id(token)) is not None:
            return token_id
        return _first_int(self.generation_config.get("bos_token_id"))

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation: generation_config's eos_token_id(s), then the tokenizer's eos."""
        ids: list[int] = []
        configured = self.generation_config.get("eos_token_id")
        for value in configured if isinstance(configured, list) else [configured]:
            if isinstance(value, int) and value not in ids:
                ids.append(value)
        token = self._named_token("eos_token")
        if token is not None:
            token_id = self.token_to_id(token)
            if token_id is not None and token_id not in ids:
                ids.append(token_id)
        return ids

    @property
    def pad_token_id(self) -> int | None:
        token = self._named_token("pad_token")
        if token is not None and (token_id := self.token_to_id(token)) is not None:
            return token_id
        return _first_int(self.generation_config.get("pad_token_id"))

    def __repr__(self) -> str:
        return f"Tokenizer(origin={self.origin!r}, vocab_size={self.vocab_size})"


def _first_int(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


class StreamDecoder:
    """Turns generated token ids into text pieces whose concatenation equals `decode(all ids)`.

    The offset technique: keep a short window of ids, decode the part already
    emitted (`prefix`) and the whole window, and emit what the whole adds. Decoding
    the two with the same first token makes the decoders' first-token rules
    (Metaspace's and Strip's leading-space removal, WordPiece's `##`) cancel out.
    While the decoded window ends in U+FFFD the last tokens hold an incomplete
    UTF-8 character, so nothing is emitted until it completes. The window then
    restarts at the last emitted boundary, so each token costs O(1) decoding.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: the first token of the last emitted piece
        self._read_offset = 0  # tokens before this are emitted

    def add(self, token_id: int) -> str:
        """Feed one generated id; return the text that became final ("" while a character is incomplete)."""
        # Skipped special tokens decode to nothing, and keeping them out of the window
        # means the window never starts on one (which would move a first-token rule).
        if self._skip_special_tokens and self._tokenizer.is_special(token_id):
            return ""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window_text = self._decode(self._ids[self._prefix_offset :])
        pending = len(self._ids) - self._read_offset
        complete = len(window_text) > len(prefix_text) and not window_text.endswith("\ufffd")
        if not complete and pending < _MAX_PENDING_TOKENS:
            return ""
        self._advance()
        return window_text[len(prefix_text) :]

    def flush(self) -> str:
        """The held-back text at the end of generation (an incomplete character decodes as U+FFFD)."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        window_text = self._decode(self._ids[self._prefix_offset :])
        self._advance()
        return window_text[len(prefix_text) :]

    def _advance(self) -> None:
        # Drop what the next window no longer needs, so memory stays bounded too.
        del self._ids[: self._read_offset]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special_tokens) if ids else ""
