"""A tokenizer for the generation runtime without importing transformers: the `tokenizers` library's Tokenizer
read from tokenizer.json, plus the chat template rendered with jinja2 the way transformers renders it.

Importing transformers' tokenizer classes costs about 0.7 s of CPU at every CLI start (its top-level package and
tokenization_utils_base; measured with `python -X importtime` on the 2-core CI machine), which the CLI's fast path
(generation/lite_model.py) avoids. `LiteTokenizer` offers what litekernels.generation and the CLI call:
`tok(text)["input_ids"]`, `decode(ids, skip_special_tokens=...)`, the special tokens and their ids, `chat_template`
and `apply_chat_template(messages, add_generation_prompt=..., tokenize=...)`.

`load_lite_tokenizer(folder)` returns None for anything it does not reproduce exactly (tokenizer_config.json keys
beyond a plain fast tokenizer's, clean_up_tokenization_spaces=True, a template that needs transformers' extensions
such as `{% generation %}`); the caller then uses transformers' tokenizer. tests/test_lite_model.py compares its
encodings, decodings and rendered chats with transformers'.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

# tokenizer_config.json keys this class understands (a plain fast tokenizer as transformers 5 writes it)
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_KNOWN = set(_SPECIAL) | {"model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces",
                          "chat_template", "backend", "tokenizer_class", "is_local", "local_files_only",
                          "name_or_path"}
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _plain(value):
    """The messages as plain JSON data (dicts without None values, as transformers normalizes them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _compile(template: str):
    """The template compiled in a jinja2 environment configured as transformers' (chat_template_utils): sandboxed,
    trim_blocks, lstrip_blocks, loop controls, a tojson that does not escape HTML, raise_exception, strftime_now."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class LiteTokenizer:
    """See the module docstring."""

    def __init__(self, tokenizer, config: dict, chat_template: str | None, name_or_path: str = ""):
        self._tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.chat_template = chat_template
        self._compiled = None
        self.special_tokens_map = {k: config[k] for k in _SPECIAL if isinstance(config.get(k), str)}
        for k in _SPECIAL:
            setattr(self, k, config.get(k) if isinstance(config.get(k), str) else None)
        self.model_max_length = config.get("model_max_length")
        self.padding_side = config.get("padding_side", "right")

    def _id(self, token):
        return None if token is None else self._tokenizer.token_to_id(token)

    bos_token_id = property(lambda self: self._id(self.bos_token))
    eos_token_id = property(lambda self: self._id(self.eos_token))
    unk_token_id = property(lambda self: self._id(self.unk_token))
    pad_token_id = property(lambda self: self._id(self.pad_token))

    def __len__(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        if not isinstance(text, str):
            raise TypeError(f"LiteTokenizer takes one string, got {type(text).__name__}")
        enc = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": list(enc.ids), "attention_mask": list(enc.attention_mask)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens)["input_ids"]

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = True, **kwargs):
        """The rendered chat (tokenize=False) or its token ids, as transformers' apply_chat_template gives them for
        one conversation of plain messages; extra keyword arguments reach the template (as in transformers)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if not messages:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        if self._compiled is None:
            self._compiled = _compile(self.chat_template)
        text = self._compiled.render(messages=_plain(list(messages)), tools=None, documents=None,
                                     add_generation_prompt=add_generation_prompt,
                                     **{**self.special_tokens_map, **_plain(kwargs)})
        return self.encode(text, add_special_tokens=False) if tokenize else text


def plain_tokenizer_files(folder: str):
    """(tokenizer_config dict, tokenizer.json path, chat template or None) when the folder holds a plain fast
    tokenizer (the keys of _KNOWN only, a tokenizer.json, a string template), else None."""
    try:
        with open(os.path.join(folder, "tokenizer_config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    tokenizer_json = os.path.join(folder, "tokenizer.json")
    if (not isinstance(config, dict) or config.get("tokenizer_class") not in _PLAIN_CLASSES or not set(config) <= _KNOWN
            or not os.path.isfile(tokenizer_json)):
        return None
    template = config.get("chat_template")
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            template = f.read()
    return config, tokenizer_json, template


def load_lite_tokenizer(folder: str) -> LiteTokenizer | None:
    """The folder's tokenizer without transformers, or None when it is not a plain fast tokenizer this class
    reproduces (see the module docstring)."""
    files = plain_tokenizer_files(folder)
    if files is None:
        return None
    config, tokenizer_json, template = files
    if (config.get("clean_up_tokenization_spaces")
            or any(config.get(k) is not None and not isinstance(config[k], str) for k in _SPECIAL)):
        return None
    if template is not None and not isinstance(template, str):  # a dict of named templates: transformers' job
        return None
    try:
        import jinja2  # noqa: F401  (what transformers renders templates with)
        from tokenizers import Tokenizer

        if template is not None:
            _compile(template)  # a template needing transformers' extensions fails here
        tok = Tokenizer.from_file(tokenizer_json)
    except Exception:  # noqa: BLE001 - any problem: transformers' tokenizer reads it (and reports it)
        return None
    return LiteTokenizer(tok, config, template, folder)
