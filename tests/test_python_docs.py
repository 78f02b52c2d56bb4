"""docs/python.md works as written: every ```python block runs, in order, in one namespace.

The blocks about a trained run need one: a tiny speaker run (12 demo voices × 4 utterances,
one epoch) is trained here with the CLI and its folder is given to the blocks as `RUN`. A block
whose first line is the comment `# doc: no-run` is shown to readers but not run (the one that
sets `RUN` to an example path).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import helpers

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs/python.md"
NO_RUN = "# doc: no-run"


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_the_page_has_python_blocks():
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    assert sum(b.lstrip().startswith(NO_RUN) for b in blocks) == 1


def test_every_python_block_of_the_page_runs(tmp_path, monkeypatch):
    voices = tmp_path / "voices"
    demo = ["demo-data", "--modality", "speaker", "--out", voices, "--set", "speakers=12"]
    demo += ["--set", "utterances_per_speaker=4", "--set", "seconds=[1.0, 1.5]"]
    assert helpers.run_cli(demo)[0] == 0
    train = ["train", "--modality", "speaker", "--data", voices, "--runs", tmp_path / "runs"]
    train += ["--workers", "0", "--set", "train.epochs=1", "--set", "train.batch_size=16"]
    train += ["--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert helpers.run_cli(train)[0] == 0
    [run] = list((tmp_path / "runs" / "speaker").iterdir())

    monkeypatch.chdir(tmp_path)  # blocks write small files (an .npz) in the working folder
    monkeypatch.setenv("METAEMB_CACHE", str(tmp_path / "cache"))  # the training block's cache
    namespace: dict = {"__name__": "python_docs", "RUN": str(run)}
    for number, block in enumerate(python_blocks(DOC.read_text(encoding="utf-8")), 1):
        if block.lstrip().startswith(NO_RUN):
            continue
        code = compile(block, f"docs/python.md block {number}", "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the triplet block warns on purpose
            exec(code, namespace)
    # what the page says about the run's scorer against plain cosine holds on this run
    M = namespace["metrics"]
    s, plain, is_target = namespace["s"], namespace["plain"], namespace["is_target"]
    assert M.eer(s[is_target], s[~is_target]) < M.eer(plain[is_target], plain[~is_target])
    assert abs(M.eer(s[is_target], s[~is_target]) - namespace["result"]["eer"]) < 1e-9
    # the training block trained a run of its own, beside the CLI's
    trained = Path(namespace["summary"]["run_dir"])
    assert trained != run and (trained / "last.pt").is_file()
    assert namespace["summary"]["epochs"] == 1
