"""The real HTTP server on a loopback port under concurrent mixed good and bad requests."""

import concurrent.futures
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from prompt_tuning import prompt_library as lib
from prompt_tuning import serve
from test_prompt_library import (  # pylint: disable=unused-import
    CFG,
    VOCAB,
    Reference,
    frozen,
    random_prefixes,
    random_prompts,
    save_export,
)


def post(url, body, raw=None):
  data = raw if raw is not None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, method="POST")
  try:
    with urllib.request.urlopen(request, timeout=300) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def get(url):
  with urllib.request.urlopen(url, timeout=60) as r:
    return json.loads(r.read())


@pytest.fixture
def server(frozen, tmp_path):
  table = random_prompts(7, [2, 6, 3])
  for name, p in table.items():
    np.save(tmp_path / f"{name}.npy", p)
  library = lib.PromptLibrary.for_config(CFG)
  assert library.load_directory(str(tmp_path))[1] == {}
  runner = lib.MixedPromptRunner(CFG, frozen, library, max_input_length=16)
  httpd = serve.make_server(serve.Service(runner, max_batch=32))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", runner, tmp_path
  httpd.shutdown()


def test_concurrent_mixed_requests(server):
  url, runner, tmp_path = server
  rng = np.random.default_rng(0)
  inputs = [rng.integers(2, VOCAB, n).tolist() for n in (3, 8, 5, 11)]
  labels = [[5, 1], [7, 8, 1], [9, 1]]
  good = []
  for p in ("p0", "p1", "p2"):
    for x in inputs:
      good.append(("/generate", {"prompt": p, "inputs": x, "max_decode_length": 5}))
      good.append(("/rank_classify", {"prompt": p, "inputs": x, "label_ids": labels}))
  bad = [
      ("/generate", {"prompt": "nope", "inputs": [3]}, "Unknown prompt 'nope'"),
      ("/generate", {"prompt": "p0", "inputs": list(range(2, 30))}, "max_input_length=16"),
      ("/rank_classify", {"prompt": "p1", "inputs": [3], "label_ids": []}, "empty"),
      ("/generate", None, "Malformed JSON"),
      ("/generate", {"prompt": "p0", "text": "hi"}, "no vocabulary"),
  ]
  # References: each request alone (a batch of one), which equals the single-prompt model
  # (test_prompt_library.test_mixed_batch_equals_each_prompt_alone).
  want = {}
  for path, body in good:
    example = lib.Example(body["prompt"], body["inputs"])
    if path == "/generate":
      want[path, json.dumps(body)] = runner.generate([example], 5)[0]
    else:
      scores = runner.score([lib.Example(body["prompt"], body["inputs"], t) for t in labels])
      want[path, json.dumps(body)] = scores

  repeats = 70  # 29 kinds of request x 70: a few thousand concurrent requests, mixed.
  jobs = [(p, b, None) for p, b in good] * repeats + bad * repeats
  order = rng.permutation(len(jobs))
  jobs = [jobs[i] for i in order]

  def send(job):
    path, body, error = job
    if body is None:
      return job, post(url + path, None, raw=b"{not json")
    return job, post(url + path, body)

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    results = list(pool.map(send, jobs))
  assert len(results) == len(jobs) >= 2000
  for (path, body, error), (status, answer) in results:
    if error is not None:
      assert status == 400 and error in answer["error"], answer
    elif path == "/generate":
      assert status == 200 and answer["tokens"] == want[path, json.dumps(body)], answer
    else:
      expected = want[path, json.dumps(body)]
      assert status == 200, answer
      np.testing.assert_allclose(answer["scores"], expected, rtol=1e-5, atol=1e-5)
      assert answer["index"] == int(np.argmax(expected))

  metrics = get(url + "/metrics")
  assert metrics["batch_size"]["max"] > 1  # Requests were batched together.
  assert sum(metrics["errors"].values()) == len(bad) * repeats
  # Compilations stay bounded by the shape buckets, not one per prompt mix: per function, the
  # batch buckets (1, 2, ..., 32 = max_batch) times the input-length buckets (lengths 3-11 pad
  # to 8 or 16) times, to score, the target-length buckets (labels of 2 and 3 tokens pad to 2 or
  # 4); decodes of 5 tokens pad to 8. Which batch sizes occur depends on timing.
  batch_buckets, input_buckets = 6, 2
  most = {"score": batch_buckets * input_buckets * 2, "predict": batch_buckets * input_buckets}
  for name, count in metrics["compilations"].items():
    assert count <= most[name], (name, metrics["compilations"])

  # Still serving; a prompt added while running is usable at once; a bad file gets its error.
  assert get(url + "/health")["status"] == "ok"
  np.save(tmp_path / "late.npy", np.ones((4, CFG.emb_dim), np.float32))
  np.save(tmp_path / "wide.npy", np.ones((4, CFG.emb_dim + 2), np.float32))
  status, answer = post(url + "/prompts", {"directory": str(tmp_path)})
  assert status == 200 and answer["loaded"] == ["late"]
  assert "wide.npy" in answer["errors"][str(tmp_path / "wide.npy")]
  status, answer = post(url + "/generate", {"prompt": "late", "inputs": [4, 5]})
  assert status == 200 and answer["tokens"]
  status, answer = post(
      url + "/ensemble", {"prompts": ["p0", "p1", "late"], "inputs": [4, 5], "label_ids": labels}
  )
  assert status == 200 and len(answer["members"]) == 3
  status, answer = post(url + "/neighbours", {"prompt": "p1", "top_k": 2})
  assert status == 200 and len(answer["prompt"]["positions"]) == 6
  assert get(url + "/prompts")["prompts"]["late"] == 4
  # A prompt trained as a suffix is loaded as one and served so.
  body = {"path": str(tmp_path / "late.npy"), "name": "late_suffix", "placement": "suffix"}
  assert post(url + "/prompts", body) == (200, {"loaded": ["late_suffix"], "errors": {}})
  assert get(url + "/prompts")["placements"] == {
      "late": "prefix",
      "late_suffix": "suffix",
      "p0": "prefix",
      "p1": "prefix",
      "p2": "prefix",
  }
  status, answer = post(url + "/generate", {"prompt": "late_suffix", "inputs": [4, 5]})
  assert status == 200
  assert answer["tokens"] == runner.generate([lib.Example("late_suffix", [4, 5])], 32)[0]

  # A deep prompt (a training export's directory of prefixes) is loaded while serving and
  # answers as its own model does; it has no input positions, so no nearest neighbours.
  prefixes = random_prefixes(np.random.default_rng(5), 3, decoder=True)
  save_export(tmp_path / "deep", prefixes)
  status, answer = post(url + "/prompts", {"path": str(tmp_path / "deep")})
  assert (status, answer) == (200, {"loaded": ["deep"], "errors": {}})
  assert get(url + "/prompts")["deep"] == {"deep": {"encoder": 3, "decoder": 3}}
  status, answer = post(url + "/generate", {"prompt": "deep", "inputs": [4, 5]})
  assert status == 200
  assert answer["tokens"] == Reference(runner.params, prefixes=prefixes).generate([[4, 5]], 32)[0]
  status, answer = post(url + "/neighbours", {"prompt": "deep"})
  assert status == 400 and "deep prompt" in answer["error"]
  status, answer = post(
      url + "/prompts", {"path": str(tmp_path / "deep" / "deep_prompt.encoder_prefixes.npy")}
  )
  assert status == 400 and "load the directory" in answer["error"]


