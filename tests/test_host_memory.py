"""host_memory: when the malloc settings apply, and that they stop the per-step page faults."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from prompt_tuning import host_memory

LINUX_GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not LINUX_GLIBC, reason="the settings are glibc's (Linux)")


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env.pop(host_memory.ENV_SWITCH, None)
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **extra)
  return env


@needs_glibc
def test_reason_to_skip():
  cpu = {"JAX_PLATFORMS": "cpu"}
  assert host_memory.reason_to_skip(cpu) is None
  assert "system" in host_memory.reason_to_skip({**cpu, host_memory.ENV_SWITCH: "system"})
  said = host_memory.reason_to_skip(
      {**cpu, "MALLOC_ARENA_MAX": "4", "LD_PRELOAD": "libtcmalloc.so"}
  )
  assert "MALLOC_ARENA_MAX" in said and "LD_PRELOAD" in said
  assert "GLIBC_TUNABLES" in host_memory.reason_to_skip(
      {**cpu, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  )
  assert "JAX_PLATFORMS=cuda" in host_memory.reason_to_skip({"JAX_PLATFORMS": "cuda"})
  # "reuse" overrides the environment's own tuning and the platform check.
  assert (
      host_memory.reason_to_skip({host_memory.ENV_SWITCH: "reuse", "MALLOC_ARENA_MAX": "4"}) is None
  )
  with pytest.raises(ValueError, match=f"{host_memory.ENV_SWITCH}='yes'.*auto"):
    host_memory.reason_to_skip({host_memory.ENV_SWITCH: "yes"})


# A program whose temporary buffer (two 32 MB intermediates) is above glibc's largest mmap
# threshold, run for some steps; prints the minor page faults of each step after the first. A
# step's buffer can be freed after the next one's is allocated (XLA frees it on its own thread),
# so the reused heap may take a few steps to hold enough of them.
FAULTS_CHILD = textwrap.dedent("""
    import json, os, resource, sys
    from prompt_tuning import host_memory
    applied = host_memory.configure()
    import jax, jax.numpy as jnp
    import numpy as np

    @jax.jit
    def step(x, w):
      a = jnp.tanh(x @ w)
      b = jnp.tanh(a @ w)
      return (jnp.tanh(b @ w) + a[::-1]).sum(0)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((8192, 1024), np.float32))
    w = jnp.asarray(np.random.default_rng(1).standard_normal((1024, 1024), np.float32) / 32)
    out = step(x, w).block_until_ready()
    faults = []
    for _ in range(20):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      out = step(x, w).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": applied, "faults": faults, "out": np.asarray(out).tolist(),
                      "env": os.environ.get("MALLOC_ARENA_MAX")}))
""")


def run_child(code, **env):
  proc = subprocess.run(
      [sys.executable, "-c", code],
      env=clean_env(**env),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@needs_glibc
def test_steps_stop_page_faulting_their_temporary_buffer():
  system = json.loads(run_child(FAULTS_CHILD, PROMPT_TUNING_HOST_MALLOC="system").stdout)
  reuse = json.loads(run_child(FAULTS_CHILD).stdout)
  assert (system["applied"], reuse["applied"]) == (False, True)
  assert (system["env"], reuse["env"]) == (None, "1")  # Exported to child processes.
  # glibc's defaults: each step maps its >= 64 MB of temporaries again (4 KiB pages: >= 16,384
  # faults). Reused: once the heap holds the buffers, their pages stay mapped (the median step
  # faults at most a tenth as often).
  assert min(system["faults"]) > 16_000, system["faults"]
  assert sorted(reuse["faults"])[len(reuse["faults"]) // 2] < min(system["faults"]) / 10, (
      reuse["faults"],
      system["faults"],
  )
  assert reuse["out"] == system["out"]  # Same program, same numbers.


@needs_glibc
def test_too_late_once_jax_runs():
  code = textwrap.dedent("""
      import jax.numpy as jnp
      from prompt_tuning import host_memory
      jnp.ones(3).block_until_ready()
      print(host_memory.configure())
  """)
  assert run_child(code).stdout.strip() == "False"
  proc = subprocess.run(
      [sys.executable, "-c", code],
      env=clean_env(PROMPT_TUNING_HOST_MALLOC="reuse"),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  assert "PROMPT_TUNING_HOST_MALLOC=reuse: Host malloc not configured: JAX's backend" in proc.stderr


@pytest.mark.parametrize("command", ["train", "eval", "infer", "serve", "ablate"])
def test_every_command_configures_it_first(command):
  """Each command applies the settings before reading its flags (none given here: it fails)."""
  cmd = [sys.executable, "-m", f"prompt_tuning.{command}"]
  proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  expected = "Host malloc: one arena" if LINUX_GLIBC else "Host malloc left as it is"
  assert expected in proc.stderr


def test_a_bad_switch_fails_before_any_work():
  proc = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.train"],
      env=clean_env(PROMPT_TUNING_HOST_MALLOC="on"),
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode != 0
  assert (
      "PROMPT_TUNING_HOST_MALLOC='on': expected one of ('auto', 'reuse', 'system')" in proc.stderr
  )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_returns_heap_holes_to_the_os():
  def resident():
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  # Freed chunks between live ones: glibc trims only the heap's top by itself.
  chunks = [bytearray(b"x" * 65536) for _ in range(3000)]
  del chunks[::2]
  before = resident()
  host_memory.release_freed()
  assert before - resident() > 50e6, (before, resident())
  del chunks
