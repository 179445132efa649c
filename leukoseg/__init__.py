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

from ._version import __version__
from .errors import LeukosegError

__all__ = ["LeukosegError", "__version__"]
