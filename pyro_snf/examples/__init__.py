"""Examples and studies built on the library, kept apart from it (like ``pyro.contrib.examples``).

- :mod:`pyro_snf.examples.datasets`: small real data sets shipped in ``pyro_snf/examples/data/``
  (logistic regression on three UCI sets, eight schools) with reference log evidences;
- :mod:`pyro_snf.examples.models`: the Pyro models for them (``logistic_regression``,
  ``eight_schools_noncentered``);
- :mod:`pyro_snf.examples.double_well`: the paper's double-well study (``EDGES``,
  ``exact_double_well_profile``, ``train_paper_protocol``, ``evaluate``), used by the demo, the
  benchmarks and tutorial 01;
- :mod:`pyro_snf.examples.demo`: the command line's ``demo`` (``run_demo``), a plain flow vs an SNF
  on the double well (imports matplotlib; writes PNGs without pyplot or a backend choice).

Importing this package imports none of them (and no matplotlib).
"""
