"""``gvc-train``'s user errors as one line each (the CLI prints ``gvc-train: error: <line>``).

jsonargparse reports a bad command line or recipe as usage text plus a nested, multi-line
explanation ("Does not validate against any of the Union subtypes ... Errors: - Problem with
given class_path ..."). The parser runs with ``exit_on_error=False`` and the message is boiled
down here to the key at fault and the reason; an unknown key gets the closest valid key as a
suggestion (``difflib`` over the parser's keys, or over the options of the class the key
belongs to when it is under ``init_args``).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
from typing import Any


class UsageError(Exception):
    """A command-line or recipe error, already phrased as one line."""


def explain_argument_error(message: str, parser: Any, args: list[str] | None) -> str:
    lines = [ln.rstrip() for ln in str(message).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else "invalid arguments"
    sub_parser, sub = _subcommand_parser(parser, args)
    hint = f"gvc-train {sub} --help" if sub else "gvc-train --help"

    if m := re.match(r"unrecognized arguments: (\S+)", first):
        token = m.group(1)
        if not token.startswith("-"):
            return f"unexpected argument {token!r}: options take the form --key=value (see {hint})"
        return _unknown(token.lstrip("-").split("=", 1)[0], _parser_keys(sub_parser or parser), hint)
    if m := re.match(r"Subcommand '[^']+' does not accept option '([^']+)'", first):
        return _unknown(m.group(1), _parser_keys(sub_parser or parser), hint)
    if m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", first):
        choices = re.findall(r"'([^']+)'", m.group(2))
        close = difflib.get_close_matches(m.group(1), choices, n=1)
        guess = f"; did you mean {close[0]}?" if close else ""
        return f"unknown subcommand {m.group(1)!r}{guess} (one of {', '.join(choices)})"
    if m := re.match(r'Parser key "config":\s*(.*)', first):
        reason = m.group(1) or _deepest_reason(lines[1:])
        if f := re.match(r"File does not exist: '?([^']*)'?", reason):
            return f"recipe file not found: {f.group(1)} (--config)"
        return f"recipe (--config): {reason}"
    if m := re.match(r'Parser key "([^"]+)":\s*(.*)', first):
        return _explain_key_error(m.group(1), m.group(2), lines, str(message), hint)
    if m := re.match(r"the following arguments are required: (.*)", first):
        keys = [k.strip().split(".", 1)[-1] for k in m.group(1).split(",")]
        recipe = "give a recipe with --config (e.g. recipes/tiny/tokenizer.yaml)"
        return f"missing {', '.join(keys)}: {recipe} or --{keys[0]}=..."
    if "subcommand" in first and "not provided" in first:
        return f"no subcommand: gvc-train fit|validate|test|predict --config RECIPE (see {hint})"
    return first if not first.endswith(":") else f"{first} {_deepest_reason(lines[1:])}"


def _explain_key_error(key: str, rest: str, lines: list[str], message: str, hint: str) -> str:
    nested = re.search(r"NestedArg\(key='([^']+)'", message)
    classes = re.findall(r"Problem with given class_path '([^']+)'", message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message) or re.search(
        r"Key \"([^\"]+)\" is not expected", message
    )
    if nested:
        inner = nested.group(1)
        full = f"{key}.{inner}" if inner.startswith("init_args.") else f"{key}.init_args.{inner}"
    elif unknown and classes:
        full = f"{key}.init_args.{unknown.group(1)}"
    else:
        full = key
    if unknown:
        prefix = full.rsplit(".", 1)[0] + "." if "." in full else ""
        options = [prefix + o for o in _class_options(classes[-1])] if classes else []
        if not prefix:
            options = []
        return _unknown(full, options, hint)
    given = re.search(r"Given value: (.*)", message)
    expected = [ln.strip()[len("- Expected a ") :] for ln in lines if ln.strip().startswith("- Expected a ")]
    expected = [e for e in expected if "NoneType" not in e]
    if not classes and given and expected and "Union subtypes" in message:
        values: list[str] = []
        for e in expected:
            literal = re.match(r"typing\.Literal\[(.*)\]$", e)
            for v in literal.group(1).split(", ") if literal else [re.sub(r"<class '(\w+)'>", r"\1", e)]:
                if v not in values:
                    values.append(v)
        return f"{full}: {given.group(1)} is not accepted; expected one of {', '.join(values)}"
    reason = rest or _deepest_reason(lines[1:])
    reason = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got \2", reason)
    return f"{full}: {reason}"


def _deepest_reason(lines: list[str]) -> str:
    """The innermost explanation in jsonargparse's nested text (the most indented line that is
    not structure), skipping the branch that tried ``None`` for an optional value."""
    skip = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given class_path", "Parser key")
    best, depth = "", -1
    for ln in lines:
        text = ln.strip().lstrip("- ").strip()
        if not text or text.startswith(skip) or "<class 'NoneType'>" in text:
            continue
        indent = len(ln) - len(ln.lstrip())
        if indent > depth:
            best, depth = text, indent
    best = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got \2", best)
    return best or "invalid value"


def _unknown(key: str, candidates: list[str], hint: str) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key}; did you mean {close[0]}?"
    return f"unknown key {key} (see {hint})"


def _subcommand_parser(parser: Any, args: list[str] | None) -> tuple[Any, str | None]:
    action = next((a for a in getattr(parser, "_actions", []) if isinstance(a, argparse._SubParsersAction)), None)
    if action is None:
        return None, None
    for token in args or []:
        if token in action.choices:
            return action.choices[token], token
    return None, None


def _parser_keys(parser: Any) -> list[str]:
    keys = []
    for a in getattr(parser, "_actions", []):
        if a.dest in (argparse.SUPPRESS, "help") or not a.option_strings:
            continue
        keys.append(a.dest)
    return keys


def _class_options(class_path: str) -> list[str]:
    """The constructor options of ``class_path`` as jsonargparse sees them (it follows
    ``**kwargs`` to the parent class), or its signature when that fails."""
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    try:
        from jsonargparse import ArgumentParser

        p = ArgumentParser(exit_on_error=False)
        p.add_class_arguments(cls, fail_untyped=False)
        return sorted({a.dest.split(".", 1)[0] for a in p._actions if a.option_strings and a.dest not in ("help",)})
    except Exception:  # noqa: BLE001 - a suggestion is a nicety; the signature will do
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
