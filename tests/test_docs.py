"""The examples of the docstrings run and print what they say (numpydoc ``Examples`` sections)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

#: The packages of the installed namespace (the stage folders are mapped into it by pyproject's package-dir).
_PACKAGES = ("leukoseg", "leukoseg.segmentation", "leukoseg.features", "leukoseg.classify", "leukoseg.pipelines")


def _modules() -> list[str]:
    names = []
    for package in _PACKAGES:
        names.append(package)
        # The first path entry only: run from a source checkout, leukoseg's path also holds the repository root.
        folder = importlib.import_module(package).__path__[0]
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules([folder])
                  if not m.ispkg and m.name != "__main__"]  # fmt: skip
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs={**vars(module)}):
        runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} of {attempted} examples of {name} failed (see the output above)"


#: Packages that export nothing themselves: their public surface is their submodules (``leukoseg.pipelines.experiment``
#: and the rest, as the CLI and README use them), each with its own ``__all__``.
_SUBMODULE_NAMESPACES = ("leukoseg.pipelines",)


def _public_modules(package: str) -> list:
    module = importlib.import_module(package)
    if package not in _SUBMODULE_NAMESPACES:
        return [module]
    assert not hasattr(module, "__all__"), f"{package} exports names now: drop it from _SUBMODULE_NAMESPACES"
    return [importlib.import_module(f"{package}.{m.name}") for m in pkgutil.iter_modules(module.__path__)
            if not m.ispkg and not m.name.startswith("_")]  # fmt: skip


@pytest.mark.parametrize("package", _PACKAGES)
def test_public_names_resolve(package):
    # Every name in __all__ is served (the lazy packages load it on first use), and each has a docstring.
    modules = _public_modules(package)
    assert modules, package
    for module in modules:
        names = getattr(module, "__all__", [])
        assert names, f"{module.__name__} has no __all__ (or an empty one)"
        for name in names:
            obj = getattr(module, name)
            if callable(obj):
                assert (obj.__doc__ or "").strip(), f"{module.__name__}.{name} has no docstring"
        lazy = getattr(module, "_SUBMODULE", None)
        if lazy is not None:
            assert sorted(names) == sorted(lazy), f"{module.__name__}.__all__ differs from the names it serves"


def test_stage_folders_resolve_from_a_plain_checkout_and_only_there():
    # Not installed (no site-packages, so no editable finder), the root's stage folders are found through
    # leukoseg's path; installed, pyproject's mapping serves them and the root is not on that path.
    import subprocess
    import sys
    from pathlib import Path

    import leukoseg

    root = Path(leukoseg.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        pytest.skip("leukoseg is imported from an installed copy, not from a checkout")
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); import leukoseg, leukoseg.features, leukoseg.pipelines; "
            "print(len(leukoseg.__path__), leukoseg.features.__file__)")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", str(root / "features" / "__init__.py")]
    if len(leukoseg.__path__) == 1:  # installed here (editable or not): the mapping serves the stage folders
        assert importlib.util.find_spec("leukoseg.features").origin == str(root / "features" / "__init__.py")
        assert importlib.util.find_spec("leukoseg.tests") is None  # no stray names from the repository root


#: numpydoc checks not enforced, as scikit-learn's own docstring test does: GL01/GL02 (where the text starts and
#: the quotes close), RT02 (``self : GeneticKNNClassifier`` names what fit returns), and the optional sections
#: (SA01 See Also, ES01 extended summary, EX01 Examples: the main entry points have examples, run above).
_NUMPYDOC_IGNORED = {"GL01", "GL02", "RT02", "SA01", "ES01", "EX01"}


def _documented_modules() -> list[str]:
    # Every public module (no part of its name private) that declares its public names.
    names = []
    for name in _modules():
        if any(part.startswith("_") for part in name.split(".")):
            continue
        if hasattr(importlib.import_module(name), "__all__"):
            names.append(name)
    return names


def _numpydoc_errors(path: str, obj) -> list[str]:
    import dataclasses

    from numpydoc.docscrape import NumpyDocString
    from numpydoc.validate import validate

    errors = [f"{path}: {code} {message}" for code, message in validate(path)["errors"]
              if code not in _NUMPYDOC_IGNORED]  # fmt: skip
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        # A frozen result documents its fields under Attributes (as scipy's result objects do), not as
        # constructor parameters: check that instead of PR01.
        errors = [e for e in errors if " PR01 " not in e]
        doc = NumpyDocString(obj.__doc__ or "")
        documented = {n.strip() for entry in [*doc["Attributes"], *doc["Parameters"]] for n in entry.name.split(",")}
        missing = [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_") and f.name not in documented]
        if missing:
            errors.append(f"{path}: fields not documented under Attributes: {missing}")
    return errors


@pytest.mark.parametrize("name", _documented_modules())
def test_numpydoc_sections(name):
    # numpydoc's own validator over every public function, class and public method: parameters documented
    # with a type and a description, in the signature's order, returns described, summaries well formed.
    pytest.importorskip("numpydoc.validate")
    import inspect

    module = importlib.import_module(name)
    errors, checked = [], 0
    for public in module.__all__:
        obj = getattr(module, public)
        if not callable(obj):
            continue  # constants: documented by comments (#:), not docstrings of their own
        targets = [(f"{name}.{public}", obj)]
        if inspect.isclass(obj):
            methods = [(attr, value) for attr, value in vars(obj).items() if not attr.startswith("_")]
            targets += [(f"{name}.{public}.{attr}", value) for attr, value in methods
                        if inspect.isfunction(value) or isinstance(value, property)]  # fmt: skip
        for path, target in targets:
            errors += _numpydoc_errors(path, target)
            checked += 1
    assert checked, f"{name} exports nothing callable"
    assert not errors, "\n".join(errors)
