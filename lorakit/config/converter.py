"""cattrs structuring of configs and plugin option tables, with errors as ``(dotted key, problem)``.

Core tables and plugin tables (a tuning method's ``[model.<method>]``, head and loss options) go through
the same strict converter, so a plugin's option reads exactly like a core key in an error.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import attrs
import cattrs
import cattrs.gen

from ..errors import did_you_mean
from .loader import RawConfig

Problems = list[tuple[str, str]]


def _strict(expected: type | tuple[type, ...], name: str) -> Any:
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,)):
            raise TypeError(f"expected {name}, got {value!r}")
        if not isinstance(value, expected):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return float(value) if name == "a number" else value  # type: ignore[arg-type]

    return hook


def _label_subset(value: Any, _type: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, Mapping) and all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()
    ):
        return {str(k): list(v) for k, v in value.items()}
    raise TypeError("expected a list of labels or a table {column = [labels]}")


def _loss_weight(value: Any, _type: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        return [float(v) for v in value]
    if isinstance(value, Mapping) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        return {str(k): float(v) for k, v in value.items()}
    raise TypeError('expected a list of numbers, a table {task = weight} or "uncertainty"')


def _method_names(value: Any, _type: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        if len(set(value)) < len(value):
            twice = next(v for v in value if value.count(v) > 1)
            raise TypeError(f"expected each method once; {value} names {twice} twice")
        return value[0] if len(value) == 1 else list(value)
    raise TypeError('expected a method name or a non-empty list of names, e.g. ["lora", "bottleneck"]')


def _make_converter() -> cattrs.Converter:
    from .schema import HeadConfig, LabelSubset, LossWeight, MethodNames, ModelConfig

    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, "an integer"))
    conv.register_structure_hook(float, _strict((int, float), "a number"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook(LabelSubset, _label_subset)
    conv.register_structure_hook(LossWeight, _loss_weight)
    conv.register_structure_hook(MethodNames, _method_names)
    conv.register_structure_hook(Any, lambda v, _t: v)
    conv.register_unstructure_hook(ModelConfig, _model_unstructurer(conv, ModelConfig))
    conv.register_unstructure_hook(HeadConfig, _drop_empty_options(conv, HeadConfig))
    return conv


def _model_unstructurer(conv: cattrs.Converter, cls: type) -> Any:
    """``[model]`` as the user writes it: each tuning method's table right after ``method``; empty head
    options left out (a config that sets none reads as it did before plugins could have any)."""
    base: Any = cattrs.gen.make_dict_unstructure_fn(cls, conv)
    default = attrs.fields(cls).method.default

    def unstructure(model: Any) -> dict[str, Any]:
        data = base(model)
        # the default method's table first, then the others by name (as the file reference lists them)
        given = model.tuning
        order = sorted(given, key=lambda name: (name != default, name))
        tables = {name: conv.unstructure(given[name]) for name in order}
        if not data.get("head_options"):
            data.pop("head_options", None)
        result: dict[str, Any] = {}
        for key, value in data.items():
            result[key] = value
            if key == "method":
                result.update(tables)
        return result

    return unstructure


def _drop_empty_options(conv: cattrs.Converter, cls: type) -> Any:
    base: Any = cattrs.gen.make_dict_unstructure_fn(cls, conv)

    def unstructure(value: Any) -> dict[str, Any]:
        data = base(value)
        if not data.get("options"):
            data.pop("options", None)
        return data

    return unstructure


_converter: cattrs.Converter | None = None


def converter() -> cattrs.Converter:
    """The strict converter every config table (core or plugin) is structured with."""
    global _converter
    if _converter is None:
        _converter = _make_converter()
    return _converter


def _attrs_class(tp: Any) -> type | None:
    if attrs.has(tp):
        return tp
    if get_origin(tp) in (Union, types.UnionType):  # Optional[SomeTable]
        for arg in get_args(tp):
            if attrs.has(arg):
                return arg
    return None


def _user_fields(cls: type) -> dict[str, Any]:
    return {f.name: f for f in attrs.fields(cls)}


def _nested_tables(tp: Any, value: Any) -> list[tuple[str, type, Mapping[str, Any]]]:
    """The sub-tables of ``value`` (a field of type ``tp``) that are attrs classes: ("", cls, table) for a
    nested table, (key, cls, table) for each entry of a ``dict[str, Table]``."""
    if not isinstance(value, Mapping):
        return []
    nested = _attrs_class(tp)
    if nested is not None:
        return [("", nested, value)]
    if get_origin(tp) is dict:
        item = _attrs_class(get_args(tp)[1])
        if item is not None:
            return [(str(k), item, v) for k, v in value.items() if isinstance(v, Mapping)]
    return []


def unknown_keys(data: Mapping[str, Any], cls: type, prefix: str, out: Problems) -> None:
    """Append ``(dotted key, "unknown key ...")`` for every key of ``data`` (recursively) ``cls`` lacks."""
    fields = _user_fields(cls)
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            out.append((dotted, f"unknown key{did_you_mean(key, fields)}"))
            continue
        for sub, table_cls, table in _nested_tables(fields[key].type, value):
            unknown_keys(table, table_cls, f"{dotted}.{sub}." if sub else f"{dotted}.", out)


def strip_unknown(data: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """Drop unknown keys so cattrs reports only the *other* problems (unknown keys are reported already)."""
    fields = _user_fields(cls)
    result: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            continue
        tp = fields[key].type
        nested = _attrs_class(tp)
        if nested is not None and isinstance(value, Mapping):
            value = strip_unknown(value, nested)
        elif get_origin(tp) is dict and isinstance(value, Mapping):
            item = _attrs_class(get_args(tp)[1])
            if item is not None:
                value = {k: strip_unknown(v, item) if isinstance(v, Mapping) else v for k, v in value.items()}
        result[key] = value
    return result


def cattrs_problems(exc: BaseException) -> Problems:
    """cattrs' exception group as ``(dotted key, problem)`` pairs, in the words of the rest of lorakit."""
    problems: Problems = []

    def describe(error: BaseException, type_: Any) -> str:
        if isinstance(error, (TypeError, ValueError)) and str(error).startswith("expected"):
            return str(error)  # our strict hooks already say what was expected and what came
        if attrs.has(type_):
            return "expected a table"
        return cattrs.v.format_exception(error, type_)

    for message in cattrs.transform_error(exc, path="$", format_exception=describe):
        text, _, where = message.rpartition(" @ ")
        dotted = where.removeprefix("$").lstrip(".")
        dotted = dotted.replace("['", ".").replace("']", "")
        if text.startswith("required field missing"):
            text = "required key missing"
        elif text.startswith("invalid value for type, expected "):
            text = text.replace("invalid value for type, ", "")
        problems.append((dotted, text))
    return problems


