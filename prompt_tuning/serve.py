"""Serves one frozen model with many prompts over HTTP/JSON, batching requests across prompts.

  python -m prompt_tuning.serve --prompt_dir=PROMPTS/ [--port=8080] [--gin.MAX_BATCH=32 ...]
  python -m prompt_tuning.serve --prompt_dir=PROMPTS/ --jsonl_in=requests.jsonl \
    --jsonl_out=answers.jsonl

Configured with gin like the other commands (`--gin_file`, default runs/serve.gin, and
`--gin.NAME=VALUE`); `--prompt_dir`, `--port`, `--jsonl_in` and `--jsonl_out` are shorthands for
its macros PROMPT_DIR, PORT, JSONL_IN and JSONL_OUT. Without SERVE_CHECKPOINT it serves the
embedded default (its checkpoint, size and vocabulary). With JSONL_IN it answers the requests of
that file (one JSON object per line: an endpoint's body plus "endpoint") into JSONL_OUT, one
answer per line in order, and exits.
Built on the standard library's `ThreadingHTTPServer` (no server library is a dependency of the
project). Endpoints:

  POST /generate       {"prompt", "inputs": [ids] | "text", "max_decode_length"}
  POST /rank_classify  {"prompt", "inputs" | "text", "labels": [str] | "label_ids": [[ids]]}
  POST /ensemble       {"prompts": [...], "inputs" | "text", and "labels"/"label_ids" (summed
                       log-likelihood) or "max_decode_length" (majority vote)}
  POST /neighbours     {"prompt", "top_k", "labels"}
  GET  /prompts        names, lengths and placements, and the deep prompts' prefix lengths;
  POST /prompts        {"path", "name", "placement"} or {"directory"}: a prompt's placement
                       (prefix, after_first, suffix) is its sidecar `<name>.json`'s (written by
                       the training export), else "placement", else prefix; a "path" that is a
                       directory of `deep_prompt.<stack>_prefixes.npy` is a deep prompt
  GET  /health, GET /metrics (requests, errors, batch sizes, latency percentiles, compilations)

Concurrent requests are queued; a batcher thread takes whatever arrived within `window_s` (up to
`max_batch` rows), checks each row (a bad one gets its own error, naming the problem) and runs
the good rows of each kind in one mixed-prompt call.
"""

import collections
import concurrent.futures
import http.server
import itertools
import json
import logging
import queue
import sys
import threading
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from prompt_tuning import config
from prompt_tuning import neighbours
from prompt_tuning import prompt_library as lib
from prompt_tuning import rank_classification as rank


class RequestError(ValueError):
  """A request the server answers with HTTP 400 and this message."""


class Batcher:
  """Collects rows from concurrent requests and runs them as mixed-prompt batches."""

  def __init__(self, runner: lib.MixedPromptRunner, max_batch: int = 64, window_s: float = 0.005):
    self.runner = runner
    self.max_batch = max_batch
    self.window_s = window_s
    self.batch_sizes = collections.deque(maxlen=10000)
    self._queue = queue.Queue()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()

  def submit(self, kind: tuple, example: lib.Example) -> concurrent.futures.Future:
    """`kind` is ("score",) or ("generate", max_decode_length)."""
    future = concurrent.futures.Future()
    self._queue.put((kind, example, future))
    return future

  def _loop(self):
    while True:
      jobs = [self._queue.get()]
      deadline = time.monotonic() + self.window_s
      while len(jobs) < self.max_batch:
        try:
          jobs.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
          break
      groups = collections.defaultdict(list)
      for kind, example, future in jobs:
        try:
          self.runner.check(example, need_targets=kind[0] == "score")
        except lib.PromptLibraryError as e:
          future.set_exception(RequestError(str(e)))
          continue
        groups[kind].append((example, future))
      for kind, group in groups.items():
        self._run(kind, group)

  def _run(self, kind, group):
    examples = [e for e, _ in group]
    self.batch_sizes.append(len(examples))
    try:
      if kind[0] == "score":
        outputs = list(self.runner.score(examples))
      else:
        outputs = self.runner.generate(examples, kind[1])
    except Exception as e:  # pylint: disable=broad-except
      # Not swallowed: each request of the batch re-raises it in its handler, which logs it and
      # answers 500; the batcher thread itself must survive for the other prompts' requests.
      for _, future in group:
        future.set_exception(e)
      return
    for (_, future), out in zip(group, outputs):
      future.set_result(out)


