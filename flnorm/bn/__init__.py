"""BatchNorm statistics: finding BN layers, pooling statistics, PreciseBN, BN modes.

No Flower import: the strategies in ``strategies/`` call into this package.
"""

from flnorm.bn.layout import BNLayer, BNLayout, bn_modules
from flnorm.bn.modes import batch_statistics, frozen_statistics
from flnorm.bn.moments import Moments, collect_moments, pool_moments, population_to_unbiased, unbiased_to_population
from flnorm.bn.pooling import average_with_pooled_stats, install_moments, pool_running_stats, summed_counters
from flnorm.bn.precise import moments_from_arrays, moments_to_arrays, precise_statistics, set_running_stats

__all__ = [
    "BNLayer", "BNLayout", "average_with_pooled_stats", "Moments", "batch_statistics", "bn_modules", "collect_moments",
    "frozen_statistics", "install_moments", "pool_moments", "pool_running_stats",
    "moments_from_arrays", "moments_to_arrays", "population_to_unbiased", "precise_statistics",
    "set_running_stats", "summed_counters", "unbiased_to_population",
]
