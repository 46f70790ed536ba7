"""`sasa ablate`: the JSON schema, and a tiny trained study that resumes row by row."""
from __future__ import annotations

import json

import pytest

from sasa.ablation import table_rows
from sasa.ablation.study import finished_twin, run_study
from sasa.classification import resolve_options, train
from sasa.cli.main import main

TINY = {"epochs": 1, "limit_train": 64, "limit_val": 32, "batch_size": 32, "device": "cpu"}


def test_ablate_json_schema(capsys):
    assert main(["ablate", "6", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["row"] for r in rows] == ["qr", "qk+qr"]
    for r in rows:
        assert isinstance(r["table"], int) and isinstance(r["params"], int) and isinstance(r["flops"], int)
    assert rows[0]["params"] < rows[1]["params"] and rows[0]["flops"] < rows[1]["flops"]


def test_ablate_rows_selects_rows_of_one_table(capsys):
    assert main(["ablate", "7", "--rows", "spatially-aware", "stand-alone", "--json"]) == 0
    assert [r["row"] for r in json.loads(capsys.readouterr().out)] == ["stand-alone", "spatially-aware"]
    assert main(["ablate", "3", "--rows", "", "--json"]) == 0
    assert [r["row"] for r in json.loads(capsys.readouterr().out)] == [""]
    assert main(["ablate", "7", "--rows", "conv"]) == 2
    assert "no row 'conv' in table 7; rows: 'stand-alone', 'conv-values', 'spatially-aware'" in capsys.readouterr().err
    assert main(["ablate", "all", "--rows", "7"]) == 2


def test_ablate_unknown_table_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "8"])
    assert exit_info.value.code == 2


def test_study_trains_each_row_once_and_resumes(tmp_path):
    rows = table_rows(6)
    log: list[str] = []
    # an interrupted training of the first row: its run directory holds one of two epochs
    first = tmp_path / "runs" / "t6_qr_s0"
    name, model_opt = rows[0].model_kwargs(26)
    train(resolve_options({"model": name, "model_opt": model_opt, "data": "digits", "quiet": True, **TINY,
                           "epochs": 2, "stop_after": 1}), out=first)
    records = run_study(rows, out=tmp_path, data="digits", seeds=1, overrides={**TINY, "epochs": 2}, log=log.append)
    assert [r["row"] for r in records] == ["qr", "qk+qr"]
    assert all(0 <= r["top1_mean"] <= 100 and r["seeds"] == 1 and r["top1_std"] == 0 for r in records)
    assert len(json.loads((first / "metrics.jsonl").read_text().splitlines()[-1])) > 0
    assert (first / "metrics.jsonl").read_text().count("\n") == 2  # resumed: epoch 2 appended, epoch 1 kept
    for name in ("ablation.json", "ablation.csv", "ablation.png"):
        assert (tmp_path / name).stat().st_size > 0
    trained = [line for line in log if "training table" in line]
    assert len(trained) == 2
    # a rerun trains nothing; removing one result retrains that (row, seed) only
    log.clear()
    run_study(rows, out=tmp_path, data="digits", seeds=1, overrides=TINY, log=log.append)
    assert not [line for line in log if "training table" in line]
    (tmp_path / "results" / "t6_qk+qr_s0.json").unlink()
    run_study(rows, out=tmp_path, data="digits", seeds=1, overrides=TINY, log=log.append)
    assert [line for line in log if "training table" in line] == [
        "ablation: training table 6 row 'qk+qr' seed 0 (logits q·k + q·r)"
    ]


def test_a_row_that_is_the_same_model_reuses_the_finished_training(tmp_path):
    (tmp_path / "results").mkdir()
    trained = {"table": 3, "row": "1234", "seed": 0, "data": "digits", "depth": 26, "top1": 97.5, "seconds": 80.0,
               "model": "sa_resnet26_convstem", "model_opt": {"mixer_stages": "1234"}}
    (tmp_path / "results" / "t3_1234_s0.json").write_text(json.dumps(trained))
    k5, k7 = (row for row in table_rows(4) if row.row in ("5", "7"))
    header = {"seed": 0, "data": "digits", "depth": 26, "overrides": {}}
    assert finished_twin(k7, out=tmp_path, header=header)["key"] == "t3_1234_s0"
    assert finished_twin(k5, out=tmp_path, header=header) is None  # another model
    for changed in ({"seed": 1}, {"data": "other"}, {"depth": 50}, {"overrides": {"epochs": 2}}):
        assert finished_twin(k7, out=tmp_path, header={**header, **changed}) is None
    log: list[str] = []
    records = run_study([k7], out=tmp_path, data="digits", seeds=1, log=log.append)
    assert not [line for line in log if "training table" in line]
    reused = json.loads((tmp_path / "results" / "t4_7_s0.json").read_text())
    assert reused["same_as"] == "t3_1234_s0" and reused["table"] == 4 and reused["row"] == "7"
    assert records[0]["top1_mean"] == 97.5
