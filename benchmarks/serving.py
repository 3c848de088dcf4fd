"""Serving many prompts: a mixed-prompt batch against single-prompt batches, and prompt memory.

The same B requests (example i names prompt i mod K; random inputs of 16-64 tokens; a 2-token
label as the target, or 4 greedy tokens with EOS disabled so every way decodes all 4) are
answered three ways, K = 1, 4, 16:
  mixed:      one call of `prompt_library.MixedPromptRunner` (the server's path: host-side
              packing, prompt table, bucketed shapes) on all B requests over K prompts;
  single:     one call of the ordinary prefix-prompt model on B requests that all use one prompt
              (the best case a single-task server has; the throughput the mixed batch is held to);
  sequential: the ordinary model once per prompt, K batches of B / K requests one after another
              (what serving K prompts costs without mixing).
Every request of a round arrives at once; its latency is the time until the call holding it
returns (so in `sequential`, the k-th batch's requests wait for the k - 1 before). Rounds of the
three ways are interleaved, so a shared machine's load hits them alike. Prints one JSON line per
(workload, K, way): requests/s (B / median round time), requests per CPU-second of the process
(all threads; on a machine shared with other jobs the wall-clock rate varies with their load),
latency p50/p99 over all requests of all rounds; then a summary line per workload with the
ratios mixed/single and mixed/sequential at each K (wall and CPU); then a memory line: the
resident memory of a fresh process holding one model with 1 prompt, then with 1,000 prompts
(after one mixed batch each), and the table's bytes. A table goes to stderr. `--deep`: the
prompts are deep prompts (encoder key/value prefixes of --prompt_length positions in every layer,
`deep_prompts.DeepPrompt`) in every way and in the memory line.

`--workloads=http` is the server end to end: `serve.make_server` on a loopback port (in this
process, its own threads) over a library of max(K) prompts; at each K, `--http_requests`
requests (alternately /generate of 4 tokens and /rank_classify with 2 labels; request i names
prompt i mod K; inputs of 33-64 tokens) fired by `--http_clients` client threads, each on its own
keep-alive connection, so many are in flight and the batcher forms mixed batches of up to
`--max_batch` rows. The comparison is the same requests answered directly through the server's
runner in batches of `--max_batch` rows (no HTTP, no batching window; latency: all arriving at
once). Every HTTP answer is checked against the direct one (a different answer exits with an
error). Every batch bucket is compiled first; then per K a checked warm-up round and
`--http_rounds` timed rounds each way, interleaved. One JSON line per K: requests/s (wall, and
per CPU-second of the process: server, client threads and runner) and latency p50/p99 each way,
the ratios HTTP / direct, the rows per batch the server formed (its /metrics) and the
compilations during the timed rounds.

  python benchmarks/serving.py                     # the embedded default (its checkpoint)
  python benchmarks/serving.py --size=small        # random weights, T5 1.1 small's shape
  python benchmarks/serving.py --workloads=http    # HTTP end to end (no memory line)
  python benchmarks/serving.py --deep              # deep prompts (per-layer encoder prefixes)
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", default=None, help="random weights of this T5 1.1 size")
  parser.add_argument("--batch", type=int, default=32, help="requests per round (B)")
  parser.add_argument("--ks", default="1,4,16", help="numbers of prompts (K), each divides B")
  parser.add_argument("--prompt_length", type=int, default=20)
  parser.add_argument(
      "--deep",
      action="store_true",
      help="deep prompts (encoder key/value prefixes of --prompt_length) instead of input prompts",
  )
  parser.add_argument("--max_inputs", type=int, default=64, help="inputs are 16..this tokens")
  parser.add_argument("--decode_length", type=int, default=4)
  parser.add_argument("--workloads", default="score,generate", help="score,generate or http")
  parser.add_argument("--repeats", type=int, default=20, help="timed rounds per way")
  parser.add_argument("--prompts_for_memory", type=int, default=1000)
  parser.add_argument("--http_requests", type=int, default=256, help="requests per HTTP round")
  parser.add_argument("--http_clients", type=int, default=64, help="client threads (in flight)")
  parser.add_argument("--http_rounds", type=int, default=3, help="timed HTTP rounds per way")
  parser.add_argument("--max_batch", type=int, default=32, help="the server's batch rows")
  parser.add_argument("--memory_child", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def load_model(size):
  """(config, frozen params) of the embedded default, or random weights of a T5 1.1 size."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning import model as model_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top

  if size is None:
    from prompt_tuning import embedded  # pylint: disable=g-import-not-at-top

    cfg = embedded.load_config()
    return cfg, checkpoints.load_t5x_checkpoint(embedded.checkpoint_path())
  cfg = t5.config_for_size(size, dtype="float32")
  model = model_lib.EncoderDecoderModel(t5.EncoderDecoder(cfg))
  shapes = jax.eval_shape(
      lambda: nn.unbox(model.get_initial_variables(jax.random.PRNGKey(0)))["params"]
  )
  rng = np.random.default_rng(0)

  def leaf(s):  # Generated on the host leaf by leaf, as a checkpoint is loaded.
    x = rng.standard_normal(s.shape, np.float32)
    return x / np.sqrt(s.shape[0]) if len(s.shape) == 2 else x  # Fan-in: finite activations.

  return cfg, jax.tree.map(leaf, shapes)


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Ways:
  """The three ways of answering a round of requests, each returning per-request finish times."""

  def __init__(self, cfg, params, prompts, args):
    import jax  # pylint: disable=g-import-not-at-top

    from prompt_tuning import decoding  # pylint: disable=g-import-not-at-top
    from prompt_tuning import deep_prompts  # pylint: disable=g-import-not-at-top
    from prompt_tuning import model as model_lib  # pylint: disable=g-import-not-at-top
    from prompt_tuning import partitioning  # pylint: disable=g-import-not-at-top
    from prompt_tuning import prompt_library as lib  # pylint: disable=g-import-not-at-top
    from prompt_tuning import prompts as prompts_lib  # pylint: disable=g-import-not-at-top
    from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top

    self.lib = lib
    self.args = args
    self.library = library_of(lib, cfg, prompts, args.deep)
    # EOS disabled (id -1) in both models: every way decodes all `decode_length` tokens, so
    # early stopping (which depends on what each prompt happens to generate) never differs
    # between the ways being compared.
    self.runner = lib.MixedPromptRunner(cfg, params, self.library, eos_id=-1)
    if args.deep:
      model = t5.EncoderDecoder(
          cfg, deep_prompt_factory=deep_prompts.deep_prompt_factory(args.prompt_length)
      )
      with_prompt = lambda frozen, p: dict(frozen, deep_prompt={"encoder_prefixes": p})
    else:
      factory = prompts_lib.prefix_prompt_factory(
          args.prompt_length, prompts_lib.from_array(next(iter(prompts.values())))
      )
      model = t5.EncoderDecoder(cfg, prompt_factory=factory)
      with_prompt = lambda frozen, p: dict(
          frozen, encoder=dict(frozen["encoder"], prompt={"prompt": {"prompt": p}})
      )
    model = model_lib.EncoderDecoderModel(model, decode_fn=decoding.greedy, eos_id=-1)
    frozen = lib.frozen_params(params)
    # The ordinary model's parameters per prompt: the backbone's arrays are shared, not copied.
    frozen = jax.device_put(frozen)  # As the runner holds it.
    self.params = {name: with_prompt(frozen, p) for name, p in jax.device_put(prompts).items()}
    # Compiled as the runner compiles its calls, so the two differ only in the batch layout.
    self.score = partitioning.jit(model.score_batch)
    self.predict = partitioning.jit(model.predict_batch)

  def _single_batch(self, examples, workload):
    """The ordinary model's batch, its inputs and targets padded to the runner's length buckets
    (so the ways differ in the batch layout, not in padding)."""
    from prompt_tuning.data import batches  # pylint: disable=g-import-not-at-top

    bucket = self.lib.next_power_of_two
    length = bucket(max(len(e.inputs) for e in examples), self.runner.min_input_length)
    inputs = batches.pad_rows([e.inputs for e in examples], length)
    if workload == "score":
      targets = batches.pad_rows(
          [e.targets for e in examples], bucket(max(len(e.targets) for e in examples))
      )
      return {
          "encoder_input_tokens": inputs,
          "decoder_input_tokens": batches.shift_right(targets),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32),
      }
    dec = np.zeros((len(examples), self.args.decode_length), np.int32)
    return {"encoder_input_tokens": inputs, "decoder_input_tokens": dec}

  def _call_single(self, name, examples, workload):
    batch = self._single_batch(examples, workload)
    fn = self.score if workload == "score" else self.predict
    return np.asarray(fn(self.params[name], batch))

  def mixed(self, examples, workload):
    if workload == "score":
      self.runner.score(examples)
    else:
      self.runner.generate(examples, self.args.decode_length)
    return [time.perf_counter()] * len(examples)

  def single(self, examples, workload):
    one = next(iter(self.params))
    self._call_single(one, [self.lib.Example(one, e.inputs, e.targets) for e in examples], workload)
    return [time.perf_counter()] * len(examples)

  def sequential(self, examples, workload):
    done = []
    for name in dict.fromkeys(e.prompt for e in examples):
      group = [e for e in examples if e.prompt == name]
      self._call_single(name, group, workload)
      done += [time.perf_counter()] * len(group)
    return done


