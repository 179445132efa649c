"""Whole experiments on data sets: segmentation cache, image-grouped folds, cross-validated models."""
