"""The zoo's configs (``models/**/*.json``) are found from a source checkout and from an installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tencentpretrain import model_zoo
from tencentpretrain.config import ConfigError
from tencentpretrain.convert import save_hf_llama
from tencentpretrain.convert.cli import from_tencentpretrain
from tencentpretrain.training.deepspeed_config import config_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(str(p.relative_to(ROOT / "models")) for p in (ROOT / "models").rglob("*.json"))


def test_a_checkout_finds_its_models_folder():
    assert model_zoo.zoo_dir() == ROOT / "models"
    assert model_zoo.zoo_path("llama", "7b_config.json").is_file()


def test_an_installed_copy_is_preferred_and_the_deepspeed_default_falls_back_to_it(tmp_path, monkeypatch):
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "deepspeed_config.json").write_text("{}")
    monkeypatch.setattr(model_zoo, "INSTALLED_ZOO", tmp_path / "zoo")
    monkeypatch.chdir(tmp_path)  # no models/ here: the default --deepspeed_config comes from the zoo
    assert config_file("models/deepspeed_config.json") == tmp_path / "zoo" / "deepspeed_config.json"
    assert config_file("elsewhere/ds.json") == Path("elsewhere/ds.json")  # not the zoo's: reported as given


def test_convert_type_reads_the_config_from_the_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(model_zoo, "INSTALLED_ZOO", tmp_path / "zoo")  # installed: its copy, not the checkout's
    (tmp_path / "zoo" / "llama").mkdir(parents=True)
    (tmp_path / "zoo" / "llama" / "7b_config.json").write_text('{"emb_size": 1}')
    argv = ["--input_model_path", str(tmp_path / "in.bin"), "--output_model_path", str(tmp_path / "out"),
            "--type", "7B"]
    with pytest.raises(ConfigError, match=f"{tmp_path / 'zoo' / 'llama' / '7b_config.json'}"):
        from_tencentpretrain(save_hf_llama, "", "llama", argv)


@pytest.mark.slow
def test_the_built_wheel_ships_every_zoo_config_and_finds_it(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and .egg-info beside the sources
    source.mkdir()
    for part in ("setup.py", "pyproject.toml", "tencentpretrain", "models"):
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / part, source / part)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel, = (tmp_path / "dist").glob("tencentpretrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in SHIPPED if f"tencentpretrain/zoo/{n}" not in names] == []
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    probe = "from tencentpretrain.model_zoo import zoo_path; print(zoo_path('llama', '7b_config.json'))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True, timeout=300)
    found = Path(done.stdout.strip())
    assert found.is_relative_to(tmp_path / "site") and found.is_file(), done.stderr[-2000:]
