"""The paper's ablation tables (3–7) as rows: a label, the model that reproduces the row, the paper's figures.

Every row is the ResNet-50 layout at 224×224 and 1000 classes, as in the paper (docs/ablations.md);
``overrides`` are ``sasa.create_model`` keyword arguments on top of ``base``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TABLES = (3, 4, 5, 6, 7)


@dataclass(frozen=True)
class AblationRow:
    table: int
    row: str  # the label users pass around: "234", "7", "relative", "qr", "spatially-aware", ...
    description: str
    base: str  # a registered model name (ResNet-50 layout)
    overrides: dict[str, Any] = field(default_factory=dict)
    paper_params_m: float | None = None  # millions; None where the paper prints none
    paper_gflops: float | None = None  # billions of FLOPs (2 × multiply-adds)
    paper_top1: float | None = None

    def model_kwargs(self, depth: int = 50) -> tuple[str, dict[str, Any]]:
        """(model name, overrides) of this row for the ResNet-``depth`` layout (the paper's rows: 50)."""
        return self.base.replace("50", str(depth)), dict(self.overrides)


def _table3() -> list[AblationRow]:
    # (attention groups, FLOPs, params, top-1); the other groups keep the 3×3 conv
    figures = [("1234", 7.0, 18.0, 80.2), ("234", 7.3, 18.1, 80.7), ("34", 7.5, 18.5, 80.7), ("4", 8.0, 20.8, 80.2),
               ("", 8.2, 25.6, 79.5), ("1", 7.9, 25.5, 79.7), ("12", 7.8, 25.0, 79.6), ("123", 7.2, 22.7, 79.9)]
    rows = []
    for groups, flops, params, top1 in figures:
        conv = "".join(g for g in "1234" if g not in groups)
        rows.append(AblationRow(
            3, groups, f"attention in groups {groups or '-'}, 3×3 conv in {conv or '-'}", "sa_resnet50_convstem",
            {"mixer_stages": groups}, params, flops, top1,
        ))
    return rows


def _table4() -> list[AblationRow]:
    figures = [(3, 6.6, 76.4), (5, 6.7, 77.2), (7, 7.0, 77.4), (9, 7.3, 77.7), (11, 7.7, 77.6)]
    return [AblationRow(4, str(k), f"spatial extent k={k}", "sa_resnet50_convstem", {"kernel_size": k}, 18.0, flops, top1)
            for k, flops, top1 in figures]


def _table5() -> list[AblationRow]:
    figures = [("none", 6.9, 77.6), ("absolute", 6.9, 78.2), ("relative", 7.0, 80.2)]
    return [AblationRow(5, name, f"positional encoding: {name}", "sa_resnet50_convstem", {"positional": name}, 18.0, flops, top1)
            for name, flops, top1 in figures]


def _table6() -> list[AblationRow]:
    return [
        AblationRow(6, "qr", "logits q·r only (no key projection)", "sa_resnet50_convstem", {"content": False}, 16.7, 6.1, 76.9),
        AblationRow(6, "qk+qr", "logits q·k + q·r", "sa_resnet50_convstem", {}, 18.0, 7.0, 77.4),
    ]


def _table7() -> list[AblationRow]:
    figures = [("stand-alone", "plain", 7.1, 76.2), ("conv-values", "conv", 7.4, 77.2),
               ("spatially-aware", "spatially-aware", 7.2, 77.6)]
    return [AblationRow(7, label, f"attention stem with {values} values", "sa_resnet50", {"stem_values": values},
                        None, flops, top1)
            for label, values, flops, top1 in figures]


ROWS: tuple[AblationRow, ...] = tuple(_table3() + _table4() + _table5() + _table6() + _table7())


def table_rows(table: int | str) -> list[AblationRow]:
    """The rows of one table (3..7), or of all of them for ``"all"``."""
    if table == "all":
        return list(ROWS)
    try:
        number = int(table)
    except (TypeError, ValueError):
        number = None
    if number not in TABLES:
        raise ValueError(f"table must be one of {', '.join(map(str, TABLES))} or 'all', got {table!r}")
    return [row for row in ROWS if row.table == number]
