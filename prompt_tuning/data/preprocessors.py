"""Text-to-text preprocessors for SuperGLUE and GLUE, in T5's formats.

Each preprocessor reads examples in the TFDS schema (`super_glue/*:1.0.2`,
`glue/*:2.0.0`; the JSONL sources in `sources.py` produce the same schema) and writes
the `inputs`/`targets` strings plus the ids evaluation needs. `task_name=None` gives
the "taskless" variant prompt tuning uses: the same text without the leading task name.
"""

from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

# Target text of an unlabelled (test-split, label -1) example, as in T5.
UNKNOWN_LABEL = "<unk>"

# Two WSC texts whose `span2_index` does not point at the pronoun; T5 marks them by
# hand, so we do too (text -> text with the pronoun in asterisks).
_WSC_SIMPLE_SPECIAL_CASES = {
    (
        "The boy continued to whip the pony , and eventually the pony threw him over. "
        'John laughed out quite loud. "Good for him," he said. '
    ): (
        "The boy continued to whip the pony , and eventually the pony threw him over. "
        'John laughed out quite loud. "Good for *him* ," he said.'
    ),
    (
        "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put "
        "the magic pebble in an iron safe . Some day they might want to use it , but really "
        "for now, what more could they wish for?"
    ): (
        "When they had eventually calmed down a bit , and had gotten home, Mr. Farley put "
        "the magic pebble in an iron safe . Some day they might want to use *it* , but "
        "really for now, what more could they wish for?"
    ),
}


def join_words(parts: Sequence[tf.Tensor | str]) -> tf.Tensor:
  """Joins string scalars with single spaces."""
  return tf.strings.join(list(parts), separator=" ")


def fields_text(
    x: Mapping[str, tf.Tensor],
    field_names: Sequence[str],
    task_name: Optional[str],
    rename: Optional[Mapping[str, str]] = None,
) -> tf.Tensor:
  """`"<task_name> f1: <x[f1]> f2: <x[f2]>"`; `rename` maps a shown name to its key."""
  rename = rename or {}
  parts = [task_name] if task_name else []
  for name in field_names:
    parts += [f"{name}:", x[rename.get(name, name)]]
  return join_words(parts)


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """Class index -> label name; -1 (no label) -> `UNKNOWN_LABEL`."""
  return tf.cond(
      tf.equal(label, -1),
      lambda: tf.constant(UNKNOWN_LABEL),
      lambda: tf.gather(tf.constant(list(label_names)), label),
  )


@seqio.map_over_dataset
def classification(
    x: Mapping[str, tf.Tensor],
    task_name: Optional[str],
    field_names: Sequence[str],
    label_names: Sequence[str],
    rename: Optional[Mapping[str, str]] = None,
) -> dict[str, tf.Tensor]:
  """GLUE-style example: the named fields in order, the label as its name."""
  return {
      "inputs": fields_text(x, field_names, task_name, rename),
      "targets": label_text(x["label"], label_names),
      "idx": x["idx"],
  }


@seqio.map_over_dataset
def stsb(x: Mapping[str, tf.Tensor], task_name: Optional[str]) -> dict[str, tf.Tensor]:
  """STS-B: the score rounded to the nearest 0.2, written with one decimal."""
  score = tf.round(x["label"] * 5) / 5
  return {
      "inputs": fields_text(x, ("sentence1", "sentence2"), task_name),
      "targets": tf.strings.as_string(score, precision=1),
      "idx": x["idx"],
  }


def strip_multirc_markup(text: tf.Tensor) -> tf.Tensor:
  """MultiRC paragraphs carry `<br>` and `<b>` HTML tags; T5 removes them."""
  text = tf.strings.regex_replace(text, "<br>", " ")
  return tf.strings.regex_replace(text, "<(/)?b>", "")


@seqio.map_over_dataset
def multirc(x: Mapping[str, tf.Tensor], task_name: Optional[str]) -> dict[str, tf.Tensor]:
  """One example per answer-option; the ids let metrics group options by question."""
  inputs = fields_text(x, ("question", "answer", "paragraph"), task_name)
  return {
      "inputs": strip_multirc_markup(inputs),
      "targets": label_text(x["label"], ("False", "True")),
      "idx/paragraph": x["idx"]["paragraph"],
      "idx/question": x["idx"]["question"],
      "idx/answer": x["idx"]["answer"],
  }


def record_passage(passage: tf.Tensor) -> tf.Tensor:
  """Turns ReCoRD's `\\n@highlight\\n` separators into sentence breaks."""
  passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record_inputs(x: Mapping[str, tf.Tensor], task_name: Optional[str]) -> tf.Tensor:
  """`"record query: <q> entities: <e1>, <e2> passage: <p>"`."""
  parts = [task_name] if task_name else []
  parts += [
      "query:",
      x["query"],
      "entities:",
      tf.strings.reduce_join(x["entities"], separator=", "),
      "passage:",
      record_passage(x["passage"]),
  ]
  return join_words(parts)


