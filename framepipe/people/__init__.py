"""The people across videos of a destination: the person registry and search.

* :mod:`~framepipe.people.registry`: a destination's registries (one per embedding model) brought up to date after
  new videos and committed as versions; corrections (names, merges, splits); the people index.
* :mod:`~framepipe.people.model_registry`: one model's registry and its changes;
  :mod:`~framepipe.people.model_store` how it is read and written; :mod:`~framepipe.people.files` its files.
* :mod:`~framepipe.people.grouping`: the clustering that seeds an empty registry (neighbour graphs at scale).
* :mod:`~framepipe.people.search`: where a photo's or a video's person appears.

The per-video step (tracks into people) is :mod:`framepipe.clustering`; the thresholds of each model pack are
:mod:`framepipe.calibration`.
"""
