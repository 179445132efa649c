"""Tests of leukoseg.classify: GkNN, SVM and kNN reference as scikit-learn estimators."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from leukoseg.classify import GeneticKNNClassifier, StackingFusion, SVMClassifier, make_knn, make_svm
from leukoseg.classify._cv import inner_cv_splits
from leukoseg.classify.gknn import gaussian_vote

SMALL_GA: dict[str, Any] = {"population_size": 6, "n_generations": 2}

# StackingFusion's X is not free columns but n_inputs * n_classes class probabilities, one block per stacked model.
# With n_inputs=1 the two-class checks on two columns apply; these others feed it another number of columns
# (or a class_weight dict, which it does not take) and say nothing about it.
_FUSION_LAYOUT = "X must be n_inputs * n_classes probability columns; the check gives another number"
_FUSION_EXPECTED_FAILURES = {
    **dict.fromkeys([
        "check_estimators_overwrite_params", "check_estimators_fit_returns_self", "check_readonly_memmap_input",
        "check_n_features_in_after_fitting", "check_positive_only_tag_during_fit", "check_estimators_dtypes",
        "check_dtype_object", "check_pipeline_consistency", "check_estimators_nan_inf", "check_estimators_pickle",
        "check_classifiers_classes", "check_classifiers_train", "check_fit2d_1feature",
    ], _FUSION_LAYOUT),  # fmt: skip
    "check_class_weight_classifiers": "class_weight is 'balanced' or None, never a dict",
}


def _expected_failures(estimator) -> dict[str, str]:
    return _FUSION_EXPECTED_FAILURES if isinstance(estimator, StackingFusion) else {}


@parametrize_with_checks(
    [
        GeneticKNNClassifier(**SMALL_GA, random_state=0),
        SVMClassifier(C_grid=(1.0,), gamma_grid=("scale",), random_state=0),
        StackingFusion(n_inputs=1, n_iter=50, device="cpu"),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _informative_problem(n_samples=300, n_informative=3, n_noise=17, seed=0):
    """A few informative features first (shuffle=False), then pure noise."""
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_informative + n_noise,
        n_informative=n_informative,
        n_redundant=0,
        n_repeated=0,
        class_sep=1.0,
        shuffle=False,
        random_state=seed,
    )
    return X, y


def test_ga_improves_fitness_and_finds_informative_features():
    X, y = _informative_problem()
    clf = GeneticKNNClassifier(population_size=20, n_generations=10, random_state=0).fit(X, y)
    best, mean = clf.fitness_history_["best"], clf.fitness_history_["mean"]
    assert best.shape == mean.shape == (11,)
    assert best[-1] > best[0]
    assert np.all(np.diff(best) >= 0)  # elitism
    assert mean[-1] > mean[0]
    assert clf.weights_[:3].mean() > clf.weights_[3:].mean()
    assert clf.best_fitness_ == best[-1]
    assert clf.k_ % 2 == 1 and 1 <= clf.k_ <= 31
    assert clf.weights_.shape == (20,) and np.all((clf.weights_ == 0) | (clf.weights_ >= 0.05))
    assert_array_equal(clf.support_, clf.weights_ > 0)


def test_gknn_is_deterministic_and_leaves_global_state_alone():
    from deap import creator

    X, y = _informative_problem(n_samples=150, seed=1)
    creator_names = set(vars(creator))
    python_random_state = random.getstate()
    numpy_random_state = np.random.get_state()[1].copy()
    a = GeneticKNNClassifier(**SMALL_GA, random_state=42).fit(X, y)
    b = GeneticKNNClassifier(**SMALL_GA, random_state=42).fit(X, y)
    assert_array_equal(a.weights_, b.weights_)
    assert a.k_ == b.k_
    assert_array_equal(a.fitness_history_["best"], b.fitness_history_["best"])
    assert_array_equal(a.fitness_history_["mean"], b.fitness_history_["mean"])
    assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert set(vars(creator)) == creator_names
    assert random.getstate() == python_random_state
    assert_array_equal(np.random.get_state()[1], numpy_random_state)


@pytest.mark.parametrize("vote", ["uniform", "distance", gaussian_vote])
def test_gknn_probabilities(vote):
    X, y = _informative_problem(n_samples=120, seed=2)
    y = np.array(["normal", "blast", "other"])[np.arange(len(y)) % 3]  # three string classes
    clf = GeneticKNNClassifier(**SMALL_GA, vote=vote, random_state=0).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert_array_equal(clf.classes_, ["blast", "normal", "other"])
    assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])


def test_gknn_fitness_matches_sklearn_knn():
    # The GA's own blocked neighbour search must give sklearn's kNN votes.
    from sklearn.neighbors import KNeighborsClassifier

    from leukoseg.classify.gknn import _neighbour_votes

    rng = np.random.default_rng(3)
    X = rng.normal(size=(700, 5))
    y = rng.integers(0, 3, 700)
    for k, vote in ((1, "uniform"), (7, "uniform"), (15, "distance")):
        votes = _neighbour_votes(
            X[:500].astype(np.float32), X[500:].astype(np.float32), y[:500], k, 3, vote == "distance"
        )
        knn = KNeighborsClassifier(n_neighbors=k, weights=vote, algorithm="brute").fit(X[:500], y[:500])
        assert_allclose(votes / votes.sum(axis=1, keepdims=True), knn.predict_proba(X[500:]), rtol=0, atol=1e-5)
    # Exact ties (duplicated points) share the last votes: always k votes in all.
    grid = rng.integers(0, 3, size=(300, 2)).astype(np.float32)
    votes = _neighbour_votes(grid[:200], grid[200:], y[:200], 5, 3, False)
    assert_allclose(votes.sum(axis=1), 5.0, rtol=0, atol=1e-5)


def test_grouped_inner_folds_hold_every_class():
    # Five images, each class in three of them: scikit-learn's greedy grouping, seeded 0, leaves a test fold
    # with one class only (a fold whose AUC or grid-search score is undefined); the split is redrawn.
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 1, 0])
    groups = np.array([0, 1, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4])
    plain = list(StratifiedGroupKFold(3, shuffle=True, random_state=0).split(y, y, groups))
    assert any(len(set(y[test])) == 1 for _, test in plain)  # the case this test is about
    splits = inner_cv_splits(y, groups, 3, seed=0)
    assert len(splits) == 3
    for train, test in splits:
        assert set(y[test]) == {0, 1}
        assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([test for _, test in splits]).tolist()) == list(range(len(y)))
    assert [t.tolist() for _, t in inner_cv_splits(y, groups, 3, seed=0)] == [t.tolist() for _, t in splits]


def test_grouped_inner_folds_keep_the_first_draw_when_it_is_good():
    # Results of earlier runs stay the same: a draw that already holds every class everywhere is kept.
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.tile([0, 1], 30)
    groups = np.repeat(np.arange(12), 5)
    plain = list(StratifiedGroupKFold(3, shuffle=True, random_state=7).split(y, y, groups))
    splits = inner_cv_splits(y, groups, 3, seed=7)
    assert [t.tolist() for _, t in splits] == [t.tolist() for _, t in plain]


def test_groups_stay_in_one_inner_fold():
    y = np.tile([0, 1], 30)
    groups = np.repeat(np.arange(12), 5)
    splits = inner_cv_splits(y, groups, 3, seed=0)
    assert len(splits) == 3  # 12 groups, both classes in each: all 3 folds are possible
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(y)
    X, y = _informative_problem(n_samples=60, seed=4)
    GeneticKNNClassifier(**SMALL_GA, random_state=0).fit(X, y, groups=groups)
    SVMClassifier(C_grid=(1.0,), gamma_grid=("scale",), random_state=0).fit(X, y, groups=groups)
    with pytest.raises(ValueError, match="at least 2 groups"):
        GeneticKNNClassifier(**SMALL_GA).fit(X, y, groups=np.zeros(60))
    with pytest.raises(ValueError, match="one entry per sample"):
        GeneticKNNClassifier(**SMALL_GA).fit(X, y, groups=groups[:-1])


@pytest.mark.parametrize("estimator", [GeneticKNNClassifier, SVMClassifier])
def test_groups_is_keyword_only(estimator):
    import inspect

    assert inspect.signature(estimator.fit).parameters["groups"].kind is inspect.Parameter.KEYWORD_ONLY
    X, y = _informative_problem(n_samples=40, seed=4)
    with pytest.raises(TypeError):
        estimator().fit(X, y, np.arange(40) % 8)  # refused before any fitting


def test_gknn_individuals_pickle():
    # The GA's individuals and their fitness (a DEAP Fitness of this module) survive a pickle round trip.
    import pickle

    from leukoseg.classify.gknn import _Chromosome

    scored = _Chromosome([0.5, 1.0, 3])
    scored.fitness.values = (0.75,)
    for individual in (scored, _Chromosome([0.2, 0.0, 1])):
        restored = pickle.loads(pickle.dumps(individual))
        assert restored == individual
        assert type(restored.fitness) is type(individual.fitness)
        assert restored.fitness.valid == individual.fitness.valid
        assert restored.fitness.wvalues == individual.fitness.wvalues


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"population_size": 1}, "population_size"),
        ({"n_generations": -1}, "n_generations"),
        ({"k_max": 0}, "k_max"),
        ({"crossover_prob": 1.5}, "crossover_prob"),
        ({"min_weight": -0.1}, "min_weight"),
        ({"vote": "majority"}, "vote"),
        ({"fitness": "accuracy"}, "fitness"),
        ({"feature_cost": 2.0}, "feature_cost"),
        ({"init_sparsity": -0.5}, "init_sparsity"),
        ({"inner_cv": 1}, "inner_cv"),
    ],
)
def test_gknn_bad_parameters(params, match):
    X, y = _informative_problem(n_samples=40, seed=5)
    with pytest.raises(ValueError, match=match):
        GeneticKNNClassifier(**{**SMALL_GA, **params}).fit(X, y)


def test_svm_bad_parameters():
    X, y = _informative_problem(n_samples=40, seed=5)
    with pytest.raises(ValueError, match="calibration"):
        SVMClassifier(calibration="platt").fit(X, y)
    with pytest.raises(ValueError, match="at least one value"):
        SVMClassifier(C_grid=()).fit(X, y)


def test_separable_problem_auc():
    X, y = make_classification(
        n_samples=600, n_features=20, n_informative=5, n_redundant=2, class_sep=2.0, weights=[0.7], random_state=6
    )
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    models = {
        "gknn": GeneticKNNClassifier(population_size=10, n_generations=5, random_state=0),
        "svm": make_svm(random_state=0),
        "knn": make_knn(),
    }
    for name, model in models.items():
        proba = model.fit(X_train, y_train).predict_proba(X_test)
        assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        auc = roc_auc_score(y_test, proba[:, 1])
        assert auc >= 0.95, (name, auc)


def test_svm_probabilities_are_calibrated_ensemble():
    X, y = _informative_problem(n_samples=150, seed=7)
    clf = SVMClassifier(C_grid=(0.1, 1.0), gamma_grid=("scale", 0.1), inner_cv=3, random_state=0).fit(X, y)
    assert set(clf.best_params_) == {"svc__C", "svc__gamma"}
    assert len(clf.calibrated_.calibrated_classifiers_) == 3
    assert_array_equal(clf.predict(X), clf.classes_[clf.predict_proba(X).argmax(axis=1)])
    again = SVMClassifier(C_grid=(0.1, 1.0), gamma_grid=("scale", 0.1), inner_cv=3, random_state=0).fit(X, y)
    assert_array_equal(clf.predict_proba(X), again.predict_proba(X))


def _small_gknn(**kw):
    return GeneticKNNClassifier(**{**SMALL_GA, **kw})


def _small_svm(**kw):
    return SVMClassifier(**{"C_grid": (1.0,), "gamma_grid": ("scale",), **kw})


@pytest.mark.parametrize("random_state", [0, None])
@pytest.mark.parametrize("make", [_small_svm, _small_gknn], ids=["svm", "gknn"])
def test_fit_leaves_numpys_global_generator_alone(make, random_state):
    # Unseeded too: scikit-learn's None would draw from (and move) NumPy's global generator.
    X, y = _informative_problem(n_samples=120, seed=7)
    np.random.seed(5)
    before = np.random.get_state()
    make(random_state=random_state).fit(X, y)
    after = np.random.get_state()
    assert_array_equal(after[1], before[1])
    assert after[2] == before[2]


@pytest.mark.parametrize(("make", "bad"), [(_small_svm, {"calibration": "bad"}), (_small_svm, {"C_grid": ()}),
                                           (_small_gknn, {"population_size": 1})], ids=["svm", "svm-grid", "gknn"])
def test_a_refused_fit_leaves_the_estimator_as_it_was(make, bad):
    from sklearn.exceptions import NotFittedError

    X, y = _informative_problem(n_samples=120, seed=7)
    with pytest.raises(ValueError):
        make(**bad).fit(X, y)
    fresh = make(**bad)
    with pytest.raises(ValueError):
        fresh.fit(X, y)
    with pytest.raises(NotFittedError):  # not an AttributeError of a half-fitted estimator
        fresh.predict_proba(X)
    fitted = make(random_state=0).fit(X, y)
    expected = fitted.predict_proba(X)
    with pytest.raises(ValueError):
        fitted.set_params(**bad).fit(X[:, :5], y[::-1])
    assert_array_equal(fitted.predict_proba(X), expected)  # the earlier fit, whole


def test_gaussian_vote_and_callable_votes_match_sklearn():
    from sklearn.neighbors import KNeighborsClassifier

    from leukoseg.classify.gknn import _neighbour_votes

    assert_allclose(gaussian_vote(np.array([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0], [0.0, 0.0, 0.0]])),
                    [[1.0, np.exp(-0.5), np.exp(-2.0)], [np.exp(-2.0)] * 3, [1.0, 1.0, 1.0]], rtol=0, atol=1e-12)
    rng = np.random.default_rng(8)
    X = rng.normal(size=(600, 4))
    y = rng.integers(0, 2, 600)
    for k in (1, 9):
        votes = _neighbour_votes(X[:400].astype(np.float32), X[400:].astype(np.float32), y[:400], k, 2, gaussian_vote)
        knn = KNeighborsClassifier(n_neighbors=k, weights=gaussian_vote, algorithm="brute").fit(X[:400], y[:400])
        assert_allclose(votes / votes.sum(axis=1, keepdims=True), knn.predict_proba(X[400:]), rtol=0, atol=1e-4)
    # Ties at the k-th distance (points on a small integer grid): still exactly k neighbours weighed, the
    # sorted k smallest distances, whichever tied points the partition keeps.
    grid = rng.integers(0, 3, size=(300, 2)).astype(np.float32)
    for k in (1, 5, 200):
        votes = _neighbour_votes(grid[:200], grid[200:], y[:200], k, 2, gaussian_vote)
        d = np.sort(np.linalg.norm(grid[200:, None, :] - grid[None, :200, :], axis=2), axis=1)[:, :k]
        assert_allclose(votes.sum(axis=1), gaussian_vote(d).sum(axis=1), rtol=0, atol=1e-5)


def test_gknn_auc_fitness_and_continuous_probabilities():
    X, y = _informative_problem(n_samples=200, seed=9)
    clf = GeneticKNNClassifier(**SMALL_GA, fitness="auc", feature_cost=0.0, random_state=0).fit(X, y)
    # With no feature cost the fitness is the inner-CV AUC of the vote shares.
    assert 0.5 < clf.best_fitness_ <= 1.0
    proba = clf.predict_proba(X[:50])[:, 1]
    assert len(np.unique(proba)) > clf.k_ + 1  # finer than the k + 1 shares of equal votes
    costly = GeneticKNNClassifier(**SMALL_GA, feature_cost=0.5, random_state=0).fit(X, y)
    assert costly.support_.sum() <= clf.support_.sum()
    uniform = GeneticKNNClassifier(**SMALL_GA, vote="uniform", fitness="balanced_accuracy", random_state=0).fit(X, y)
    assert set(np.unique(uniform.predict_proba(X)[:, 1] * uniform.k_).round(6)) <= set(range(uniform.k_ + 1))
