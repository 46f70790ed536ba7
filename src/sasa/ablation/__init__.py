"""The paper's ablations (Tables 3–7): rows, their cost beside the paper's, and a seeded training study."""
from sasa.ablation.tables import ROWS, TABLES, AblationRow, table_rows

__all__ = ["ROWS", "TABLES", "AblationRow", "table_rows"]
