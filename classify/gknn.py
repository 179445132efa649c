"""Genetic-algorithm k-nearest-neighbour classifier (GkNN), after Rajesh & Sathiamoorthy (2018).

A kNN on standardised features whose per-feature weights and number of neighbours are chosen by a genetic
algorithm (DEAP) that maximises an inner cross-validated score on the training data (by default the ROC AUC
of Gaussian-kernel neighbour votes, less a small cost per feature used).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from deap import base, tools
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._cv import checked_training_data, inner_cv_splits, own_random_state
from ._votes import gaussian_vote

__all__ = ["GeneticKNNClassifier", "gaussian_vote"]

log = logging.getLogger(__name__)

_TOURNAMENT_SIZE = 3
_MUTATION_SIGMA = 0.25
_BLOCK = 16  # training points per block in the exact block-pruned neighbour search


class _FitnessMax(base.Fitness):
    """One objective, maximised: the inner-CV fitness (see ``GeneticKNNClassifier``, Notes)."""

    weights = (1.0,)


class _Chromosome(list):
    """DEAP individual: ``n_features`` weights in [0, 1], then k.

    Defined here rather than with :func:`deap.creator.create`, which registers classes in the global
    ``deap.creator`` namespace (and warns when a class is created twice); this class is private to the
    module, picklable, and no global state changes when a classifier is fitted.
    """

    def __init__(self, genes: Any = ()) -> None:
        super().__init__(genes)
        self.fitness = _FitnessMax()


class GeneticKNNClassifier(ClassifierMixin, BaseEstimator):
    """K-nearest neighbours with feature weights and k tuned by a genetic algorithm (GkNN).

    Features are standardised (zero mean, unit variance on the training data) and multiplied by learned
    weights, so that the distance between two cells is ``sqrt(sum_f (w_f * (z_f - z'_f))**2)``; k and the
    weights are chosen by a genetic algorithm maximising an inner cross-validated score (`fitness`) on the
    training data only. The class probabilities are the (by default Gaussian-kernel weighted) vote shares
    of the k nearest training samples.

    Parameters
    ----------
    population_size : int, default=30
        Individuals per generation.
    n_generations : int, default=15
        Generations after the initial population (0: random search of `population_size` individuals).
    k_max : int, default=31
        Largest number of neighbours; k is odd, from 1 to `k_max`.
    inner_cv : int, default=3
        Folds of the inner (stratified; with ``groups`` stratified-grouped) cross-validation that scores
        an individual. Lowered when the smallest class is smaller.
    crossover_prob : float, default=0.7
        Probability that a pair of offspring is crossed over.
    mutation_prob : float, default=0.2
        Probability that an offspring is mutated.
    min_weight : float, default=0.05
        Weights below this are set to 0, dropping the feature.
    vote : {"uniform", "distance"} or callable, default=gaussian_vote
        Neighbour votes, as the `weights` of :class:`~sklearn.neighbors.KNeighborsClassifier`: equal,
        weighted by inverse distance, or by a function of the (n_queries, k) neighbour distances. The
        default :func:`gaussian_vote` weighs each neighbour by a Gaussian of its distance relative to the
        k-th one: probabilities become continuous instead of the ``k + 1`` values of equal votes, which
        ranks cells much better (ROC AUC) for nearly the same decisions.
    fitness : {"auc", "balanced_accuracy", "balanced_accuracy+auc"}, default="auc"
        Inner-CV score that the genetic algorithm maximises (see Notes): the ROC AUC of the out-of-fold
        vote shares (what a ranking of cells by probability is judged by), the balanced accuracy of the
        out-of-fold arg-max decisions, or the mean of both.
    feature_cost : float in [0, 1], default=0.05
        Subtracted from the fitness times the fraction of features used (weight >= `min_weight`): among
        individuals of similar score the GA prefers fewer features, which limits over-fitting of the
        weights to the inner folds (with ~100 correlated features, most of them weak, all-feature
        individuals fit the inner folds best but generalise worse). 0 disables it.
    init_sparsity : float in [0, 1], default=0.5
        Probability that a weight of an initial random individual is 0 (the feature dropped), so that the
        initial population samples feature subsets as well as weightings.
    n_runs : int, default=1
        Independent genetic searches, each on its own draw of inner folds and with its own GA seed;
        :meth:`predict_proba` averages the vote shares of their kNNs. The weights a search finds depend
        on which images its inner folds happen to hold out (on ALL-IDB1 the cell AUC of single searches
        spreads by about 0.01); the mean of a few searches is steadier and ranks better, for `n_runs`
        times the cost.
    random_state : int, RandomState instance or None, default=None
        Seeds the inner folds and the genetic algorithm; an int gives identical results on every fit.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of str
        Feature names, when ``X`` had them.
    scaler_ : :class:`~sklearn.preprocessing.StandardScaler`
        Standardisation of the training features.
    weights_ : ndarray of shape (n_features_in_,)
        Feature weights of the best individual, in [0, 1], those below `min_weight` set to 0 (of the first
        search; see `runs_` for all of them).
    support_ : ndarray of bool, shape (n_features_in_,)
        Features with a non-zero weight.
    k_ : int
        Number of neighbours of the best individual.
    best_fitness_ : float
        Fitness of the best individual (inner-CV score less the feature cost).
    fitness_history_ : dict of str to ndarray
        ``"best"`` and ``"mean"`` fitness of the population, one entry per generation (entry 0: the initial
        population).
    n_evaluations_ : int
        Number of distinct individuals scored (all searches).
    knn_ : :class:`~sklearn.neighbors.KNeighborsClassifier`
        kNN fitted on the weighted, standardised training features.
    runs_ : list of dict
        One entry per search (`n_runs`), the first being the one above: ``weights``, ``support``, ``k``,
        ``best_fitness``, ``fitness_history`` and ``knn``, as the attributes of the same names.

    Notes
    -----
    **Chromosome.** ``n_features + 1`` genes: ``n_features`` real weights in [0, 1] (a weight below
    `min_weight` counts as 0), then one integer gene holding k itself, odd, in ``{1, 3, ..., k_max}``
    (limited to the training-set size). A chromosome with no weight at or above `min_weight` is repaired
    by setting its largest weight to 1.

    **Genetic algorithm** (DEAP :class:`~deap.base.Toolbox`, :class:`~deap.tools.HallOfFame`,
    :class:`~deap.tools.Statistics`): random initial population (each weight 0 with probability
    `init_sparsity`, else uniform in [0, 1]; k uniform), whose first individual has every weight set to 1
    (the plain kNN on standardised features, so that the search starts from it);
    each generation, tournament selection (size 3), uniform crossover of pairs (each gene swapped with
    probability 1/2) with probability `crossover_prob`, mutation with probability `mutation_prob` (each
    gene with probability ``1 / (n_features + 1)``, at least one: weights get Gaussian noise,
    sigma 0.25, clipped to [0, 1]; k is redrawn), and elitism (the best individual survives unchanged).
    The operators draw from one NumPy generator seeded from `random_state` instead of DEAP's operators,
    which use the global :mod:`random` module: fits are reproducible, thread-safe, and leave global
    random state alone. No :mod:`deap.creator` classes are created.

    **Fitness** ``= score - feature_cost * (fraction of features with a non-zero weight)``, where score is
    computed on the pooled out-of-fold votes of an inner stratified k-fold (the folds are drawn once per
    fit, so all individuals are compared on the same folds): with ``fitness="auc"`` the ROC AUC of the
    vote share of the last class in `classes_` (the blast class for labels 0/1; with more classes the
    mean one-vs-rest AUC), with ``"balanced_accuracy"`` the balanced accuracy of the arg-max decisions,
    with ``"balanced_accuracy+auc"`` their mean. The votes are those of `vote`, as the fitted model
    predicts. The scaler is fitted once on all training data passed to ``fit``. Identical chromosomes are
    scored once. With ``"uniform"`` or ``"distance"`` votes, neighbours are found exactly with a blocked,
    single-precision search (one matrix product per fold, then pruning of blocks of training points that
    cannot hold a neighbour); training points tied at the k-th distance share the remaining votes, and
    ties in votes go to the first class, as in scikit-learn. With a callable `vote`, one single-precision
    matrix product and a partition per fold give the k nearest neighbours and their distances. The
    fitted `knn_` (double precision) then predicts; it may break exact distance ties differently.

    **Cost**: at most about ``population_size * (1 + 0.8 * n_generations)`` scorings (about 390 with
    the defaults; unchanged and repeated individuals are not rescored), each
    ``inner_cv`` nearest-neighbour searches of ``n / inner_cv`` against ``n (inner_cv - 1) / inner_cv``
    samples; with 4000 samples, 60 features and uniform votes, about 12 CPU-seconds. The callable votes
    of the default search every training row (no block pruning): on ALL-IDB1 (about 860 training cells,
    119 features) a search takes about 2 seconds on a 2-core CPU.

    References
    ----------
    M. Bennet Rajesh, S. Sathiamoorthy, "Classification of leukemia image using genetic based k-nearest
    neighbor (G-KNN)", Asian Journal of Computer Science and Technology 7(2), pp. 113-117, 2018.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(n_samples=120, n_features=6, n_informative=2, random_state=0)
    >>> clf = GeneticKNNClassifier(population_size=8, n_generations=3, random_state=0).fit(X, y)
    >>> clf.weights_.shape, clf.k_ % 2
    ((6,), 1)
    >>> clf.predict_proba(X[:2]).sum(axis=1)
    array([1., 1.])
    """

    def __init__(
        self,
        *,
        population_size: int = 30,
        n_generations: int = 15,
        k_max: int = 31,
        inner_cv: int = 3,
        crossover_prob: float = 0.7,
        mutation_prob: float = 0.2,
        min_weight: float = 0.05,
        vote: str | Callable[[np.ndarray], np.ndarray] = gaussian_vote,
        fitness: str = "auc",
        feature_cost: float = 0.05,
        init_sparsity: float = 0.5,
        n_runs: int = 1,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.population_size = population_size
        self.n_generations = n_generations
        self.k_max = k_max
        self.inner_cv = inner_cv
        self.crossover_prob = crossover_prob
        self.mutation_prob = mutation_prob
        self.min_weight = min_weight
        self.vote = vote
        self.fitness = fitness
        self.feature_cost = feature_cost
        self.init_sparsity = init_sparsity
        self.n_runs = n_runs
        self.random_state = random_state

    def fit(self, X: ArrayLike, y: ArrayLike, *, groups: ArrayLike | None = None) -> GeneticKNNClassifier:
        """Run the genetic algorithm (`n_runs` times) and fit the kNN of each search's best individual.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features, finite.
        y : array-like of shape (n_samples,)
            Class labels.
        groups : array-like of shape (n_samples,), optional
            Group of each sample (e.g. the image a cell comes from); the inner cross-validation keeps a
            group in one fold.

        Returns
        -------
        self : GeneticKNNClassifier
            The fitted classifier.

        Raises
        ------
        ValueError
            If a setting is out of range, `X` is not finite, or `y` holds fewer than two classes.
        """
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.preprocessing import StandardScaler

        # Settings and labels are checked before anything is stored: a refused fit leaves no half-fitted state.
        self._check_params()
        X, y, classes, y_codes = checked_training_data(self, X, y)
        random_state = own_random_state(self.random_state)
        # The first search draws its seeds as a single search always has: n_runs=1 fits are unchanged.
        seeds = random_state.randint(np.iinfo(np.int32).max, size=(self.n_runs, 2))

        scaler = StandardScaler().fit(X)
        standardised = scaler.transform(X)
        k_values = np.arange(1, min(self.k_max, len(y)) + 1, 2)
        runs, n_evaluations = [], 0
        for cv_seed, ga_seed in seeds.tolist():
            folds = inner_cv_splits(y_codes, groups, self.inner_cv, cv_seed)
            score = _InnerCVScore(standardised, y_codes, folds, len(classes), self.vote, self.fitness)
            best, history, n_scored = self._evolve(score, X.shape[1], k_values, np.random.default_rng(ga_seed))
            weights = _effective_weights(np.asarray(best[:-1]), self.min_weight)
            support, k = weights > 0, int(best[-1])
            knn = KNeighborsClassifier(n_neighbors=k, weights=self.vote, algorithm="brute")
            knn.fit(standardised[:, support] * weights[support], y)
            runs.append({"weights": weights, "support": support, "k": k, "best_fitness": float(best.fitness.values[0]),
                         "fitness_history": history, "knn": knn})  # fmt: skip
            n_evaluations += n_scored
            log.info(
                "GkNN search %d/%d: k=%d, %d of %d features, inner fitness %.3f (%d individuals scored)",
                len(runs), self.n_runs, k, int(support.sum()), X.shape[1], runs[-1]["best_fitness"], n_scored,
            )  # fmt: skip
        first = runs[0]
        self.classes_, self.scaler_ = classes, scaler
        self.weights_, self.support_, self.k_ = first["weights"], first["support"], first["k"]
        self.best_fitness_, self.fitness_history_ = first["best_fitness"], first["fitness_history"]
        self.knn_ = first["knn"]
        self.n_evaluations_ = n_evaluations
        self.runs_ = runs
        return self

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Neighbour votes per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature rows of the cells to score, columns as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Share of the (weighted, see `vote`) votes of the `k_` nearest training samples (with
            `n_runs` > 1, the mean share over the searches), columns in the order of `classes_`; rows sum
            to 1.
        """
        check_is_fitted(self, "runs_")
        X = cast(np.ndarray, validate_data(self, X, dtype=np.float64, reset=False))
        standardised = self.scaler_.transform(X)
        proba = None
        for run in self.runs_:
            support = run["support"]
            votes = run["knn"].predict_proba(standardised[:, support] * run["weights"][support])
            proba = votes if proba is None else proba + votes
        assert proba is not None  # fit made n_runs >= 1 searches
        return proba / len(self.runs_)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict the class with the most votes (ties: the first in `classes_`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Feature rows of the cells to classify, columns as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples,)
            The label from `classes_` with the largest vote share.
        """
        proba = self.predict_proba(X)  # checks fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    def _check_params(self) -> None:
        for name, low in (("population_size", 2), ("n_generations", 0), ("k_max", 1), ("n_runs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
        for name in ("crossover_prob", "mutation_prob", "min_weight", "feature_cost", "init_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}")
        if not callable(self.vote) and self.vote not in ("uniform", "distance"):
            raise ValueError(f"vote must be 'uniform', 'distance' or a callable; got {self.vote!r}")
        if self.fitness not in ("balanced_accuracy", "auc", "balanced_accuracy+auc"):
            raise ValueError(
                f"fitness must be 'balanced_accuracy', 'auc' or 'balanced_accuracy+auc'; got {self.fitness!r}"
            )

    def _evolve(
        self,
        score: Callable[[np.ndarray, int], float],
        n_features: int,
        k_values: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[_Chromosome, dict[str, np.ndarray], int]:
        """The genetic algorithm; returns the best individual, the history, and the number of scorings."""
        min_weight = float(self.min_weight)
        init_sparsity, feature_cost = float(self.init_sparsity), float(self.feature_cost)
        n_genes = n_features + 1
        cache: dict[tuple[bytes, int], float] = {}

        def new_individual() -> _Chromosome:
            weights = rng.random(n_features)
            weights[rng.random(n_features) < init_sparsity] = 0.0
            genes = [*weights.tolist(), int(rng.choice(k_values))]
            return _repair(_Chromosome(genes), min_weight)

        def evaluate(individual: _Chromosome) -> tuple[float]:
            weights = _effective_weights(np.asarray(individual[:-1]), min_weight)
            key = (weights.tobytes(), int(individual[-1]))
            if key not in cache:
                cache[key] = score(weights, int(individual[-1])) - feature_cost * float(np.mean(weights > 0))
            return (cache[key],)

        def mate(a: _Chromosome, b: _Chromosome) -> None:
            swap = np.flatnonzero(rng.random(n_genes) < 0.5)
            for i in swap:
                a[i], b[i] = b[i], a[i]

        def mutate(individual: _Chromosome) -> None:
            genes = np.flatnonzero(rng.random(n_genes) < 1.0 / n_genes)
            if genes.size == 0:
                genes = rng.integers(n_genes, size=1)
            for i in genes:
                if i == n_features:
                    individual[i] = int(rng.choice(k_values))
                else:
                    individual[i] = float(np.clip(individual[i] + rng.normal(0.0, _MUTATION_SIGMA), 0.0, 1.0))
            _repair(individual, min_weight)

        def select(population: list[_Chromosome], n: int) -> list[_Chromosome]:
            fitness = np.array([ind.fitness.values[0] for ind in population])
            contenders = rng.integers(len(population), size=(n, _TOURNAMENT_SIZE))
            # First maximum of each tournament: deterministic tie-breaking.
            winners = contenders[np.arange(n), np.argmax(fitness[contenders], axis=1)]
            return [population[i] for i in winners]

        toolbox = base.Toolbox()
        toolbox.register("individual", new_individual)
        toolbox.register("population", tools.initRepeat, list, toolbox.individual)
        toolbox.register("evaluate", evaluate)
        toolbox.register("mate", mate)
        toolbox.register("mutate", mutate)
        toolbox.register("select", select)
        stats = tools.Statistics(lambda ind: ind.fitness.values[0])
        stats.register("best", np.max)
        stats.register("mean", np.mean)
        logbook = tools.Logbook()
        hall_of_fame = tools.HallOfFame(1)

        def score_invalid(population: list[_Chromosome]) -> None:
            for individual in population:
                if not individual.fitness.valid:
                    individual.fitness.values = toolbox.evaluate(individual)

        population = toolbox.population(n=self.population_size)
        # One individual weighs every feature 1: the plain kNN is a starting point of the search.
        population[0][:n_features] = [1.0] * n_features
        score_invalid(population)
        hall_of_fame.update(population)
        logbook.record(gen=0, **stats.compile(population))
        log.debug("GkNN generation 0: %s", logbook[-1])
        for generation in range(1, self.n_generations + 1):
            elite = tools.selBest(population, 1)
            offspring = [toolbox.clone(ind) for ind in toolbox.select(population, len(population) - 1)]
            for a, b in zip(offspring[::2], offspring[1::2]):
                if rng.random() < self.crossover_prob:
                    toolbox.mate(a, b)
                    del a.fitness.values, b.fitness.values
            for individual in offspring:
                if rng.random() < self.mutation_prob:
                    toolbox.mutate(individual)
                    del individual.fitness.values
            score_invalid(offspring)
            population = [toolbox.clone(elite[0]), *offspring]
            hall_of_fame.update(population)
            logbook.record(gen=generation, **stats.compile(population))
            log.debug("GkNN generation %d: %s", generation, logbook[-1])
        history = {key: np.asarray(logbook.select(key), dtype=np.float64) for key in ("best", "mean")}
        return hall_of_fame[0], history, len(cache)


def _effective_weights(weights: np.ndarray, min_weight: float) -> np.ndarray:
    return np.where(weights >= min_weight, weights, 0.0)


def _repair(individual: _Chromosome, min_weight: float) -> _Chromosome:
    weights = individual[:-1]
    if max(weights) < min_weight or max(weights) == 0:
        individual[int(np.argmax(weights))] = 1.0
    return individual


class _InnerCVScore:
    """Fitness of given weights and k: a score of the pooled out-of-fold kNN votes of the inner folds.

    ``fitness`` is ``"balanced_accuracy"`` (of the arg-max class), ``"auc"`` (area under the ROC curve of
    the vote share of the last class; two classes only, else the one-vs-rest mean) or
    ``"balanced_accuracy+auc"`` (their mean).
    """

    def __init__(
        self,
        standardised: np.ndarray,
        y_codes: np.ndarray,
        folds: list[tuple[np.ndarray, np.ndarray]],
        n_classes: int,
        vote,
        fitness: str = "balanced_accuracy",
    ) -> None:
        data = np.ascontiguousarray(standardised, dtype=np.float32)
        codes = y_codes.astype(np.int16 if n_classes > 127 else np.int8)
        self.folds = [(data[train], data[test], codes[train], test) for train, test in folds]
        self.y_codes = y_codes
        self.class_counts = np.bincount(y_codes, minlength=n_classes)
        self.n_classes = n_classes
        self.vote = vote
        self.fitness = fitness

    def __call__(self, weights: np.ndarray, k: int) -> float:
        active = weights > 0
        w = weights[active].astype(np.float32)
        votes = np.zeros((len(self.y_codes), self.n_classes))
        for train, test, y_train, test_index in self.folds:
            votes[test_index] = _neighbour_votes(
                train[:, active] * w, test[:, active] * w, y_train, min(k, len(train)), self.n_classes, self.vote
            )
        out = []
        if self.fitness in ("balanced_accuracy", "balanced_accuracy+auc"):
            predicted = np.argmax(votes, axis=1)
            correct = np.bincount(self.y_codes[predicted == self.y_codes], minlength=self.n_classes)
            out.append(float(np.mean(correct / self.class_counts)))
        if self.fitness in ("auc", "balanced_accuracy+auc"):
            share = votes / np.maximum(votes.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
            classes = [self.n_classes - 1] if self.n_classes == 2 else range(self.n_classes)
            out.append(float(np.mean([_auc(self.y_codes == c, share[:, c]) for c in classes])))
        return float(np.mean(out))


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); 0.5 without both classes."""
    from scipy.stats import rankdata

    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.5
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _neighbour_votes(
    train: np.ndarray, query: np.ndarray, y_train: np.ndarray, k: int, n_classes: int, vote
) -> np.ndarray:
    """Class votes of the k nearest training rows of every query row, shape (n_query, n_classes).

    Exact, and cheap enough to run a few hundred times per fit:

    - one float32 matrix product gives ``|t|^2 - 2 t.q`` for all pairs, training-major;
    - training rows are grouped in blocks of ``_BLOCK``; the k nearest neighbours of a query lie in the k
      blocks with the smallest minima (a block holding a neighbour has a minimum no larger than the
      neighbour, so at most k - 1 blocks can have a smaller one; with ties, the k-th smallest value is
      still found), so only those blocks are searched;
    - the k-th smallest value comes from a (values-only) partition; neighbours strictly closer vote with
      weight 1, and neighbours tied with the k-th share the remaining votes equally;
    - ``vote`` is ``"uniform"``, ``"distance"`` (or a bool: inverse-distance votes) or a callable of the
      (n_query, k) neighbour distances, as the `weights` of scikit-learn's kNN; with a callable, exact
      ties at the k-th distance are broken by the partition (arbitrarily, as in scikit-learn).
    """
    if callable(vote):
        return _callable_votes(train, query, y_train, k, n_classes, vote)
    distance = vote is True or vote == "distance"
    n_train, n_features = train.shape
    n_query = query.shape[0]
    n_blocks = -(-n_train // _BLOCK)
    augmented_train = np.zeros((n_blocks * _BLOCK, n_features + 1), dtype=np.float32)
    augmented_train[:n_train, :n_features] = train
    augmented_train[:n_train, n_features] = np.einsum("ij,ij->i", train, train)
    augmented_train[n_train:, n_features] = np.inf  # padding rows never come near
    augmented_query = np.empty((n_query, n_features + 1), dtype=np.float32)
    np.multiply(query, -2.0, out=augmented_query[:, :n_features])
    augmented_query[:, n_features] = 1.0
    partial = augmented_train @ augmented_query.T  # (padded n_train, n_query)
    if n_blocks <= k:
        rows = np.broadcast_to(np.arange(n_blocks * _BLOCK), (n_query, n_blocks * _BLOCK))
        candidates = np.ascontiguousarray(partial.T)
    else:
        # Query-major from here on: partitions are much faster along contiguous rows.
        block_min = np.ascontiguousarray(partial.reshape(n_blocks, _BLOCK, n_query).min(axis=1).T)
        chosen = block_min <= np.partition(block_min, k - 1, axis=1)[:, k - 1 : k]
        if np.count_nonzero(chosen) == n_query * k:  # no ties: exactly k blocks per query
            blocks = np.nonzero(chosen)[1].reshape(n_query, k)
        else:
            blocks = np.argpartition(block_min, k - 1, axis=1)[:, :k]
        rows = (blocks[:, :, None] * _BLOCK + np.arange(_BLOCK)).reshape(n_query, k * _BLOCK)
        candidates = np.take(partial.ravel(), rows * n_query + np.arange(n_query)[:, None])
    kth = np.partition(candidates, k - 1, axis=1)[:, k - 1 : k]
    labels = np.concatenate([y_train, np.zeros(n_blocks * _BLOCK - n_train, dtype=y_train.dtype)])[rows]
    selected = candidates <= kth
    if not distance and np.count_nonzero(selected) == n_query * k:  # no ties: plain counts
        return np.stack([np.count_nonzero(selected & (labels == c), axis=1) for c in range(n_classes)], axis=1)
    closer = candidates < kth
    tied = candidates == kth
    share = (k - np.count_nonzero(closer, axis=1)) / np.count_nonzero(tied, axis=1)
    weight = np.where(closer, np.float32(1.0), np.where(tied, share[:, None].astype(np.float32), np.float32(0.0)))
    if distance:
        sq_norm = np.einsum("ij,ij->i", query, query)[:, None]
        dist = np.sqrt(np.maximum(candidates + sq_norm, 0.0))
        at_zero = selected & (dist == 0)
        with np.errstate(divide="ignore"):
            # As scikit-learn: neighbours at distance 0 outvote all others.
            weight = np.where(at_zero.any(axis=1, keepdims=True), at_zero * weight, weight / dist)
        weight[~selected] = 0.0
    return np.stack([(weight * (labels == c)).sum(axis=1) for c in range(n_classes)], axis=1)


def _callable_votes(train, query, y_train, k, n_classes, vote) -> np.ndarray:
    """Votes weighted by ``vote(distances)`` of the k nearest training rows (float32 search)."""
    sq = query @ (train * np.float32(-2.0)).T  # -2 t.q, then |t|^2 added in place: |q - t|^2 - |q|^2
    sq += np.einsum("ij,ij->i", train, train)
    n_query, n_train = sq.shape
    if k >= n_train:  # every training row is a neighbour
        nearest = np.broadcast_to(np.arange(n_train), sq.shape)
    else:
        # A values-only partition is about three times faster than argpartition; without ties at the
        # k-th distance its mask holds exactly k neighbours per row.
        selected = sq <= np.partition(sq, k - 1, axis=1)[:, k - 1 : k]
        if np.count_nonzero(selected) == n_query * k:
            nearest = np.nonzero(selected)[1].reshape(n_query, k)
        else:  # ties broken by the partition (arbitrarily, as in scikit-learn)
            nearest = np.argpartition(sq, k - 1, axis=1)[:, :k]
    d2 = np.take_along_axis(sq, nearest, axis=1) + np.einsum("ij,ij->i", query, query)[:, None]
    weight = np.asarray(vote(np.sqrt(np.maximum(d2, 0.0)).astype(np.float64)), dtype=np.float64)
    labels = y_train[nearest]
    return np.stack([(weight * (labels == c)).sum(axis=1) for c in range(n_classes)], axis=1)
