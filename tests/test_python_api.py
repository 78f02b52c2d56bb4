"""metaemb from Python (docs/python.md): the library's calls take what a notebook passes and
answer in the library's terms."""

from __future__ import annotations

import pytest


def test_evaluation_takes_its_options_as_a_dict_or_as_the_command_lines_strings(tmp_path):
    """`load_run(folder_options={…})` took a dict and `Evaluation(folder_options=…)` only
    'KEY=VALUE' strings, a dict being iterated into '--folder-set expects key=value … got
    'extensions'' (L3 F3): both take both, and one bare string is named."""
    from metaemb.core.errors import ConfigError
    from metaemb.core.eval.evaluate import Evaluation

    as_dict = Evaluation(tmp_path, scorer_options={"wccn": False},
                         folder_options={"sample_rate": 8000})  # fmt: skip
    as_strings = Evaluation(tmp_path, scorer_options=["wccn=false"],
                            folder_options=["sample_rate=8000"])  # fmt: skip
    assert as_dict.scorer_set == as_strings.scorer_set == {"wccn": False}
    assert as_dict.folder_options == as_strings.folder_options == {"sample_rate": 8000}
    with pytest.raises(ConfigError, match=r"scorer_options takes \{key: value\} or a list"):
        Evaluation(tmp_path, scorer_options="wccn=false")
