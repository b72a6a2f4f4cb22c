"""One-line messages for LightningCLI's parse errors (moved here from :mod:`multimodal.lightning_cli`, which
re-exports :func:`parse_error_line`): the key path, the unknown name, the class it was given to and the close match."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

TRAINER = "lightning.pytorch.Trainer"  # the class behind the `trainer.*` options, as users import it


def class_path_of(name: Any) -> Any:
    """The defining module path of the class ``name`` imports (``fusion.CrossAttentionFusion`` ->
    ``fusion.cross_attention.CrossAttentionFusion``); ``name`` itself when it does not import."""
    import importlib

    try:
        module, attr = str(name).rsplit(".", 1)
        cls = getattr(importlib.import_module(module), attr)
        return f"{cls.__module__}.{cls.__qualname__}"
    except (ValueError, ImportError, AttributeError):
        return name


def parse_error_line(err: BaseException, options: Sequence[str] = ()) -> str:
    """One line for a LightningCLI parse error: the key path, the unknown key or option, the class it was given to
    and, when one is close, the name meant ("did you mean ..."), instead of the parser's nested explanation.

    Args:
        err: the parser's error; its chain of causes leads from the outermost key to the innermost mistake.
        options: the long options of the parser that failed (``--trainer.max_epochs``, ...): the names known for
            an unknown option or top-level key.
    """
    path, where, reason, innermost = _error_path(err)
    unknown = re.fullmatch(
        r"Option '(\w+)[\w.]*' is not accepted|Group '([\w.]+)' does not accept option '(\w+)'", reason
    )
    if unknown is not None:  # (a section under an unknown key is named by that key)
        if unknown.group(2):
            path, where = [*path, unknown.group(2)], TRAINER if unknown.group(2) == "trainer" else None
        return _unknown_line(".".join(path), "key", unknown.group(1) or unknown.group(3), where, options)
    if reason.startswith("unrecognized arguments: "):
        flags = [a.split("=", 1)[0] for a in reason.split()[2:] if a.startswith("--")]
        if not flags:
            return reason
        group, _, name = flags[0][2:].rpartition(".")
        return _unknown_line(group, "option", name, TRAINER if group == "trainer" else None, options)
    while path and path[-1] == "init_args":  # a block that failed as a whole: name the block
        path.pop()
    key = ".".join(path)
    if reason.startswith("Dict must include a class_path"):
        return _block_line(key, reason, where)
    if isinstance(innermost, ImportError | AttributeError) and where is not None:
        return f"{key}: cannot import class '{where}' ({reason})"
    expected = re.fullmatch(r"Expected an? <class '(\w+)'>\. Got value: (.*)", reason)
    if expected is not None:
        return f"{key}: expected {expected.group(1)} (given: {expected.group(2)})"
    return f"{key}: {reason}"[:300] if key else reason[:300]


def _error_path(err: BaseException) -> tuple[list[str], str | None, str, BaseException]:
    """Walk the chain of a jsonargparse error: (key path, class path of the innermost block, innermost message, the
    innermost error). Each level's message starts with what it adds: a key, a block's class, a factory's class."""
    path: list[str] = []
    where: str | None = None
    messages: list[str] = []
    seen: set[int] = set()
    current, innermost = err, err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current.args[0] if isinstance(current, KeyError) else current).split())
        if not messages or text != messages[-1]:  # the same error is raised again under other types
            messages.append(text)
        innermost, current = current, current.__cause__ or current.__context__
    for text in messages:
        key = re.match(r'Parser key "([\w.]+)": ', text)
        block = re.match(r"Problem with given class_path '([\w.]+)': ", text)
        factory = re.match(r"Type .*? expects a function or a callable class: ", text)
        if key is not None:
            path.append(key.group(1))
        elif block is not None or factory is not None:
            path.append("init_args")
            named = block or re.search(r"Got value: (?:Namespace\(class_path=')?([\w.]+)", text)
            where = named.group(1) if named else None
    return path, where, messages[-1] if messages else str(err), innermost


def _unknown_line(path: str, kind: str, name: str, where: str | None, options: Sequence[str]) -> str:
    """``<path>: unknown <kind> '<name>' for <class>: did you mean '<close>'?`` (or the names it takes)."""
    import difflib

    where = class_path_of(where) if where not in (None, TRAINER) else where
    known = _parameters(where) if where not in (None, TRAINER) else []
    if not known:  # the parser's own names: those of an option group (trainer.*) or the top-level keys
        prefix = f"--{path}." if path else "--"
        known = sorted({o[len(prefix) :].split(".")[0] for o in options if o.startswith(prefix)})
    dashes = "--" if kind == "option" and not path else ""
    line = (f"{path}: " if path else "") + f"unknown {kind} '{dashes}{name}'" + (f" for {where}" if where else "")
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"{line}: did you mean '{dashes}{close[0]}'?"
    return f"{line}; it takes {', '.join(known)}" if known and len(known) <= 20 else line


def _parameters(class_path: str) -> list[str]:
    """The named parameters of the class at ``class_path`` (what its ``init_args`` may set)."""
    import importlib
    import inspect

    try:
        module, name = class_path.rsplit(".", 1)
        signature = inspect.signature(getattr(importlib.import_module(module), name))
    except (ValueError, ImportError, AttributeError, TypeError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in signature.parameters.values() if p.name != "self" and p.kind not in kinds]


def _block_line(key: str, reason: str, where: str | None) -> str:
    """A block (``class_path`` + ``init_args``) with other keys beside them, or without a class_path."""
    import ast

    given = re.search(r"but got (\{.*\})", reason)
    try:
        block = ast.literal_eval(given.group(1)) if given else {}
    except (ValueError, SyntaxError):
        block = {}
    extra = [k for k in block if k not in ("class_path", "init_args", "dict_kwargs")]
    if "class_path" not in block:
        return f"{key}: a block needs a class_path (and its settings under init_args)"
    if extra:
        return (
            f"{key}: unknown key '{extra[0]}' beside class_path: the settings of "
            f"{class_path_of(where or block['class_path'])} go under init_args"
        )
    return f"{key}: {reason}"[:300]
