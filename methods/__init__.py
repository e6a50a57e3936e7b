"""Methods: binary layers, BNAS and baseline networks. Importing this package registers its models with timm.

`methods/` depends only on torch and timm; it never imports `harness`, mlflow or click.
"""

from methods import baselines, bnas  # noqa: F401  (registers models)
