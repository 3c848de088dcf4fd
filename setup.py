"""prompt-tuning: soft prompts for a frozen T5 1.1, in JAX/Flax."""

import setuptools

setuptools.setup(
    name="prompt-tuning",
    version="0.1.0",
    description="Parameter-efficient prompt tuning (Lester et al., 2021) in JAX/Flax, T5X style.",
    python_requires=">=3.10",
    # `configs/` and `tasks/` live at the top of the repository (T5X habit) but install inside
    # the `prompt_tuning` namespace, so they never collide with other distributions' top-level names.
    # Each configs/ folder is a package (has an `__init__.py`): gin resolves an include such as
    # `prompt_tuning/configs/runs/x.gin` through the package's `__init__` file, and fails with a
    # TypeError on a namespace package.
    packages=(
        [
            "prompt_tuning",
            "prompt_tuning.models",
            "prompt_tuning.data",
            "prompt_tuning.embedded",
            "prompt_tuning.tasks",
            "prompt_tuning.configs",
        ]
        + ["prompt_tuning.configs." + p for p in setuptools.find_packages("configs")]
    ),
    package_dir={
        "prompt_tuning": "prompt_tuning",
        "prompt_tuning.tasks": "tasks",
        "prompt_tuning.configs": "configs",
    },
    # Any package's `assets/` folder ships whole. The embedded default's T5X checkpoints keep zarr
    # metadata in dotfiles (`.zarray`), which `*` does not match.
    package_data={"prompt_tuning.configs": ["**/*.gin"], "": ["assets/**/*", "assets/**/.*"]},
    # Each floor was installed and tested: README.md, "Dependency floors".
    install_requires=[
        "jax>=0.7.1",  # jax.set_mesh as a context manager
        "flax>=0.10.0",
        "optax>=0.1.5",
        "numpy>=1.26",
        "seqio>=0.0.20",  # 0.0.19 pins tfds-nightly and protobuf<=3.20.3
        "gin-config>=0.5",
        # The full `tensorflow`, which SeqIO's tensorflow-text requires anyway: with
        # `tensorflow-cpu` as well, pip installs both into one `tensorflow` folder.
        "tensorflow>=2.18.1",
        "tensorflow-datasets>=4.9.4",
        "tensorstore>=0.1.84",
        "sentencepiece>=0.2",
        "msgpack>=1.0",
        "ml-dtypes>=0.5.4",
        "absl-py>=1.4",
        "scikit-learn>=1.3",
        "scipy>=1.12",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
    ],
    extras_require={
        # The ablation sweep's figure (python -m prompt_tuning.ablate).
        "plots": ["matplotlib>=3.7"],
        # setuptools and wheel: tests/test_packaging.py builds the wheel without build isolation.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "setuptools>=64",
            "wheel",
            "pyink~=26.5",
            "matplotlib>=3.7",
        ],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={
        "console_scripts": [
            "pt-train=prompt_tuning.train:console_main",
            "pt-eval=prompt_tuning.eval:console_main",
            "pt-infer=prompt_tuning.infer:console_main",
            "pt-transfer=prompt_tuning.transfer:console_main",
            "pt-pretrain=prompt_tuning.embedded.pretrain:console_main",
            "pt-ablate=prompt_tuning.ablate:console_main",
            "pt-serve=prompt_tuning.serve:console_main",
        ]
    },
)
