"""Sphinx extension for the spikefuse docs: the API reference from ``__all__``, the shape table
from the registry, and the checks that keep them honest.

* ``.. public-api:: MODULE`` documents every name in ``MODULE.__all__`` with autodoc. A name
  exported by several API modules is documented once, in the first of ``API_MODULES`` that
  exports it (its *home*); the others link to it. A public name without a docstring (for data:
  a ``#:`` comment), or a public method without one, is a warning — an error under ``-W``.
* References to any name a public object is reachable under (``spikefuse.surrogate.fire``,
  the defining module's ``spikefuse.kernels.scan.ScanConfig``, ...) resolve to its home, so
  type hints and docstrings may use either spelling; anything else that does not resolve is
  a broken reference (``nitpicky``), except names of the external packages in ``EXTERNAL``.
* ``.. surrogate-shapes::`` tables every shape of ``spikefuse.surrogate.registry.SHAPES``
  with the g′ formula from its class docstring's ``.. math::`` line.
* ``builder-inited`` draws the shapes figure with ``spikefuse.plot.plot_shapes``.
"""

from __future__ import annotations

import importlib
import inspect
import types
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import stringify_annotation

logger = logging.getLogger(__name__)

API_MODULES = ("spikefuse", "spikefuse.surrogate", "spikefuse.neurons", "spikefuse.memory",
               "spikefuse.kernels")
# Reference targets outside spikefuse: left unresolved (no network for intersphinx in CI).
EXTERNAL = (r"(jax|jaxlib|numpy|np|jnp|ml_dtypes|matplotlib|argparse|os|contextlib|collections"
            r"|typing|types|numbers)(\..+)?")