def test_jsonl_answers_in_order_with_per_line_errors(frozen):
  library = lib.PromptLibrary(CFG.emb_dim)
  for name, p in random_prompts(4, [3, 5]).items():
    library.add(name, p)
  runner = lib.MixedPromptRunner(CFG, frozen, library, max_input_length=16)
  service = serve.Service(runner, max_batch=8)
  labels = [[5, 1], [7, 8, 1]]
  requests = [
      {"endpoint": "/generate", "prompt": "p0", "inputs": [3, 4, 5], "max_decode_length": 4},
      {"endpoint": "rank_classify", "prompt": "p1", "inputs": [6, 7], "label_ids": labels},
      {"endpoint": "/generate", "prompt": "nope", "inputs": [3]},
      {"prompt": "p0", "inputs": [3]},
      {"endpoint": "/health", "method": "GET"},
  ]
  lines = [json.dumps(r) + "\n" for r in requests] + ["{broken\n", "\n"]
  lines = lines * 3  # More lines than workers: several batches, still in order.
  answers = list(serve.answer_jsonl(service, lines, workers=8))
  assert [a["line"] for a in answers] == list(range(1, len(lines) + 1))
  # References: each request alone, computed before any batching by the runner directly.
  decode = runner.generate([lib.Example("p0", [3, 4, 5])], 4)[0]
  scores = runner.score([lib.Example("p1", [6, 7], t) for t in labels])
  for a in answers:
    kind = (a["line"] - 1) % 7
    if kind == 0:
      assert a["status"] == 200 and a["answer"]["tokens"] == decode
    elif kind == 1:
      assert a["status"] == 200, a
      np.testing.assert_allclose(a["answer"]["scores"], scores, rtol=1e-5, atol=1e-5)
    elif kind == 2:
      assert a["status"] == 400 and "Unknown prompt 'nope'" in a["answer"]["error"]
    elif kind == 3:
      assert a["status"] == 400 and "'endpoint'" in a["answer"]["error"]
    elif kind == 4:
      assert a["status"] == 200 and a["answer"]["status"] == "ok"
    else:
      assert a["status"] == 400 and f"Line {a['line']}: malformed JSON" in a["answer"]["error"]


