"""Text form of the knowledge transfer graph."""

import numpy as np
import pytest

from cgan_jax.core import gates, graph
from cgan_jax.errors import ConfigError


def test_parse_gates_d():
  np.testing.assert_array_equal(
    graph.parse_gates_d("through,positive_linear", 2), [gates.THROUGH, gates.POSITIVE_LINEAR]
  )
  np.testing.assert_array_equal(graph.parse_gates_d("", 3), [gates.THROUGH] * 3)


def test_parse_gates_transfer_rows_are_teachers():
  ids = graph.parse_gates_transfer(
    "-,positive_linear,cutoff;through,-,negative_linear;cutoff,through,-", 3
  )
  assert ids[0, 1] == gates.POSITIVE_LINEAR  # teacher 0 -> student 1
  assert ids[1, 2] == gates.NEGATIVE_LINEAR
  assert ids[2, 0] == gates.CUTOFF
  np.testing.assert_array_equal(np.diag(ids), [gates.CUTOFF] * 3)


def test_format_roundtrip():
  text = "-,through;negative_linear,-"
  assert graph.format_gates_transfer(graph.parse_gates_transfer(text, 2)) == text
  assert graph.format_gates_d(graph.parse_gates_d("cutoff,through", 2)) == "cutoff,through"


@pytest.mark.parametrize(
  "fn,text,k,match",
  [
    (graph.parse_gates_d, "through,sometimes", 2, r"gates_d: unknown gate 'sometimes'"),
    (graph.parse_gates_d, "through", 2, r"has 1 gates but model.k=2"),
    (graph.parse_gates_transfer, "-,through", 2, r"must be 2x2"),
    (graph.parse_gates_transfer, "-,thru;through,-", 2, r"\[0,1\]: unknown gate 'thru'"),
    (graph.parse_gates_transfer, "-,-;through,-", 2, r"unknown gate '-'"),
  ],
)
def test_bad_gates(fn, text, k, match):
  with pytest.raises(ConfigError, match=match) as e:
    fn(text, k)
  assert "\n" not in str(e.value)
  if "unknown gate" in match:
    assert str(e.value).endswith("allowed gates: through, cutoff, positive_linear, negative_linear")
