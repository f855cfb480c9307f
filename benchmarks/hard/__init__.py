"""The hard-posterior suite: posteriors that need more than a Gaussian guide (several modes, label
switching, curved ridges, funnels, bad scaling, strong correlation, hundreds of latents), each with a
reference made by a script (quadrature or conjugacy where the dimension allows, long multi-chain NUTS
otherwise), scored for :func:`pyro_snf.infer.sample_posterior` and the peers (PyMC ``sample_smc`` and
NUTS). ``python -m benchmarks.hard --help``."""
