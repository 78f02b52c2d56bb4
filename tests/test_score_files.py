"""Score files of other toolkits read by `metaemb metrics` (docs/evaluation.md): every line
format the doc names gives the same labelled scores, and a wrong file is named as a score file."""

from __future__ import annotations

import numpy as np
import pytest

from metaemb.core.errors import DataError
from metaemb.core.eval.scores_file import labelled_scores

TAR, NON = [0.9, 0.7, 0.55], [0.1, 0.3, 0.6]
TRIALS = [("a", f"t{i}", 1, s) for i, s in enumerate(TAR)] + [
    ("a", f"n{i}", 0, s) for i, s in enumerate(NON)
]


@pytest.mark.parametrize(
    "line",
    [
        "{e}\t{t}\t{word}\t{s}",  # metaemb's scores.txt
        "{e} {t} {s} {word}",  # WeSpeaker
        "{e} {t} {bit} {s}",  # SpeechBrain's speaker_verification_cosine.py
        "{e} {t} {s} {bit}",
        "{e} {t} {s} {short}",
        "{e} {t} {s} {truth}",
    ],
)
def test_each_labelled_format_gives_the_same_scores(tmp_path, line):
    """The tidy-up that merged two readers dropped SpeechBrain's 'enroll test 1|0 score' and the
    tgt|imp labels (R9 F1)."""
    path = tmp_path / "scores"
    rows = []
    for e, t, label, s in TRIALS:
        word = "target" if label else "nontarget"
        short, truth = ("tgt", "True") if label else ("imp", "False")
        rows.append(line.format(e=e, t=t, s=s, word=word, bit=label, short=short, truth=truth))
    path.write_text("\n".join(rows) + "\n")
    tar, non = labelled_scores(path)
    np.testing.assert_allclose(np.sort(tar), np.sort(TAR))
    np.testing.assert_allclose(np.sort(non), np.sort(NON))


def test_a_missing_or_empty_score_file_is_called_a_score_file(tmp_path):
    """Errors called the score file a 'trial list', ambiguous next to --trials (R9 F2)."""
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    for path, said in [(empty, "holds no scores"), (tmp_path / "no.txt", "does not exist"),
                       (tmp_path, "is a folder")]:  # fmt: skip
        with pytest.raises(DataError, match="score file") as caught:
            labelled_scores(path)
        assert said in str(caught.value) and "trial list" not in str(caught.value)