def random_prompts(rng, n, length, cfg, deep=False):
  """Input prompts [length, D], or deep prompts' encoder prefixes [layers, 2, length, H, K]."""
  if deep:
    shape = (cfg.num_encoder_layers, 2, length, cfg.num_heads, cfg.head_dim)
    return {f"prompt{i:04d}": rng.normal(size=shape).astype(np.float32) for i in range(n)}
  return {
      f"prompt{i:04d}": rng.uniform(-0.5, 0.5, (length, cfg.emb_dim)).astype(np.float32)
      for i in range(n)
  }


def add_prompt(library, name, p, deep):
  if deep:
    library.add(name, prefixes={"encoder": p})
  else:
    library.add(name, p)


def library_of(lib, cfg, prompts, deep):
  library = lib.PromptLibrary.for_config(cfg)
  for name, p in prompts.items():
    add_prompt(library, name, p, deep)
  return library


def requests(lib, rng, k, args, vocab_size):
  out = []
  for i in range(args.batch):
    n = int(rng.integers(16, args.max_inputs + 1))
    out.append(
        lib.Example(
            f"prompt{i % k:04d}",
            rng.integers(2, vocab_size, n).tolist(),
            [int(rng.integers(2, vocab_size)), 1],
        )
    )
  return out


def measure(ways, examples, workload, repeats):
  names = ("mixed", "single", "sequential")
  for name in names:  # Compile (and warm) every shape first.
    getattr(ways, name)(examples, workload)
  rounds = {n: [] for n in names}
  cpu = {n: [] for n in names}
  latencies = {n: [] for n in names}
  for _ in range(repeats):
    for name in names:
      start, cpu_start = time.perf_counter(), time.process_time()
      done = getattr(ways, name)(examples, workload)
      rounds[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - cpu_start)
      latencies[name] += [t - start for t in done]
  out = {}
  for name in names:
    lat = np.asarray(latencies[name]) * 1e3
    out[name] = {
        "requests_per_s": len(examples) / statistics.median(rounds[name]),
        "requests_per_cpu_s": len(examples) / statistics.median(cpu[name]),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
    }
  return out