class Service:
  """The endpoints as plain methods over parsed JSON (the HTTP layer only routes)."""

  def __init__(
      self,
      runner: lib.MixedPromptRunner,
      vocab=None,
      max_batch: int = 64,
      window_s: float = 0.005,
      timeout_s: float = 120.0,
  ):
    self.runner = runner
    self.vocab = vocab
    self.timeout_s = timeout_s
    self.batcher = Batcher(runner, max_batch, window_s)
    self.requests = collections.Counter()
    self.errors = collections.Counter()
    self.latencies = collections.deque(maxlen=10000)
    self._lock = threading.Lock()

  # Parsing.

  def _inputs(self, body) -> list[int]:
    if "inputs" in body:
      ids = body["inputs"]
      if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise RequestError("'inputs' must be a list of integer token ids.")
      return ids
    if "text" in body:
      if self.vocab is None:
        raise RequestError("This server has no vocabulary: send 'inputs' (token ids).")
      if not isinstance(body["text"], str):
        raise RequestError("'text' must be a string.")
      return list(self.vocab.encode(body["text"])) + [self.runner.eos_id]
    raise RequestError("Give the input as 'inputs' (token ids) or 'text'.")

  def _labels(self, body) -> tuple[list[list[int]], list[str]]:
    if "label_ids" in body:
      ids = body["label_ids"]
      if not isinstance(ids, list) or not all(
          isinstance(t, list) and all(isinstance(i, int) for i in t) for t in ids
      ):
        raise RequestError("'label_ids' must be a list of lists of token ids.")
      if not ids or not all(ids):
        raise RequestError("'label_ids' is empty or holds an empty label.")
      return ids, [str(t) for t in ids]
    labels = body.get("labels")
    if not isinstance(labels, list) or not all(isinstance(l, str) for l in labels):
      raise RequestError("'labels' must be a list of label strings (or give 'label_ids').")
    if self.vocab is None:
      raise RequestError("This server has no vocabulary: send 'label_ids'.")
    try:
      return rank.label_targets(self.vocab, labels, self.runner.eos_id), labels
    except rank.RankClassificationError as e:
      raise RequestError(str(e)) from None

  def _max_decode_length(self, body) -> int:
    n = body.get("max_decode_length", 32)
    if not isinstance(n, int) or not 1 <= n <= self.runner.max_target_length:
      raise RequestError(
          f"'max_decode_length' must be an integer in [1, {self.runner.max_target_length}]."
      )
    return n

  def _prompt(self, value) -> str:
    if not isinstance(value, str):
      raise RequestError(f"A prompt name must be a string; got {value!r}.")
    return value

  def _wait(self, futures):
    return [f.result(timeout=self.timeout_s) for f in futures]

  def _decoded(self, tokens):
    if self.vocab is None:
      return None
    return self.vocab.decode([t for t in tokens if t != self.runner.eos_id])

  # Endpoints.

  def generate(self, body):
    example = lib.Example(self._prompt(body.get("prompt")), self._inputs(body))
    (tokens,) = self._wait(
        [self.batcher.submit(("generate", self._max_decode_length(body)), example)]
    )
    return {"tokens": tokens, "text": self._decoded(tokens)}

  def _rank(self, prompt, inputs, label_ids):
    futures = [self.batcher.submit(("score",), lib.Example(prompt, inputs, t)) for t in label_ids]
    return np.asarray(self._wait(futures))

  def rank_classify(self, body):
    prompt, inputs = self._prompt(body.get("prompt")), self._inputs(body)
    label_ids, names = self._labels(body)
    scores = self._rank(prompt, inputs, label_ids)
    best = int(scores.argmax())
    return {"label": names[best], "index": best, "scores": scores.tolist()}

  def ensemble(self, body):
    names = body.get("prompts")
    if not isinstance(names, list) or not names:
      raise RequestError("'prompts' must be a non-empty list of prompt names.")
    names = [self._prompt(n) for n in names]
    inputs = self._inputs(body)
    if "labels" in body or "label_ids" in body:
      label_ids, label_names = self._labels(body)
      member = np.stack([self._rank(n, inputs, label_ids) for n in names])
      best = int(member.sum(0).argmax())
      return {
          "label": label_names[best],
          "index": best,
          "members": {n: label_names[int(s.argmax())] for n, s in zip(names, member)},
          "summed_scores": member.sum(0).tolist(),
      }
    n = self._max_decode_length(body)
    futures = [self.batcher.submit(("generate", n), lib.Example(p, inputs)) for p in names]
    members = self._wait(futures)
    vote = rank.majority_vote(members)
    return {
        "tokens": vote,
        "text": self._decoded(vote),
        "members": {p: m for p, m in zip(names, members)},
    }

  def neighbours(self, body):
    name = self._prompt(body.get("prompt"))
    snapshot = self.runner.library.snapshot()
    if name not in snapshot.rows:
      raise RequestError(f"Unknown prompt {name!r}; loaded prompts: {sorted(snapshot.rows)}.")
    row = snapshot.rows[name]
    if not snapshot.lengths[row]:
      raise RequestError(
          f"Prompt {name!r} is a deep prompt (key/value prefixes, no input positions): nearest "
          "vocabulary neighbours are defined for input prompts only."
      )
    prompt = snapshot.table[row, : snapshot.lengths[row]]
    embeddings = np.asarray(self.runner.params["token_embedder"]["embedding"])
    decode = self.vocab.decode if self.vocab is not None else lambda ids: str(ids[0])
    top_k = body.get("top_k", 5)
    labels = body.get("labels", [])
    try:
      return neighbours.report(prompt, embeddings, decode, labels, int(top_k))
    except (neighbours.NeighboursError, TypeError, ValueError) as e:
      raise RequestError(str(e)) from None

  def prompts(self, body=None):
    library = self.runner.library
    if body is None:
      return {
          "prompts": library.lengths(),
          "placements": library.placements(),
          "deep": library.prefix_lengths(),
      }
    try:
      if "directory" in body:
        loaded, errors = library.load_directory(body["directory"])
        return {"loaded": loaded, "errors": errors}
      if "path" in body:
        name = library.load_file(body["path"], body.get("name"), body.get("placement"))
        return {"loaded": [name], "errors": {}}
    except lib.PromptLibraryError as e:
      raise RequestError(str(e)) from None
    raise RequestError(
        "POST /prompts takes {'path': FILE or deep-prompt DIRECTORY, 'name': optional, "
        "'placement': optional} or {'directory'}."
    )

  def metrics(self):
    with self._lock:
      lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
      sizes = np.asarray(self.batcher.batch_sizes) if self.batcher.batch_sizes else np.zeros(1)
      return {
          "requests": dict(self.requests),
          "errors": dict(self.errors),
          "latency_ms": {
              f"p{q}": round(float(np.percentile(lat, q)) * 1000, 3) for q in (50, 90, 99)
          },
          "batches": len(self.batcher.batch_sizes),
          "batch_size": {"mean": float(sizes.mean()), "max": int(sizes.max())},
          "compilations": dict(self.runner.compilations),
          "prompts": len(self.runner.library),
      }

  def handle(self, method: str, path: str, raw: Optional[bytes]) -> tuple[int, Any]:
    """(HTTP status, JSON answer) for one request; errors are answers, never exceptions."""
    start = time.monotonic()
    routes = {
        ("POST", "/generate"): self.generate,
        ("POST", "/rank_classify"): self.rank_classify,
        ("POST", "/ensemble"): self.ensemble,
        ("POST", "/neighbours"): self.neighbours,
        ("POST", "/prompts"): self.prompts,
        ("GET", "/prompts"): lambda: self.prompts(),
        ("GET", "/health"): lambda: {"status": "ok", "prompts": len(self.runner.library)},
        ("GET", "/metrics"): self.metrics,
    }
    route = routes.get((method, path))
    status = 200
    try:
      if route is None:
        status, answer = 404, {"error": f"No endpoint {method} {path}."}
      elif method == "GET":
        answer = route()
      else:
        try:
          body = json.loads(raw or b"")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise RequestError(f"Malformed JSON: {e}") from None
        if not isinstance(body, dict):
          raise RequestError("The request body must be a JSON object.")
        answer = route(body)
    except RequestError as e:
      status, answer = 400, {"error": str(e)}
    except Exception as e:  # pylint: disable=broad-except
      # A bug or a failed computation fails this request only, loudly: logged with its traceback
      # for the operator and named in the answer; the server goes on serving the others.
      logging.exception("%s %s failed", method, path)
      status, answer = 500, {"error": f"{method} {path} failed: {type(e).__name__}: {e}"}
    with self._lock:
      self.requests[path] += 1
      if status != 200:
        self.errors[path] += 1
      self.latencies.append(time.monotonic() - start)
    return status, answer


