"""leukoseg: white-cell segmentation and acute lymphoblastic leukemia detection in blood smear photographs.

Research use only; not a diagnostic device.

The stages, each in one place:

- :mod:`leukoseg.io`, :mod:`leukoseg.datasets`, :mod:`leukoseg.synthetic`: images, data sets, synthetic smears;
- :mod:`leukoseg.segmentation`: nuclei, cells, micrometre scale, measurements, crops (``leukoseg segment``);
- :mod:`leukoseg.features`: GLCM texture, shape and colour features of segmented cells;
- :mod:`leukoseg.classify`: cell classifiers (GkNN, SVM, kNN, CNN);
- :mod:`leukoseg.pipelines`: cross-validated experiments on whole data sets (``leukoseg classify --dataset``).

Importing the package is cheap: heavy libraries (scikit-learn, Keras, TensorFlow) load only inside the
functions that need them.
"""

from pathlib import Path as _Path

from ._version import __version__
from .errors import LeukosegError

# Imported straight from a source checkout that is not installed (``python -m leukoseg`` in the repository
# root), the stage folders beside this one are not mapped into the namespace as an install maps them
# (pyproject's package-dir): let ``leukoseg.features`` and friends resolve there too. Installs, editable ones
# included, map them already, and then nothing is added (so ``leukoseg.tests`` and such stay unimportable).
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "features" / "__init__.py").is_file():
    from importlib.util import find_spec as _find_spec

    if _find_spec(f"{__name__}.features") is None:
        __path__.append(str(_root))  # noqa: F821  (__path__ is defined for packages)
    del _find_spec
del _Path, _root

__all__ = ["LeukosegError", "__version__"]
