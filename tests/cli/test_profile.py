import json

import pytest

from sasa.cli.main import main


def test_models_lists_names(capsys):
    assert main(["models"]) == 0
    assert "sa_resnet50" in capsys.readouterr().out.split()


def test_profile_json(capsys):
    assert main(["profile", "sa_resnet50", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "sa_resnet50"
    assert row["params"] == pytest.approx(18.0e6, rel=0.01)
    assert row["flops"] == pytest.approx(7.2e9, rel=0.05)


def test_profile_unknown_model(capsys):
    assert main(["profile", "sa_resnet5"]) == 2
    assert "unknown model 'sa_resnet5'" in capsys.readouterr().err


def test_profile_bad_size():
    with pytest.raises(SystemExit) as info:
        main(["profile", "resnet26", "--img-size", "zero"])
    assert info.value.code == 2
