"""The project as installed: gin files by both documented names, assets in the wheel, commands,
and a quiet TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import venv
import zipfile

import gin
import pytest

from prompt_tuning import config

REPO = pathlib.Path(__file__).resolve().parents[1]

# Parses gin files by each documented name and prints what they set, plus where the package is.
_PARSE_SCRIPT = textwrap.dedent("""\
    import json, pathlib, sys
    import gin
    import prompt_tuning
    from prompt_tuning import config

    def parse(files):
      gin.clear_config()
      config.parse_gin(files, [])
      return gin.query_parameter("%LEARNING_RATE" if "runs/" in files[-1] else "%MODEL_SIZE")

    user = pathlib.Path(sys.argv[1])
    user.write_text("include 'prompt_tuning/configs/models/t5_1_1_prompt.gin'\\n"
                    "include 'prompt_tuning/configs/models/sizes/small.gin'\\n")
    print(json.dumps({
        "package": prompt_tuning.__file__,
        "configs_dir": str(config.CONFIGS_DIR),
        "run": parse(["runs/prompt_finetune.gin"]),
        "run_by_package": parse(["prompt_tuning/configs/runs/prompt_finetune.gin"]),
        "size_by_package": parse(["prompt_tuning/configs/models/t5_1_1_prompt.gin",
                                  "models/sizes/small.gin"]),
        "size_included_by_package": parse([str(user)]),
    }))
""")
_EXPECTED = {
    "run": 0.3,
    "run_by_package": 0.3,
    "size_by_package": "small",
    "size_included_by_package": "small",
}


def _run(command, **kwargs) -> subprocess.CompletedProcess:
  """Runs `command`; fails the test with its stderr unless it exits 0."""
  done = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
  assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
  return done


def _env_without(*names):
  return {k: v for k, v in os.environ.items() if k not in names}


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def test_gin_files_by_package_name_in_this_install():
  """The form `prompt_tuning/configs/...` (config.py's docstring) works here too, whether this
  is an editable install or a source checkout, where configs/ sits beside prompt_tuning/."""
  config.parse_gin(
      [
          "prompt_tuning/configs/models/t5_1_1_prompt.gin",
          "prompt_tuning/configs/models/sizes/small.gin",
      ],
      [],
  )
  assert gin.query_parameter("%MODEL_SIZE") == "small"
  gin.clear_config()
  config.parse_gin(["prompt_tuning/configs/runs/prompt_finetune.gin"], [])
  assert gin.query_parameter("%LEARNING_RATE") == 0.3


def test_unknown_gin_file_by_package_name_names_the_search_paths():
  with pytest.raises(config.ConfigError, match=r"'prompt_tuning/configs/runs/nope\.gin' not found"):
    config.parse_gin(["prompt_tuning/configs/runs/nope.gin"], [])


def test_tensorflow_is_quiet_and_sees_no_gpu(tmp_path):
  """Importing the tasks (TF via SeqIO) prints no CUDA probing unless the user asks for TF logs."""
  script = (
      "import prompt_tuning.tasks, tensorflow as tf, json\n"
      "print(json.dumps([d.device_type for d in tf.config.get_visible_devices()]))\n"
  )
  run = lambda env: subprocess.run(
      [sys.executable, "-c", script],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  quiet = run(_env_without("TF_CPP_MIN_LOG_LEVEL"))
  assert quiet.returncode == 0, quiet.stderr[-3000:]
  assert json.loads(quiet.stdout.splitlines()[-1]) == ["CPU"]
  for noise in ("cuInit", "cuda drivers", "oneDNN", "absl::InitializeLog"):
    assert noise not in quiet.stderr, quiet.stderr[-3000:]
  # The user's own setting wins: TF's load-time notices are back (the oneDNN one prints on any
  # x86 or ARM CPU build).
  loud = run({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
  assert loud.returncode == 0, loud.stderr[-3000:]
  assert "absl::InitializeLog" in loud.stderr, loud.stderr[-3000:]


def _dependency_paths(cwd) -> list[str]:
  """This interpreter's import path, less anything that provides `prompt_tuning` (the checkout
  or an editable install), so that a scratch venv finds the dependencies but not the project."""
  out = _run(
      [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
      cwd=cwd,
      env=_env_without("PYTHONPATH"),
  ).stdout
  return [
      p
      for p in json.loads(out)
      if p and os.path.isdir(p) and not os.path.exists(os.path.join(p, "prompt_tuning"))
  ]


@pytest.mark.slow
def test_wheel_installs_configs_assets_and_commands(tmp_path):
  """`pip install .` (not editable): gin files by both names, subfolders included, the embedded
  checkpoints' dotfiles shipped, and the console scripts run."""
  dist = tmp_path / "dist"
  _run(
      [
          sys.executable,
          "-m",
          "pip",
          "wheel",
          "--no-deps",
          "--no-build-isolation",
          "-q",
          "-w",
          str(dist),
          str(REPO),
      ],
      cwd=tmp_path,
  )
  (wheel,) = dist.glob("prompt_tuning-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  assets = {
      p.relative_to(REPO).as_posix()
      for d in (REPO / "prompt_tuning").rglob("assets")
      for p in d.rglob("*")
      if p.is_file() and "__pycache__" not in p.parts
  }
  assert assets and any(a.endswith("/.zarray") for a in assets)
  assert assets <= names, sorted(assets - names)[:5]
  gin_files = {
      "prompt_tuning/configs/" + p.relative_to(REPO / "configs").as_posix()
      for p in (REPO / "configs").rglob("*.gin")
  }
  assert gin_files <= names, sorted(gin_files - names)[:5]

  env_dir = tmp_path / "venv"
  venv.create(env_dir, with_pip=False)
  python = env_dir / "bin" / "python"
  site = _run(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
  ).stdout.strip()
  pathlib.Path(site, "dependencies.pth").write_text("\n".join(_dependency_paths(tmp_path)) + "\n")
  # -I: the dependencies' folders may hold this project's own (editable) install.
  _run(
      [
          sys.executable,
          "-m",
          "pip",
          "--python",
          str(python),
          "install",
          "-q",
          "--no-deps",
          "-I",
          "--no-index",
          str(wheel),
      ],
      cwd=tmp_path,
  )

  work = tmp_path / "work"  # Not the checkout: nothing resolves relative to it.
  work.mkdir()
  env = _env_without("PYTHONPATH")
  parsed = _run([str(python), "-c", _PARSE_SCRIPT, str(work / "user.gin")], cwd=work, env=env)
  result = json.loads(parsed.stdout.splitlines()[-1])
  assert pathlib.Path(result.pop("package")).is_relative_to(env_dir), result
  assert pathlib.Path(result.pop("configs_dir")) == pathlib.Path(site, "prompt_tuning", "configs")
  assert result == _EXPECTED

  for command, flag in [
      ("pt-train", "--gin_file"),
      ("pt-eval", "--gin_file"),
      ("pt-infer", "--gin_file"),
      ("pt-transfer", "--suite"),
      ("pt-pretrain", "--gin_file"),
      ("pt-ablate", "--grid"),
      ("pt-serve", "--gin_file"),
  ]:
    helped = _run([str(env_dir / "bin" / command), "--help"], cwd=work, env=env)
    assert flag in helped.stdout, (command, helped.stdout)
  missing = subprocess.run(
      [str(env_dir / "bin" / "pt-train")],
      cwd=work,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert missing.returncode != 0 and "Give at least one --gin_file" in missing.stderr
