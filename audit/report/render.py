"""Shared rendering: the Jinja2 environment (autoescape on everywhere), number filters, the
inline CSS/JS and the Content-Security-Policy that lets only that script run."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from audit.files import UnsafePathError, inside
from audit.report.load import ReportError, number

DASH = "—"


def fmt_num(value, digits: int = 3) -> str:
    x = number(value)
    if x is None:
        return DASH
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_p(value) -> str:
    x = number(value)
    if x is None:
        return DASH
    if x < 0.001:
        return "<0.001"
    return f"{x:.3f}"


def fmt_pct(value, digits: int = 1) -> str:
    x = number(value)
    return DASH if x is None else f"{100 * x:.{digits}f}%"


def fmt_interval(lo, hi, digits: int = 3) -> str:
    a, b = number(lo), number(hi)
    if a is None and b is None:
        return ""
    return f"[{fmt_num(a, digits)}, {fmt_num(b, digits)}]"


def breakable(value) -> Markup:
    """Escaped text with a line-break opportunity (<wbr>) after each '_' and '&', so names like
    distribution_guidance or light&yes can wrap in a narrow table column."""
    from markupsafe import escape

    s = DASH if value is None else str(value)
    out = Markup("")
    for i, part in enumerate(s.replace("&", "&\0").replace("_", "_\0").split("\0")):
        out += (Markup("<wbr>") if i else Markup("")) + escape(part)
    return out


def sort_key(value) -> str:
    """data-sort attribute: the number, or '' (missing: sorted last in both directions)."""
    x = number(value)
    return "" if x is None else repr(x)


def fmt_count(value) -> str:
    x = number(value)
    return DASH if x is None else f"{int(round(x)):,}"


@cache
def static_text(name: str) -> str:
    return resources.files("audit.report").joinpath("static", name).read_text(encoding="utf-8")


def inline_assets() -> dict:
    """The page's CSS and JS (trusted package files) and a CSP allowing exactly that script:
    an injected inline script or event handler would be refused even if escaping failed."""
    css, js = static_text("report.css"), static_text("report.js")
    if "</" in js.replace("<\\/", "") or "</style" in css:
        raise RuntimeError("static assets must not close their own tags")
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'")
    return {"css": Markup(css), "js": Markup(js), "csp": csp}


def package_version() -> str:
    """The installed diffaudit's version (audit.__version__, from the package metadata)."""
    import audit

    return str(getattr(audit, "__version__", None) or "0+unknown")


def known_version(value) -> str | None:
    """A recorded diffaudit version, or None where it was never known: "0" (what runs recorded
    before the version came from the package metadata), "0+unknown" (a source tree never
    installed) or nothing."""
    v = str(value).strip() if value is not None else ""
    return None if v in ("", "0", "None") or v.startswith("0+unknown") else v


@cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("audit.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(num=fmt_num, pval=fmt_p, pct=fmt_pct, interval=fmt_interval, sortkey=sort_key,
                       count=fmt_count, breakable=breakable)
    env.globals["DASH"] = DASH
    env.globals["VERSION"] = package_version()
    return env


def render(template: str, path: Path, **context) -> Path:
    html = environment().get_template(template).render(**inline_assets(), **context)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def url(path: str) -> str:
    """A relative URL from a relative file path (each segment percent-encoded)."""
    from urllib.parse import quote

    return "/".join(quote(part) for part in Path(path).as_posix().split("/"))


def build_then_swap(parent: Path, name: str, build) -> Path:
    """Build a folder under a temporary name and swap it into parent/name, so an interrupted
    render leaves the previous folder intact and a finished one holds no stale files."""
    final = parent / name
    if not final.is_symlink():
        try:
            inside(parent, name)
        except UnsafePathError as e:
            raise ReportError(str(e)) from None
    _remove_leftovers(parent, name)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.{os.getpid()}.", suffix=".tmp"))
    os.chmod(tmp, 0o755)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.{os.getpid()}.", suffix=".old"))
        os.replace(final, old / name)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old / name, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _remove_leftovers(parent: Path, name: str) -> None:
    """Remove the temporary folders of renders killed before they could clean up (kill -9): their
    names carry the rendering process's id, and a folder of a process still running (another
    render of the same run) is left alone."""
    for leftover in parent.glob(f".{name}.*"):
        parts = leftover.name[len(name) + 2:].split(".")  # [pid, random, tmp|old] ([random, tmp] before pids)
        if parts[-1] not in ("tmp", "old") or not leftover.is_dir() or leftover.is_symlink():
            continue
        if len(parts) == 3 and parts[0].isdigit() and _running(int(parts[0])):
            continue
        shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
