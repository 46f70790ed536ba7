"""Parameters and FLOPs of ablation rows at the paper's setting (ResNet-50 layout, 224×224, 1000 classes)."""
from __future__ import annotations

from sasa.ablation.tables import AblationRow
from sasa.profile import model_cost


def profile_row(row: AblationRow, *, img_size: int = 224, num_classes: int = 1000) -> dict:
    """The row's JSON record: table, row, description, model, overrides, params, flops and the paper's figures."""
    name, overrides = row.model_kwargs()
    params, flops = model_cost(name, img_size=img_size, num_classes=num_classes, **overrides)
    return {
        "table": row.table, "row": row.row, "description": row.description, "model": name, "overrides": overrides,
        "params": params, "flops": flops,
        "paper_params": None if row.paper_params_m is None else round(row.paper_params_m * 1e6),
        "paper_flops": None if row.paper_gflops is None else round(row.paper_gflops * 1e9),
        "paper_top1": row.paper_top1,
    }
