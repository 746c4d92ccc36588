"""MkDocs hook: pages generated from the code at build time, so they cannot drift from it.

A page asks for generated content with a marker line, replaced when the site is built:

- `<!-- generated: suite-reference -->`: every field of `audit.spec.Suite` and of the models nested
  in it (name, type, default, constraints, description), read from the pydantic schema.
- `<!-- generated: cli-reference -->`: every command of `audit.cli.app` (the typer app), with its
  arguments and options, read from the click command typer builds.
- `<!-- generated: method-options -->`: every option a suite can give each registered method
  (`methods: [{name, params}]`), read from the methods' signatures, with its default.

The page that holds the method-options marker must document every option once, under a heading
with the anchor `{#opt-NAME}`; an option without one, or an anchor naming no option, is a warning,
which fails `mkdocs build --strict`. A field described only here (FIELD_NOTES) rather than in
`audit/spec.py` is used until the schema gains its own description; a note for a field the schema
no longer has is a warning too.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import types
import typing
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.generated")

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)

# Descriptions for schema fields that have none in audit/spec.py yet. The schema's own description
# wins as soon as it has one.
FIELD_NOTES = {
    "Suite.name": "Names the default output directory, `runs/<name>`.",
    "Suite.description": "Free text, shown at the top of the report.",
    "Suite.models": "The models to audit (at least one).",
    "Suite.methods": "The debiasing methods to compare (at least one; `none` is the baseline).",
    "Suite.settings": "Attribute settings, each with a target distribution (at least one).",
    "Suite.samples": "Samples per cell (`diffaudit run --n` overrides it). Not part of a cell's identity: changed, "
                     "a finished run generates only the images it lacks ([Resume](../results-store.md#resume)).",
    "Suite.batch_size": "Images sampled together; part of a guided cell's identity (guidance couples a batch).",
    "Suite.seed": "Image *i* of every cell starts from seed `seed + i`.",
    "Suite.labelers": "Evaluation labelers: they judge the images.",
    "Suite.probe_labeler": "Labels the images the guiding probes learn from; must not also be an evaluation "
                           "labeler when the suite has a guided method.",
    "Suite.probe": "How many samples train the h-space probes, and in what batches.",
    "Suite.metrics": "Which metric families to measure: `fairness`, `fid`, `clip`.",
    "Suite.phrases": "Prompt-debiasing phrases per attribute and class, e.g. "
                     "`{skin_tone: {dark: \"with dark skin\"}}` (the zoo attributes have defaults).",
    "Suite.clip_model": "A local CLIP directory for the CLIP score (zoo models use the zoo's CLIP).",
    "ModelSpec.name": "Letters, digits, `.`, `_`, `-`; names directories in the run.",
    "ModelSpec.revision": "The revision (commit) to audit, for `hf:` sources; the manifest records the "
                          "snapshot's commit either way.",
    "ModelSpec.steps": "Sampling steps.",
    "ModelSpec.negative_prompt": "Negative prompt (text models with classifier-free guidance).",
    "ModelSpec.prompts": "Prompts of a text model; each prompt is a cell of its own. Unset: "
                         "`a photo of a person`.",
    "ModelSpec.prompts_file": "A text file with one prompt per line (`#` comments), relative to the suite file; "
                              "added to `prompts`.",
    "ModelSpec.dtype": "Weights' precision; a VAE whose config asks for it decodes in float32.",
    "MethodSpec.name": "A registered method: `none`, `prompt`, `sample_guidance`, `universal_guidance`, "
                       "`distribution_guidance`, `self_debias`, `prompt_projection`, `semantic_guidance`, or one "
                       "you register.",
    "MethodSpec.params": "The method's options: see [Methods](../methods.md#options-at-a-glance).",
    "SettingSpec.attributes": "One attribute, or up to four guided and judged jointly over their product space.",
    "SettingSpec.target": "`uniform`, a list of proportions over the (joint) classes in order, or "
                          "`{class: proportion}`; must sum to 1.",
    "ProbeSpec.n": "Samples drawn and labelled to train the probes.",
    "ProbeSpec.batch_size": "Batch size while sampling them.",
    "FidSpec.n": "Reference images drawn (generated references) or read.",
}

# Fields a suite may leave out when every model's source names a value for them (the zoo does).
SOURCE_DEFAULTS = {"Suite.labelers", "FidSpec.extractor", "FidSpec.reference"}

# Method parameters the runner fills in from the suite; a suite never sets them in `params`.
RUNNER_SUPPLIED = {"self", "probes", "target", "phrases", "attribute_names", "attributes", "unguided"}
# Options a suite names that the method receives resolved (a labeler name becomes a labeler).
OPTION_DEFAULTS = {"labeler": "the suite's `probe_labeler`"}


def _repo_root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def on_config(config):
    root = str(_repo_root(config))
    if root not in sys.path:  # the repository's audit/, whatever is installed
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page, config, files):
    def replace(match: re.Match) -> str:
        kind = match.group(1)
        if kind == "suite-reference":
            return suite_reference()
        if kind == "cli-reference":
            return cli_reference()
        if kind == "method-options":
            check_method_options(markdown, page.file.src_uri)
            return method_options()
        log.warning(f"{page.file.src_uri}: unknown generated block {kind!r}")
        return match.group(0)

    return MARKER.sub(replace, markdown)


def _escape(text: str, table: bool = True) -> str:
    """Text from docstrings and help strings as markdown: `<...>` shown, not taken for HTML."""
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ") if table else text


# -- the suite reference ------------------------------------------------------------------------

def _type_name(annotation, models: dict) -> str:
    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a, models) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0], models)}" if args else "list"
    if origin is dict:
        return f"mapping {_type_name(args[0], models)} → {_type_name(args[1], models)}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        models.setdefault(annotation.__name__, annotation)
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if annotation is type(None):
        return "`null`"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default is PydanticUndefined else field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_none=True) for v in value]
    if value is None:
        return "`null`"
    if value == "":
        return '`""`'
    return f"`{value}`".replace("'", '"').replace("True", "true").replace("False", "false")


def _constraints(field) -> str:
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "at least", "max_length": "at most"}
    found = []
    for item in field.metadata:
        for attr, word in words.items():
            value = getattr(item, attr, None)
            if value is not None:
                if attr == "min_length" and value == 1:
                    found.append("not empty")
                    continue
                unit = (" item" if value == 1 else " items") if attr in ("min_length", "max_length") else ""
                found.append(f"{word} {value:,}{unit}" if isinstance(value, int) else f"{word} {value}{unit}")
    return "; ".join(found)


def _model_table(model, models: dict) -> list[str]:
    lines = [f"### {model.__name__}", ""]
    doc = model.__dict__.get("__doc__")  # the class's own docstring, never pydantic's BaseModel's
    if doc:
        lines += [inspect.cleandoc(doc), ""]
    lines += ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = f"{model.__name__}.{name}"
        description = field.description or FIELD_NOTES.get(key, "")
        description = _escape(description) if field.description else description
        default = "the models' source's, else **required**" if key in SOURCE_DEFAULTS else _default(field)
        lines.append(f"| `{name}` | {_type_name(field.annotation, models)} | {default} | "
                     f"{_constraints(field)} | {description} |")
    return lines + [""]


def suite_reference() -> str:
    from pydantic import BaseModel

    from audit.spec import Suite

    models: dict[str, type[BaseModel]] = {"Suite": Suite}
    out, done = [], set()
    while len(done) < len(models):  # nested models are found while their parents are written
        name = next(n for n in models if n not in done)
        out += _model_table(models[name], models)
        done.add(name)
    known = {f"{m.__name__}.{f}" for m in models.values() for f in m.model_fields}
    for stale in sorted(set(FIELD_NOTES) - known):
        log.warning(f"docs/hooks/generated.py: FIELD_NOTES names {stale}, which audit.spec no longer has")
    return "\n".join(out)


# -- the CLI reference --------------------------------------------------------------------------
# Typer builds click commands (recent typer vendors its own click), so parameters are told apart by
# their click `param_type_name` rather than by class.

def _is_argument(param) -> bool:
    return getattr(param, "param_type_name", "") == "argument"


def _argument_name(param) -> str:
    return (param.metavar or param.name).upper()


def _param_type(param) -> str:
    """The value type: from the annotation typer keeps (typer >= 0.29), else from click's type."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is None:
        return param.type.name.lower()
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple) or (args and len(args) == 1):
        annotation = args[0] if args else str
    names = {Path: "path", int: "integer", str: "text", float: "number", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _param_row(param) -> str:
    if _is_argument(param):
        name = f"`{_argument_name(param)}`"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    is_flag = bool(getattr(param, "is_flag", False))
    kind = "flag" if is_flag else _param_type(param)
    if getattr(param, "multiple", False):
        kind += ", repeatable"
    elif getattr(param, "nargs", 1) == -1:
        kind += ", one or more"
    if param.required:
        default = "**required**"
    elif is_flag or param.default in (None, (), []) or callable(param.default):
        default = ""
    else:
        default = f"`{param.default}`"
    help_text = _escape(getattr(param, "help", None) or "")
    return f"| {name} | {kind} | {default} | {help_text} |"


def _command_section(command, path: list[str]) -> list[str]:
    if hasattr(command, "commands"):  # a group: its commands, in order
        lines = []
        for name, sub in command.commands.items():  # in the order the CLI defines them
            lines += _command_section(sub, [*path, name])
        return lines
    params = [p for p in command.params if p.name != "help" and not getattr(p, "hidden", False)]
    usage = [*path]
    if any(not _is_argument(p) for p in params):
        usage.append("[OPTIONS]")
    usage += [_argument_name(p) + ("..." if p.nargs == -1 else "") for p in params if _is_argument(p)]
    lines = [f"## `{' '.join(path)}`", "", f"```\n{' '.join(usage)}\n```", ""]
    help_text = _escape(inspect.cleandoc(command.help or ""), table=False)
    if help_text:
        lines += [help_text, ""]
    if params:
        lines += ["| argument / option | type | default | description |", "|---|---|---|---|"]
        lines += [_param_row(p) for p in params] + [""]
    return lines


def cli_reference() -> str:
    import typer

    from audit.cli import app

    return "\n".join(_command_section(typer.main.get_command(app), ["diffaudit"]))


# -- method options -----------------------------------------------------------------------------

def _method_options() -> dict[str, dict[str, str]]:
    """option -> {method: default as shown}."""
    from audit.registry import METHODS, resolve

    options: dict[str, dict[str, str]] = {}
    for name in METHODS:
        factory = resolve(METHODS, name, "method")
        for param in inspect.signature(factory).parameters.values():
            if param.name in RUNNER_SUPPLIED or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            value = getattr(factory, "suite_defaults", {}).get(param.name, param.default)
            if value is inspect.Parameter.empty:
                shown = OPTION_DEFAULTS.get(param.name, "**required**")
            else:
                shown = "`null`" if value is None else f"`{value}`".replace("True", "true").replace("False", "false")
            options.setdefault(param.name, {})[name] = shown
    return options


def method_options() -> str:
    options = _method_options()
    from audit.registry import METHODS

    methods = [m for m in METHODS if any(m in by_method for by_method in options.values())]
    lines = ["| option | " + " | ".join(f"`{m}`" for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for option in sorted(options):
        cells = [options[option].get(m, "") for m in methods]
        lines.append(f"| [`{option}`](#opt-{option.replace('_', '-')}) | " + " | ".join(cells) + " |")
    without = [m for m in METHODS if m not in methods]
    if without:
        lines += ["", "Methods without options: " + ", ".join(f"`{m}`" for m in without) + "."]
    return "\n".join(lines)


def check_method_options(markdown: str, where: str) -> None:
    documented = set(re.findall(r"\{#opt-([a-z0-9-]+)\}", markdown))
    options = {o.replace("_", "-") for o in _method_options()}
    for missing in sorted(options - documented):
        log.warning(f"{where}: method option {missing.replace('-', '_')!r} has no section "
                    f"(a heading ending in {{#opt-{missing}}})")
    for stale in sorted(documented - options):
        log.warning(f"{where}: a section documents method option {stale.replace('-', '_')!r}, "
                    "which no registered method takes")
