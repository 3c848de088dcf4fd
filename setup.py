"""prompt-tuning: soft prompts for a frozen T5 1.1, in JAX/Flax."""
import setuptools

setuptools.setup(
    name="prompt-tuning",
    version="0.1.0",
    description="Parameter-efficient prompt tuning (Lester et al., 2021) in JAX/Flax, T5X style.",
    python_requires=">=3.10",
    # `configs/` and `tasks/` live at the top of the repository (T5X habit) but install inside
    # the `prompt_tuning` namespace, so they never collide with other distributions' top-level names.
    packages=["prompt_tuning", "prompt_tuning.models", "prompt_tuning.data", "prompt_tuning.tasks",
              "prompt_tuning.configs"],
    package_dir={"prompt_tuning": "prompt_tuning", "prompt_tuning.tasks": "tasks",
                 "prompt_tuning.configs": "configs"},
    # The embedded default's T5X checkpoints keep zarr metadata in dotfiles (`.zarray`), which
    # `*` does not match.
    package_data={"prompt_tuning.configs": ["**/*.gin"],
                  "prompt_tuning": ["assets/**/*", "assets/**/.zarray"]},
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "numpy>=1.26",
        "seqio>=0.0.19",
        "gin-config>=0.5",
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets>=4.9.4",
        "tensorstore>=0.1.60",
        "orbax-checkpoint>=0.6",
        "sentencepiece>=0.2",
        "msgpack>=1.0",
        "scikit-learn>=1.3",
        "scipy>=1.11",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
    ],
    extras_require={
        # The ablation sweep's figure (python -m prompt_tuning.ablate).
        "plots": ["matplotlib>=3.7"],
        "test": ["pytest>=8", "pytest-xdist>=3.5", "matplotlib>=3.7"],
        "gpu": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
    entry_points={"console_scripts": [
        "pt-train=prompt_tuning.train:console_main",
        "pt-eval=prompt_tuning.eval:console_main",
        "pt-infer=prompt_tuning.infer:console_main",
        "pt-ablate=prompt_tuning.ablate:console_main",
    ]},
)
