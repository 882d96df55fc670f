"""Progress bars: live widgets by default, text for executed handouts, none on request."""

import pytest
from tqdm.std import tqdm as text_bar

from eelib._util.progress import tqdm


def test_text_bars_for_handouts_and_none_when_off(monkeypatch):
    monkeypatch.setenv("EELIB_PROGRESS", "text")
    bar = tqdm(range(3), desc="x")
    assert type(bar) is text_bar and not bar.disable
    bar.close()
    monkeypatch.setenv("EELIB_PROGRESS", "off")
    bar = tqdm(range(3))
    assert bar.disable
    bar.close()


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("EELIB_PROGRESS", "loud")
    with pytest.raises(ValueError, match="EELIB_PROGRESS='loud': allowed auto, text, off"):
        tqdm(range(3))