class HttpClient:
  """POSTs JSON to the server, one keep-alive connection per client thread."""

  def __init__(self, port):
    self.port = port
    self.local = threading.local()

  def request(self, method, path, body=None):
    """(status, answer, seconds from sending to the whole answer read)."""
    conn = getattr(self.local, "conn", None)
    if conn is None:
      conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
    data = None if body is None else json.dumps(body).encode()
    start = time.perf_counter()
    conn.request(method, path, data, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    return response.status, answer, time.perf_counter() - start


def http_requests(rng, k, args, vocab_size):
  """(path, body) pairs: /generate and /rank_classify alternately, request i on prompt i mod K.

  Inputs of max_inputs / 2 + 1 .. max_inputs tokens: one length bucket, so the shapes to compile
  are the batch buckets only (each compilation of the embedded default takes 4-8 s on 2 cores).
  """
  out = []
  for i in range(args.http_requests):
    n = int(rng.integers(args.max_inputs // 2 + 1, args.max_inputs + 1))
    body = {"prompt": f"prompt{i % k:04d}", "inputs": rng.integers(2, vocab_size, n).tolist()}
    if i % 2:
      body["label_ids"] = [[int(t), 1] for t in rng.choice(np.arange(2, vocab_size), 2, False)]
      out.append(("/rank_classify", body))
    else:
      body["max_decode_length"] = args.decode_length
      out.append(("/generate", body))
  return out


def direct_answers(lib, runner, jobs, max_batch):
  """The same requests through the runner, `max_batch` rows per call: (answers, finish times)."""
  answers, done = [None] * len(jobs), [0.0] * len(jobs)
  generate = [i for i, (path, _) in enumerate(jobs) if path == "/generate"]
  for c in range(0, len(generate), max_batch):
    chunk = generate[c : c + max_batch]
    n = jobs[chunk[0]][1]["max_decode_length"]
    examples = [lib.Example(jobs[i][1]["prompt"], jobs[i][1]["inputs"]) for i in chunk]
    for i, tokens in zip(chunk, runner.generate(examples, n)):
      answers[i], done[i] = tokens, time.perf_counter()
  rows = [
      (i, lib.Example(body["prompt"], body["inputs"], label))
      for i, (path, body) in enumerate(jobs)
      if path == "/rank_classify"
      for label in body["label_ids"]
  ]
  for c in range(0, len(rows), max_batch):
    chunk = rows[c : c + max_batch]
    scores = runner.score([e for _, e in chunk])
    for (i, _), s in zip(chunk, scores):
      answers[i] = (answers[i] or []) + [float(s)]
      done[i] = time.perf_counter()
  return answers, done


def check_http_answer(job, status, answer, want):
  """Exits naming the request when the server's answer is not the direct one."""
  path, body = job
  if status != 200:
    sys.exit(f"HTTP {path} {body['prompt']} answered {status}: {answer}")
  if path == "/generate":
    ok = answer["tokens"] == want
  else:
    ok = np.allclose(answer["scores"], want, rtol=1e-4, atol=1e-4) and answer["index"] == int(
        np.argmax(answer["scores"])
    )
  if not ok:
    sys.exit(f"HTTP {path} on {body['prompt']} answered {answer}; directly: {want}")


def http_workloads(cfg, params, prompts, ks, args, common):
  """Per K, one JSON line: the real server under concurrent requests against the runner directly.

  One server holds all max(K) prompts throughout (so the table, and every compiled shape, is the
  same for each K); at each K the requests name K of them.
  """
  from prompt_tuning import prompt_library as lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning import serve  # pylint: disable=g-import-not-at-top

  library = library_of(lib, cfg, prompts, args.deep)
  runner = lib.MixedPromptRunner(cfg, params, library)
  # Every batch bucket the batcher can form, compiled before any timing (which sizes a round
  # forms depends on timing, and a compilation inside a timed round would dominate it).
  start = time.perf_counter()
  name = next(iter(prompts))
  calls = [
      call
      for b in (2**i for i in range(args.max_batch.bit_length()))
      for call in (
          lambda b=b: runner.score([lib.Example(name, [2] * args.max_inputs, [2, 1])] * b),
          lambda b=b: runner.generate(
              [lib.Example(name, [2] * args.max_inputs)] * b, args.decode_length
          ),
      )
  ]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # XLA compiles in parallel.
    list(pool.map(lambda call: call(), calls))
  compile_s = time.perf_counter() - start
  service = serve.Service(runner, max_batch=args.max_batch)
  server = serve.make_server(service)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  client = HttpClient(server.server_address[1])

  with concurrent.futures.ThreadPoolExecutor(args.http_clients) as pool:
    for k in ks:
      jobs = http_requests(np.random.default_rng(k), k, args, cfg.vocab_size)

      def http_round():
        start, cpu_start = time.perf_counter(), time.process_time()
        results = list(pool.map(lambda job: client.request("POST", *job), jobs))
        return time.perf_counter() - start, time.process_time() - cpu_start, results

      def direct_round():
        start, cpu_start = time.perf_counter(), time.process_time()
        answers, done = direct_answers(lib, runner, jobs, args.max_batch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return seconds, cpu, answers, [t - start for t in done]

      _, _, want, _ = direct_round()  # Warm-up rounds, checked too.
      _, _, results = http_round()
      for job, (status, answer, _), w in zip(jobs, results, want):
        check_http_answer(job, status, answer, w)
      # The server's batch sizes and latencies from here on are this K's timed rounds'.
      service.batcher.batch_sizes.clear()
      service.latencies.clear()
      compiled = dict(runner.compilations)
      times = {"http": [], "direct": []}
      cpu = {"http": [], "direct": []}  # The process's CPU-seconds: server, client and runner.
      latencies = {"http": [], "direct": []}
      for _ in range(args.http_rounds):
        seconds, cpu_seconds, results = http_round()
        for job, (status, answer, _), w in zip(jobs, results, want):
          check_http_answer(job, status, answer, w)
        times["http"].append(seconds)
        cpu["http"].append(cpu_seconds)
        latencies["http"] += [r[2] for r in results]
        seconds, cpu_seconds, _, done = direct_round()
        times["direct"].append(seconds)
        cpu["direct"].append(cpu_seconds)
        latencies["direct"] += done
      sizes = np.asarray(service.batcher.batch_sizes)
      metrics = client.request("GET", "/metrics")[1]
      row = dict(common, workload="http", k=k, prompts_loaded=len(prompts), requests=len(jobs))
      row.update(clients=args.http_clients, max_batch=args.max_batch, rounds=args.http_rounds)
      for way in ("http", "direct"):
        lat = np.asarray(latencies[way]) * 1e3
        row[f"{way}_requests_per_s"] = len(jobs) / statistics.median(times[way])
        row[f"{way}_requests_per_cpu_s"] = len(jobs) / statistics.median(cpu[way])
        row[f"{way}_latency_p50_ms"] = float(np.percentile(lat, 50))
        row[f"{way}_latency_p99_ms"] = float(np.percentile(lat, 99))
      row["http_over_direct"] = row["http_requests_per_s"] / row["direct_requests_per_s"]
      row["http_over_direct_cpu"] = (
          row["http_requests_per_cpu_s"] / row["direct_requests_per_cpu_s"]
      )
      row["server_batches"] = metrics["batches"]
      row["server_batch_rows"] = dict(
          metrics["batch_size"], p10=float(np.percentile(sizes, 10)), p50=float(np.median(sizes))
      )
      row["server_latency_ms"] = metrics["latency_ms"]
      row["answers_checked"] = len(jobs) * (1 + args.http_rounds)
      row["compile_s_before"] = compile_s
      row["compilations_in_timed_rounds"] = {
          n: c - compiled.get(n, 0) for n, c in metrics["compilations"].items()
      }
      row["load_average_end"] = os.getloadavg()[0]
      print(json.dumps(row), flush=True)
  server.shutdown()
  server.server_close()


def memory_child(args):
  """Resident memory of one model with 1 prompt, then with `prompts_for_memory` prompts."""
  import jax  # pylint: disable=g-import-not-at-top

  from prompt_tuning import prompt_library as lib  # pylint: disable=g-import-not-at-top

  cfg, params = load_model(args.size)
  rng = np.random.default_rng(1)
  table = random_prompts(rng, args.prompts_for_memory, args.prompt_length, cfg, args.deep)
  first = next(iter(table))
  first_bytes = table[first].nbytes
  library = library_of(lib, cfg, {first: table[first]}, args.deep)
  runner = lib.MixedPromptRunner(cfg, params, library)
  examples = requests(lib, rng, 1, args, cfg.vocab_size)
  runner.score(examples)
  one = rss_bytes()
  for name, p in table.items():
    add_prompt(library, name, p, args.deep)
  del table  # The library holds its own copy; the table is rebuilt from it.
  runner.score(examples)
  many = rss_bytes()
  snapshot = library.snapshot()
  tables = [snapshot.table] + [kv for kv, _ in snapshot.prefixes.values()]
  return {
      "memory": True,
      "rss_one_prompt_bytes": one,
      f"rss_{args.prompts_for_memory}_prompts_bytes": many,
      "rss_increase_bytes": many - one,
      "table_bytes": int(sum(t.nbytes for t in tables)),
      "prompt_bytes": int(first_bytes),
      "model_bytes": int(sum(x.nbytes for x in jax.tree.leaves(runner.params))),
  }


def main():
  args = parse_args()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if args.memory_child:
    print(json.dumps(memory_child(args)), flush=True)
    return
  from prompt_tuning import host_memory  # pylint: disable=g-import-not-at-top

  host_memory.configure()  # As `prompt_tuning.serve` does.
  import jax  # pylint: disable=g-import-not-at-top

  from prompt_tuning import prompt_library as lib  # pylint: disable=g-import-not-at-top

  ks = [int(k) for k in args.ks.split(",")]
  for k in ks:
    if args.batch % k and args.workloads != "http":
      sys.exit(f"--batch={args.batch} is not divisible by K={k} (--ks={args.ks}).")
  cfg, params = load_model(args.size)
  rng = np.random.default_rng(0)
  if args.workloads == "http":
    prompts = random_prompts(rng, max(ks), args.prompt_length, cfg, args.deep)
    common = {
        "model": args.size or "embedded",
        "prompt_length": args.prompt_length,
        "backend": jax.default_backend(),
        "load_average": os.getloadavg()[0],
    }
    http_workloads(cfg, params, prompts, ks, args, common)
    return
  if "http" in args.workloads.split(","):
    sys.exit("--workloads=http runs alone (it has its own rounds and no memory line).")
  ways = Ways(cfg, params, random_prompts(rng, max(ks), args.prompt_length, cfg, args.deep), args)
  common = {
      "model": args.size or "embedded",
      "batch": args.batch,
      "prompt_length": args.prompt_length,
      "prompts": "deep" if args.deep else "input",
      "backend": jax.default_backend(),
      "load_average": os.getloadavg()[0],
  }
  rows, summaries = [], []
  for workload in args.workloads.split(","):
    summary = {"summary": workload}
    for k in ks:
      examples = requests(lib, rng, k, args, cfg.vocab_size)
      result = measure(ways, examples, workload, args.repeats)
      for way, r in result.items():
        row = dict(common, workload=workload, k=k, way=way, **r)
        rows.append(row)
        print(json.dumps(row), flush=True)
      for unit in ("requests_per_s", "requests_per_cpu_s"):
        suffix = "" if unit == "requests_per_s" else "_cpu"
        mixed = result["mixed"][unit]
        summary[f"mixed_over_single_k{k}{suffix}"] = mixed / result["single"][unit]
        summary[f"mixed_over_sequential_k{k}{suffix}"] = mixed / result["sequential"][unit]
    summary["compilations"] = dict(ways.runner.compilations)
    summary["load_average_end"] = os.getloadavg()[0]
    summaries.append(summary)
    print(json.dumps(summary), flush=True)
  argv = [a for a in sys.argv[1:] if a != "--memory_child"]
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), *argv, "--memory_child"],
      stdout=subprocess.PIPE,
      text=True,
      check=True,
  )
  memory = json.loads(proc.stdout.strip().splitlines()[-1])
  print(json.dumps(memory), flush=True)

  print(
      f"{'workload':9s} {'K':>3s} {'way':11s} {'req/s':>9s} {'req/cpu-s':>9s} {'p50 ms':>8s}"
      f" {'p99 ms':>8s}",
      file=sys.stderr,
  )
  for r in rows:
    print(
        f"{r['workload']:9s} {r['k']:3d} {r['way']:11s} {r['requests_per_s']:9.1f}"
        f" {r['requests_per_cpu_s']:9.1f} {r['latency_p50_ms']:8.1f} {r['latency_p99_ms']:8.1f}",
        file=sys.stderr,
    )
  for s in summaries:
    print(json.dumps(s), file=sys.stderr)
  print(json.dumps(memory), file=sys.stderr)


if __name__ == "__main__":
  main()
