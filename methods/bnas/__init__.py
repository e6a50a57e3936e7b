"""BNAS (Kim, Singh, Choi, ECCV 2020): search space S_B, cell template T_B, genotypes and discrete networks."""

from methods.bnas import search  # noqa: F401,E402  (registers the "bnas" searcher)
from methods.bnas.genotypes import (  # noqa: F401
    DARTS_PRIMITIVES,
    GENOTYPES,
    PRIMITIVES,
    SPACES,
    Genotype,
    GenotypeError,
    get_genotype,
)
from methods.bnas.network import *  # noqa: F401,F403
