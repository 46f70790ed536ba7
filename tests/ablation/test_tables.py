"""Every row of the paper's Tables 3–7 builds and matches the paper's parameters (1%) and FLOPs (5%) at 224."""
from __future__ import annotations

import pytest

from sasa.ablation import ROWS, table_rows
from sasa.ablation.profile import profile_row


def test_row_labels_are_the_documented_ones():
    labels = {t: [r.row for r in table_rows(t)] for t in (3, 4, 5, 6, 7)}
    assert labels == {
        3: ["1234", "234", "34", "4", "", "1", "12", "123"],
        4: ["3", "5", "7", "9", "11"],
        5: ["none", "absolute", "relative"],
        6: ["qr", "qk+qr"],
        7: ["stand-alone", "conv-values", "spatially-aware"],
    }
    assert len(table_rows("all")) == len(ROWS) == 21


def test_unknown_table_is_named():
    with pytest.raises(ValueError, match="table must be one of 3, 4, 5, 6, 7 or 'all', got '8'"):
        table_rows("8")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"table{r.table}-{r.row or 'none'}")
def test_row_matches_the_paper(row):
    record = profile_row(row)
    assert record["flops"] == pytest.approx(record["paper_flops"], rel=0.05)
    if record["paper_params"] is not None:
        assert record["params"] == pytest.approx(record["paper_params"], rel=0.01)
