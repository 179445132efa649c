"""Whole experiments on data sets: segmentation cache, image-grouped folds, cross-validated models.

The package exports nothing itself: its submodules are the public surface, each with its own ``__all__``
(``from leukoseg.pipelines.experiment import run_experiment``), so importing the package stays cheap.
"""