def structure_table(data: Any, cls: type[Any], key: str) -> tuple[Any, Problems]:
    """Structure ``data`` (the table at dotted ``key``) into ``cls``: the instance (None when it failed)
    and every problem, unknown keys first, each under ``key``."""
    if not isinstance(data, Mapping):
        return None, [(key, "expected a table")]
    found: Problems = []
    value = None
    unknown_keys(data, cls, f"{key}.", found)
    try:
        value = converter().structure(strip_unknown(data, cls), cls)
    except Exception as exc:  # cattrs raises exception groups of the individual problems
        found += [(f"{key}.{sub}" if sub else key, text) for sub, text in cattrs_problems(exc)]
        value = None
    return value, found


def where(raw: RawConfig, dotted: str) -> str:
    """The file that set ``dotted`` (or the nearest parent key), for error messages."""
    key = dotted
    while key:
        if key in raw.provenance:
            return raw.provenance[key]
        hits = [src for k, src in raw.provenance.items() if k.startswith(key + ".")]
        if hits:
            return hits[-1]
        key = key.rpartition(".")[0]
    return raw.source_file


def unstructure(value: Any) -> Any:
    """Plain data (what config_copy.toml and the index record)."""
    return converter().unstructure(value)


def flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Nested tables as ``{dotted.key: value}``; an empty table is a value of its own."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix.rstrip(".")] = value

    walk(data, "")
    return flat
