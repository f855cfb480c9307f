from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="pyro_snf",
    version="0.1.0",
    description="Stochastic Normalizing Flows for Pyro: SNF layers, an SNF autoguide, importance sampling",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["pyro_snf", "pyro_snf.*"]),
    package_data={"pyro_snf": ["targets/data/*.csv", "targets/data/*.txt",
                               "examples/data/*.csv", "examples/data/*.json", "examples/data/*.md",
                               "molecules/data/*.npz", "molecules/data/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "pyro-ppl>=1.9",
        "numpy>=1.24",
        "arviz>=0.17",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        # nbclient, ipykernel, ipywidgets: the tutorials are executed by the tests (ipywidgets keeps
        # tqdm.auto, which Pyro imports, from warning in the notebooks)
        "test": ["pytest>=7", "ruff>=0.5", "scipy>=1.10", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6",
                 "ipywidgets>=8"],
        # peers of the benchmarks (never imported by the package)
        "benchmarks": ["scipy>=1.10", "normflows>=1.7", "pymc>=5.10"],
        # molecular Boltzmann generators: OpenMM systems and their test systems (about 0.7 GB)
        "molecules": ["openmm>=8.0", "openmmtools>=0.23"],
        "docs": ["nbformat>=5", "nbclient>=0.7", "ipykernel>=6", "ipywidgets>=8"],
    },
    entry_points={"console_scripts": ["pyro-snf=pyro_snf.__main__:main"]},
)