@pytest.mark.slow
def test_serve_command_batch_mode_on_the_embedded_default(tmp_path):
  """`python -m prompt_tuning.serve` through gin (runs/serve.gin), JSONL in and out."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  prompts = tmp_path / "prompts"
  prompts.mkdir()
  rng = np.random.default_rng(0)
  np.save(prompts / "a.npy", rng.uniform(-0.5, 0.5, (4, 128)).astype(np.float32))
  np.save(prompts / "wide.npy", np.ones((4, 129), np.float32))
  text = "question: does Anya play chess passage: Anya has a pet turtle."
  requests = [
      {"endpoint": "/generate", "prompt": "a", "text": text, "max_decode_length": 3},
      {"endpoint": "/rank_classify", "prompt": "a", "text": text, "labels": ["False", "True"]},
      {"endpoint": "/rank_classify", "prompt": "a", "text": text, "labels": []},
      {"endpoint": "/generate", "prompt": "wide", "text": text},
  ]
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
  out = tmp_path / "out.jsonl"
  subprocess.run(
      [
          sys.executable,
          "-m",
          "prompt_tuning.serve",
          f"--prompt_dir={prompts}",
          f"--jsonl_in={tmp_path / 'in.jsonl'}",
          f"--jsonl_out={out}",
          "--gin.MAX_BATCH=4",
          "--gin.PROMPT_LENGTH_MULTIPLE=8",  # Read (an unread macro is an error); same answers.
      ],
      check=True,
      timeout=300,
  )
  answers = [json.loads(line) for line in out.read_text().splitlines()]
  assert [a["status"] for a in answers] == [200, 200, 400, 400], answers
  assert answers[0]["answer"]["text"] is not None and answers[0]["answer"]["tokens"]
  assert answers[1]["answer"]["label"] in ("False", "True")
  assert len(answers[1]["answer"]["scores"]) == 2
  assert "empty" in answers[2]["answer"]["error"]
  assert "Unknown prompt 'wide'" in answers[3]["answer"]["error"]  # Skipped at load (width).


def test_shorthand_flags_become_gin_bindings():
  assert serve.gin_argv(["--port", "8089", "--prompt_dir=/p q", "--gin.MAX_BATCH=3"]) == [
      "--gin_file=runs/serve.gin",
      "--gin.PORT=8089",
      "--gin.PROMPT_DIR='/p q'",
      "--gin.MAX_BATCH=3",
  ]
  assert serve.gin_argv(["--gin_file=x.gin"]) == ["--gin_file=x.gin"]
  with pytest.raises(serve.config.ConfigError, match="--port='http'"):
    serve.gin_argv(["--port=http"])
