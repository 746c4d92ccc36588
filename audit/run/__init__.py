"""The run layer: a suite's cells planned, generated, labelled, measured and recorded, locally or
on Ray. Everything that runs models lives here; metrics (pure functions), the store (files) and
the report (reads stored records) sit below or beside it and never call back into it.

  context.py   RunContext: the suite, the store, and the models and labelers loaded once per run
  probes.py    h-space probes: shipped by a model's source, or trained and cached in OUT/probes
  build.py     a cell's method, built from its params and what the runner supplies
  generate.py  a cell's images, resumed seed by seed
  label.py     labels per image, cached per labeler configuration
  measure.py   a cell's metrics (fairness, FID, CLIP), re-measured only where their keys changed
  cell.py      one cell, start to finish (manifest, stale weights, FID references)
  suite.py     every cell, results.csv/json and the index
  ray.py       the Ray executor
"""
