"""The files generated from the models (CRDs, the chart's config values and schema, the README's table)
are up to date, and the generator writes what the chart and the README need."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from codeexec import chartgen
from codeexec.__main__ import main
from codeexec.config import OperatorConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(chartgen.generated_files(REPO)), ids=str)
def test_generated_file_is_up_to_date(path: Path) -> None:
    expected = chartgen.generated_files(REPO)[path]
    assert (REPO / path).read_text(encoding="utf-8") == expected, f"{path} is out of date: run `make generate`"


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The generated files' sources in a scratch repository."""
    for path in (chartgen.VALUES, chartgen.SCHEMA, chartgen.README):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    (tmp_path / chartgen.CRDS).mkdir()
    return tmp_path


def test_check_fails_on_drift_and_generate_repairs_it(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = copy / chartgen.VALUES
    values.write_text(values.read_text().replace("keepPods: false", "keepPods: true"))
    with pytest.raises(SystemExit, match="out of date"):
        main(["generate", "--root", str(copy), "--check"])
    main(["generate", "--root", str(copy)])
    written = capsys.readouterr().out.split()
    assert str(chartgen.VALUES) in written and str(chartgen.CRDS / "execution.yaml") in written
    assert str(chartgen.README) not in written  # unchanged files are left alone
    main(["generate", "--root", str(copy), "--check"])
    assert values.read_text() == (REPO / chartgen.VALUES).read_text()


def test_values_config_lists_every_chart_setting_with_its_comment_and_default() -> None:
    block = chartgen.values_config_block()
    assert block.startswith(chartgen.VALUES_BEGIN) and block.endswith(chartgen.VALUES_END)
    parsed = yaml.safe_load(block)
    defaults = OperatorConfig()
    assert set(parsed) == {chartgen.value_key(name) for name in chartgen.chart_settings()}
    assert parsed["maxCpu"] == "2"  # a string, as the operator reads it (not the number 2)
    assert parsed["clusterCidrs"] == list(defaults.cluster_cidrs)
    assert "  # Bytes of stdout and of stderr kept in the status (each)" in block
    assert "From 1024 to 262144." in block.replace("\n  # ", " ")
    for line in block.splitlines():
        assert len(line) <= chartgen.COMMENT_WIDTH, line


def test_chart_value_names_are_the_settings_in_camel_case() -> None:
    for name in OperatorConfig.model_fields:
        key = chartgen.value_key(name)
        assert re.sub(r"([A-Z])", r"_\1", key).lower() == name  # what the chart's `snakecase` gives back
    assert set(chartgen.DERIVED_SETTINGS) < set(OperatorConfig.model_fields)


def test_config_schema_carries_the_model_constraints() -> None:
    properties = chartgen.config_schema()["properties"]
    assert properties["maxOutputBytes"] == {
        "description": OperatorConfig.model_fields["max_output_bytes"].description,
        "maximum": 256 * 1024,
        "minimum": 1024,
        "type": "integer",
    }
    assert properties["imagePullPolicy"]["enum"] == ["Always", "IfNotPresent", "Never"]
    assert properties["clusterCidrs"]["items"]["pattern"].startswith("^")
    assert "runtimeClass" not in properties and "namespaces" not in properties


def test_readme_table_has_a_row_per_setting() -> None:
    rows = chartgen.markdown_table().splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == [
        f"CODEEXEC_{n.upper()}" for n in OperatorConfig.model_fields
    ]
    assert "| `CODEEXEC_KEEP_PODS` | `config.keepPods` | `false` |" in chartgen.markdown_table()
    assert "| `CODEEXEC_RUNTIME_CLASS` | `runtimeClass.name` | `gvisor` |" in chartgen.markdown_table()
