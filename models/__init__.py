"""Example models shipped with edgekit, built and trained in code on data that ships offline.

Installed as the ``edgekit_models`` package. Each module exposes ``load(*, cache_dir) -> ModelBundle``.
"""

EXAMPLES = {
    "digits_cnn": "edgekit_models.digits_cnn:load",
    "recommender": "edgekit_models.recommender:load",
    "minilm": "edgekit_models.minilm:load",
}