def record(dataset: tf.data.Dataset, task_name: Optional[str]) -> tf.data.Dataset:
  """ReCoRD: one example per gold answer, each keeping the full answer list.

  Evaluation sees the duplicates too (the split is not known here, as in T5); the
  ReCoRD metric keeps one example per (passage, query) and scores it against
  `answers`. A query without answers (test) gives one example with target `<unk>`.
  """

  def per_answer(x):
    answers = x["answers"]
    has_answers = tf.size(answers) > 0
    targets = tf.cond(has_answers, lambda: answers, lambda: tf.constant([UNKNOWN_LABEL]))
    n = tf.size(targets)
    return {
        "inputs": tf.fill([n], record_inputs(x, task_name)),
        "targets": targets,
        "answers": tf.tile(answers[tf.newaxis], [n, 1]),
        "idx/passage": tf.fill([n], x["idx"]["passage"]),
        "idx/query": tf.fill([n], x["idx"]["query"]),
    }

  return dataset.map(per_answer, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def _escape_regex(text: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(text, r"([.^$|?*+()\[\]{}\\])", r"\\\1")


def mark_span(text: tf.Tensor, span_text: tf.Tensor, span_index: tf.Tensor, mark: str) -> tf.Tensor:
  """Surrounds `span_text`, starting at word `span_index`, with `" <mark> "`.

  Leaves `text` unchanged when the span is not found at that word.
  """
  pattern = tf.strings.join(
      [r"^((?:\S+\s){", tf.strings.as_string(span_index), r"})(", _escape_regex(span_text), ")"]
  )
  return tf.strings.regex_replace(text, pattern, rf"\1{mark} \2 {mark}")


@seqio.map_over_dataset
def wsc_fixed(x: Mapping[str, tf.Tensor], task_name: Optional[str]) -> dict[str, tf.Tensor]:
  """WSC as classification: the noun in `* *`, the pronoun in `# #`, target True/False."""
  text = mark_span(x["text"], x["span1_text"], x["span1_index"], "*")
  # Marking span 1 added two words ("*" twice) before span 2 if span 1 came first.
  span2_index = x["span2_index"] + 2 * tf.cast(x["span1_index"] < x["span2_index"], tf.int32)
  text = mark_span(text, x["span2_text"], span2_index, "#")
  parts = [task_name] if task_name else []
  return {
      "inputs": join_words(parts + ["text:", text]),
      "targets": label_text(x["label"], ("False", "True")),
      "idx": x["idx"],
  }


def wsc_simple_text(text: tf.Tensor, pronoun_index: tf.Tensor) -> tf.Tensor:
  """The text with word `pronoun_index` (space-separated) in asterisks: `*he*`."""
  special = tf.constant(list(_WSC_SIMPLE_SPECIAL_CASES))
  replacement = tf.constant(list(_WSC_SIMPLE_SPECIAL_CASES.values()))
  words = tf.strings.split(text, sep=" ")
  # Clipped so a bad index marks the wrong word instead of failing the whole pipeline.
  i = tf.clip_by_value(pronoun_index, 0, tf.maximum(tf.size(words) - 1, 0))
  marked = join_words(
      [
          tf.strings.reduce_join(words[:i], separator=" "),
          tf.strings.join(["*", words[i], "*"]),
          tf.strings.reduce_join(words[i + 1 :], separator=" "),
      ]
  )
  is_special = tf.equal(special, text)
  return tf.cond(
      tf.reduce_any(is_special), lambda: tf.boolean_mask(replacement, is_special)[0], lambda: marked
  )


def wsc_simple(
    dataset: tf.data.Dataset, task_name: Optional[str] = "wsc:", correct_referent_only: bool = False
) -> tf.data.Dataset:
  """T5's simplified WSC: the pronoun in asterisks; the target is the noun it refers to.

  With `correct_referent_only` (training), only examples whose noun *is* the referent
  are kept, so the model learns to generate referents.
  """
  if correct_referent_only:
    dataset = dataset.filter(lambda x: tf.equal(x["label"], 1))

  def to_text(x):
    text = wsc_simple_text(x["text"], x["span2_index"])
    return {
        "inputs": join_words([task_name, text]) if task_name else text,
        "targets": x["span1_text"],
        "label": x["label"],
        "idx": x["idx"],
    }

  return dataset.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)


def pad_punctuation(text: tf.Tensor) -> tf.Tensor:
  """T5's SQuAD spacing: a space either side of each ASCII punctuation mark, whitespace squashed."""
  text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


@seqio.map_over_dataset
def squad(x: Mapping[str, tf.Tensor], task_name: Optional[str] = None) -> dict[str, tf.Tensor]:
  """T5's SQuAD format (also the original's for MRQA): `question: <q> context: <c>` -> answer.

  Question, context and answers get `pad_punctuation`; `answers` (every gold answer) is kept for
  the metric, `id` for reading predictions back. `task_name` goes first if given.
  """
  question, context = pad_punctuation(x["question"]), pad_punctuation(x["context"])
  parts = ([task_name] if task_name else []) + ["question:", question, "context:", context]
  inputs = tf.strings.regex_replace(join_words(parts), r"\s+", " ")
  return {
      "inputs": inputs,
      "targets": pad_punctuation(x["target"]),
      "answers": pad_punctuation(x["answers"]),
      "id": x["id"],
  }


def squad_from_tfds(x: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """A TFDS `squad` example in the fields of `qa_format.QA_SIGNATURE`."""
  answers = x["answers"]["text"]
  return {
      "id": x["id"],
      "context": x["context"],
      "question": x["question"],
      "answers": answers,
      "target": answers[0],
  }