# -- public names ----------------------------------------------------------------------------
def _public(module_name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ExtensionError(f"{module_name} has no __all__; the API reference is built from it")
    return [(name, getattr(module, name)) for name in names]


def _home(obj: Any, module_name: str, name: str) -> str:
    """The dotted path under which ``obj`` is documented: the first API module exporting it."""
    if isinstance(obj, (str, int, float, tuple)):  # values are not unique objects: no aliasing
        return f"{module_name}.{name}"
    for candidate in API_MODULES:
        for other_name, other in _public(candidate):
            if other is obj:
                return f"{candidate}.{other_name}"
    return f"{module_name}.{name}"


def _aliases() -> dict[str, str]:
    """Every dotted path a public object is reachable under -> the path it is documented at."""
    table: dict[str, str] = {}
    for module_name in API_MODULES:
        for name, obj in _public(module_name):
            home = _home(obj, module_name, name)
            table[f"{module_name}.{name}"] = home
            defined = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
            if all(isinstance(part, str) for part in defined):
                table[f"{defined[0]}.{defined[1]}"] = home
    return {alias: home for alias, home in table.items() if alias != home}


def _own_doc(obj: Any) -> str | None:
    if inspect.isclass(obj):
        return vars(obj).get("__doc__")
    return getattr(obj, "__doc__", None)


def _data_doc(module_name: str, name: str) -> str:
    """The ``#:`` comment (or string after) documenting a module-level assignment."""
    docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
    return "\n".join(docs.get(("", name), [])).strip()


def _public_members(cls: type) -> list[str]:
    """Public methods and properties defined on ``cls`` itself, and ``__call__``."""
    return [name for name, value in vars(cls).items()
            if (not name.startswith("_") or name == "__call__")
            and (inspect.isfunction(value) or isinstance(value, (property, classmethod,
                                                                  staticmethod)))]


class PublicApi(SphinxDirective):
    """``.. public-api:: MODULE``: the module docstring and every name of its ``__all__``."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        self.env.note_dependency(inspect.getfile(importlib.import_module(module_name)))
        _api_pages(self.env)[self.env.docname] = module_name
        lines = [f".. automodule:: {module_name}", "   :no-members:", ""]
        submodules, elsewhere = [], []
        for name, obj in _public(module_name):
            path = f"{module_name}.{name}"
            home = _home(obj, module_name, name)
            if home != path:
                role = "mod" if isinstance(obj, types.ModuleType) else "obj"
                elsewhere.append(f"* ``{name}``: :{role}:`{home}`")
                continue
            if isinstance(obj, types.ModuleType):
                self._require(obj.__doc__, path)
                summary = (obj.__doc__ or "").strip().splitlines()[0:1]
                submodules.append(f"* :mod:`{obj.__name__}`: {summary[0] if summary else ''}")
                continue
            if inspect.isclass(obj):
                self._require(_own_doc(obj), path)
                for member in _public_members(obj):
                    self._require(inspect.getdoc(getattr(obj, member)), f"{path}.{member}")
                kind = "autoexception" if issubclass(obj, BaseException) else "autoclass"
                lines += [f".. {kind}:: {path}", "   :members:",
                          "   :special-members: __call__", ""]
            elif callable(obj):
                self._require(_own_doc(obj), path)
                lines += [f".. autofunction:: {path}", ""]
            else:
                self._require(_data_doc(module_name, name), path,
                              "(a '#:' comment on the line before its assignment in "
                              f"{module_name})")
                lines += [f".. autodata:: {path}", ""]
        if submodules:
            lines += [".. rubric:: Modules", "", *submodules, ""]
        if elsewhere:
            lines += [".. rubric:: Also exported here", "", *elsewhere, ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source=f"<public-api {module_name}>"),
                                self.content_offset, container)
        return container.children

    def _require(self, doc: str | None, path: str, how: str = "") -> None:
        if not (doc and doc.strip()):
            logger.warning("public name %s has no docstring %s", path, how,
                           location=(self.env.docname, self.lineno))


def _api_pages(env: Any) -> dict[str, str]:
    """docname -> the module its ``public-api`` directive documents (kept in the pickled env)."""
    if not hasattr(env, "spikefuse_api_pages"):
        env.spikefuse_api_pages = {}
    return env.spikefuse_api_pages


def _purge_api_page(app: Sphinx, env: Any, docname: str) -> None:
    _api_pages(env).pop(docname, None)


def _check_all_modules_documented(app: Sphinx, env: Any) -> None:
    seen = set(_api_pages(env).values())
    for module_name in API_MODULES:
        if module_name not in seen:
            logger.warning("API module %s has no '.. public-api::' page", module_name)


def _resolve_alias(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    aliases = app.env.spikefuse_aliases  # type: ignore[attr-defined]
    for alias, home in aliases.items():
        if target == alias or target.startswith(alias + "."):
            new = home + target[len(alias):]
            return env.get_domain("py").resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], new, node, contnode)
    return None


def _short_type_names(app: Sphinx, what: str, name: str, obj: Any, options: Any,
                      signature: str | None, return_annotation: str | None
                      ) -> tuple[str | None, str | None]:
    """Writes jax's public type names in signatures: ``ArrayLike`` rather than the union it
    stands for, ``jax.Array`` rather than its private home module (which varies by jax)."""
    import jax.typing

    names = {"jax.typing.ArrayLike": jax.typing.ArrayLike,
             "jax.typing.DTypeLike": jax.typing.DTypeLike, "jax.Array": jax.Array}
    table = sorted(((stringify_annotation(t, "smart"), "~" + n) for n, t in names.items()),
                   key=lambda pair: -len(pair[0]))

    def short(text: str | None) -> str | None:
        for long, public in table if text else ():
            text = text.replace(long, public)  # type: ignore[union-attr]
        return text

    return short(signature), short(return_annotation)


def _skip_inherited_doc(app: Sphinx, what: str, name: str, obj: Any, skip: bool,
                        options: Any) -> bool | None:
    # A shape's surrogate_grad/surrogate_fun inherit their docstring from Surrogate, where
    # they are documented once; do not repeat them 18 times.
    if what == "class" and inspect.isfunction(obj) and obj.__doc__ is None:
        return True
    return None


# -- the shapes table ------------------------------------------------------------------------
def _math(doc: str) -> str | None:
    """The first ``.. math::`` of a docstring: its argument, or its content lines joined."""
    lines = doc.expandtabs().splitlines()
    for i, line in enumerate(lines):
        head, sep, argument = line.partition(".. math::")
        if not sep or head.strip():
            continue
        parts = [argument.strip()] if argument.strip() else []
        indent = len(head)
        for body in lines[i + 1:]:
            if not body.strip():
                if parts:
                    break
                continue
            if len(body) - len(body.lstrip()) <= indent:
                break
            parts.append(body.strip())
        return " ".join(parts) or None
    return None


class SurrogateShapes(SphinxDirective):
    """``.. surrogate-shapes::``: one row per built-in shape, from the registry."""

    def run(self) -> list[nodes.Node]:
        from spikefuse.surrogate import registry

        self.env.note_dependency(inspect.getfile(registry))
        rows = []
        for spec in registry.SHAPES:
            formula = _math(spec.cls.__doc__ or "")
            if formula is None:
                logger.warning("%s's docstring has no '.. math::' line with its g'",
                               spec.name, location=(self.env.docname, self.lineno))
                continue
            params = ", ".join(f"{k}={v!r}" for k, v in spec.defaults.items())
            rows += [f"   * - :class:`~spikefuse.surrogate.{spec.name}`",
                     "",
                     f"       :func:`~spikefuse.surrogate.{spec.functional.__name__}`",
                     f"     - :math:`{formula}`",
                     f"     - ``{params}``"]
        lines = [".. list-table::", "   :header-rows: 1", "   :widths: 20 60 20", "",
                 "   * - class, functional", "     - g′(x), and g(x) where the shape defines it",
                 "     - defaults", *rows]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="<surrogate-shapes>"),
                                self.content_offset, container)
        return container.children


# -- figure ---------------------------------------------------------------------------------
def _draw_shapes(app: Sphinx) -> None:
    from spikefuse.plot import plot_shapes

    out = Path(app.srcdir) / "_generated" / "shapes.png"
    out.parent.mkdir(exist_ok=True)
    plot_shapes(out=out)


def _set_aliases(app: Sphinx) -> None:
    app.env.spikefuse_aliases = _aliases()  # type: ignore[attr-defined]


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("public-api", PublicApi)
    app.add_directive("surrogate-shapes", SurrogateShapes)
    app.connect("builder-inited", _draw_shapes)
    app.connect("builder-inited", _set_aliases)
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-skip-member", _skip_inherited_doc)
    app.connect("autodoc-process-signature", _short_type_names)
    app.connect("env-purge-doc", _purge_api_page)
    app.connect("env-check-consistency", _check_all_modules_documented)
    # Serial reads only: the public-api pages are noted in the environment without a merge.
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
