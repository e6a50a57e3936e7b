"""BNAS (Kim, Singh, Choi, ECCV 2020): search space S_B, cell template T_B, genotypes and discrete networks."""

from methods.bnas.genotypes import GENOTYPES, PRIMITIVES, Genotype, GenotypeError, get_genotype  # noqa: F401
from methods.bnas.network import *  # noqa: F401,F403