def make_server(service: Service, host: str = "127.0.0.1", port: int = 0):
  """A `ThreadingHTTPServer` for `service` (port 0: any free port, see `server_address`)."""

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, method):
      raw = None
      if method == "POST":
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
      status, answer = service.handle(method, self.path, raw)
      data = json.dumps(answer).encode()
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def do_GET(self):  # pylint: disable=invalid-name
      self._answer("GET")

    def do_POST(self):  # pylint: disable=invalid-name
      self._answer("POST")

    def log_message(self, *args):  # Metrics count requests; no line per request.
      del args

  class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # The default listen backlog (5) resets bursts of connections.

  return Server((host, port), Handler)


def answer_jsonl(service: Service, lines: Iterable[str], workers: int = 64) -> Iterator[dict]:
  """One answer per input line, in order: {"line", "status", "answer"} (the HTTP status and body).

  A line is an endpoint's request body plus "endpoint" ("/generate", "rank_classify", ...) and
  optionally "method" (default POST). Lines are sent concurrently, `workers` at a time per chunk,
  so the batcher mixes them as it mixes HTTP requests; a bad line gets its own error answer.
  """

  def one(numbered):
    number, line = numbered
    try:
      body = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      return number, 400, {"error": f"Line {number}: malformed JSON: {e}"}
    if not isinstance(body, dict) or not isinstance(body.get("endpoint"), str):
      return number, 400, {"error": f"Line {number}: give a JSON object with an 'endpoint'."}
    path = body.pop("endpoint")
    path = path if path.startswith("/") else "/" + path
    method = body.pop("method", "POST")
    raw = json.dumps(body).encode() if method == "POST" else None
    return number, *service.handle(method, path, raw)

  numbered = enumerate(lines, start=1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    while chunk := list(itertools.islice(numbered, 16 * workers)):  # Bounded memory per chunk.
      for number, status, answer in pool.map(one, chunk):
        yield {"line": number, "status": status, "answer": answer}


def load_model(checkpoint: Optional[str], size: Optional[str], vocab: Optional[str]):
  """(config, params, vocabulary or None): the embedded default unless `checkpoint` is given."""
  import seqio  # pylint: disable=g-import-not-at-top  (slow imports, only for the command)
  from prompt_tuning import checkpoints  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import t5  # pylint: disable=g-import-not-at-top

  if checkpoint is None:
    if size is not None:
      raise config.ConfigError(
          f"SERVE_SIZE={size!r} is set without SERVE_CHECKPOINT: the embedded default has its "
          "own size. Set SERVE_CHECKPOINT too, or remove SERVE_SIZE."
      )
    from prompt_tuning import embedded  # pylint: disable=g-import-not-at-top

    cfg, checkpoint = embedded.load_config(), embedded.checkpoint_path()
    vocab = vocab or embedded.vocab_path()
  else:
    if size is None:
      raise config.ConfigError("SERVE_SIZE is required with SERVE_CHECKPOINT (e.g. 'base').")
    cfg = t5.config_for_size(size, dtype="float32")
  params = checkpoints.load_t5x_checkpoint(checkpoint)
  return cfg, params, seqio.SentencePieceVocabulary(vocab) if vocab else None


def run(
    prompt_dir: str,
    checkpoint: Optional[str] = None,
    size: Optional[str] = None,
    vocab: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_batch: int = 64,
    batch_window_s: float = 0.005,
    max_input_length: int = 512,
    max_target_length: int = 128,
    prompt_length_multiple: int = 1,
    jsonl_in: Optional[str] = None,
    jsonl_out: Optional[str] = None,
) -> None:
  """Serves the prompts of `prompt_dir` over HTTP, or answers `jsonl_in` into `jsonl_out`.

  Configured by runs/serve.gin (its macros name each setting).
  """
  if (jsonl_in is None) != (jsonl_out is None):
    raise config.ConfigError("Batch mode needs both JSONL_IN and JSONL_OUT (--jsonl_in/out).")
  cfg, params, vocabulary = load_model(checkpoint, size, vocab)
  library = lib.PromptLibrary.for_config(cfg, prompt_length_multiple=prompt_length_multiple)
  loaded, errors = library.load_directory(prompt_dir)
  for path, error in errors.items():
    logging.warning("Skipped %s: %s", path, error)
  runner = lib.MixedPromptRunner(
      cfg,
      params,
      library,
      max_input_length=max_input_length,
      max_target_length=max_target_length,
  )
  service = Service(runner, vocabulary, max_batch, batch_window_s)
  if jsonl_in is not None:
    with open(jsonl_in) as src, open(jsonl_out, "w") as dst:
      counts = collections.Counter()
      for answer in answer_jsonl(service, src, workers=max_batch):
        dst.write(json.dumps(answer) + "\n")
        counts[answer["status"]] += 1
    logging.info("Wrote %s: %d answers, statuses %s.", jsonl_out, counts.total(), dict(counts))
    return
  server = make_server(service, host, port)
  logging.info("Serving %d prompts on http://%s:%d", len(loaded), host, server.server_address[1])
  server.serve_forever()


# Shorthand flags for the settings most often given, as gin bindings of runs/serve.gin's macros.
_SHORTHANDS = {
    "--prompt_dir": ("PROMPT_DIR", str),
    "--port": ("PORT", int),
    "--jsonl_in": ("JSONL_IN", str),
    "--jsonl_out": ("JSONL_OUT", str),
}


def gin_argv(argv: Sequence[str]) -> list[str]:
  """`argv` with the shorthand flags as `--gin.MACRO=VALUE`, and runs/serve.gin when no
  `--gin_file` is given."""
  out, rest = [], list(argv)
  while rest:
    arg = rest.pop(0)
    flag, has_value, value = arg.partition("=")
    if flag not in _SHORTHANDS:
      out.append(arg)
      continue
    if not has_value:  # `--port 8089`
      if not rest:
        raise config.ConfigError(f"{flag} needs a value.")
      value = rest.pop(0)
    name, kind = _SHORTHANDS[flag]
    try:
      out.append(f"--gin.{name}={kind(value)!r}")
    except ValueError:
      raise config.ConfigError(f"{flag}={value!r}: expected {kind.__name__}.") from None
  if not any(a.startswith("--gin_file") for a in out):
    out.insert(0, "--gin_file=runs/serve.gin")
  return out


_main = config.entry_point("prompt_tuning.serve", ("PROMPT_DIR",), __doc__)


def main(argv: Optional[Sequence[str]] = None) -> None:
  _main(gin_argv(sys.argv[1:] if argv is None else argv))


def console_main() -> None:
  """The `pt-serve` command."""
  main()


if __name__ == "__main__":
  main()
